"""Masked image modelling: masks (exact counts, block bounds, clustering), MAE / SimMIM / CAE
on a tiny ViT over real CIFAR-10 images."""

import numpy as np
import pytest
import torch

from selfsup.config import build_config
from selfsup.core.errors import ConfigError
from selfsup.losses.mim import masked_patch_mse
from selfsup.methods import METHODS, RunInfo, build_method
from selfsup.views.masking import block_mask, block_masks, neighbour_clustering, random_masks, split_indices
from selfsup.views.view import View

VIT = {"name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4, "pos_embed": "sincos",
       "kwargs": {"depth": 2, "embed_dim": 48, "num_heads": 3}}


def test_masks_have_exact_counts_bounded_blocks_and_block_masks_cluster():
    gen = torch.Generator().manual_seed(0)
    rand = random_masks(200, 196, 98, gen)
    block = block_masks(200, (14, 14), 98, gen)
    assert (rand.sum(1) == 98).all() and (block.sum(1) == 98).all()
    assert (block_masks(50, (14, 14), 75, gen).sum(1) == 75).all()
    uniforms = torch.rand(100, 200, 4, generator=gen, dtype=torch.float64).numpy()
    for u in uniforms:
        blocks = []
        mask = block_mask((14, 14), 98, u, blocks=blocks)
        covered = np.zeros_like(mask)
        for top, left, rows, cols in blocks:
            assert rows * cols >= 16 and 0.3 <= rows / cols <= 1 / 0.3
            covered[top : top + rows, left : left + cols] = True
        assert mask.sum() == 98 and not (mask & ~covered).any()  # every masked patch lies in a drawn block
    random_score, block_score = neighbour_clustering(rand, (14, 14)), neighbour_clustering(block, (14, 14))
    assert abs(random_score - 0.5) < 0.03 and block_score > 0.8
    visible, masked = split_indices(block)
    assert block.gather(1, masked).all() and not block.gather(1, visible).any()


def test_masked_loss_ignores_visible_targets():
    pred, target = torch.randn(2, 6, 5), torch.randn(2, 6, 5)
    mask = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    changed = target.clone()
    changed[~mask] += 10
    assert masked_patch_mse(pred, changed, mask) == masked_patch_mse(pred, target, mask)
    expected = ((pred - target) ** 2).mean(-1)[mask].mean()
    torch.testing.assert_close(masked_patch_mse(pred, target, mask), expected)


def _method(name, **params):
    raw = {"method": name, "backbone": VIT, "views": {"size": 32}, name: params}
    return build_method(build_config(raw, METHODS), RunInfo(100, 1, 1))


@pytest.mark.parametrize("name,params", [("mae", {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}),
                                         ("simmim", {}),
                                         ("cae", {"regressor_depth": 1, "decoder_depth": 1, "mask_min_block": 4})])
def test_mim_methods_train_on_real_images_and_resume_masks(name, params, cifar_images):
    torch.manual_seed(0)
    method = _method(name, **params)
    views = [View(cifar_images[:16], None, None, index=torch.arange(16))]
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        out = method(views)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]
    state = method.state_dict()
    again = _method(name, **params)
    again.load_state_dict(state)
    assert torch.equal(method.draw_masks(cifar_images[:4]), again.draw_masks(cifar_images[:4]))
    recon = method.reconstruct(cifar_images[:4], method.draw_masks(cifar_images[:4]))
    assert recon.shape == (4, 3, 32, 32)


def test_cae_alignment_target_has_no_gradient(cifar_images):
    method = _method("cae", regressor_depth=1, decoder_depth=1, mask_min_block=4)
    _, masked = split_indices(method.draw_masks(cifar_images[:4]))
    target = method.alignment_target(cifar_images[:4], masked)
    assert target.grad_fn is None and not target.requires_grad and target.shape == (4, 32, 48)


def test_mim_rejects_a_resnet():
    with pytest.raises(ConfigError, match="must be a ViT"):
        build_config({"method": "mae", "backbone": {"name": "resnet18"}}, METHODS)
