"""One training loop for every method: bf16/fp32, accumulation, data parallel, checkpoints, logs.

A *task* owns the model and the loss. Each step the loop hands it a list of examples and it
runs forward and backward, returning the named loss parts as floats:

    class Task:
        def parameters(self) -> Iterable[nn.Parameter]: ...
        def step(self, examples: list, scale: float, seed: int) -> dict[str, float]: ...
        def save(self, folder): ...            # final model, written by rank 0
        def param_groups(self) -> list[dict]   # optional: groups with their own lr, clip and schedule flags
        def on_step(self, step, max_steps)     # optional: called before each step

The example stream is a pure function of (seed, step): epoch e is a seeded permutation, and
step s reads global examples [s*B, (s+1)*B) of the concatenated epochs. So resuming needs only
the step number, the weights, the optimizer, the scheduler and the RNG states - exactly what a
checkpoint holds. Across processes, rank r takes every W-th example of the global batch, and
gradients are averaged with one all-reduce after the step's backward passes (which may be
several under gradient caching, so DDP's hook-based sync is not used).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from irlm.config_files import did_you_mean
from irlm.errors import InputError
from irlm.progress import bar as progress_bar
from irlm.train.settings import TrainSettings
from irlm.utils import atomic_path, bf16_is_faster

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    output_dir: str = "runs/train"
    max_steps: int = 100
    lr: float = 5e-5  # METHODS.md §0: 5e-5 (not 2e-5) got SmolLM2 off the ground on scifact
    warmup_ratio: float = 0.03  # LREM cold start uses 3 % warm-up
    schedule: str = "linear"  # decay after warm-up: linear, or cosine (LREM's cold start); SCHEDULES
    weight_decay: float = 0.0
    batch_size: int = 32  # examples per optimizer step, summed over processes
    grad_accum: int = 1  # micro-batches per step on each process
    # auto: bf16 autocast where a bf16 matmul beats fp32 on this device (GPUs, CPUs with native bf16), else
    # fp32; on AVX2-only CPUs bf16 autocast trains about 20x slower than fp32 (bench/train.py)
    precision: str = "auto"  # auto | bf16 (autocast, fp32 master weights) | fp32
    max_grad_norm: float = 1.0
    save_every: int = 50  # steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2
    # > 0: also keep the trainable weights (no optimizer state) of every N-th step in weights/step-N.safetensors,
    # where a pruned checkpoint cannot go: what a curve of quality against steps scores afterwards
    weights_every: int = 0
    log_every: int = 1
    seed: int = 42

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise InputError(f"precision: unknown value '{self.precision}'; choose {', '.join(PRECISIONS)}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A TrainConfig from a mapping; an unknown key is refused with the nearest valid name."""
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            hint = did_you_mean(unknown[0], list(cls.__dataclass_fields__))
            raise InputError(f"unknown training setting(s) {', '.join(unknown)}{hint}")
        return cls(**d)


def train_config(cfg: TrainSettings, max_steps: int, **override) -> TrainConfig:
    """The shared loop's settings from a method's config; `override` sets what a stage has of its own (anchor's
    Stage I folder and lr, reasoning's schedule).

    Example:
        >>> train_config(TrainSettings(lr=1e-4), 10, schedule="cosine").lr
        0.0001
    """
    shared = {"output_dir": cfg.output_dir, "lr": cfg.lr, "batch_size": cfg.batch_size,
              "precision": cfg.precision, "save_every": cfg.save_every, "seed": cfg.seed,
              "weights_every": cfg.weights_every}  # fmt: skip
    return TrainConfig(max_steps=max_steps, **{**shared, **override})


def copy_weights(params: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable weights (a checkpoint's, or weights/step-N's) into the parameters of the same names."""
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> None:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    if "RANK" in os.environ and not dist.is_initialized():
        if torch.cuda.is_available():  # one GPU per process: "cuda" then means this rank's device
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_leave_distributed)


def _leave_distributed() -> None:
    """Tear the process group down before the interpreter exits: left to the exit itself, gloo's threads can
    abort a rank ("terminate called without an active exception") while its peer still talks to it."""
    if not dist.is_initialized():
        return
    try:  # gloo: wait for every rank first, since a peer that tears down first aborts the other; bounded,
        if dist.get_backend() == "gloo":  # as after an error in one rank the others may never come
            dist.monitored_barrier(timeout=timedelta(seconds=60))
    except RuntimeError:
        pass
    finally:
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_examples(examples: list, step: int, batch_size: int, seed: int) -> list:
    """The global batch of `step`: a pure function of the seed, so resume needs no data state."""
    n = len(examples)
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(pos, n)
        perm = _permutation(n, epoch_seed(seed, epoch))
        out.append(examples[perm[i]])
    return out


def epoch_seed(seed: int, epoch: int) -> int:
    """The permutation seed of one epoch, hashed from (seed, epoch): with seed + epoch, seed 43's first
    epoch was seed 42's second, so runs with neighbouring seeds were not independent.

    Example:
        >>> epoch_seed(43, 0) == epoch_seed(42, 1)
        False
    """
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


_perm_cache: dict[tuple[int, int], list[int]] = {}


def _permutation(n: int, seed: int) -> list[int]:
    if (n, seed) not in _perm_cache:
        g = torch.Generator().manual_seed(seed)
        _perm_cache[(n, seed)] = torch.randperm(n, generator=g).tolist()
    return _perm_cache[(n, seed)]


def _param_groups(task, lr: float) -> list[dict]:
    """The task's optimizer groups when it has several (own lr; `clip: False` keeps a group out of
    gradient clipping, `schedule: False` out of warm-up and decay), else one group of every trainable parameter."""
    if hasattr(task, "param_groups"):
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in task.param_groups()]
        return [g for g in groups if g["params"]]
    return [{"params": [p for p in task.parameters() if p.requires_grad], "lr": lr}]


def _constant(step: int) -> float:
    return 1.0


def linear_warmup(total: int, warmup_ratio: float):
    warm = max(1, int(total * warmup_ratio))
    return lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))


def cosine_warmup(total: int, warmup_ratio: float):
    """Linear warm-up, then half a cosine from the full rate to 0 at `total` (LREM: lr 1e-5 cosine, 3 % warm-up)."""
    warm = max(1, int(total * warmup_ratio))

    def factor(s: int) -> float:
        progress = min(1.0, max(0.0, (s - warm) / max(1, total - warm)))
        return min((s + 1) / warm, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


SCHEDULES = {"linear": linear_warmup, "cosine": cosine_warmup}


def resolve_precision(precision: str, device_type: str) -> str:
    """`auto` becomes bf16 where bf16 matmuls are faster on this device, else fp32."""
    if precision == "auto":
        return "bf16" if bf16_is_faster(device_type) else "fp32"
    return precision


def autocast(device_type: str, precision: str):
    """The training precision as a context: bf16 autocast (fp32 master weights) or plain fp32. Work done
    outside the trainer (evaluation, an index built before training) uses it to embed as training does."""
    enabled = resolve_precision(precision, device_type) == "bf16"
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)


class Trainer:
    def __init__(self, task, examples: list, config: TrainConfig):
        self.task, self.examples, self.cfg = task, examples, config
        self.rank, self.world = world()
        self.out = Path(config.output_dir)
        if config.batch_size % (self.world * config.grad_accum):
            raise InputError(f"batch_size {config.batch_size} must divide evenly over {self.world} process(es) x "
                             f"{config.grad_accum} accumulation step(s)")  # fmt: skip
        groups = _param_groups(task, config.lr)
        self.params = [p for g in groups for p in g["params"]]
        self.clipped = [p for g in groups if g.get("clip", True) for p in g["params"]]
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        if config.schedule not in SCHEDULES:
            raise InputError(f"must be one of {', '.join(SCHEDULES)}, not '{config.schedule}'", field="schedule")
        warm = SCHEDULES[config.schedule](config.max_steps, config.warmup_ratio)
        schedules = [warm if g.get("schedule", True) else _constant for g in groups]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedules)
        self.step = 0
        self.precision = None if config.precision == "auto" else config.precision  # auto: timed at the first step

    # ---- one step -------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        batch = step_examples(self.examples, self.step, cfg.batch_size, cfg.seed)[self.rank :: self.world]
        micro = len(batch) // cfg.grad_accum
        parts: dict[str, float] = {}
        seed = cfg.seed * 1_000_003 + self.step  # per-step seed: the same draws on any number of processes
        if hasattr(self.task, "on_step"):  # tasks whose targets follow a schedule (pruning)
            self.task.on_step(self.step, cfg.max_steps)
        for start in range(0, len(batch), micro):
            with self._autocast():
                got = self.task.step(batch[start : start + micro], scale=1.0 / cfg.grad_accum, seed=seed)
            for k, v in got.items():
                parts[k] = parts.get(k, 0.0) + float(v) / cfg.grad_accum
        self._average_gradients()
        parts = self._average_parts(parts)
        lr = self.scheduler.get_last_lr()[0]  # the rate this step used
        if cfg.max_grad_norm:
            parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.clipped, cfg.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"lr": lr, **parts}

    def _autocast(self):
        if self.precision is None:
            self.precision = self._pick_precision()
        return autocast(self.params[0].device.type, self.precision)

    def _pick_precision(self) -> str:
        """`auto`: the faster precision for this task's real step here (irlm.train.precision), decided on rank 0
        and shared, so every process autocasts alike."""
        if self.cfg.precision != "auto":
            return self.cfg.precision
        if not getattr(self.task, "probe_precision", False):  # a step with side effects (sampling) is not timed
            return resolve_precision("auto", self.params[0].device.type)
        from irlm.train.precision import choose_precision

        choice = [None]
        if self.rank == 0:
            micro = max(1, self.cfg.batch_size // (self.world * self.cfg.grad_accum))
            probe = step_examples(self.examples, 0, self.cfg.batch_size, self.cfg.seed)[: min(4, micro)]
            choice[0] = choose_precision(self.task, probe, self.params[0].device.type)
        if self.world > 1:
            dist.broadcast_object_list(choice, src=0)
        return choice[0]

    def _average_parts(self, parts: dict[str, float]) -> dict[str, float]:
        """Loss parts as the mean over every process's share of the batch, not rank 0's alone."""
        if self.world == 1:
            return parts
        values = torch.tensor(list(parts.values()), dtype=torch.float64)
        dist.all_reduce(values)
        return dict(zip(parts, (values / self.world).tolist()))

    def _average_gradients(self) -> None:
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        # a parameter no process gave a gradient keeps none, as with one process: AdamW then leaves it
        # alone, where a zero gradient would still move it by its momentum (pruning's frozen gates)
        used = torch.tensor([float(p.grad is not None) for p in self.params], device=flat.device)
        dist.all_reduce(used)
        for p, g, n in zip(self.params, flat.split([g.numel() for g in grads]), used.tolist()):
            p.grad = g.view_as(p).clone() if n else None

    # ---- the loop ---------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        self.resume()
        log = self._open_log()
        bar = progress_bar("train", whole=True, total=self.cfg.max_steps, initial=self.step, desc="train",
                           disable=self.rank != 0)  # fmt: skip
        history, start = [], time.perf_counter()
        while self.step < self.cfg.max_steps:
            parts = self.train_step()
            row = {"step": self.step, **parts, "elapsed_s": round(time.perf_counter() - start, 2)}
            history.append(row)
            if self.rank == 0 and self.step % self.cfg.log_every == 0:
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix({k: f"{v:.4g}" for k, v in parts.items()})
            bar.update(1)
            if self.cfg.weights_every and self.step % self.cfg.weights_every == 0:
                self.save_weights()  # before the checkpoint: a run killed between the two redoes this step
            if self.cfg.save_every and self.step % self.cfg.save_every == 0:
                self.save_checkpoint()
        bar.close()
        log.close()
        if not self.cfg.save_every or self.step % self.cfg.save_every:
            self.save_checkpoint()  # a rerun of a finished stage restores this state and moves on
        if self.rank == 0:
            self.task.save(self.out / "final")
        return history

    def _open_log(self):
        """Append to log.jsonl, dropping lines past the resumed step so a rerun logs no step twice."""
        path = self.out / "log.jsonl"
        if self.rank != 0:
            return open(os.devnull, "w")
        self.out.mkdir(parents=True, exist_ok=True)
        if path.exists():
            kept = [ln for ln in path.read_text().splitlines() if _logged_step(ln) <= self.step]
            with atomic_path(path) as tmp:
                tmp.write_text("".join(ln + "\n" for ln in kept))
        return open(path, "a")

    # ---- checkpoints ----------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        names = {id(p): n for n, p in self.task.named_parameters()}
        return {names[id(p)]: p.detach().contiguous() for p in self.params}

    def save_weights(self) -> None:
        if self.rank != 0:
            return
        path = self.out / "weights" / f"step-{self.step:07d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(self.trainable_state(), tmp)

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        folder = self.out / "checkpoints" / f"step-{self.step:07d}"
        with atomic_path(folder, "checkpoint") as tmp:
            tmp.mkdir()
            save_file(self.trainable_state(), tmp / "trainable.safetensors")
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       tmp / "optimizer.pt")  # fmt: skip
            (tmp / "rng.json").write_text(json.dumps(_rng_state()))
            state = {"step": self.step, "config": asdict(self.cfg)}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        for old in sorted((self.out / "checkpoints").glob("step-*"))[: -max(1, self.cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)

    def resume(self) -> None:
        ckpts = sorted((self.out / "checkpoints").glob("step-*"))
        if not ckpts:
            return
        folder = ckpts[-1]
        copy_weights(dict(self.task.named_parameters()), load_file(folder / "trainable.safetensors"))
        state = torch.load(folder / "optimizer.pt", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(json.loads((folder / "rng.json").read_text()))
        self.step = json.loads((folder / "trainer_state.json").read_text())["step"]
        if self.rank == 0:
            tqdm.write(f"resumed from {folder} (step {self.step})", file=sys.stderr)


def _logged_step(line: str) -> float:
    """Step of a log line; a line cut short by a kill counts as past the end (dropped)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state().tolist(), "python": _listify(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}  # fmt: skip


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))


def _listify(x):
    return [_listify(v) for v in x] if isinstance(x, (tuple, list)) else x
