"""Colorization and CMC (issue 26) and the CLIP / PatchNCE losses: Lab against OpenCV, the 313
in-gamut ab bins against an independent OpenCV + separating-axis reference, soft encoding,
class rebalancing and annealed mean by hand, CMC's channel split, hand-computed losses, and short
real CIFAR-10 runs (method level and through the CLI, with pictures and the evaluations)."""

import json
import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from test_pretext import TinyNet

from selfsup.cli import main
from selfsup.data import open_dataset
from selfsup.losses.crossmodal import clip_loss, patch_nce
from selfsup.methods import METHODS, RunInfo
from selfsup.methods.cmc import LabSplitBackbone
from selfsup.methods.pretext import LabInput, pretext_accuracy
from selfsup.views.config import IMAGENET_MEAN, IMAGENET_STD, ViewsConfig
from selfsup.views.lab import (
    ab_bins,
    annealed_mean,
    lab_to_rgb,
    nearest_bin,
    rebalance_weights,
    rgb_to_lab,
    soft_encode,
)
from selfsup.views.view import View


def _rgb(normalised: torch.Tensor) -> torch.Tensor:
    return normalised * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)


def test_lab_of_real_images_matches_opencv_and_round_trips(cifar_images):
    rgb = _rgb(cifar_images[:8]).clamp(0, 1)
    ref = np.stack([cv2.cvtColor(im.permute(1, 2, 0).numpy().astype(np.float32), cv2.COLOR_RGB2Lab) for im in rgb])
    lab = rgb_to_lab(rgb)
    # OpenCV tabulates its float conversion (gamma and cube root interpolated): ~0.3 off at most
    assert np.abs(lab.permute(0, 2, 3, 1).numpy() - ref).max() < 0.5
    torch.testing.assert_close(lab_to_rgb(lab), rgb, atol=1e-4, rtol=0)


def _reference_bins(grid: int = 10) -> set[tuple[int, int]]:
    """Grid points c whose square [c - grid, c + grid]^2 meets the convex hull of the ab values of
    a dense sRGB cube converted by OpenCV, by the separating-axis test (square vs convex polygon)."""
    v = np.linspace(0, 1, 65, dtype=np.float32)
    cube = np.stack(np.meshgrid(v, v, v, indexing="ij"), axis=-1).reshape(-1, 1, 3)
    ab = cv2.cvtColor(cube, cv2.COLOR_RGB2Lab).reshape(-1, 3)[:, 1:]
    hull = cv2.convexHull(ab.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    edges = np.roll(hull, -1, axis=0) - hull
    axes = np.concatenate([np.stack([-edges[:, 1], edges[:, 0]], axis=1), np.eye(2)])
    corners = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]]) * grid
    found = set()
    for a in range(-200, 201, grid):
        for b in range(-200, 201, grid):
            square = corners + np.array([a, b])
            ph, ps = hull @ axes.T, square @ axes.T  # projections on every candidate separating axis
            if not ((ph.max(0) < ps.min(0)) | (ps.max(0) < ph.min(0))).any():
                found.add((a, b))
    return found


def test_ab_bins_are_the_papers_313_in_gamut_points():
    bins = ab_bins(10)
    points = {tuple(p) for p in bins.int().tolist()}
    assert len(bins) == len(points) == 313
    assert points == _reference_bins(10)
    assert bins[:, 0].min() == -90 and bins[:, 0].max() == 100  # the paper's pts_in_hull span
    assert bins[:, 1].min() == -110 and bins[:, 1].max() == 100
    assert bins[:2].tolist() == [[-90.0, 50.0], [-90.0, 60.0]]  # sorted by (a, b), as pts_in_hull
    # the nearest grid point of every sRGB colour covers fewer cells: the rule the 313 needs
    v = torch.linspace(0, 1, 65)
    cube = torch.stack(torch.meshgrid(v, v, v, indexing="ij")).reshape(3, 1, -1)
    occupied = {tuple(p) for p in ((rgb_to_lab(cube)[1:].reshape(2, -1).T / 10).round() * 10).int().tolist()}
    assert occupied < points and len(occupied) < 270


def test_soft_encoding_weights_the_five_nearest_bins():
    bins = ab_bins(10)
    ab = torch.tensor([[0.0, 0.0], [23.0, -41.0], [-3.0, 7.0]])
    z = soft_encode(ab, bins, neighbours=5, sigma=5.0)
    torch.testing.assert_close(z.sum(dim=1), torch.ones(3))
    assert ((z > 0).sum(dim=1) == 5).all()
    d = torch.cdist(ab, bins)
    for i in range(3):
        assert set(z[i].nonzero().flatten().tolist()) == set(d[i].topk(5, largest=False).indices.tolist())
    assert (z.argmax(dim=1) == nearest_bin(ab, bins)).all()
    # at a bin centre: distances 0, 10, 10, 10, 10 -> weights 1 : e^-2 (x4), normalised
    centre = (bins == torch.tensor([0.0, 0.0])).all(dim=1).nonzero().item()
    assert z[0, centre].item() == pytest.approx(1 / (1 + 4 * math.exp(-2)), rel=1e-5)
    assert torch.allclose(z[0][z[0] > 0].sort().values[:4], torch.full((4,), math.exp(-2) / (1 + 4 * math.exp(-2))))


def test_rebalancing_weights_of_a_tiny_smoothed_histogram():
    bins = torch.tensor([[0.0, 0.0], [10.0, 0.0], [60.0, 0.0]])
    counts = torch.tensor([2.0, 0.0, 2.0])
    w = rebalance_weights(counts, lam=0.5, sigma=5.0, bins=bins)
    # smoothing: bins 0 and 1 are 10 apart -> kernel e^-2; bin 2 is >= 50 from both (e^-50 ~ 0)
    e = math.exp(-2)
    p = torch.tensor([0.5, 0.5 * e, 0.5]) / (1 + 0.5 * e)
    raw = 1 / (0.5 * p + 0.5 / 3)
    expected = raw / (p * raw).sum()
    torch.testing.assert_close(w, expected.float(), rtol=1e-5, atol=1e-6)
    assert (p * w).sum().item() == pytest.approx(1.0, abs=1e-6)  # expected weight 1
    assert w[1] > w[0] > 0  # the rare colour weighs more
    # lambda 1: a uniform mixture, every weight 1
    torch.testing.assert_close(rebalance_weights(counts, lam=1.0, sigma=5.0, bins=bins), torch.ones(3))


def test_annealed_mean_by_hand():
    bins = torch.tensor([[0.0, 0.0], [10.0, 20.0]])
    logits = torch.tensor([[math.log(0.8), math.log(0.2)]]).view(1, 2, 1, 1)
    # T = 1: the mean, 0.2 * (10, 20); T = 0.5: p ~ (0.64, 0.04) -> (16/17, 1/17)
    torch.testing.assert_close(annealed_mean(logits, bins, 1.0).flatten(), torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(annealed_mean(logits, bins, 0.5).flatten(), torch.tensor([10 / 17, 20 / 17]))
    torch.testing.assert_close(annealed_mean(logits, bins, 0.01).flatten(), torch.tensor([0.0, 0.0]), atol=1e-4,
                               rtol=0)


class Probe(torch.nn.Module):
    """Records its input; returns (the input as a feature map, its per-channel mean)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_dim = channels
        self.seen = None

    def forward(self, x):
        self.seen = x
        return x, x.mean(dim=(2, 3))


def test_cmc_encoders_see_exactly_their_channels(cifar_images):
    split = LabSplitBackbone(Probe(1), Probe(2))
    x = cifar_images[:4]
    fmap, pooled = split(x)
    ref = np.stack([cv2.cvtColor(im.permute(1, 2, 0).numpy().astype(np.float32), cv2.COLOR_RGB2Lab)
                    for im in _rgb(x).clamp(0, 1)])
    ref = torch.from_numpy(ref).permute(0, 3, 1, 2)
    assert split.light.seen.shape == (4, 1, 32, 32) and split.colour.seen.shape == (4, 2, 32, 32)
    torch.testing.assert_close(split.light.seen, (ref[:, :1] - 50) / 50, atol=0.01, rtol=0)
    torch.testing.assert_close(split.colour.seen, ref[:, 1:] / 110, atol=0.01, rtol=0)
    assert split.out_dim == 3 and pooled.shape == (4, 3)
    torch.testing.assert_close(fmap, torch.cat([split.light.seen, split.colour.seen], dim=1))


def test_the_built_methods_split_l_and_ab(cifar_images):
    """An image's grey twin (same L, a = b = 0) gives colorization's encoder the same features and
    CMC's L encoder the same, CMC's ab encoder other ones; the stems have 1 and 2 channels."""
    x = cifar_images[:4]
    lab = rgb_to_lab(_rgb(x).clamp(0, 1))
    norm = LabInput()  # its mean / std: the views' normalisation (ImageNet's, as cifar_images)
    twin = (lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], dim=1)) - norm.mean) / norm.std
    torch.manual_seed(0)
    colour = METHODS["colorization"](TinyNet(), METHODS["colorization"].Config(), RunInfo()).eval()
    assert colour.backbone.net.body[0].in_channels == 1
    torch.testing.assert_close(colour.backbone(twin)[1], colour.backbone(x)[1], atol=1e-3, rtol=1e-3)
    cmc = METHODS["cmc"](TinyNet(), METHODS["cmc"].Config(), RunInfo()).eval()
    assert cmc.backbone.light.body[0].in_channels == 1 and cmc.backbone.colour.body[0].in_channels == 2
    (_, pl), (_, pa) = cmc.backbone.split(x)
    (_, tl), (_, ta) = cmc.backbone.split(twin)
    torch.testing.assert_close(tl, pl, atol=1e-3, rtol=1e-3)
    assert (ta - pa).abs().max() > 1e-2
    assert not torch.equal(cmc.backbone.light.body[0].weight[:, :1], cmc.backbone.colour.body[0].weight[:, :1])


def test_clip_loss_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # normalised: e1, e2
    text = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # normalised: e1, (1, 1) / sqrt 2
    r = 1 / math.sqrt(2)
    # scale 2: logits [[2, 2r], [0, 2r]]
    rows = -math.log(math.exp(2) / (math.exp(2) + math.exp(2 * r))) - math.log(math.exp(2 * r) / (1 + math.exp(2 * r)))
    cols = -math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(2)
    expected = (rows / 2 + cols / 2) / 2
    log_scale = torch.tensor(math.log(2.0), requires_grad=True)
    loss = clip_loss(image, text, log_scale)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert log_scale.grad is not None and log_scale.grad.abs() > 0
    # the scale is clipped at 100
    assert clip_loss(image, text, 10.0).item() == pytest.approx(clip_loss(image, text, math.log(100)).item())


def test_patch_nce_by_hand_and_negatives_stay_in_their_image():
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one image, two locations
    k = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    r, t = 1 / math.sqrt(2), 0.5
    # sims [[1, r], [0, r]] / t; positives on the diagonal
    l0 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(r / t)))
    l1 = -math.log(math.exp(r / t) / (1 + math.exp(r / t)))
    assert patch_nce(q, k, t).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    other_q, other_k = torch.randn(1, 2, 2, generator=torch.Generator().manual_seed(0)), torch.randn(1, 2, 2)
    both = patch_nce(torch.cat([q, other_q]), torch.cat([k, other_k]), t)
    assert both.item() == pytest.approx((patch_nce(q, k, t).item() + patch_nce(other_q, other_k, t).item()) / 2)


def _view(images: torch.Tensor, index: torch.Tensor) -> list[View]:
    return [View(images, torch.zeros(len(images), 4), torch.zeros(len(images), dtype=torch.bool), index)]


@pytest.mark.parametrize("name,options", [("colorization", {}), ("cmc", {"loss": "infonce"}),
                                          ("cmc", {"loss": "nce", "num_negatives": 64, "z_momentum": 0.0})])
def test_a_short_real_run_lowers_the_loss(name, options, cifar_subset, cifar_images):
    torch.manual_seed(0)
    cls = METHODS[name]
    method = cls(TinyNet(), cls.Config(**options), RunInfo(num_images=100))
    views = ViewsConfig(size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    method.on_fit_start(open_dataset(cifar_subset(10, 0)).train, views, torch.device("cpu"))
    if name == "colorization":  # p~ of the 100 real images: many bins of real colours, E_p~[w] = 1
        assert method.prior.sum().item() == pytest.approx(1.0) and (method.prior > 1e-3).sum() > 20
        assert (method.prior * method.weights).sum().item() == pytest.approx(1.0, abs=1e-4)
    opt = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    batch = _view(cifar_images[:64], torch.arange(64))
    losses, accs = [], []
    for _ in range(20):
        out = method(batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
        accs.append(out.logs["pretext_acc"].item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    if options.get("loss") != "nce":  # colour-bin / L-ab matching accuracy rises (memory-bank NCE: slower)
        assert sum(accs[-5:]) > 1.5 * sum(accs[:5]), accs
    held = _view(cifar_images[64:], torch.arange(64, 100))
    assert 0.0 <= pretext_accuracy(method, held) <= 1.0


def test_colorization_and_cmc_through_the_cli(cifar_subset, tmp_path):
    """Pre-train on real CIFAR-10 images, then kNN / linear / export on the trained backbones, and
    colorization's pictures of colourised held-out images."""
    data = cifar_subset(10, 5)
    fast = ["backbone.cifar_stem=false", "train.progress=false", "train.knn_every=0", "optim.warmup_epochs=0"]
    for method in ("colorization", "cmc"):
        out = tmp_path / method
        assert main(["pretrain", "--config", f"cifar10/{method}", "--data", str(data), "--epochs", "1",
                     "--batch-size", "50", "--out", str(out), "--set", *fast]) == 0
        assert main(["eval", "linear", "--checkpoint", str(out), "--data", str(data), "--epochs", "5"]) == 0
        assert json.loads((out / "linear.json").read_text())["test_images"] == 50
        assert main(["export", "--checkpoint", str(out), "--out", str(out / "w.pth")]) == 0
    weights = torch.load(tmp_path / "cmc" / "w.pth")
    assert weights["l.conv1.weight"].shape[1] == 1 and weights["ab.conv1.weight"].shape[1] == 2
    assert torch.load(tmp_path / "colorization" / "w.pth")["conv1.weight"].shape[1] == 1
    assert main(["colorize", str(tmp_path / "colorization"), "--n", "6"]) == 0
    picture = Image.open(tmp_path / "colorization" / "colorized.png")
    assert picture.size == (6 * 96, 3 * 96)  # 3 rows (grey, colourised, true) x 6 images
    assert main(["colorize", str(tmp_path / "cmc")]) == 2  # not a colorization run: a one-line error
