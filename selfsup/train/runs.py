"""Rebuild a pre-training run's configuration and networks from its checkpoint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from selfsup.config import PretrainConfig, build_config
from selfsup.methods import METHODS, Method, RunInfo, build_method
from selfsup.train import checkpoint as ckpt


def checkpoint_file(path: str | Path) -> Path:
    """A run folder means its ``last.pt``."""
    p = Path(path)
    return p / "last.pt" if p.is_dir() else p


def load_run(path: str | Path, random_init: bool = False) -> tuple[PretrainConfig, Method]:
    """The run's config and method with trained weights (or, with ``random_init``, the same
    architecture freshly initialised: the baseline every evaluation should be compared to)."""
    state = ckpt.load(checkpoint_file(path))
    cfg = build_config(state["config"], METHODS)
    built = replace(cfg, backbone=replace(cfg.backbone, init=None))  # the checkpoint has the weights
    method = build_method(built, RunInfo(**state.get("run", {})))
    if not random_init:
        method.load_state_dict(state["method"])
    return cfg, method
