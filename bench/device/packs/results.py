"""The results file: the hardware and commit a pack ran on, the headline numbers of each row, and the
atomic rewrite after every row (a pack killed from outside still leaves what it measured)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

from .common import REPO


def hardware() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "host": platform.machine()}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)  # fmt: skip
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        info["nvidia_smi"] = f"unavailable ({type(e).__name__})"
    import torch
    import transformers

    info.update(torch=torch.__version__, transformers=transformers.__version__, cuda=torch.version.cuda,
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)  # fmt: skip
    return info


def commit() -> dict:
    """The commit the working tree was prepared from: $IRLM_DEVICE_COMMIT (the device gets no .git), else git."""
    if os.environ.get("IRLM_DEVICE_COMMIT"):
        sha, _, dirty = os.environ["IRLM_DEVICE_COMMIT"].partition("+")
        return {"commit": sha, "dirty": dirty == "dirty"}
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                    capture_output=True, text=True).stdout.strip())  # fmt: skip
        return {"commit": sha or None, "dirty": dirty}
    except OSError:
        return {"commit": None, "dirty": None}


HEADLINE = ("ndcg@10", "recall@100", "hits@1", "hits@5", "mrr@5", "answer_em", "think_format", "ratio",
            "tokens_per_s", "final_loss", "examples", "invalid", "skipped")  # fmt: skip


def headline(result, prefix: str = "") -> dict:
    """The numbers worth reading at a glance, flattened: `scifact.ndcg@10`, `inproc_b64_tokens_per_s`, ..."""
    out = {}
    if isinstance(result, dict):
        for k, v in result.items():
            if k in ("config",):
                continue
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                out.update(headline(v, key + "."))
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and any(h in k for h in HEADLINE):
                out[key] = v
    return out


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)
