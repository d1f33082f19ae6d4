"""All pre-training methods, by name (``selfsup methods`` prints this table)."""

from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.methods.byol import BYOL
from selfsup.methods.simclr import SimCLR

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "byol": BYOL,
}


def build_method(cfg, run: RunInfo | None = None) -> Method:
    """The method named by ``cfg.method`` (a PretrainConfig) on a freshly built backbone."""
    from selfsup.models.backbones import build_backbone

    return METHODS[cfg.method](build_backbone(cfg.backbone), cfg.params, run or RunInfo())


__all__ = ["METHODS", "Method", "RunInfo", "StepOutput", "build_method"]
