"""Dense evaluation: IoU by hand, joint image/label geometry, segmentation folders (real CamVid
and broken synthetic ones), the per-pixel probe, and ``selfsup eval dense`` end to end."""

from __future__ import annotations

import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CAMVID_TRAIN, CAMVID_VAL
from PIL import Image
from torch import nn

from selfsup.cli import main
from selfsup.data import DataError
from selfsup.data.segmentation import CAMVID, SegmentationSplit, crop_resize_pair, open_segmentation, resize_pair
from selfsup.eval.dense import DenseConfig
from selfsup.eval.dense.features import Encoder, FrozenFeatures
from selfsup.eval.dense.finetune import finetune
from selfsup.eval.dense.probe import PixelProbe, predict, score, train_probe
from selfsup.eval.segmentation_metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from selfsup.models.backbones import BackboneConfig, build_backbone
from selfsup.views.boxes import sample_pixel_boxes

ROOT = Path(__file__).resolve().parents[1]


# --- metrics by hand --------------------------------------------------------------------------


def test_confusion_iou_and_pixel_accuracy_by_hand():
    # 4 classes + ignore 9. Class 3 appears nowhere (NaN, excluded from the mean);
    # class 2 is predicted once but never labelled (IoU 0, included).
    label = torch.tensor([[0, 0, 1, 1],
                          [0, 0, 1, 1],
                          [0, 9, 1, 1],
                          [0, 0, 0, 1]])
    pred = torch.tensor([[0, 0, 1, 1],
                         [0, 1, 1, 1],
                         [0, 2, 1, 0],
                         [0, 0, 2, 1]])  # (2, 1) is ignored whatever it says
    conf = confusion_matrix(pred, label, num_classes=4, ignore_index=9)
    expected = torch.zeros(4, 4, dtype=torch.int64)
    expected[0, 0], expected[0, 1], expected[0, 2] = 6, 1, 1  # 8 class-0 pixels
    expected[1, 1], expected[1, 0] = 6, 1  # 7 class-1 pixels
    assert torch.equal(conf, expected) and int(conf.sum()) == 15
    iou = iou_per_class(conf)
    assert iou[0].item() == pytest.approx(6 / (8 + 7 - 6))  # TP 6, row 8, column 7
    assert iou[1].item() == pytest.approx(6 / (7 + 7 - 6))  # TP 6, row 7, column 7
    assert iou[2].item() == 0.0 and math.isnan(iou[3].item())
    assert mean_iou(conf) == pytest.approx((6 / 9 + 6 / 8 + 0) / 3)
    assert pixel_accuracy(conf) == pytest.approx(12 / 15)
    # nothing counted: everything undefined
    empty = confusion_matrix(pred, torch.full_like(label, 9), 4, 9)
    assert int(empty.sum()) == 0 and math.isnan(mean_iou(empty)) and math.isnan(pixel_accuracy(empty))
    with pytest.raises(ValueError, match=r"label values must lie in 0\.\.3"):
        confusion_matrix(pred, torch.full_like(label, 5), 4, 9)


def test_perfect_prediction_scores_one():
    label = torch.randint(0, 5, (2, 6, 7), generator=torch.Generator().manual_seed(0))
    conf = confusion_matrix(label, label, 5, 255)
    assert mean_iou(conf) == 1.0 and pixel_accuracy(conf) == 1.0


# --- joint geometry ---------------------------------------------------------------------------


def _position_pair(h: int = 48, w: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose red channel is 4 * column and green 4 * row, and a label = 4x4 block
    index (column // 8) + 8 * (row // 8): the label is a function of the pixel position."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = torch.stack((cols * 4, rows * 4, torch.zeros_like(rows))).to(torch.uint8)[None]
    label = (cols // 8 + 8 * (rows // 8)).to(torch.uint8)[None]
    return image, label


def test_resize_pair_keeps_labels_in_the_label_set():
    g = torch.Generator().manual_seed(0)
    values = torch.tensor([0, 3, 11, 200], dtype=torch.uint8)
    labels = values[torch.randint(0, 4, (2, 37, 53), generator=g)]
    images = torch.randint(0, 256, (2, 3, 37, 53), generator=g, dtype=torch.uint8)
    for size in [(16, 20), (64, 80), (37, 10)]:
        x, y = resize_pair(images, labels, size)
        assert x.shape == (2, 3, *size) and x.dtype == torch.uint8
        assert y.shape == (2, *size) and y.dtype == torch.uint8
        assert set(y.unique().tolist()) <= {0, 3, 11, 200}


def test_crop_resize_pair_keeps_image_and_label_aligned():
    image, label = _position_pair()
    n = 6
    images, labels = image.repeat(n, 1, 1, 1), label.repeat(n, 1, 1)
    g = torch.Generator().manual_seed(1)
    boxes = sample_pixel_boxes(torch.tensor([[48, 64]]).repeat(n, 1), (0.2, 1.0), (0.5, 2.0), g)
    flipped = torch.tensor([False, True] * 3)
    for size in [(24, 32), (60, 50)]:
        x, y = crop_resize_pair(images, labels, boxes, flipped, size)
        col = x[:, 0].float() / 4  # source column (interpolated) at each output pixel
        row = x[:, 1].float() / 4
        expected = (col.round() // 8 + 8 * (row.round() // 8)).to(torch.uint8)
        # away from block edges (where bilinear pixels blend two blocks) the label is exactly
        # the one of the position the image pixel came from
        inside = ((col % 8) > 1.0) & ((col % 8) < 6.0) & ((row % 8) > 1.0) & ((row % 8) < 6.0)
        assert inside.float().mean() > 0.15
        assert torch.equal(y[inside], expected[inside])
        # mirrored crops run right to left, the others left to right
        step = col[:, :, -1] - col[:, :, 0]
        assert (step[flipped] < 0).all() and (step[~flipped] > 0).all()


# --- reading segmentation folders -------------------------------------------------------------


def test_reads_real_camvid_pairs_from_folder_and_archive(camvid_small, tmp_path):
    ds = open_segmentation(camvid_small, size=(90, 120))
    assert len(ds.train) == CAMVID_TRAIN and len(ds.val) == CAMVID_VAL
    assert ds.classes == list(CAMVID.names) and ds.ignore_index == 11 and ds.label_set == "camvid"
    assert ds.train.images.shape == (CAMVID_TRAIN, 3, 90, 120) and ds.train.images.dtype == torch.uint8
    assert ds.train.labels.shape == (CAMVID_TRAIN, 90, 120)
    assert int(ds.train.labels.max()) <= 11 and len(ds.train.labels.unique()) >= 8
    # a label map downsized by 4 with nearest neighbour = the original sampled at pixel centres
    with Image.open(camvid_small / "trainannot" / ds.train.files[0]) as im:
        full = torch.from_numpy(np.array(im))
    assert full.shape == (360, 480)
    assert torch.equal(ds.train.labels[0], full[1::4, 1::4]) or torch.equal(ds.train.labels[0], full[2::4, 2::4])
    # the road (class 3) lies in the lower half of a road scene, the sky (0) in the upper half
    rows = torch.arange(90).view(1, 90, 1).expand_as(ds.train.labels).float()
    assert rows[ds.train.labels == 3].mean() > 45 > rows[ds.train.labels == 0].mean()
    # the same folder packed as an archive; --scale picks a size relative to 360x480
    archive = tmp_path / "camvid-small.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(camvid_small, arcname="camvid")
    packed = open_segmentation(archive, scale=0.25)
    assert packed.train.image_size == (90, 120) and packed.classes == ds.classes
    assert torch.equal(packed.train.labels, ds.train.labels) and torch.equal(packed.val.images, ds.val.images)
    # the evaluation split may come from another folder / archive
    apart = open_segmentation(camvid_small, size=(90, 120), val_spec=archive, splits=("train", "train"))
    assert torch.equal(apart.val.labels, ds.train.labels) and apart.val.files == ds.train.files


def _write_pairs(root: Path, split: str, n: int, size=(20, 24)) -> None:
    g = np.random.default_rng(0)
    for folder in (root / split, root / f"{split}annot"):
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(g.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
        Image.fromarray(g.integers(0, 3, size, dtype=np.uint8)).save(root / f"{split}annot" / f"{i}.png")


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    _write_pairs(tmp_path, "train", 4)
    _write_pairs(tmp_path, "val", 2)
    (tmp_path / "train" / "2.png").write_bytes(b"not a png at all")
    ds = open_segmentation(tmp_path)
    assert len(ds.train) == 3 and ds.train.num_skipped == 1 and "2.png" not in ds.train.files
    assert ds.val.num_skipped == 0 and ds.classes == ["0", "1", "2"] and ds.ignore_index == 255


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: (r / "trainannot" / "1.png").unlink(), r"1 image\(s\) in .*train have no label map .*: 1\.png"),
        (lambda r: Image.new("L", (5, 5)).save(r / "trainannot" / "3.png"), r"label map .*3\.png is 5x5 but its image"),
        (lambda r: Image.new("RGB", (24, 20)).save(r / "valannot" / "0.png"), r"0\.png is not a single-channel"),
        (lambda r: Image.new("L", (24, 20), 7).save(r / "valannot" / "1.png"),
         r"val/1\.png holds value 7, outside the 4 classes"),
    ],
)
def test_broken_label_maps_are_clear_errors(tmp_path, damage, message):
    _write_pairs(tmp_path, "train", 4)
    _write_pairs(tmp_path, "val", 2)
    (tmp_path / "classes.txt").write_text("a\nb\nc\nd\n")
    damage(tmp_path)
    with pytest.raises(DataError, match=message):
        open_segmentation(tmp_path)


# --- the probe --------------------------------------------------------------------------------


class _Pool(nn.Module):
    """A stand-in backbone: the image average-pooled by 4 (stride-4 'features')."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = F.avg_pool2d(x, 4)
        return fmap, fmap.mean((2, 3))


def test_probe_learns_classes_encoded_in_colour():
    # each 8x8 block has one of 3 classes, painted in that class's colour with noise
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 3, (24, 4, 5), generator=g)
    labels = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2).to(torch.uint8)
    colours = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200]])
    images = (colours[labels.long()].permute(0, 3, 1, 2) + torch.randint(-20, 20, (24, 3, 32, 40), generator=g))
    images = images.clamp(0, 255).to(torch.uint8)
    labels[:, :2] = 255  # an ignored band
    encoder = Encoder(_Pool(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 224, torch.device("cpu"))
    feats = FrozenFeatures(encoder, images[:16], 8, 2**30)
    assert feats.bank is not None and feats.shape == (3, 8, 10)
    probe = PixelProbe(3, 3, *feats.channel_stats(), g)
    before = score(predict(encoder, probe, images[16:], (32, 40), 8), labels[16:], 3, 255)
    steps = train_probe(probe, feats, labels[:16], DenseConfig(epochs=30, lr=0.5), 255, g)
    assert steps == 60
    after = score(predict(encoder, probe, images[16:], (32, 40), 8), labels[16:], 3, 255)
    assert after.as_dict(["r", "g", "b"])["pixel_accuracy"] > 0.9 > before.as_dict(["r", "g", "b"])["pixel_accuracy"]
    assert all(v > 0.8 for v in after.as_dict(["r", "g", "b"])["per_class_iou"].values())


@pytest.mark.parametrize(
    ("cfg", "shape"),
    [
        (BackboneConfig("resnet18"), (512, 2, 3)),  # output stride 32
        (BackboneConfig("resnet18", output_stride=16), (512, 4, 5)),  # output stride 16
        (BackboneConfig("vit_tiny_patch16_224", img_size=32), (192, 2, 2)),  # patch tokens, input 32x32
    ],
)
def test_probe_runs_on_resnet_dilated_and_vit_feature_maps(cfg, shape):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 64, 80), dtype=torch.uint8)
    encoder = Encoder(build_backbone(cfg).eval(), (0.5,) * 3, (0.25,) * 3, cfg.img_size, torch.device("cpu"))
    feats = FrozenFeatures(encoder, images, 2, 2**30)
    assert feats.shape == shape
    probe = PixelProbe(shape[0], 5, *feats.channel_stats())
    pred = predict(encoder, probe, images, (64, 80), 2)
    assert pred.shape == (3, 64, 80) and int(pred.max()) < 5


# --- the command ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def camvid_run(camvid_small, tmp_path_factory) -> Path:
    """A BYOL run folder made by one pre-training step on the small CamVid train split."""
    out = tmp_path_factory.mktemp("camvid-run")
    assert main(["pretrain", "--method", "byol", "--data", str(camvid_small),
                 "--config", "cifar10/byol", "--epochs", "1", "--batch-size", "8",
                 "--out", str(out), "--set", "backbone.cifar_stem=false", "views.size=32", "data.load_size=64",
                 "train.knn_every=0", "train.progress=false", "optim.warmup_epochs=0"]) == 0
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 1
    return out


def test_eval_dense_writes_json_and_png_and_finetunes(camvid_run, camvid_small, capsys):
    assert main(["eval", "dense", "--checkpoint", str(camvid_run), "--data", str(camvid_small),
                 "--size", "64", "80", "--epochs", "2", "--batch-size", "4", "--finetune-steps", "2"]) == 0
    res = json.loads((camvid_run / "dense.json").read_text())
    assert res["method"] == "byol" and res["random_init"] is False and res["image_size"] == [64, 80]
    assert res["train_images"] == CAMVID_TRAIN and res["val_images"] == CAMVID_VAL
    assert res["probe"]["steps"] == 4 and res["probe"]["epochs"] == 2 and res["feature_map"] == [512, 2, 3]
    assert res["ignore_index"] == 11 and list(res["per_class_iou"]) == list(CAMVID.names)
    assert 0 <= res["miou"] <= 1 and 0 <= res["pixel_accuracy"] <= 1
    assert res["wall_time_s"] > 0 and res["skipped_images"] == {"train": 0, "val": 0}
    ft = res["finetune"]
    assert ft["steps"] == 2 and 0 <= ft["miou"] <= 1 and list(ft["per_class_iou"]) == list(CAMVID.names)
    with Image.open(camvid_run / "dense.png") as im:  # image | ground truth | probe | fine-tuned
        assert im.width >= 4 * 80 and im.height >= CAMVID_VAL * 64
        pixels = np.asarray(im.convert("RGB"))
    road = np.array(CAMVID.palette[3])
    assert (pixels == road).all(-1).sum() > 500  # ground-truth road drawn in CamVid's road colour


def test_probe_learns_above_majority_class_on_real_pixels(camvid_run, camvid_small, tmp_path):
    out = tmp_path / "probe.json"
    assert main(["eval", "dense", "--checkpoint", str(camvid_run), "--data", str(camvid_small), "--random-init",
                 "--size", "64", "80", "--steps", "30", "--lr", "0.3", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["random_init"] is True and res["probe"]["steps"] == 30 and res["finetune"] is None
    assert res["train_pixel_accuracy"] > res["train_majority_pixel_accuracy"] + 0.1
    assert res["majority_class"] in CAMVID.names and (tmp_path / "probe.png").is_file()


def test_finetune_trains_backbone_and_head_then_freezes_them():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    backbone = build_backbone(BackboneConfig("resnet18")).eval()
    encoder = Encoder(backbone, (0.5,) * 3, (0.25,) * 3, 224, torch.device("cpu"))
    images = torch.randint(0, 256, (4, 3, 32, 40), dtype=torch.uint8, generator=g)
    split = SegmentationSplit(images, torch.randint(0, 3, (4, 32, 40), generator=g).to(torch.uint8), list("abcd"))
    probe = PixelProbe(512, 3, torch.zeros(512), torch.ones(512), g)
    named = [*backbone.named_parameters(), *probe.named_parameters()]
    before = {name: p.detach().clone() for name, p in named}
    finetune(encoder, probe, split, DenseConfig(finetune_steps=2, batch_size=4, finetune_lr=0.1), 255, g)
    for name in ("net.conv1.weight", "net.layer4.1.conv2.weight", "conv.weight", "conv.bias"):
        assert not torch.equal(before[name], dict(named)[name]), name
    assert not backbone.training and not any(p.requires_grad for _, p in named)


def test_eval_dense_errors_are_one_line(camvid_run, tmp_path, capsys):
    assert main(["eval", "dense", "--checkpoint", str(camvid_run), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: segmentation folder not found") and len(err.splitlines()) == 1
