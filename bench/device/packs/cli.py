"""The GPU evidence packs of issue 16: what each pack runs, in what order, under which time box.

The command line: `run` a pack into OUTDIR, `plan` (every pack's rows, estimates and caps), `next` (the
first pack without committed results).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .common import ORDER, REPO, RESULTS, Scale
from .runner import PACKS, imported_distributions, run_pack
from .smoke import mini_data, scripted_teacher, tiny_model


def committed(pack: str) -> list[Path]:
    return sorted(RESULTS.glob(f"{pack}-*.json"))


def next_pack() -> str:
    """The first pack, in order a..e, without a committed results file; with one whose rows did not all
    finish, the pack and those rows (`run.sh a OUT --rows x,y` completes it)."""
    for pack in ORDER:
        files = committed(pack)
        if not files:
            return pack
        done = {r["name"] for f in files for r in json.loads(f.read_text())["rows"] if r.get("status") == "ok"}
        missing = [r.name for r in PACKS[pack](Scale(smoke=False)) if r.name not in done]
        if missing:
            return f"{pack} --rows {','.join(missing)}"
    return "none"


def plan() -> str:
    lines = []
    for pack, fn in PACKS.items():
        rows = fn(Scale(smoke=False))
        lines.append(f"pack {pack}: {sum(r.est for r in rows)} s expected (rows in order; caps in brackets)")
        lines += [f"  {r.name:<20} {r.kind:<8} ~{r.est:>4} s [{r.cap} s]" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one pack (or all, in smoke) into OUTDIR")
    r.add_argument("pack", choices=[*PACKS, "all"])
    r.add_argument("out", type=Path)
    r.add_argument("--work", type=Path, default=None, help="stage folders (default: OUTDIR/../work-PACK)")
    r.add_argument("--budget", type=float, default=450, help="seconds for the rows (run.sh subtracts the setup)")
    r.add_argument("--smoke", action="store_true", help="tiny random models, a few dozen documents, CPU")
    r.add_argument("--rows", default="", help="only these rows (and the rows they need), comma-separated")
    sub.add_parser("plan")
    sub.add_parser("next")
    args = ap.parse_args(argv)
    if args.cmd == "plan":
        print(plan())
        return 0
    if args.cmd == "next":
        print(next_pack())
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    packs = list(PACKS) if args.pack == "all" else [args.pack]
    if args.pack == "all" and not args.smoke:
        raise SystemExit("'all' is for --smoke: on the device one pack fits a call")
    base = args.work or args.out.parent / f"work-{args.out.name}"
    if args.smoke:
        import irlm.utils

        # every smoke row runs in fp32; irlm's probe of whether bf16 is faster here costs 3-25 s of matmuls
        irlm.utils.bf16_is_faster = lambda device: str(device).startswith("cuda")
        import torch

        torch.set_num_threads(1)  # tiny matrices: a second thread only spins, and on a busy machine it stalls
        scripted_teacher()
        tiny_model(base / "tiny-lm")  # before IRLM_CACHE moves: the tokenizer comes from the real cache
        data = Path(os.environ.get("IRLM_DATA", REPO.parent / "shared" / "data"))
        os.environ["IRLM_DATA"] = str(mini_data(data, base / "data"))
        os.environ["IRLM_CACHE"] = str(base / "cache")  # activations and the like stay in the scratch folder
    bad = 0
    for pack in packs:
        record = run_pack(pack, args.out, base / pack, args.budget, args.smoke, [n for n in args.rows.split(",") if n])
        bad += sum(r["status"] not in ("ok", "partial", "skipped") for r in record["rows"])
        bad += args.smoke and sum(r["status"] != "ok" for r in record["rows"])
    (args.out / "imports.json").write_text(json.dumps(imported_distributions()) + "\n")
    return 1 if bad else 0
