"""Masked image modelling (MAE, SimMIM, CAE) through the CLI: a short run of each preset on a tiny
ViT with real CIFAR-10 images learns (``test_mim.py`` tests the parts)."""

import json

import pytest
import torch

from selfsup.cli import main

TINY = ["backbone.kwargs={depth: 2, embed_dim: 48, num_heads: 3}", "train.progress=false", "train.knn_every=0",
        "train.log_every=1", "optim.warmup_epochs=0"]


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
