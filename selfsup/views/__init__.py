"""Batched, geometry-aware augmentation: views with their crop boxes, made on the device."""

from selfsup.views.recipes import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RECIPES,
    ViewSpec,
    eval_view,
    make_views,
)
from selfsup.views.view import View

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RECIPES",
    "View",
    "ViewSpec",
    "eval_view",
    "make_views",
]
