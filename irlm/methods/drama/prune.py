"""Structured pruning of a Llama-family LLM to a target shape (Sheared-LLaMA style; METHODS.md §2).

Hard-concrete masks z sit on layers, key/value head groups, hidden dimensions and MLP intermediate
dimensions. They gate activations through forward hooks, so the transformers model itself is not
rewritten. Each structure's expected kept fraction is driven to its target by an augmented Lagrangian,
lambda1 (s - t) + lambda2 (s - t)^2, whose multipliers rise by gradient ascent while the masks and
weights descend on LM loss + penalty. `export_pruned` then keeps the top-scoring structures of the
target shape and writes a plain, genuinely smaller transformers folder.

    irlm prune --config recipes/drama-prune-tiny.yaml
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

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
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((u.log() - (-u).log1p() + self.log_alpha) / BETA)
        else:
            s = torch.sigmoid(self.log_alpha)
        return (s * (LIMIT_R - LIMIT_L) + LIMIT_L).clamp(0.0, 1.0)

    def top(self, k: int) -> torch.Tensor:
        """Indices of the k gates most likely kept, in their original order."""
        return self.log_alpha.detach().topk(k).indices.sort().values


@dataclass
class Shape:
    layers: int
    hidden: int
    kv_heads: int
    intermediate: int

    @classmethod
    def of(cls, config) -> Shape:
        return cls(config.num_hidden_layers, config.hidden_size, config.num_key_value_heads, config.intermediate_size)


def _layers(model) -> nn.ModuleList:
    return model.model.layers


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


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
        """Expected kept fraction of each structure (differentiable)."""
        return {name: gate.keep_prob().mean() for name, gate in self.gates.items()}

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
        sel, f = self.selection(target), self.full
        dev = self.gates["hidden"].log_alpha.device
        layers, hidden = torch.zeros(f.layers, device=dev), torch.zeros(f.hidden, device=dev)
        layers[sel["layers"]], hidden[sel["hidden"]] = 1.0, 1.0
        heads = torch.zeros(f.layers, f.kv_heads, device=dev).scatter_(1, sel["heads"], 1.0)
        inter = torch.zeros(f.layers, f.intermediate, device=dev).scatter_(1, sel["intermediate"], 1.0)
        self.fixed = {"layers": layers, "heads": heads.flatten(), "hidden": hidden, "intermediate": inter.flatten()}
        self.sample()
        return sel


def targets(full: Shape, target: Shape) -> dict[str, float]:
    """Target kept fraction per structure."""
    return {"layers": target.layers / full.layers, "heads": target.kv_heads / full.kv_heads,
            "hidden": target.hidden / full.hidden, "intermediate": target.intermediate / full.intermediate}  # fmt: skip


def lagrangian(expected: dict[str, torch.Tensor], target: dict[str, float], lambdas: nn.ParameterDict):
    """sum_c lambda1_c (s_c - t_c) + lambda2_c (s_c - t_c)^2, with s the expected kept fraction."""
    total = 0.0
    for name, s in expected.items():
        gap = s - target[name]
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
    the LM gradient is large) and out of the lr decay (the constraints must still bind at the end).
    """

    def __init__(self, model, tokenizer, target: Shape, lr: float, mask_lr: float, lambda_lr: float,
                 init_keep: float = 0.95, target_warmup: float = 0.5):  # fmt: skip
        from irlm.losses.lm import next_token_loss

        self.model, self.tokenizer, self.target = model, tokenizer, target
        self.masks = StructuredMasks(model, init_keep).to(model.device)
        self.lambdas = make_lambdas(self.masks.gates).to(model.device)
        self.final_goal = self.goal = targets(self.masks.full, target)
        self.target_warmup = target_warmup
        self.lrs, self.loss_fn = (lr, mask_lr, lambda_lr), next_token_loss

    def on_step(self, step: int, max_steps: int) -> None:
        """Targets slide from the full size to the final shape over the first `target_warmup` of training:
        a constraint that moves slowly is tracked without the multipliers overshooting (Sheared-LLaMA)."""
        frac = min(1.0, step / max(1, self.target_warmup * max_steps))
        self.goal = {k: 1.0 - (1.0 - t) * frac for k, t in self.final_goal.items()}

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
        self.masks.train()
        self.masks.sample()
        ids = torch.tensor(examples, dtype=torch.long, device=self.model.device)  # (B, T)
        lm = self.loss_fn(self.model(input_ids=ids).logits, ids)
        expected = self.masks.expected()
        penalty = lagrangian(expected, self.goal, self.lambdas)
        ((lm + penalty) * scale).backward()
        kept = {f"keep_{k}": v.item() for k, v in expected.items()}
        return {"lm": lm.item(), "penalty": float(penalty.detach()), **kept}

    def save(self, folder) -> None:
        from safetensors.torch import save_file

        from irlm.methods.drama.export import export_pruned

        export_pruned(self.model, self.masks, self.target, folder, self.tokenizer)
        save_file({n: p.detach().cpu().contiguous() for n, p in self.masks.named_parameters()},
                  f"{folder}/masks.safetensors")  # fmt: skip
