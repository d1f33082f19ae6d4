"""Batched, geometry-aware augmentation: views with their crop boxes, made on the device."""

from selfsup.views.config import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, ViewsConfig
from selfsup.views.recipes import RECIPES, ViewSpec, eval_view, make_views, view_specs
from selfsup.views.view import View

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RECIPES",
    "View",
    "ViewSpec",
    "ViewsConfig",
    "eval_view",
    "make_views",
    "view_specs",
]
