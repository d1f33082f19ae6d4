"""MIM evaluations: the attentive probe (hand-checked pooling), ViT pooling for the probes,
fine-tuning with layer-wise lr decay (hand-checked group lrs, learning on real images), the
reconstruction pictures and errors, and the CLI on a short real CIFAR-10 CAE run."""

import json

import pytest
import torch
import torch.nn.functional as F

from selfsup.cli import main
from selfsup.config import build_config
from selfsup.core.errors import ConfigError
from selfsup.data import open_dataset
from selfsup.eval.attentive import AttentiveProbe, attentive_probe
from selfsup.eval.finetune import FinetuneConfig, accuracy, classifier, finetune, finetune_optimizer, set_lr
from selfsup.methods import METHODS, RunInfo, build_method
from selfsup.models.backbones import BackboneConfig, build_backbone
from selfsup.views.features import extract_features

VIT = {"name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4, "pos_embed": "sincos",
       "kwargs": {"depth": 2, "embed_dim": 48, "num_heads": 3}}
TINY = ["backbone.kwargs={depth: 2, embed_dim: 48, num_heads: 3}", "train.progress=false", "train.knn_every=0",
        "optim.warmup_epochs=0", "cae.regressor_depth=1", "cae.decoder_depth=1"]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _value_mean(probe: AttentiveProbe, tokens: torch.Tensor) -> torch.Tensor:
    """By hand: the output projection of the mean over tokens of W_v LN_v(t) + b_v."""
    ln = F.layer_norm(tokens, tokens.shape[-1:], probe.norm_v.weight, probe.norm_v.bias)
    values = ln @ probe.attn.v.weight.T + probe.attn.v.bias
    return values.mean(1) @ probe.attn.proj.weight.T + probe.attn.proj.bias


def test_attentive_probe_with_equal_logits_pools_the_mean_of_the_value_projections():
    torch.manual_seed(0)
    tokens = torch.randn(4, 7, 12) * 3 + 1
    probe = AttentiveProbe(12, 5, num_heads=3)
    assert torch.equal(probe.query, torch.zeros(1, 1, 12))  # zero-initialised query: equal logits
    torch.testing.assert_close(probe.pool(tokens), _value_mean(probe, tokens))
    with torch.no_grad():  # a trained query with W_q = 0, b_q = 0 gives equal logits too
        probe.query.normal_()
        probe.norm_q.weight.normal_()
        probe.attn.q.weight.zero_()
    torch.testing.assert_close(probe.pool(tokens), _value_mean(probe, tokens))
    with torch.no_grad():  # a query that looks somewhere does not pool the mean
        probe.attn.q.weight.normal_()
        probe.attn.k.weight.normal_()
    assert (probe.pool(tokens) - _value_mean(probe, tokens)).abs().max() > 1e-2
    # no residual, no MLP: the pooled vector is the attention output, then BN (no affine) + linear
    assert not probe.bn.affine and sum(p.numel() for p in probe.bn.parameters()) == 0
    probe.eval()
    torch.testing.assert_close(probe(tokens), probe.fc(probe.bn(probe.pool(tokens))))


def test_attentive_probe_learns_where_to_look():
    """The class is written into one token of ten; the others are noise: the mean dilutes it,
    the attentive probe finds it."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (600,), generator=gen)
    tokens = torch.randn(600, 10, 16, generator=gen)
    tokens[:, 3, :4] += 4 * F.one_hot(labels, 4)
    tokens[:, 3, 8] = 10.0  # the informative token is recognisable
    res = attentive_probe(tokens[:400], labels[:400], tokens[400:], labels[400:], 4, num_heads=2, epochs=15,
                          lr=3e-3, batch_size=50)
    assert res.last_epoch_accuracy > 0.9


def test_vit_pooling_cls_or_mean_of_patch_tokens(cifar_subset):
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(**VIT)).eval()
    data = open_dataset(cifar_subset(2, 0)).train
    cls, _ = extract_features(backbone, data, 32, MEAN, STD, pool="cls")
    mean, _ = extract_features(backbone, data, 32, MEAN, STD, pool="mean")
    tokens, _ = extract_features(backbone, data, 32, MEAN, STD, pool="tokens")
    assert tokens.shape == (20, 65, 48)
    torch.testing.assert_close(cls, tokens[:, 0])
    torch.testing.assert_close(mean, tokens[:, 1:].mean(1))
    own, _ = extract_features(backbone, data, 32, MEAN, STD)  # timm's token pool is the CLS token
    torch.testing.assert_close(own, cls)
    resnet = build_backbone(BackboneConfig(name="resnet18", cifar_stem=True))
    with pytest.raises(ConfigError, match="pool 'mean' needs ViT tokens"):
        extract_features(resnet, data, 32, MEAN, STD, pool="mean")


def _group_scale(opt, param) -> float:
    return next(g.get("lr_scale", 1.0) for g in opt.param_groups if any(p is param for p in g["params"]))


def test_layer_decay_group_lrs_by_hand():
    vit = classifier(build_backbone(BackboneConfig(**VIT)), 10, FinetuneConfig(layer_decay=0.5))
    opt = finetune_optimizer(vit, FinetuneConfig(layer_decay=0.5))
    net = vit.backbone.net  # depth 2: embeddings layer 0, blocks 1 and 2 (the final norm with the last), L = 2
    expected = {net.patch_embed.proj.weight: 0.125, net.cls_token: 0.125, net.blocks[0].attn.qkv.weight: 0.25,
                net.blocks[1].mlp.fc1.weight: 0.5, net.norm.weight: 0.5, vit.head.weight: 1.0, vit.head.bias: 1.0}
    for param, scale in expected.items():
        assert _group_scale(opt, param) == scale
    set_lr(opt, 1e-3)
    for param, scale in expected.items():
        assert next(g["lr"] for g in opt.param_groups if any(p is param for p in g["params"])) == 1e-3 * scale
    assert vit.pool == "mean"
    resnet = classifier(build_backbone(BackboneConfig(name="resnet18", cifar_stem=True)), 10,
                        FinetuneConfig(layer_decay=0.5, optimizer="sgd"))
    opt = finetune_optimizer(resnet, FinetuneConfig(layer_decay=0.5, optimizer="sgd"))
    n = resnet.backbone.net  # stem 0, layer1..layer4 1..4, L = 4
    expected = {n.conv1.weight: 0.5**5, n.bn1.weight: 0.5**5, n.layer1[0].conv1.weight: 0.5**4,
                n.layer4[1].bn2.bias: 0.5, resnet.head.weight: 1.0}
    for param, scale in expected.items():
        assert _group_scale(opt, param) == scale
    assert isinstance(opt, torch.optim.SGD)


def test_finetuning_learns_real_images(cifar_subset):
    torch.manual_seed(0)
    data = open_dataset(cifar_subset(10, 0)).train
    model = classifier(build_backbone(BackboneConfig(**VIT)), 10, FinetuneConfig())
    before = accuracy(model, data, 32, MEAN, STD)
    cfg = FinetuneConfig(epochs=12, batch_size=25, lr=2e-3, layer_decay=0.9, warmup_epochs=0, scale=(0.8, 1.0))
    res = finetune(model, data, data, cfg, 32, MEAN, STD)
    assert len(res.test_accuracy) == 12 and res.last_epoch_accuracy == res.test_accuracy[-1]
    assert res.last_epoch_accuracy > max(0.18, before + 0.05)  # chance: 0.1


def test_cae_regressor_never_updates_the_visible_latents(cifar_images):
    torch.manual_seed(0)
    raw = {"method": "cae", "backbone": VIT, "views": {"size": 32},
           "cae": {"regressor_depth": 3, "decoder_depth": 1, "mask_min_block": 4}}
    method = build_method(build_config(raw, METHODS), RunInfo(100, 1, 1))
    images = cifar_images[:4]
    from selfsup.views.masking import split_indices

    visible, masked = split_indices(method.draw_masks(images))
    latents, pos_latents = method.encode_visible(images, visible)
    latents = latents.detach().requires_grad_(True)
    before = latents.detach().clone()
    seen = []  # the keys / values each block reads: [latents, queries]
    hooks = [b.norm_v.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
             for b in method.regressor]
    z = method.regress(latents, pos_latents, method.positions(method.grid(images), masked, latents))
    for h in hooks:
        h.remove()
    n = latents.shape[1]
    assert len(seen) == 3 and z.shape == (4, masked.shape[1], 48)
    for kv in seen:
        assert torch.equal(kv[:, :n], before)  # every block reads the encoder's latents, unchanged
    assert not torch.equal(seen[1][:, n:], seen[2][:, n:])  # while the queries are updated
    assert torch.equal(latents.detach(), before)
    z.square().sum().backward()
    assert latents.grad.abs().sum() > 0  # read as keys / values: the gradient reaches the encoder


@pytest.fixture(scope="module")
def cae_run(cifar_subset, tmp_path_factory):
    data = cifar_subset(10, 5)
    out = tmp_path_factory.mktemp("cae-run") / "cae"
    assert main(["pretrain", "--config", "cifar10/cae", "--data", str(data), "--epochs", "2", "--batch-size", "50",
                 "--out", str(out), "--set", *TINY]) == 0
    return out, data


def test_attentive_linear_finetune_reconstruct_through_the_cli(cae_run, capsys):
    run, data = cae_run
    common = ["--checkpoint", str(run), "--data", str(data)]
    assert main(["eval", "attentive", *common, "--epochs", "3"]) == 0
    att = json.loads((run / "attentive.json").read_text())
    assert 0 <= att["last_epoch_top1"] <= 1 and att["epochs"] == 3 and att["heads"] == 3
    assert att["tokens"].startswith("CLS + 64 patch tokens") and att["test_images"] == 50
    for pool in ("cls", "mean"):
        out = str(run / f"lin_{pool}.json")
        assert main(["eval", "linear", *common, "--epochs", "2", "--pool", pool, "--out", out]) == 0
        assert json.loads((run / f"lin_{pool}.json").read_text())["pool"] == pool
    assert main(["eval", "linear", *common, "--epochs", "2"]) == 0
    assert json.loads((run / "linear.json").read_text())["pool"] == "cls"  # a ViT's default, stated
    assert main(["eval", "finetune", *common, "--epochs", "1", "--finetune-batch-size", "50"]) == 0
    ft = json.loads((run / "finetune.json").read_text())
    assert ft["pool"] == "mean" and ft["layer_decay"] == 0.75 and len(ft["test_top1_per_epoch"]) == 1
    assert main(["eval", "reconstruct", *common, "--images", "4"]) == 0
    rec = json.loads((run / "reconstruct.json").read_text())
    assert rec["masking"] == {"kind": "block", "masked": 32, "patches": 64} and rec["images"] == 50
    assert rec["target"] == "per-patch normalised pixels" and rec["alignment_weight"] == 2.0
    assert 0.9 < rec["zero_prediction_mse"] < 1.0  # normalised patches: variance (n - 1) / n of 1
    for key in ("masked_mse", "decoder_on_encoder_mse"):
        assert 0 < rec[key] < 10
    from PIL import Image

    with Image.open(run / "reconstruct.png") as png:
        assert png.width > 4 * 100 and png.height > 4 * 100  # 4 panels x 4 rows
    assert main(["eval", "reconstruct", *common, "--random-init"]) == 0
    assert (run / "reconstruct_random_init.json").is_file()
    capsys.readouterr()
    assert main(["eval", "finetune", *common, "--layer-decay", "1.5"]) == 2
    assert "finetune.layer_decay" in capsys.readouterr().err


def test_reconstruct_needs_a_mim_run(cifar_subset, tmp_path, capsys):
    data = cifar_subset(10, 5)
    run = tmp_path / "simclr"
    assert main(["pretrain", "--method", "simclr", "--data", str(data), "--epochs", "1", "--batch-size", "50",
                 "--out", str(run), "--set", "backbone.name=resnet18", "views.size=32", "train.knn_every=0",
                 "train.progress=false"]) == 0
    capsys.readouterr()
    assert main(["eval", "reconstruct", "--checkpoint", str(run), "--data", str(data)]) == 2
    assert "reconstructions need a masked image model" in capsys.readouterr().err
    assert main(["eval", "attentive", "--checkpoint", str(run), "--data", str(data)]) == 2
    assert "the attentive probe reads ViT tokens; backbone resnet18" in capsys.readouterr().err
