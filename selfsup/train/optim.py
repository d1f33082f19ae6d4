"""Optimisers (SGD, LARS, AdamW): norms, biases and declared embeddings excluded from weight
decay, optional layer-wise learning-rate decay."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.config import OptimConfig
from selfsup.core.errors import ConfigError


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Parameter names that get no weight decay by their module's own declaration: every
    submodule with timm's ``no_weight_decay()`` (a ViT's ``pos_embed``, ``cls_token``, ...)."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        declare = getattr(module, "no_weight_decay", None)
        if callable(declare) and module is not model:
            names |= {f"{prefix}.{n}" if prefix else n for n in declare()}
    return names


def layer_scales(model: nn.Module, layer_decay: float) -> dict[str, float]:
    """Layer-wise learning-rate scales (BEiT, Bao et al., 2022; MAE fine-tuning): parameter
    ``backbone.<name>`` of layer i of L gets ``layer_decay ** (L + 1 - i)``, every other
    parameter (heads) 1. The backbone says which layer holds what (``layer_ids()``)."""
    if layer_decay == 1.0:
        return {}
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "layer_ids"):
        raise ConfigError(f"optim.layer_decay {layer_decay}: {type(backbone).__name__} does not name its layers")
    ids, num_layers = backbone.layer_ids()
    return {f"backbone.{name}": layer_decay ** (num_layers + 1 - i) for name, i in ids.items()}


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Optimiser groups: weights (decayed, LARS-adapted, ``decay: True``) and the parameters
    without decay (1-D ones, i.e. norms and biases, and those of ``no_weight_decay_names``:
    neither decay nor LARS); split further by the layer-wise lr scale (``lr_scale``) and by the
    sets of parameters the model declares with its own options in ``model.optimizer_groups()``
    (see ``Method.optimizer_groups``). Frozen parameters are left out."""
    special = model.optimizer_groups() if hasattr(model, "optimizer_groups") else []
    claimed = {id(p): i for i, g in enumerate(special) for p in g["params"]}
    skip = no_weight_decay_names(model)
    scales = layer_scales(model, layer_decay)
    groups: dict[tuple[int, bool, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        owner = claimed.get(id(p), -1)
        decayed = p.ndim > 1 and name not in skip
        scale = scales.get(name, 1.0)
        key = (owner, decayed, scale)
        if key not in groups:
            options = {k: v for k, v in special[owner].items() if k != "params"} if owner >= 0 else {}
            groups[key] = {"params": [], "weight_decay": weight_decay if decayed else 0.0, "decay": decayed,
                           "lars": decayed, **({"lr_scale": scale} if scales else {}), **options}
        groups[key]["params"].append(p)
    return list(groups.values())


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


def use_fused(cfg: OptimConfig, device: torch.device) -> bool:
    """Whether the optimiser runs torch's fused kernels (``optim.fused``): ``auto`` = SGD and
    AdamW on CUDA; never for LARS."""
    if cfg.name == "lars":
        return False
    return device.type == "cuda" if cfg.fused == "auto" else bool(cfg.fused)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``cfg.name`` over ``model``'s trainable parameters (fused kernels
    per :func:`use_fused`, on the parameters' device)."""
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
    device = next((p.device for g in groups for p in g["params"]), torch.device("cpu"))
    fused = use_fused(cfg, device)
    if cfg.name == "sgd":
        for g in groups:
            g.pop("lars")
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused)
    if cfg.name == "lars":
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient,
                    clip=cfg.lars_clip)
    if cfg.name == "adamw":
        for g in groups:
            g.pop("lars")
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused)
    raise ValueError(f"unknown optimiser {cfg.name!r}; available: sgd, lars, adamw")
