"""Structured pruning of a Llama-family LLM to a target shape (Sheared-LLaMA style; METHODS.md §2).

Hard-concrete masks z sit on layers, key/value head groups, hidden dimensions and MLP intermediate
dimensions. They gate activations through forward hooks, so the transformers model itself is not
rewritten. Each structure's expected kept fraction is driven to its target by an augmented Lagrangian,
lambda1 (s - t) + lambda2 (s - t)^2, whose multipliers rise by gradient ascent while the masks and
weights descend on LM loss + penalty. The expected non-embedding parameter count is logged beside them
(`keep_params`) and can be constrained too (`constrain_params`); it is off by default because, as a product
of the structures' fractions, it pulls against them: on tests/integration/test_prune.py's 200 steps it
left the head groups at 0.46 for a target of 0.5 and the parameters at 0.16 for 0.125.

A hardening phase ends the run: the gates freeze at their deterministic values, the structures outside
the target shape fade to exactly 0 while the weights keep training, so the model that finishes training
is the one `export_pruned` writes (kept gate values folded into the weights, export.py). `save` reports
the LM loss of the soft model before hardening, of the final masked model and of the export, and their
gap (`prune_report.json`), at the end of every run: a run without hardening (`harden: 0`) measures the
soft model at its end, and a run resumed inside the hardening phase reads the soft model's loss from
`prune_probe.json`, written when hardening began.

    irlm prune --config recipes/drama-prune-tiny.yaml
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from irlm.methods.drama.export import Shape, export_pruned, head_dim

# Hard-concrete stretch and temperature (Louizos et al., 2018), as used by Sheared-LLaMA.
LIMIT_L, LIMIT_R, BETA = -0.1, 1.1, 2.0 / 3.0


class HardConcrete(nn.Module):
    """n gates in [0, 1]: sampled while training, deterministic in eval; `keep_prob` is P(z != 0)."""

    def __init__(self, n: int, init_keep: float = 0.95):
        super().__init__()
        shift = BETA * math.log(-LIMIT_L / LIMIT_R)  # P(z != 0) = sigmoid(log_alpha - shift)
        self.log_alpha = nn.Parameter(torch.full((n,), math.log(init_keep / (1 - init_keep)) + shift))

    def keep_prob(self) -> torch.Tensor:
        return torch.sigmoid(self.log_alpha - BETA * math.log(-LIMIT_L / LIMIT_R))  # (n,)

    def forward(self) -> torch.Tensor:
        if not self.training:
            return self.deterministic()
        u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((u.log() - (-u).log1p() + self.log_alpha) / BETA)
        return (s * (LIMIT_R - LIMIT_L) + LIMIT_L).clamp(0.0, 1.0)

    def deterministic(self) -> torch.Tensor:
        """The eval gate: the stretched sigmoid of log_alpha, clamped to [0, 1] (Louizos et al.'s test-time z)."""
        s = torch.sigmoid(self.log_alpha)
        return (s * (LIMIT_R - LIMIT_L) + LIMIT_L).clamp(0.0, 1.0)

    def top(self, k: int) -> torch.Tensor:
        """Indices of the k gates most likely kept, in their original order."""
        return self.log_alpha.detach().topk(k).indices.sort().values


def _layers(model) -> nn.ModuleList:
    return model.model.layers


def layer_params(hidden, kv_heads, intermediate, q_per_kv: int, d: int):
    """Weights of one Llama layer (norms aside): q and o are hidden x kv*q_per_kv*d, k and v hidden x kv*d,
    the MLP three hidden x intermediate. Works on counts and on expected counts (tensors) alike."""
    return hidden * d * kv_heads * (2 * q_per_kv + 2) + 3 * hidden * intermediate


class StructuredMasks(nn.Module):
    """Masks on a causal LM, applied through hooks. `fixed` replaces sampling with given 0/1 masks."""

    def __init__(self, model, init_keep: float = 0.95):
        super().__init__()
        cfg = model.config
        self.full = Shape.of(cfg)
        self.q_per_kv, self.head_dim = cfg.num_attention_heads // cfg.num_key_value_heads, head_dim(cfg)
        L = self.full.layers
        self.gates = nn.ModuleDict({
            "layers": HardConcrete(L, init_keep), "heads": HardConcrete(L * self.full.kv_heads, init_keep),
            "hidden": HardConcrete(self.full.hidden, init_keep),
            "intermediate": HardConcrete(L * self.full.intermediate, init_keep)})  # fmt: skip
        self.z: dict[str, torch.Tensor] = {}
        self.fixed: dict[str, torch.Tensor] | None = None
        self.handles = self._attach(model)

    def sample(self) -> None:
        """Draw this step's masks (or take the fixed ones); the hooks read them."""
        src = self.fixed or {name: gate() for name, gate in self.gates.items()}
        L, f = self.full.layers, self.full
        self.z = {"layers": src["layers"], "heads": src["heads"].view(L, f.kv_heads),
                  "hidden": src["hidden"], "intermediate": src["intermediate"].view(L, f.intermediate)}  # fmt: skip

    def expected(self) -> dict[str, torch.Tensor]:
        """Expected kept fraction of each structure and of the non-embedding parameters (differentiable)."""
        keep = {name: gate.keep_prob() for name, gate in self.gates.items()}
        f = self.full
        per_layer = layer_params(keep["hidden"].sum(), keep["heads"].view(f.layers, -1).sum(1),
                                 keep["intermediate"].view(f.layers, -1).sum(1), self.q_per_kv, self.head_dim)  # (L,)
        params = (keep["layers"] * per_layer).sum() / self.params_of(f)
        return {**{name: k.mean() for name, k in keep.items()}, "params": params}

    def params_of(self, shape: Shape) -> float:
        """Non-embedding weights (norms aside) of a model of this family in `shape`."""
        one = layer_params(shape.hidden, shape.kv_heads, shape.intermediate, self.q_per_kv, self.head_dim)
        return float(shape.layers * one)

    @torch.no_grad()
    def gate_values(self) -> dict[str, torch.Tensor]:
        """The deterministic (eval) gate of every structure, shaped as export.pruned_state takes them."""
        f = self.full
        z = {name: gate.deterministic() for name, gate in self.gates.items()}
        return {"layers": z["layers"], "heads": z["heads"].view(f.layers, f.kv_heads), "hidden": z["hidden"],
                "intermediate": z["intermediate"].view(f.layers, f.intermediate)}  # fmt: skip

    def keep_masks(self, target: Shape) -> dict[str, torch.Tensor]:
        """1 on the structures `selection(target)` keeps, 0 elsewhere, shaped as gate_values."""
        sel, f = self.selection(target), self.full
        dev = self.gates["hidden"].log_alpha.device
        layers, hidden = torch.zeros(f.layers, device=dev), torch.zeros(f.hidden, device=dev)
        layers[sel["layers"]], hidden[sel["hidden"]] = 1.0, 1.0
        heads = torch.zeros(f.layers, f.kv_heads, device=dev).scatter_(1, sel["heads"], 1.0)
        inter = torch.zeros(f.layers, f.intermediate, device=dev).scatter_(1, sel["intermediate"], 1.0)
        return {"layers": layers, "heads": heads, "hidden": hidden, "intermediate": inter}

    def harden(self, target: Shape, fade: float) -> None:
        """Fix the hooks to the deterministic gates, with the structures outside `target` scaled by 1 - fade:
        fade 1 leaves exactly the kept structures, at the gate values export folds into the weights."""
        z, keep = self.gate_values(), self.keep_masks(target)
        self.fixed = {k: (z[k] * (keep[k] + (1 - keep[k]) * (1 - fade))).flatten() for k in z}
        self.sample()

    def _attach(self, model) -> list:
        embed = model.get_input_embeddings()
        handles = [embed.register_forward_hook(lambda m, i, out: out * self._z("hidden", out))]
        for li, layer in enumerate(_layers(model)):
            handles += self._attach_layer(li, layer.self_attn.o_proj, layer.mlp.down_proj)
        return handles

    def _attach_layer(self, li: int, attn_out: nn.Module, mlp_out: nn.Module) -> list:
        """Gate what enters each output projection (heads, intermediate dims) and what it writes back."""
        def heads(m, args):
            return (args[0] * self._head_gate(li, args[0]),)

        def inter(m, args):
            return (args[0] * self._z("intermediate", args[0])[li],)

        def residual(m, args, out):
            return out * self._residual_gate(li, out)

        return [attn_out.register_forward_pre_hook(heads), mlp_out.register_forward_pre_hook(inter),
                attn_out.register_forward_hook(residual), mlp_out.register_forward_hook(residual)]  # fmt: skip

    def _z(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """This step's mask in the activation's dtype (bf16 under autocast stays bf16)."""
        if not self.z:
            self.sample()
        return self.z[name].to(like.dtype)

    def _head_gate(self, li: int, like: torch.Tensor) -> torch.Tensor:
        """(H_q * d,) gate on the attention output: one value per key/value group, repeated over its heads."""
        return self._z("heads", like)[li].repeat_interleave(self.q_per_kv * self.head_dim)

    def _residual_gate(self, li: int, like: torch.Tensor) -> torch.Tensor:
        """What a layer writes to the residual stream: pruned hidden dims stay zero, a pruned layer adds nothing."""
        return self._z("hidden", like) * self._z("layers", like)[li]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    # ---- the final, exact-size selection --------------------------------------------------------
    def selection(self, target: Shape) -> dict[str, torch.Tensor]:
        """Indices kept at export: the top layers, hidden dims, and per kept layer the top groups and
        intermediate dims, so every layer has the same shape (a plain config can describe it)."""
        f = self.full
        heads = self.gates["heads"].log_alpha.detach().view(f.layers, f.kv_heads)
        inter = self.gates["intermediate"].log_alpha.detach().view(f.layers, f.intermediate)
        return {"layers": self.gates["layers"].top(target.layers), "hidden": self.gates["hidden"].top(target.hidden),
                "heads": heads.topk(target.kv_heads, dim=1).indices.sort(dim=1).values,
                "intermediate": inter.topk(target.intermediate, dim=1).indices.sort(dim=1).values}  # fmt: skip

    def fix(self, target: Shape) -> dict[str, torch.Tensor]:
        """Switch the hooks to the exact 0/1 masks of `selection(target)`; returns the selection."""
        self.fixed = {k: v.flatten() for k, v in self.keep_masks(target).items()}
        self.sample()
        return self.selection(target)


def targets(full: Shape, target: Shape) -> dict[str, float]:
    """Target kept fraction per structure (StructuredMasks.params_of gives the parameter count's)."""
    return {"layers": target.layers / full.layers, "heads": target.kv_heads / full.kv_heads,
            "hidden": target.hidden / full.hidden, "intermediate": target.intermediate / full.intermediate}  # fmt: skip


def lagrangian(expected: dict[str, torch.Tensor], target: dict[str, float], lambdas: nn.ParameterDict):
    """sum_c lambda1_c (s_c - t_c) + lambda2_c (s_c - t_c)^2 over the constrained c, with s the expected kept
    fraction (an expected value without a target, such as an unconstrained `params`, adds nothing)."""
    total = 0.0
    for name, t in target.items():
        gap = expected[name] - t
        total = total + lambdas[f"{name}_1"] * gap + lambdas[f"{name}_2"] * gap**2
    return total


def make_lambdas(names) -> nn.ParameterDict:
    """Multipliers start at 0; the hook flips their gradient so a descent step is an ascent step."""
    lambdas = nn.ParameterDict({f"{n}_{i}": nn.Parameter(torch.zeros(())) for n in names for i in (1, 2)})
    for p in lambdas.values():
        p.register_hook(lambda g: -g)
    return lambdas


# masks and multipliers: constant lr, unclipped; multipliers without momentum, which made them overshoot
# and the kept fractions oscillate around their targets on a tiny model
_CONTROL = {"weight_decay": 0.0, "clip": False, "schedule": False}


class PruneTask:
    """Task for the shared Trainer: LM loss through the masks + the Lagrangian; `save` exports the small model.

    Three optimizer groups: the weights (lr), the mask logits (mask_lr) and the multipliers (lambda_lr,
    ascending). Masks and multipliers stay out of gradient clipping (their steps must not shrink because
    the LM gradient is large) and out of the lr decay (the constraints must still bind at the end). The
    last `harden` share of the steps trains the weights alone under fixed gates (StructuredMasks.harden).
    """

    def __init__(self, model, tokenizer, target: Shape, lr: float, mask_lr: float, lambda_lr: float,
                 init_keep: float = 0.95, target_warmup: float = 0.5, harden: float = 0.2,
                 constrain_params: bool = False, output_dir: str | Path | None = None):  # fmt: skip
        from irlm.losses.lm import next_token_loss

        self.model, self.tokenizer, self.target = model, tokenizer, target
        self.masks = StructuredMasks(model, init_keep).to(model.device)
        self.final_goal = self.goal = targets(self.masks.full, target)
        if constrain_params:
            self.final_goal = self.goal = {**self.goal, "params": self._params_goal()}
        self.lambdas = make_lambdas(self.final_goal).to(model.device)
        self.target_warmup, self.harden = target_warmup, harden
        self.fade: float | None = None  # None while the gates learn; 0..1 through the hardening phase
        self.lrs, self.loss_fn = (lr, mask_lr, lambda_lr), next_token_loss
        self.report: dict[str, float] = {}
        self.probe: list | None = None  # the first hardening batch: every loss of the report is measured on it
        self.last: list | None = None  # the latest batch: the probe of a run without hardening
        # where the probe and the soft model's loss on it survive a restart inside the hardening phase
        self.probe_file = Path(output_dir) / "prune_probe.json" if output_dir else None
        if harden > 0 and self.probe_file and self.probe_file.is_file():
            saved = json.loads(self.probe_file.read_text())
            self.probe, self.report["lm_soft"] = saved["probe"], saved["lm_soft"]

    def _params_goal(self) -> float:
        return self.masks.params_of(self.target) / self.masks.params_of(self.masks.full)

    def on_step(self, step: int, max_steps: int) -> None:
        """Targets slide from the full size to the final shape over the first `target_warmup` of training:
        a constraint that moves slowly is tracked without the multipliers overshooting (Sheared-LLaMA).
        In the last `harden` share, the structures outside the target fade to 0, reaching it on the last step."""
        frac = min(1.0, step / max(1, self.target_warmup * max_steps))
        self.goal = {k: 1.0 - (1.0 - t) * frac for k, t in self.final_goal.items()}
        start = max_steps - round(self.harden * max_steps)
        self.fade = (step - start + 1) / (max_steps - start) if step >= start else None
        if step == start:  # (re)measured whenever the run passes the start of hardening
            self.probe = None
        if self.fade is not None:
            self.masks.harden(self.target, self.fade)
        else:
            self.masks.fixed = None

    def param_groups(self) -> list[dict]:
        lr, mask_lr, lambda_lr = self.lrs
        return [{"params": list(self.model.parameters()), "lr": lr},
                {"params": list(self.masks.parameters()), "lr": mask_lr, **_CONTROL},
                {"params": list(self.lambdas.parameters()), "lr": lambda_lr, **_CONTROL, "betas": (0.0, 0.99)}]

    def parameters(self):
        return [p for g in self.param_groups() for p in g["params"]]

    def named_parameters(self):
        yield from self.model.named_parameters()
        yield from (("masks." + n, p) for n, p in self.masks.named_parameters())
        yield from (("lambdas." + n, p) for n, p in self.lambdas.named_parameters())

    def step(self, examples: list[list[int]], scale: float = 1.0, seed: int = 0) -> dict[str, float]:
        ids = torch.tensor(examples, dtype=torch.long, device=self.model.device)  # (B, T)
        self.last = examples
        if self.fade is not None:
            return self._hardening_step(examples, ids, scale)
        self.masks.train()
        self.masks.sample()
        lm = self.loss_fn(self.model(input_ids=ids).logits, ids)
        expected = self.masks.expected()
        penalty = lagrangian(expected, self.goal, self.lambdas)
        ((lm + penalty) * scale).backward()
        kept = {f"keep_{k}": v.item() for k, v in expected.items()}
        return {"lm": lm.item(), "penalty": float(penalty.detach()), **kept}

    def _hardening_step(self, examples: list[list[int]], ids: torch.Tensor, scale: float) -> dict[str, float]:
        """LM loss alone under the fixed gates: masks and multipliers get no gradient, so they stay put."""
        if self.probe is None:  # the soft model as it left the gate-learning phase
            self.probe, self.report["lm_soft"] = examples, self.lm_loss(ids, fade=0.0)
            self._keep_probe()
        lm = self.loss_fn(self.model(input_ids=ids).logits, ids)
        (lm * scale).backward()
        kept = {f"keep_{k}": v.item() for k, v in self.masks.expected().items()}
        return {"lm": lm.item(), "penalty": 0.0, "fade": self.fade, **kept}

    @torch.no_grad()
    def lm_loss(self, ids: torch.Tensor, fade: float | None = None) -> float:
        """LM loss of the masked model with deterministic gates: the soft model (fade 0), or `fade` applied."""
        before = self.masks.fixed
        self.masks.harden(self.target, self.fade if fade is None else fade)
        loss = self.loss_fn(self.model(input_ids=ids).logits, ids).item()
        self.masks.fixed = before
        self.masks.sample()
        return loss

    def save(self, folder) -> None:
        from safetensors.torch import save_file

        sel, gates = self.masks.selection(self.target), self.masks.gate_values()
        small = export_pruned(self.model, sel, self.target, folder, self.tokenizer, gates)
        save_file({n: p.detach().cpu().contiguous() for n, p in self.masks.named_parameters()},
                  f"{folder}/masks.safetensors")  # fmt: skip
        if self.probe is None and self.fade is None and self.last is not None:  # no hardening phase
            self.probe, self.report["lm_soft"] = self.last, self.lm_loss(self._ids(self.last), fade=0.0)
        if self.probe is None:  # only a rerun of a finished run that never hardened and has no probe file
            print(json.dumps({"prune_report": None, "why": "no probe batch: the run took no step"}))
            return
        self._write_report(small, Path(folder))

    def _ids(self, examples: list[list[int]]) -> torch.Tensor:
        return torch.tensor(examples, dtype=torch.long, device=self.model.device)

    def _keep_probe(self) -> None:
        from irlm.train.loop import world
        from irlm.utils import write_json

        if self.probe_file is not None and world()[0] == 0:
            write_json(self.probe_file, {"probe": self.probe, "lm_soft": self.report["lm_soft"]})

    def _write_report(self, small, folder: Path) -> None:
        """LM losses on the probe batch: the soft model before hardening, the masked model as trained, the export."""
        ids = self._ids(self.probe)
        with torch.no_grad():
            exported = self.loss_fn(small(input_ids=ids).logits, ids).item()
        report = {**self.report, "lm_masked": self.lm_loss(ids, fade=1.0), "lm_export": exported}
        if "lm_soft" in report:
            report["export_gap"] = report["lm_export"] - report["lm_soft"]
        (folder / "prune_report.json").write_text(json.dumps(report, indent=2))
        print(json.dumps({"prune_report": report}))
