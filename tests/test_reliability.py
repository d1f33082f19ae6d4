"""What a long run meets: kills at any moment (mid-epoch checkpoints, exact resume), full disks,
non-finite losses, rotated phone photos and oversized files."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.cli import main
from selfsup.data import open_dataset
from selfsup.data.segmentation import open_segmentation
from selfsup.methods.simclr import SimCLR

TINY_VIT = ["backbone.name=vit_tiny_patch16_224", "backbone.img_size=16", "backbone.patch_size=4",
            "backbone.kwargs={embed_dim: 32, depth: 2, num_heads: 2}", "views.size=16", "views.blur=false"]


def _soak_args(data: Path, out: Path, epochs: int) -> list[str]:
    """MoCo v2 (momentum encoder, key queue, shuffle generator) on a tiny ViT: cheap checkpoints."""
    return ["pretrain", "--method", "mocov2", "--data", str(data), "--epochs", str(epochs), "--batch-size", "4",
            "--out", str(out), "--set", *TINY_VIT, "mocov2.dim=8", "mocov2.queue_size=16", "mocov2.bn_splits=1",
            "train.checkpoint_every=2", "train.log_every=1", "train.knn_every=0", "train.progress=false",
            "train.device=cpu", "optim.warmup_epochs=1", "data.num_workers=0"]


def _child(args: list[str]) -> None:
    torch.set_num_threads(1)  # the same arithmetic in every process
    os._exit(main(args))


def _logged_steps(out: Path) -> list[int]:
    """Step numbers of the complete step records in metrics.jsonl (a half-written line ignored)."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "summary" not in record:
            steps.append(record["step"])
    return steps


def _checkpoint_step(out: Path) -> int:
    try:
        return torch.load(out / "last.pt", weights_only=True)["step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


@pytest.mark.parametrize("kills", [10, pytest.param(40, marks=pytest.mark.slow)])
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_weights(kills, cifar_subset, tmp_path):
    data = cifar_subset(4 if kills == 10 else 12, 0)  # 40 images: 10 steps per epoch
    epochs = 3
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["selfsup.cli"])  # every run forks from a process that imported torch once
    straight = ctx.Process(target=_child, args=(_soak_args(data, tmp_path / "straight", epochs),))
    straight.start()
    straight.join()
    assert straight.exitcode == 0
    total = max(_logged_steps(tmp_path / "straight"))

    out, rng, killed = tmp_path / "killed", random.Random(0), 0
    while True:
        args = _soak_args(data, out, epochs) + (["--resume"] if (out / "last.pt").is_file() else [])
        resumed_at = _checkpoint_step(out)
        p = ctx.Process(target=_child, args=(args,))
        p.start()
        deadline = time.monotonic() + 120
        # let it make progress past its checkpoint, then kill it at a random moment: mid-step,
        # mid-checkpoint or between steps
        while p.is_alive() and max(_logged_steps(out), default=0) <= resumed_at and time.monotonic() < deadline:
            time.sleep(0.005)
        if killed < kills and p.is_alive():
            time.sleep(rng.uniform(0.0, 0.25))
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join()
                killed += 1
                continue
        p.join()
        assert p.exitcode == 0
        break
    assert killed == kills, f"the run finished after {killed} kills"
    # bit for bit: the backbone, and the whole method state (key encoder, queue, shuffle draws)
    a = torch.load(tmp_path / "straight/last.pt", weights_only=True)
    b = torch.load(out / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == total
    assert a["method"].keys() == b["method"].keys()
    for key, value in a["method"].items():
        other = b["method"][key]
        assert torch.equal(value, other) if torch.is_tensor(value) else value == other, key
    weights = torch.load(out / "backbone.pth", weights_only=True)
    reference = torch.load(tmp_path / "straight/backbone.pth", weights_only=True)
    assert all(torch.equal(weights[k], reference[k]) for k in reference)
    # the log holds every step once: what was logged after the last checkpoint of a killed run is dropped
    assert _logged_steps(out) == list(range(1, total + 1))
    assert not list(out.glob(".last.pt.tmp*"))  # no temporary file of a killed writer is left


@pytest.mark.parametrize(("code", "cause"), [(errno.ENOSPC, "No space left on device"),
                                             (errno.EACCES, "Permission denied"),
                                             (errno.EROFS, "Read-only file system")])
def test_a_failed_checkpoint_write_is_one_line_and_the_previous_one_survives(
        code, cause, cifar_subset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save = torch.save
    writes = {"n": 0}

    def failing_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) or not str(getattr(f, "name", "")).startswith(str(out / ".last.pt")):
            return real_save(obj, f, *args, **kwargs)
        writes["n"] += 1
        if writes["n"] == 2:  # the second checkpoint: the disk is full (or read-only ...)
            f.write(b"partial")
            raise OSError(code, cause)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    args = ["pretrain", "--method", "simclr", "--data", str(cifar_subset(4, 0)), "--epochs", "3", "--batch-size", "20",
            "--out", str(out), "--set", *TINY_VIT, "simclr.proj_hidden=16", "simclr.proj_dim=8",
            "train.knn_every=0", "train.progress=false"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: cannot write {out / 'last.pt'}: {cause} (errno {code}); the previous checkpoint, "
                   "if any, is unchanged")
    state = torch.load(out / "last.pt", weights_only=True)  # epoch 1's, intact
    assert state["epoch"] == 1 and state["step"] == 2
    assert not list(out.glob(".last.pt.tmp*"))


def test_a_non_finite_loss_stops_with_the_step_the_terms_and_the_last_good_checkpoint(
        cifar_subset, tmp_path, monkeypatch, capsys):
    real_forward = SimCLR.forward
    calls = {"n": 0}

    def poisoned(self, views):
        calls["n"] += 1
        out = real_forward(self, views)
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SimCLR, "forward", poisoned)
    out = tmp_path / "run"
    args = ["pretrain", "--method", "simclr", "--data", str(cifar_subset(4, 0)), "--epochs", "2", "--batch-size", "10",
            "--out", str(out), "--set", *TINY_VIT, "simclr.proj_hidden=16", "simclr.proj_dim=8",
            "train.knn_every=0", "train.progress=false", "train.log_every=1", "train.checkpoint_every=1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: non-finite loss nan at step 3 (loss nan, ")
    assert f"the last good checkpoint {out / 'last.pt'} (epoch 0, step 2) is unchanged" in err
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2


def _rotated_pair(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A 12 x 20 photo whose EXIF says 'rotate 90 degrees clockwise' (orientation 6) and its label
    map carrying the same tag; returns both as a viewer shows them (upright: 20 x 12)."""
    stored = np.full((12, 20, 3), 200, dtype=np.uint8)
    stored[:, :10] = 0  # the left half of the stored pixels is black
    labels = np.zeros((12, 20), dtype=np.uint8)
    labels[:, 10:] = 3  # the right half of the stored pixels is class 3
    exif = Image.Exif()
    exif[0x0112] = 6
    for sub, array, ext in (("train", stored, "jpg"), ("trainannot", labels, "png")):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(folder / sub / f"{name}.{ext}", exif=exif, quality=95)
    return np.rot90(stored, k=-1), np.rot90(labels, k=-1)  # orientation 6: turn 90 degrees clockwise


def test_exif_orientation_turns_images_and_their_label_maps_upright_together(tmp_path):
    upright, upright_labels = _rotated_pair(tmp_path / "camvid", "frame")
    (tmp_path / "camvid" / "val").mkdir()
    (tmp_path / "camvid" / "valannot").mkdir()
    Image.fromarray(upright).save(tmp_path / "camvid/val/other.png")
    Image.fromarray(upright_labels).save(tmp_path / "camvid/valannot/other.png")
    train = open_dataset(tmp_path / "camvid").train
    assert train.image_size == (20, 12) and train.sizes[0].tolist() == [20, 12]
    image = next(train.batches(1, shuffle=False)).images[0].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(image - upright).mean() < 8  # JPEG round-off only
    seg = open_segmentation(tmp_path / "camvid", splits=("train", "val"))
    assert torch.equal(seg.train.labels[0], torch.from_numpy(upright_labels.copy()))
    # the labelled half is the half whose pixels are not black in the upright image
    dark = torch.from_numpy(image.sum(axis=2) < 40)
    assert bool((seg.train.labels[0][dark] == 0).all()) and bool((seg.train.labels[0][~dark] == 3).all())


def test_images_above_the_pixel_limit_are_skipped_counted_and_named(tmp_path, caplog):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (200, 100), "red").save(folder / "huge.png")
    for i in range(3):
        Image.new("RGB", (40, 30), "blue").save(folder / f"small{i}.png")
    with caplog.at_level(logging.WARNING, logger="selfsup.data"):
        train = open_dataset(folder, max_image_pixels=10_000, cache_dir=tmp_path / "cache").train
    assert len(train) == 3 and train.num_skipped == 1
    assert "skipped 1 image file(s) of more than data.max_image_pixels=10000 pixels" in caplog.text
    assert "huge.png (200 x 100)" in caplog.text
    assert len(open_dataset(folder, cache_dir=tmp_path / "cache").train) == 4  # the default limit reads it
