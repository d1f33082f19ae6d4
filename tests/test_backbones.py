"""Backbones return (feature map, pooled vector) and export weights their library loads."""

import pytest
import timm
import torch
import torchvision

from selfsup.models.backbones import BackboneConfig, build_backbone


@pytest.mark.parametrize(
    ("cfg", "fmap_shape"),
    [
        (BackboneConfig("resnet18"), (2, 512, 1, 1)),
        (BackboneConfig("resnet18", cifar_stem=True), (2, 512, 4, 4)),
        (BackboneConfig("resnet18", cifar_stem=True, dilate_last=True), (2, 512, 8, 8)),
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
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'"):
        build_backbone(BackboneConfig("resnet19"))
