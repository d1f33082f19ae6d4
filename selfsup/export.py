"""Export a trained backbone as a plain state dict that torchvision / timm models load."""

from __future__ import annotations

from pathlib import Path

import torch

from selfsup.train.runs import load_run


def export_backbone(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the backbone weights of ``checkpoint`` to ``out`` (a dict of tensors).

    A ResNet loads with ``torchvision.models.resnet18().load_state_dict(w, strict=False)``
    reporting only ``fc.*`` missing (with the CIFAR stem, replace ``conv1`` by a 3x3 stride-1
    conv and ``maxpool`` by an identity first).
    """
    _, method = load_run(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(method.backbone.export_state_dict(), out)
    return out
