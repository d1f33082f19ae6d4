"""Data loading on real CIFAR-10 images: folders, archives, conversions, caches, ordering."""

from __future__ import annotations

import hashlib
import http.server
import io
import logging
import os
import pickle
import shutil
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import Batch, DataError, ImageDataset, open_dataset
from selfsup.data import archive as archive_mod
from selfsup.data import loading as loading_mod
from selfsup.data import parallel as parallel_mod
from selfsup.data import sources as sources_mod
from selfsup.data.archive import MARKER
from selfsup.data.cifar import parse_cifar10
from selfsup.data.sources import RemoteArchive

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def pixels(path: Path) -> np.ndarray:
    """A file decoded by PIL as RGB (3, H, W): the reference for what the loader yields."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1)


def everything(ds: ImageDataset) -> Batch:
    """The whole dataset as one batch, in dataset order."""
    return next(ds.batches(len(ds), shuffle=False))


def copy_images(src: Path, dst: Path, n: int) -> list[Path]:
    """Copy the first n JPEGs of a folder; return the copies."""
    dst.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(f, dst)) for f in sorted(src.glob("*.jpg"))[:n]]


# --- folders and splits ---------------------------------------------------------------


def test_labelled_folder_with_train_and_test(cifar_subset) -> None:
    root = cifar_subset(5, 2)
    splits = open_dataset(root)
    train, test = splits.train, splits.test
    assert test is not None
    assert (len(train), len(test)) == (50, 20)
    assert train.classes == test.classes == CLASSES
    assert train.has_labels and train.num_skipped == 0
    assert torch.equal(train.labels, torch.arange(10).repeat_interleave(5))
    assert torch.equal(test.labels, torch.arange(10).repeat_interleave(2))
    assert train.image_size == (32, 32)
    assert train.sizes.dtype == torch.int64 and (train.sizes == 32).all()
    batch = everything(train)
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (50, 3, 32, 32)
    # dataset order: classes sorted by name, files sorted within a class
    for i in (0, 7, 49):
        file = root / "train" / CLASSES[i // 5] / f"{i % 5:04d}.jpg"
        assert np.array_equal(batch.images[i].numpy(), pixels(file))


def test_unlabelled_folder_is_scanned_recursively(cifar_subset, tmp_path: Path) -> None:
    src = cifar_subset(5, 0) / "train"
    root = tmp_path / "photos"
    copy_images(src / "cat", root, 2)
    copy_images(src / "dog", root / "2019" / "summer", 3)
    Image.open(src / "frog" / "0000.jpg").save(root / "2019" / "FROG.PNG")  # upper-case suffix
    (root / "2019" / "notes.txt").write_text("not an image")
    (root / ".thumbnails").mkdir()
    shutil.copy(src / "cat" / "0004.jpg", root / ".thumbnails")  # hidden: ignored
    splits = open_dataset(root)
    ds = splits.train
    assert splits.test is None
    assert len(ds) == 6 and not ds.has_labels and ds.classes == []
    assert (ds.labels == -1).all()
    # sorted relative paths: 0000.jpg, 0001.jpg, 2019/FROG.PNG, 2019/summer/0000..0002.jpg
    assert np.array_equal(everything(ds).images[2].numpy(), pixels(src / "frog" / "0000.jpg"))


def test_held_out_split_is_test_else_val(cifar_subset, tmp_path: Path) -> None:
    src = cifar_subset(5, 0) / "train"
    root = tmp_path / "data"
    for cls in ("bird", "airplane"):
        copy_images(src / cls, root / "train" / cls, 3)
        copy_images(src / cls, root / "val" / cls, 2)
    copy_images(src / "cat", root / "val" / "cat", 1)  # a class only the held-out split has
    splits = open_dataset(root)
    assert splits.test is not None and len(splits.test) == 5
    # one class list for both splits, so label i means the same class in each
    assert splits.train.classes == splits.test.classes == ["airplane", "bird", "cat"]
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert splits.test.labels.tolist() == [0, 0, 1, 1, 2]

    copy_images(src / "dog", root / "test" / "dog", 4)  # test/ wins over val/
    splits = open_dataset(root)
    assert splits.test is not None and len(splits.test) == 4
    assert splits.train.classes == ["airplane", "bird", "dog"]

    no_split = open_dataset(root / "train")
    assert no_split.test is None and len(no_split.train) == 6


def test_empty_or_missing_data_raise_one_line_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere") as err:
        open_dataset(missing)
    assert "\n" not in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"no images found in {empty}"):
        open_dataset(empty)
    (empty / "readme.txt").write_text("no images here")
    (empty / "cat").mkdir()
    with pytest.raises(DataError, match="no images found in"):
        open_dataset(empty)
    not_archive = tmp_path / "image.jpg"
    not_archive.write_bytes(b"\xff\xd8")
    with pytest.raises(DataError, match="not a folder or a supported archive"):
        open_dataset(not_archive)
    with pytest.raises(DataError, match="invalid load size"):
        open_dataset(empty, load_size=(0, 32))


# --- decoding -------------------------------------------------------------------------


def test_modes_are_converted_to_rgb(cifar_subset, tmp_path: Path) -> None:
    base = Image.open(cifar_subset(1, 0) / "train" / "ship" / "0000.jpg").convert("RGB")
    rgb = np.asarray(base)
    gray = np.asarray(base.convert("L"))
    root = tmp_path / "modes"
    root.mkdir()

    Image.fromarray(gray).save(root / "a_gray.png")

    rgba = np.dstack([rgb, np.full((32, 32), 255, np.uint8)])
    rgba[0, 0] = (200, 100, 50, 128)  # half transparent: composited on black
    rgba[0, 1] = (200, 100, 50, 0)  # fully transparent: black
    Image.fromarray(rgba, "RGBA").save(root / "b_rgba.png")

    palette_image = base.quantize(16)
    palette_image.save(root / "c_palette.png")
    palette = np.array(palette_image.getpalette()).reshape(-1, 3)

    deep = gray.astype(np.uint16) * 257  # 8-bit v as 16-bit is v * 257: maps back to v
    deep[0, :3] = (65535, 32768, 300)
    Image.fromarray(deep).save(root / "d_16bit.png")

    cmyk = base.convert("CMYK")
    cmyk.putpixel((0, 0), (0, 255, 255, 0))  # pure red
    cmyk.putpixel((1, 0), (0, 0, 0, 255))  # black ink
    cmyk.save(root / "e_cmyk.tif")

    ds = open_dataset(root).train
    assert len(ds) == 5 and ds.image_size == (32, 32)
    out = everything(ds).images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)

    assert Image.open(root / "d_16bit.png").mode == "I;16"
    assert Image.open(root / "c_palette.png").mode == "P"

    assert np.array_equal(out[0], np.repeat(gray[..., None], 3, axis=2))  # equal channels

    assert out[1][0, 0].tolist() == [100, 50, 25]  # round(v * 128 / 255)
    assert out[1][0, 1].tolist() == [0, 0, 0]
    assert np.array_equal(out[1][1:], rgb[1:])  # opaque pixels unchanged

    assert np.array_equal(out[2], palette[np.asarray(palette_image)])  # palette lookup

    assert out[3][0, :3, 0].tolist() == [255, 128, 1]  # scaled, not clipped (300 -> 1)
    assert np.array_equal(out[3][1:], np.repeat(gray[1:, :, None], 3, axis=2))

    assert out[4][0, 0].tolist() == [255, 0, 0]
    assert out[4][0, 1].tolist() == [0, 0, 0]
    assert np.array_equal(out[4][1:], rgb[1:])  # RGB -> CMYK -> RGB is lossless in PIL


def test_load_size_resizes_but_sizes_keep_originals(cifar_subset, tmp_path: Path) -> None:
    root = cifar_subset(2, 0)
    ds = open_dataset(root, load_size=16).train
    assert ds.image_size == (16, 16) and (ds.sizes == 32).all()
    first = Image.open(root / "train" / "airplane" / "0000.jpg").convert("RGB")
    expected = np.asarray(first.resize((16, 16), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(everything(ds).images[0].numpy(), expected)
    assert open_dataset(root, load_size=(24, 40)).train.image_size == (24, 40)

    mixed = tmp_path / "mixed"
    files = copy_images(root / "train" / "bird", mixed, 2)
    Image.open(files[0]).resize((48, 40)).save(files[0])  # now 40 high, 48 wide
    ds = open_dataset(mixed).train
    assert ds.image_size == (256, 256)
    assert ds.sizes.tolist() == [[40, 48], [32, 32]]


def test_corrupt_files_are_skipped_counted_and_reported_once(
    cifar_subset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = cifar_subset(5, 0) / "train"
    root = tmp_path / "corrupt"
    copy_images(src / "cat", root / "cat", 5)
    copy_images(src / "dog", root / "dog", 5)
    data = (src / "cat" / "0000.jpg").read_bytes()
    (root / "cat" / "truncated.jpg").write_bytes(data[: data.index(b"\xff\xda") + 40])
    (root / "dog" / "notes.jpg").write_text("this is text, not a JPEG")

    with caplog.at_level(logging.WARNING, logger="selfsup.data"):
        ds = open_dataset(root).train
    assert len(ds) == 10 and ds.num_skipped == 2
    assert ds.labels.tolist() == [0] * 5 + [1] * 5
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "2 unreadable" in message and "truncated.jpg" in message and "notes.jpg" in message

    # Streaming only reads headers up front: the truncated file is found when decoded,
    # becomes a black image, and is reported once.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="selfsup.data"):
        streamed = open_dataset(root, memory_limit_gb=0).train
        assert not streamed.in_memory and len(streamed) == 11 and streamed.num_skipped == 1
        images = torch.cat([b.images for b in streamed.batches(4, shuffle=False, drop_last=False)])
    assert images[5].sum() == 0 and images[:5].sum() > 0  # cat/truncated.jpg sorts last in cat
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "skipped 1 unreadable image file(s) in " + str(root),
        "could not decode 1 image(s), replaced by black images",
    ]


# --- caches ---------------------------------------------------------------------------


def counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count calls to ``loading.<name>`` (the header reader or the decoder)."""
    calls: list[int] = []
    original = getattr(loading_mod, name)

    def wrapper(paths, *args, **kwargs):
        calls.append(len(paths))
        return original(paths, *args, **kwargs)

    monkeypatch.setattr(loading_mod, name, wrapper)
    return calls


def test_decoded_tensor_is_cached_on_disk(cifar_subset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "copy"
    shutil.copytree(cifar_subset(3, 1), root)
    cache = tmp_path / "cache"
    first = open_dataset(root, cache_dir=cache)
    assert len(list((cache / "decoded").glob("*.pt"))) == 2  # train and test

    def fail(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(loading_mod, "decode_many", fail)
    monkeypatch.setattr(loading_mod, "read_sizes", fail)
    second = open_dataset(root, cache_dir=cache)
    assert torch.equal(everything(first.train).images, everything(second.train).images)
    assert torch.equal(first.train.labels, second.train.labels)
    assert torch.equal(first.train.sizes, second.train.sizes)
    monkeypatch.undo()

    # a touched file changes the key: that split is decoded again, the other is not
    decoded = counting(monkeypatch, "decode_many")
    touched = root / "train" / "cat" / "0001.jpg"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    open_dataset(root, cache_dir=cache)
    assert decoded == [30]
    # another load size is another entry
    open_dataset(root, cache_dir=cache, load_size=8)
    assert decoded == [30, 30, 10]


def test_parallel_decode_matches_serial(
    hundred: ImageDataset, cifar_subset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallel_mod, "PARALLEL_MIN_FILES", 1)  # worker processes even for 100
    monkeypatch.setattr(parallel_mod, "CHUNK_FILES", 7)  # several chunks, a short last one
    parallel = open_dataset(cifar_subset(10, 0), cache_dir=tmp_path / "cache").train
    assert torch.equal(everything(parallel).images, everything(hundred).images)
    assert torch.equal(parallel.sizes, hundred.sizes)


def test_environment_variable_sets_the_default_cache(
    cifar_subset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "env-cache"))
    open_dataset(cifar_subset(1, 0))
    assert list((tmp_path / "env-cache" / "decoded").glob("*.pt"))


# --- archives -------------------------------------------------------------------------


def make_tar(root: Path, dest: Path, arcname: str) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(root, arcname=arcname)
    return dest


def make_zip(root: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(root.rglob("*.jpg")):
            zf.write(f, f.relative_to(root).as_posix())  # train/... and test/...: no top folder
    return dest


def test_archives_are_unpacked_once_keyed_by_content(
    cifar_subset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = cifar_subset(2, 1)
    cache = tmp_path / "cache"
    tgz = make_tar(root, tmp_path / "mycifar.tar.gz", "mycifar")
    archive_zip = make_zip(root, tmp_path / "mycifar.zip")
    for archive in (tgz, archive_zip):
        splits = open_dataset(archive, cache_dir=cache)
        assert splits.test is not None
        assert (len(splits.train), len(splits.test)) == (20, 10)
        assert splits.train.classes == CLASSES
    unpacked = cache / "unpacked" / hashlib.sha256(tgz.read_bytes()).hexdigest()
    assert (unpacked / MARKER).is_file() and (unpacked / "mycifar" / "train").is_dir()
    marker_time = (unpacked / MARKER).stat().st_mtime_ns

    def fail(*args):
        raise AssertionError("unpacked again")

    monkeypatch.setattr(archive_mod, "_unpack_tar", fail)
    monkeypatch.setattr(archive_mod, "_unpack_zip", fail)
    open_dataset(tgz, cache_dir=cache)
    open_dataset(archive_zip, cache_dir=cache)
    copy = Path(shutil.copy(tgz, tmp_path / "renamed.tgz"))  # same content, other name
    assert len(open_dataset(copy, cache_dir=cache).train) == 20
    assert (unpacked / MARKER).stat().st_mtime_ns == marker_time
    assert len(list((cache / "unpacked").iterdir())) == 2
    monkeypatch.undo()

    # an unpack that never completed (no marker) is redone
    (unpacked / MARKER).unlink()
    (unpacked / "leftover").write_text("partial")
    assert len(open_dataset(tgz, cache_dir=cache).train) == 20
    assert (unpacked / MARKER).is_file() and not (unpacked / "leftover").exists()

    # other content, other folder
    other = make_tar(cifar_subset(1, 0), tmp_path / "small.tar", "small")
    assert len(open_dataset(other, cache_dir=cache).train) == 10
    assert len(list((cache / "unpacked").iterdir())) == 3


def test_archives_with_escaping_paths_are_refused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    evil_tar = tmp_path / "evil.tar"
    with tarfile.open(evil_tar, "w") as tar:
        info = tarfile.TarInfo("../../evil.jpg")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(DataError, match="escapes the target folder"):
        open_dataset(evil_tar, cache_dir=cache)

    link_tar = tmp_path / "link.tar"
    with tarfile.open(link_tar, "w") as tar:
        info = tarfile.TarInfo("images/passwd.jpg")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DataError, match="escapes the target folder"):
        open_dataset(link_tar, cache_dir=cache)

    evil_zip = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil_zip, "w") as zf:
        zf.writestr("../evil.jpg", b"evil")
    with pytest.raises(DataError, match="escapes the target folder"):
        open_dataset(evil_zip, cache_dir=cache)
    assert not list(tmp_path.rglob("evil.jpg"))
    assert not list((cache / "unpacked").iterdir())  # no half-unpacked leftovers


# --- named datasets -------------------------------------------------------------------


def build_cifar_archive(dest: Path, train: list[np.ndarray], test: list[np.ndarray]) -> Path:
    """A cifar-10-python.tar.gz in the real format: protocol-2 pickles of bytes-keyed dicts."""

    def batch(images: list[np.ndarray], offset: int) -> bytes:
        data = np.stack([im.transpose(2, 0, 1).reshape(-1) for im in images]).astype(np.uint8)
        labels = [(offset + i) % 10 for i in range(len(images))]
        names = [f"image_{offset + i}.png".encode() for i in range(len(images))]
        content = {b"batch_label": b"batch", b"labels": labels, b"data": data, b"filenames": names}
        return pickle.dumps(content, protocol=2)

    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": 2}
    members = {f"data_batch_{i + 1}": batch(train[2 * i : 2 * i + 2], 2 * i) for i in range(5)}
    members["test_batch"] = batch(test, 0)
    members["batches.meta"] = pickle.dumps(meta, protocol=2)
    with tarfile.open(dest, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return dest


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A local HTTP server on 127.0.0.1 serving the files of a folder; records GET paths."""
    served = tmp_path / "www"
    served.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield SimpleNamespace(root=served, url=f"http://127.0.0.1:{server.server_port}", requests=requests)
    server.shutdown()
    server.server_close()
    thread.join()


def test_named_cifar10_downloads_verifies_and_parses(
    cifar_subset, http_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = cifar_subset(1, 1)
    train_images = [np.asarray(Image.open(f)) for f in sorted((src / "train").rglob("*.jpg"))]
    test_images = [np.asarray(Image.open(f)) for f in sorted((src / "test").rglob("*.jpg"))][:3]
    archive = build_cifar_archive(http_server.root / "cifar-10-python.tar.gz", train_images, test_images)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()

    def point_to(url: str, checksum: str) -> None:
        remote = RemoteArchive(url, checksum, "cifar-10-python.tar.gz", parse_cifar10)
        monkeypatch.setitem(sources_mod.NAMED_DATASETS, "cifar10", remote)

    monkeypatch.chdir(tmp_path)  # so that "cifar10" cannot be an existing folder
    cache = tmp_path / "cache"
    url = f"{http_server.url}/cifar-10-python.tar.gz"
    point_to(url, "0" * 32)
    with pytest.raises(DataError, match="md5 mismatch") as err:
        open_dataset("cifar10", cache_dir=cache)
    assert "\n" not in str(err.value)
    assert not list((cache / "downloads").iterdir())  # the bad download is not kept

    point_to(url, md5)
    splits = open_dataset("cifar10", cache_dir=cache)
    assert splits.test is not None
    assert (len(splits.train), len(splits.test)) == (10, 3)
    assert splits.train.classes == CLASSES and splits.train.image_size == (32, 32)
    assert splits.train.labels.tolist() == list(range(10))
    assert splits.test.labels.tolist() == [0, 1, 2]
    batch = everything(splits.train)
    assert np.array_equal(batch.images.permute(0, 2, 3, 1).numpy(), np.stack(train_images))
    assert batch.sizes.tolist() == [[32, 32]] * 10
    assert len(http_server.requests) == 2  # the failed attempt and this one

    resized = open_dataset("cifar10", cache_dir=cache, load_size=16)  # no new download
    assert resized.train.image_size == (16, 16) and (resized.train.sizes == 32).all()
    assert len(http_server.requests) == 2

    point_to(f"{http_server.url}/missing.tar.gz", md5)
    (cache / "downloads" / "cifar-10-python.tar.gz").unlink()
    with pytest.raises(DataError, match=r"could not download .*missing\.tar\.gz.*404"):
        open_dataset("cifar10", cache_dir=cache)
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    point_to(f"http://127.0.0.1:{closed_port}/cifar.tar.gz", md5)
    with pytest.raises(DataError, match="could not download"):
        open_dataset("cifar10", cache_dir=cache)
    with pytest.raises(DataError, match="nor a dataset name"):
        open_dataset("imagenet-21k", cache_dir=cache)


# --- ordering -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hundred(cifar_subset) -> ImageDataset:
    """100 real CIFAR-10 images (10 per class), in memory."""
    return open_dataset(cifar_subset(10, 0)).train


def test_ranks_together_make_the_global_batch(hundred: ImageDataset) -> None:
    batch_size, order = 8, dict(shuffle=True, seed=3, epoch=1)
    for world in (1, 2, 3):
        glob = list(hundred.batches(batch_size * world, **order))
        ranks = [list(hundred.batches(batch_size, rank=r, world_size=world, **order)) for r in range(world)]
        assert len(glob) == hundred.num_batches(batch_size, world) == 100 // (batch_size * world)
        for b, whole in enumerate(glob):
            parts = [ranks[r][b] for r in range(world)]
            assert torch.equal(torch.cat([p.index for p in parts]), whole.index)
            assert torch.equal(torch.cat([p.images for p in parts]), whole.images)
            assert torch.equal(torch.cat([p.labels for p in parts]), whole.labels)
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(3 + 1))
    second = list(hundred.batches(8, shuffle=True, seed=3, epoch=1, rank=1, world_size=2))[2]
    assert torch.equal(second.index, perm[(2 * 2 + 1) * 8 : (2 * 2 + 2) * 8])
    assert torch.equal(second.labels, hundred.labels[second.index])


def test_epochs_and_seeds_fix_the_order(hundred: ImageDataset) -> None:
    def order(**kwargs) -> torch.Tensor:
        return torch.cat([b.index for b in hundred.batches(10, shuffle=True, **kwargs)])

    assert torch.equal(order(seed=0, epoch=0), order(seed=0, epoch=0))
    assert not torch.equal(order(seed=0, epoch=0), order(seed=0, epoch=1))
    assert torch.equal(order(seed=1, epoch=0), order(seed=0, epoch=1))  # seed + epoch
    assert sorted(order(seed=0, epoch=5).tolist()) == list(range(100))
    plain = torch.cat([b.index for b in hundred.batches(10, shuffle=False)])
    assert torch.equal(plain, torch.arange(100))
    resumed = list(hundred.batches(10, shuffle=True, epoch=2, start_batch=7))
    full = list(hundred.batches(10, shuffle=True, epoch=2))
    assert [b.index.tolist() for b in resumed] == [b.index.tolist() for b in full[7:]]


def test_last_partial_batch_is_split_over_ranks(hundred: ImageDataset) -> None:
    per_rank = [list(hundred.batches(8, shuffle=True, rank=r, world_size=3, drop_last=False)) for r in range(3)]
    assert [len(p) for p in per_rank] == [5, 5, 5] == [hundred.num_batches(8, 3, False)] * 3
    assert [len(p[-1].index) for p in per_rank] == [2, 1, 1]  # 100 - 4 * 24 = 4 left
    seen = torch.cat([p[b].index for b in range(5) for p in per_rank])
    assert torch.equal(seen, torch.randperm(100, generator=torch.Generator().manual_seed(0)))
    assert len(list(hundred.batches(24, shuffle=False))) == 4  # drop_last drops those 4


def test_batch_larger_than_dataset_is_a_data_error(hundred: ImageDataset) -> None:
    message = r"batch size 64 x 2 rank\(s\) is larger than the dataset \(100 images\)"
    with pytest.raises(DataError, match=message):
        hundred.batches(64, shuffle=True, world_size=2)
    with pytest.raises(DataError, match=message):
        hundred.num_batches(64, world_size=2)
    assert len(list(hundred.batches(512, shuffle=False, drop_last=False))) == 1


def test_streaming_yields_the_same_batches_as_memory(cifar_subset) -> None:
    root = cifar_subset(10, 0)
    memory = open_dataset(root).train
    streamed = open_dataset(root, memory_limit_gb=0, num_workers=2).train
    assert memory.in_memory and not streamed.in_memory
    assert streamed.image_size == memory.image_size and len(streamed) == len(memory)
    kwargs = dict(shuffle=True, seed=5, epoch=2, rank=1, world_size=2, start_batch=1)
    for a, b in zip(memory.batches(16, **kwargs), streamed.batches(16, **kwargs), strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.index, b.index)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.sizes, b.sizes)


def test_subset_reindexes(hundred: ImageDataset) -> None:
    picked = torch.tensor([5, 50, 99])
    sub = hundred.subset(picked)
    assert len(sub) == 3 and sub.classes == hundred.classes
    batch = everything(sub)
    assert batch.index.tolist() == [0, 1, 2]
    assert torch.equal(batch.images, everything(hundred).images[picked])
    assert torch.equal(sub.labels, hundred.labels[picked])
    mask = hundred.labels == 3
    assert torch.equal(hundred.subset(mask).labels, torch.full((10,), 3))


def test_loading_leaves_the_global_rng_untouched(cifar_subset, tmp_path: Path) -> None:
    """A cold-cache decode must not shift the global RNG (else a run's initial weights would
    depend on whether its dataset was cached before)."""
    root = tmp_path / "fresh"
    copy_images(cifar_subset(5, 0) / "train" / "cat", root, 5)
    torch.manual_seed(0)
    ds = open_dataset(root).train
    everything(ds)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))
