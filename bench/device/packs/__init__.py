"""The GPU evidence packs of issue 16: what each pack runs, in what order, under which time box.

A pack is a list of rows; a row is an `irlm run` stage (data, augment, prune, pretrain, train, eval),
a benchmark script under bench/, or a small function here. Rows run in one process, in order of
importance, each under its own alarm (`cap`) and the pack's deadline; a row that would start with less
time left than it needs is skipped, so the most important rows always finish first. After every row
the results file is rewritten (atomically), so a pack killed from outside still leaves what it measured.

    python bench/device/packs run a OUTDIR --budget 450        # on the GPU (bench/device/run.sh does this)
    python bench/device/packs run all OUTDIR --smoke           # every pack, tiny random models, CPU
    python bench/device/packs plan                             # rows, caps and estimates of every pack
    python bench/device/packs next                             # the first pack without committed results

The device numbers assume SmolLM2-135M in bf16 trains at roughly 100-200k tokens/s on one H200; `est` is
the seconds a row is expected to take there (loading and evaluation included), `cap` the most it may.

One module per pack (a..e) holds its rows; common.py the Row and Scale they are built from, smoke.py the
CPU smoke mode, runner.py the running, results.py the results file, cli.py the command line.
"""

from .cli import main, next_pack, plan
from .common import BASE, ORDER, Row, Scale
from .runner import PACKS, run_pack

__all__ = ["BASE", "ORDER", "PACKS", "Row", "Scale", "main", "next_pack", "plan", "run_pack"]
