"""Backbones return (feature map, pooled vector) and export weights their library loads."""

import pytest
import timm
import torch
import torchvision

from selfsup.core.errors import ConfigError
from selfsup.models.backbones import BackboneConfig, ViTBackbone, build_backbone, sincos_pos_embed


@pytest.mark.parametrize(
    ("cfg", "fmap_shape"),
    [
        (BackboneConfig("resnet18"), (2, 512, 1, 1)),
        (BackboneConfig("resnet18", cifar_stem=True), (2, 512, 4, 4)),
        (BackboneConfig("resnet18", cifar_stem=True, output_stride=16), (2, 512, 8, 8)),
        (BackboneConfig("resnet50"), (2, 2048, 1, 1)),
    ],
)
def test_resnet_feature_map_and_pooled(cfg, fmap_shape, cifar_images):
    net = build_backbone(cfg).eval()
    fmap, pooled = net(cifar_images[:2])
    assert fmap.shape == fmap_shape and pooled.shape == fmap_shape[:2]
    assert torch.allclose(pooled, fmap.mean((2, 3)), atol=1e-6)
    assert net.out_dim == fmap_shape[1]


def test_resnet_pooled_equals_torchvision_forward_without_fc(cifar_images):
    net = build_backbone(BackboneConfig("resnet34")).eval()
    tv = torchvision.models.resnet34().eval()
    missing, unexpected = tv.load_state_dict(net.export_state_dict(), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    tv.fc = torch.nn.Identity()
    with torch.no_grad():
        assert torch.allclose(net(cifar_images[:3])[1], tv(cifar_images[:3]), atol=1e-5)


def test_zero_init_residual_zeroes_last_bn_of_each_block():
    net = build_backbone(BackboneConfig("resnet18", zero_init_residual=True)).net
    assert all(torch.all(b.bn2.weight == 0) for layer in (net.layer1, net.layer4) for b in layer)


def test_timm_vit_tokens_as_feature_map_and_export(cifar_images):
    cfg = BackboneConfig("vit_tiny_patch16_224", img_size=32)
    net = build_backbone(cfg).eval()
    fmap, pooled = net(cifar_images[:2])
    assert fmap.shape == (2, 192, 2, 2) and pooled.shape == (2, 192)
    ref = timm.create_model(cfg.name, pretrained=False, num_classes=0, img_size=32).eval()
    ref.load_state_dict(net.export_state_dict(), strict=True)
    with torch.no_grad():
        assert torch.allclose(ref(cifar_images[:2]), pooled, atol=1e-5)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"backbone\.name: 'resnet19' is not a known backbone; available: resnet18"):
        BackboneConfig("resnet19")
    with pytest.raises(ConfigError, match="is not a known backbone"):
        BackboneConfig("convnext_tiny")  # a timm model, but not a ViT


# ---------------------------------------------------------------- dilated ResNets (output stride)
def _three_by_three_dilations(stage: torch.nn.Sequential, bottleneck: bool) -> list[int]:
    """The dilation of each block's strided 3x3 conv (conv2 of a Bottleneck, conv1 of a BasicBlock)."""
    return [(b.conv2 if bottleneck else b.conv1).dilation[0] for b in stage]


@pytest.mark.parametrize("stride", [16, 8])
def test_dilated_basic_blocks_follow_torchvisions_bottleneck_rule(stride, cifar_images):
    """torchvision dilates only Bottleneck ResNets; our BasicBlock stages must follow its rule: the
    first block of a dilated stage keeps the previous stage's dilation (2 for layer4 at output
    stride 8), later blocks get the stage's."""
    r18 = build_backbone(BackboneConfig("resnet18", output_stride=stride)).net
    r50 = build_backbone(BackboneConfig("resnet50", output_stride=stride)).net
    for name in ("layer3", "layer4"):
        ours = _three_by_three_dilations(getattr(r18, name), False)
        ref = _three_by_three_dilations(getattr(r50, name), True)
        assert ours[0] == ref[0] and set(ours[1:]) == set(ref[1:])
        assert getattr(r18, name)[0].conv2.dilation[0] == ref[-1]  # the block's second conv: the stage's own
    if stride == 8:
        assert _three_by_three_dilations(r18.layer4, False) == [2, 4]
        assert _three_by_three_dilations(r18.layer3, False) == [1, 2]
    x = torch.nn.functional.interpolate(cifar_images[:2], size=64)
    fmap, _ = build_backbone(BackboneConfig("resnet18", output_stride=stride)).eval()(x)
    assert fmap.shape[-2:] == (64 // stride, 64 // stride)


def test_output_stride_needs_a_resnet():
    with pytest.raises(ConfigError, match=r"backbone\.output_stride 8 needs a ResNet"):
        BackboneConfig("vit_tiny_patch16_224", output_stride=8)


# ---------------------------------------------------------------- ViTs: token-level API
TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def _vit(**options) -> ViTBackbone:
    cfg = {"name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4, "kwargs": TINY_VIT, **options}
    return build_backbone(BackboneConfig(**cfg)).eval()


def test_tokens_of_all_patches_equal_timms_forward_features(cifar_images):
    vit = _vit()
    out = vit.tokens(cifar_images[:2])
    assert out.prefix.shape == (2, 1, 32) and out.patches.shape == (2, 64, 32)
    with torch.no_grad():
        ref = vit.net.forward_features(cifar_images[:2])
    torch.testing.assert_close(torch.cat([out.prefix, out.patches], 1), ref, rtol=0, atol=1e-6)


def test_encoding_a_subset_sees_only_those_patches(cifar_images):
    vit = _vit()
    x = cifar_images[:2].clone()
    keep = torch.stack([torch.randperm(64, generator=torch.Generator().manual_seed(i))[:16] for i in range(2)])
    with torch.no_grad():
        sub = vit.tokens(x, keep=keep).patches
        # a permutation of all patches permutes the outputs: positions are added before the selection
        perm = torch.randperm(64, generator=torch.Generator().manual_seed(5)).expand(2, -1)
        torch.testing.assert_close(vit.tokens(x, keep=perm).patches, vit.tokens(x).patches[:, perm[0]],
                                   rtol=0, atol=1e-5)
        # the pixels of the patches left out change nothing
        hidden = torch.ones(2, 64, dtype=torch.bool)
        hidden[torch.arange(2)[:, None], keep] = False
        pixel_mask = hidden.view(2, 1, 8, 8).repeat_interleave(4, 2).repeat_interleave(4, 3)
        changed = torch.where(pixel_mask, torch.randn_like(x), x)
        torch.testing.assert_close(vit.tokens(changed, keep=keep).patches, sub, rtol=0, atol=1e-6)
        # ... while they do change the full encoding of the same patches
        full = vit.tokens(changed).patches[torch.arange(2)[:, None], keep]
        assert not torch.allclose(full, sub, atol=1e-3)


def test_mask_token_replaces_the_masked_patches_embedding(cifar_images):
    vit = _vit()
    token = torch.randn(32)
    x = cifar_images[:2]
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, ::3] = True
    pixel_mask = mask.view(2, 1, 8, 8).repeat_interleave(4, 2).repeat_interleave(4, 3)
    with torch.no_grad():
        a = vit.tokens(x, mask=mask, mask_token=token)
        b = vit.tokens(torch.where(pixel_mask, torch.randn_like(x), x), mask=mask, mask_token=token)
        plain = vit.tokens(x, mask=torch.zeros_like(mask), mask_token=token)
    torch.testing.assert_close(a.patches, b.patches, rtol=0, atol=1e-6)
    torch.testing.assert_close(plain.patches, vit.tokens(x).patches, rtol=0, atol=0)
    assert not torch.allclose(a.patches, plain.patches, atol=1e-3)


def test_vit_takes_other_input_sizes_and_fixed_sincos_positions(cifar_images):
    learned, fixed = _vit(), _vit(pos_embed="sincos")
    small = torch.nn.functional.interpolate(cifar_images[:2], size=16)  # a DINO local crop
    for vit in (learned, fixed):
        fmap, pooled = vit(small)
        assert fmap.shape == (2, 32, 4, 4) and pooled.shape == (2, 32)
    assert not fixed.net.pos_embed.requires_grad and torch.all(fixed.net.pos_embed[0, 0] == 0)
    torch.testing.assert_close(fixed.net.pos_embed[0, 1:], sincos_pos_embed((8, 8), 32))
    _, patch_pos = fixed._pos_embed((4, 4))
    torch.testing.assert_close(patch_pos[0], sincos_pos_embed((4, 4), 32))  # recomputed, not interpolated


def test_vit_options_reach_timm_and_other_families_build(cifar_images):
    vit = _vit(drop_path=0.1, layer_scale=0.1)
    block = vit.net.blocks[1]
    assert block.drop_path1.drop_prob == pytest.approx(0.1) and torch.all(block.ls1.gamma == 0.1)
    deit3 = _vit(name="deit3_small_patch16_224")  # position embeddings without the CLS token's
    beit = _vit(name="beit_base_patch16_224")  # relative position bias over the whole grid
    for net in (deit3, beit):
        fmap, pooled = net(cifar_images[:2])
        assert fmap.shape == (2, 32, 8, 8) and pooled.shape == (2, 32)
    with pytest.raises(ConfigError, match="cannot encode a subset of patches"):
        beit.tokens(cifar_images[:2], keep=torch.zeros(2, 4, dtype=torch.long))
    ids, layers = vit.layer_ids()
    # MAE / BEiT fine-tuning: embeddings 0, block i i + 1 (the final norm with the last block, as
    # timm groups it); the heads, outside the backbone, come after: layers + 1
    assert layers == 2 and ids["net.pos_embed"] == 0 and ids["net.cls_token"] == 0
    assert ids["net.blocks.0.attn.qkv.weight"] == 1 and ids["net.blocks.1.mlp.fc2.bias"] == 2
    assert ids["net.norm.weight"] == 2
