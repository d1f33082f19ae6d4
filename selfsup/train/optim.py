"""Optimisers (SGD, LARS, AdamW) with norm and bias parameters excluded from weight decay."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.config import OptimConfig


def _decay_split(params, weight_decay: float, **options) -> list[dict]:
    """Weights (decayed, LARS-adapted) and 1-D parameters (norms, biases: neither)."""
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars": True, **options},
        {"params": no_decay, "weight_decay": 0.0, "lars": False, **options},
    ]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed, LARS-adapted) and 1-D parameters (norms, biases: neither);
    plus such a pair for every set of parameters the model declares with its own options in
    ``model.optimizer_groups()`` (see ``Method.optimizer_groups``)."""
    special = model.optimizer_groups() if hasattr(model, "optimizer_groups") else []
    special = [{**g, "params": list(g["params"])} for g in special]
    claimed = {id(p) for g in special for p in g["params"]}
    groups = _decay_split([p for p in model.parameters() if id(p) not in claimed], weight_decay)
    for g in special:
        groups += _decay_split(g.pop("params"), weight_decay, **g)
    return groups


class LARS(torch.optim.Optimizer):
    """LARS (You et al., 2017) around SGD with momentum, as used by SimCLR / BYOL / PixPro.

    For parameters of a group with ``lars=True``: g <- g + wd * w, then
    g <- g * r with the trust ratio r = eta * ||w|| / ||g|| (when both norms are > 0), then
    heavy-ball momentum; the step is lr * r * g. With ``clip`` (LARC's clipping mode, as
    apex's LARC default and solo-learn's ``clip_lr``), r becomes min(r / lr, 1): each layer
    takes the plain SGD step lr * g unless that would exceed eta * ||w||, so eta caps the
    relative change per step instead of scaling every step down by it.
    Groups with ``lars=False`` (norms, biases) get plain momentum SGD without decay.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, trust_coefficient: float = 0.001,
                 clip: bool = False) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": 0.0,
                                  "trust_coefficient": trust_coefficient, "lars": True, "clip": clip})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["lars"]:
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    ratio = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * w_norm / g_norm,
                        torch.ones_like(w_norm),
                    )
                    if group["clip"]:
                        ratio = (ratio / group["lr"]).clamp(max=1.0)
                    g = g * ratio
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``cfg.name`` over ``model``'s trainable parameters."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "sgd":
        for g in groups:
            g.pop("lars")
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.name == "lars":
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient,
                    clip=cfg.lars_clip)
    if cfg.name == "adamw":
        for g in groups:
            g.pop("lars")
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    raise ValueError(f"unknown optimiser {cfg.name!r}; available: sgd, lars, adamw")
