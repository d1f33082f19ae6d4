"""BEiT, iBOT and CAE with token targets: the losses look at the masked positions only (BEiT's
cross-entropy, iBOT's patch distillation by hand), iBOT's two centres under two gloo processes
equal one process on the global batch, and a short CLI run of each method on real CIFAR-10
images with a tokenizer trained here learns."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.cli import main
from selfsup.config import build_config
from selfsup.core.errors import ConfigError
from selfsup.losses.distillation import masked_patch_distillation
from selfsup.methods import METHODS, RunInfo, build_method
from selfsup.models.tokenizer import TokenizerConfig
from selfsup.train.distributed import DistInfo, wrap_model
from selfsup.train.tokenizer import TokenizerTrainConfig, train_tokenizer
from selfsup.views.config import CIFAR10_MEAN, CIFAR10_STD
from selfsup.views.masking import split_indices
from selfsup.views.view import View

VIT = {"name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4, "pos_embed": "sincos",
       "kwargs": {"depth": 2, "embed_dim": 48, "num_heads": 3}}
VIEWS = {"size": 32, "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)}
IBOT = {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 16, "mask_min_block": 4, "warmup_teacher_temp": 0.2,
        "warmup_teacher_patch_temp": 0.2}
WORLD, PER_RANK = 2, 4
N = WORLD * PER_RANK


@pytest.fixture(scope="module")
def tokenizer_dir(cifar_subset, tmp_path_factory):
    """A 64-code tokenizer trained for 2 epochs on 200 real CIFAR-10 images (CIFAR statistics)."""
    out = tmp_path_factory.mktemp("tokenizer")
    model = TokenizerConfig(codebook_size=64, code_dim=16, hidden=32, res_blocks=1, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    train_tokenizer(TokenizerTrainConfig(data=str(cifar_subset(20, 2)), out=str(out), model=model, epochs=2,
                                         batch_size=50, lr=3e-3))
    return out


def _method(name, **params):
    raw = {"method": name, "backbone": VIT, "views": VIEWS, name: params}
    return build_method(build_config(raw, METHODS), RunInfo(100, 1, 1))


class FixedIds(nn.Module):
    """A stand-in tokenizer that returns given ids."""

    def __init__(self, ids: torch.Tensor, vocab_size: int) -> None:
        super().__init__()
        self.ids, self.vocab_size = ids, vocab_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.ids


def test_beit_loss_is_the_cross_entropy_at_masked_positions_only(tokenizer_dir, cifar_images):
    torch.manual_seed(0)
    beit = _method("beit", tokenizer=str(tokenizer_dir), mask_min_block=4)
    x = cifar_images[:4]
    ids = beit.tokenizer(x)
    assert ids.shape == (4, 64) and beit.head.out_features == 64
    mask = beit.draw_masks(x)
    beit.mask_rng.draws = 0
    assert (mask.sum(1) == 26).all()  # 40% of 64, exactly

    def loss(targets: torch.Tensor) -> torch.Tensor:
        beit.tokenizer = FixedIds(targets, 64)
        beit.mask_rng.draws = 0  # the same masks every time
        return beit([View(x, None, None)]).loss

    base = loss(ids)
    logits = beit.logits(x, mask)
    expected = F.cross_entropy(logits[mask], ids[mask])
    torch.testing.assert_close(base, expected)
    visible_changed = torch.where(mask, ids, (ids + 7) % 64)
    assert not torch.equal(visible_changed, ids)
    assert loss(visible_changed) == base  # a visible patch's target does not count
    masked_changed = torch.where(mask, (ids + 7) % 64, ids)
    assert loss(masked_changed) != base


def test_token_targets_need_a_matching_tokenizer(tokenizer_dir):
    with pytest.raises(ConfigError, match=r"beit.tokenizer is empty: train a tokenizer with `selfsup tokenizer train"):
        _method("beit")
    with pytest.raises(ConfigError, match=r"cae.tokenizer: the tokenizer at .* has patch size 4, backbone.patch_size "
                                          "is 8"):
        build_config({"method": "cae", "backbone": {**VIT, "patch_size": 8}, "views": VIEWS,
                      "cae": {"target": "tokens", "tokenizer": str(tokenizer_dir), "mask_min_block": 2}}, METHODS)
    with pytest.raises(ConfigError, match=r"trained on images normalised with mean \[0.4914"):
        build_config({"method": "beit", "backbone": VIT, "views": {"size": 32},
                      "beit": {"tokenizer": str(tokenizer_dir), "mask_min_block": 4}}, METHODS)
    with pytest.raises(ConfigError, match=r"cae.tokenizer is set .* but cae.target is pixels"):
        build_config({"method": "cae", "backbone": VIT, "views": VIEWS,
                      "cae": {"tokenizer": str(tokenizer_dir), "mask_min_block": 4}}, METHODS)


def test_cae_with_token_targets_predicts_the_tokenizer_ids(tokenizer_dir, cifar_images):
    torch.manual_seed(0)
    cae = _method("cae", target="tokens", tokenizer=str(tokenizer_dir), regressor_depth=1, decoder_depth=1,
                  mask_min_block=4)
    assert cae.decoder_head.out_features == 64
    x = cifar_images[:4]
    out = cae([View(x, None, None)])
    assert torch.isfinite(out.loss) and out.logs["loss_target"] > 0
    recon = cae.reconstruct(x, cae.draw_masks(x))  # masked patches drawn by the tokenizer's decoder
    assert recon.shape == x.shape


def test_ibot_patch_loss_by_hand_counts_masked_patches_only():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    center = torch.randn(1, 5) * 0.1
    mask = torch.tensor([[True, False, True], [False, False, False]])
    loss = masked_patch_distillation(student, teacher, mask, center, 0.1, 0.04)
    # by hand: image 0 averages its 2 masked patches, image 1 (none masked) adds 0; then the mean
    h = [-(F.softmax((teacher[0, i] - center[0]) / 0.04, 0) * F.log_softmax(student[0, i] / 0.1, 0)).sum()
         for i in (0, 2)]
    torch.testing.assert_close(loss, (h[0] + h[1]) / 2 / 2)
    changed_s, changed_t = student.clone(), teacher.clone()
    changed_s[~mask] += torch.randn_like(changed_s[~mask])
    changed_t[~mask] -= 3
    assert masked_patch_distillation(changed_s, changed_t, mask, center, 0.1, 0.04) == loss


def _ibot_views(x: torch.Tensor, sl: slice) -> list[View]:
    local = F.interpolate(x[..., 4:24, 4:24], size=16, mode="bilinear", align_corners=False)
    return [View(v[sl], None, None) for v in (x, torch.roll(x.flip(3), 2, dims=2), local)]


def _ibot_step(model, method, x, sl) -> dict:
    out = model(_ibot_views(x, sl))
    out.loss.backward()
    return {"loss": out.loss.detach(), "center": method.center.clone(), "patch_center": method.patch_center.clone(),
            "grads": {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None},
            "mask_ratio": out.logs["mask_ratio"]}


def _ibot_worker(rank: int, data: dict) -> dict:
    method = _method("ibot", **IBOT)
    method.load_state_dict(data["state"])
    method, model = wrap_model(method, DistInfo(rank, WORLD, rank, torch.device("cpu")), sync_bn=False)
    return _ibot_step(model, method, data["x"], slice(rank * PER_RANK, (rank + 1) * PER_RANK))


def test_ibot_centres_and_gradients_with_two_ranks_equal_one_process(cifar_images, ddp_pool):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    method = _method("ibot", **IBOT)
    state = copy.deepcopy(method.state_dict())  # tensors and the mask generator's draw count
    x = cifar_images[:N]
    ref = _ibot_step(method, method, x, slice(0, N))
    ranks = ddp_pool.run(_ibot_worker, {"state": state, "x": x})
    torch.set_num_threads(threads)
    assert ref["center"].abs().max() > 1e-3 and ref["patch_center"].abs().max() > 1e-3
    for r in ranks:  # both centres are means over the GLOBAL batch (all-reduced)
        torch.testing.assert_close(r["center"], ref["center"], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(r["patch_center"], ref["patch_center"], atol=1e-6, rtol=1e-5)
    # each rank masks its slice of the global batch's masks, so the ranks' losses average to one process's
    torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), ref["loss"], rtol=1e-4, atol=1e-5)
    for k, g in ref["grads"].items():
        diff = (ranks[0]["grads"][k] - g).norm()
        assert diff < 1e-3 * g.norm() + 1e-6, f"gradient of {k} differs ({diff:.3g} vs {g.norm():.3g})"


def test_ibot_masks_cover_the_ratio_range_per_image(cifar_images):
    ibot = _method("ibot", **IBOT)
    masks = torch.cat([ibot.draw_masks(cifar_images[:50]) for _ in range(4)])
    counts = masks.sum(1)
    assert counts.min() >= round(0.1 * 64) and counts.max() <= round(0.5 * 64)
    assert counts.unique().numel() > 10  # a ratio per image, not per batch
    _, masked = split_indices(masks[:1])
    assert masked.shape[1] == counts[0]
    with pytest.raises(ConfigError, match="ibot predicts the teacher's patch distributions, not pixels"):
        ibot.reconstruct(cifar_images[:2], masks[:2])


TINY = ["backbone.kwargs={depth: 2, embed_dim: 48, num_heads: 3}", "train.progress=false", "train.knn_every=0",
        "train.log_every=1", "optim.warmup_epochs=0", "optim.lr=2e-3"]
RUNS = {
    "beit": ("cifar10/beit", ["beit.tokenizer={tok}"]),
    "cae_tokens": ("cifar10/cae", ["cae.target=tokens", "cae.tokenizer={tok}", "cae.regressor_depth=1",
                                   "cae.decoder_depth=1"]),
    "ibot": ("cifar10/ibot", ["views.local_crops=2", "ibot.out_dim=128", "ibot.hidden_dim=64",
                              "ibot.bottleneck_dim=32", "ibot.warmup_teacher_temp_epochs=0", "ibot.teacher_temp=0.04",
                              "ibot.teacher_patch_temp=0.04", "optim.weight_decay_end=null",
                              "ibot.freeze_last_layer_epochs=0"]),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_a_short_cifar_run_learns(name, tokenizer_dir, cifar_subset, tmp_path):
    preset, extra = RUNS[name]
    out = tmp_path / name
    sets = [s.format(tok=tokenizer_dir) for s in extra]
    assert main(["pretrain", "--config", preset, "--data", str(cifar_subset(10, 0)), "--epochs", "6",
                 "--batch-size", "50", "--out", str(out), "--set", *TINY, *sets]) == 0
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in steps if "loss" in r and "summary" not in r]
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses
