"""Classic pretext tasks: rotation labels, tile geometry, Lab conversion against OpenCV,
class-rebalancing weights by hand, and a short RotNet run on real CIFAR-10 images."""

import cv2
import numpy as np
import torch

from selfsup.methods import METHODS, RunInfo
from selfsup.methods.pretext import pretext_accuracy
from selfsup.views.lab import lab_to_rgb, rebalance_weights, rgb_to_lab
from selfsup.views.tiles import TileGrid, extract_tiles, rotations
from selfsup.views.view import View


def test_rotation_labels_count_quarter_turns():
    x = torch.arange(8.0).view(2, 1, 2, 2)
    rotated, labels = rotations(x)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # [[0, 1], [2, 3]] turned 90 degrees counter-clockwise is [[1, 3], [0, 2]]
    assert rotated[2, 0].tolist() == [[1.0, 3.0], [0.0, 2.0]]
    assert rotated[4, 0].tolist() == [[3.0, 2.0], [1.0, 0.0]]


def test_tiles_keep_gap_and_jitter_and_stay_inside():
    grid = TileGrid(size=48, grid=3, tile=12, gap=3, jitter=1, margin=1)
    corners = grid.sample(500, torch.Generator().manual_seed(0))
    offset = corners - grid.base()
    assert offset.abs().max() == 1 and offset.min() == -1
    assert corners.min() >= grid.margin and (corners + grid.tile + grid.margin).max() <= 48
    x = corners[:, :, 1].view(500, 3, 3)
    assert ((x[:, :, 1:] - x[:, :, :-1]) - grid.tile).min() >= grid.gap - 2 * grid.jitter
    img = torch.arange(48.0 * 48).view(1, 1, 48, 48)
    tiles = extract_tiles(img, corners[:1], 12)
    y0, x0 = corners[0, 4].tolist()
    assert torch.equal(tiles[0, 4, 0], img[0, 0, y0:y0 + 12, x0:x0 + 12])


def test_lab_matches_opencv_and_round_trips():
    rgb = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    ref = cv2.cvtColor(rgb.permute(1, 2, 0).numpy().astype(np.float32), cv2.COLOR_RGB2Lab)
    # OpenCV quantises its float Lab (steps of 1/64)
    assert np.abs(rgb_to_lab(rgb).permute(1, 2, 0).numpy() - ref).max() < 0.3
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-4, rtol=0)


def test_rebalancing_weights_by_hand():
    # p = (0.75, 0.25), lam 0.5, Q 2: w ~ 1 / (0.375 + 0.25), 1 / (0.125 + 0.25) = 1.6, 2.667
    w = rebalance_weights(torch.tensor([3.0, 1.0]), lam=0.5)
    raw = torch.tensor([1 / 0.625, 1 / 0.375])
    expected = raw / (0.75 * raw[0] + 0.25 * raw[1])
    torch.testing.assert_close(w, expected)
    assert abs(0.75 * w[0] + 0.25 * w[1] - 1) < 1e-6


class TinyNet(torch.nn.Module):
    """Two strided conv + BN + ReLU layers: a backbone (fmap, pooled) fast on a CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, 2, 1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, 2, 1, bias=False), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        )
        self.out_dim = 32

    def forward(self, x):
        fmap = self.body(x)
        return fmap, fmap.mean(dim=(2, 3))


def test_rotation_short_run_lowers_the_loss(cifar_images):
    torch.manual_seed(0)
    cls = METHODS["rotation"]
    method = cls(TinyNet(), cls.Config(), RunInfo())
    opt = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    view = [View(cifar_images[:64], torch.zeros(64, 4), torch.zeros(64, dtype=torch.bool))]
    losses = []
    for _ in range(15):
        out = method(view)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    held = [View(cifar_images[64:], torch.zeros(36, 4), torch.zeros(36, dtype=torch.bool))]
    assert 0.0 <= pretext_accuracy(method, held) <= 1.0
