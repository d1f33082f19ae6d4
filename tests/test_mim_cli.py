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


VIT = ["backbone.name=vit_tiny_patch16_224", "backbone.img_size=32", "backbone.patch_size=4",
       "backbone.pos_embed=sincos", "backbone.cifar_stem=false", "optim.name=adamw", "optim.lr=1e-3",
       "optim.weight_decay=0.05"]
CONTRASTIVE = {"mocov3": ["mocov3.proj_hidden=256", "mocov3.pred_hidden=256", "mocov3.proj_dim=64"],
               "dino": ["dino.out_dim=256", "dino.hidden_dim=256", "dino.bottleneck_dim=64", "views.local_crops=2"]}


@pytest.mark.parametrize("method", ["mocov3", "dino"])
def test_contrastive_methods_train_the_same_vit(method, cifar_subset, tmp_path):
    """MoCo v3 and DINO on the MIM presets' ViT (patch 4, sin-cos positions): the MIM and
    contrastive rows of benchmarks/mim.py share one backbone. MoCo v3's loss falls within 40
    steps. DINO's total loss rises in its first steps on a fresh ViT (the centre catches up with
    the nearly constant outputs of a random ViT: the teacher's entropy rises), so its check is
    the part the student controls: KL(P_t || P_s) falls over the first 8 steps."""
    from selfsup.train.runs import load_run

    data = cifar_subset(10, 0)
    out = tmp_path / method
    epochs = "20" if method == "mocov3" else "4"
    assert main(["pretrain", "--config", f"cifar10/{method}", "--data", str(data), "--epochs", epochs,
                 "--batch-size", "50", "--out", str(out), "--set", *TINY, *VIT, *CONTRASTIVE[method]]) == 0
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r and "summary" not in r]
    losses = [r["loss"] for r in steps]
    assert all(torch.isfinite(torch.tensor(losses)))
    backbone = load_run(out)[1].backbone
    assert type(backbone).__name__ == "ViTBackbone" and backbone.patch_size == 4
    if method == "mocov3":
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    else:
        kl = [r["kl"] for r in steps]
        assert len(kl) == 8 and sum(kl[-3:]) < 0.5 * sum(kl[:3])
