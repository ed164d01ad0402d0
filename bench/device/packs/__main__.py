"""`python bench/device/packs run|plan|next ...` (bench/device/run.sh runs it so)."""

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a folder: import it as the package `packs` from the folder above
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from packs.cli import main  # noqa: E402
from packs.common import REPO  # noqa: E402

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    sys.exit(main())
