"""What produced a result: the software versions and the device, for run folders and reports."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import torch

PACKAGES = ("selfsup", "torch", "torchvision", "timm", "numpy", "scikit-learn", "matplotlib", "pillow")


def software_versions() -> dict[str, str]:
    """Python and the installed versions of the packages a run depends on ("not installed" where absent)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_description(device: torch.device) -> dict[str, Any]:
    """The device as configured (``cuda:0``, ``cpu``) and its hardware name."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"device": str(device), "device_name": name}
