"""Runs a recipe with a stub stage kind `mark` that appends its name to ran.txt; with SLOW=<name> set,
that stage writes started.txt and sleeps, so a test can kill the run inside it."""

import os
import sys
import time
from pathlib import Path

from irlm import pipeline


def mark(settings, folder, run_dir):
    if os.environ.get("SLOW") == folder.name:
        (run_dir / "started.txt").write_text(folder.name)
        time.sleep(60)
    with open(run_dir / "ran.txt", "a") as f:
        f.write(folder.name + "\n")
    return {"value": settings.get("value")}


pipeline.STAGES["mark"] = mark
pipeline.run_pipeline(Path(sys.argv[1]))
