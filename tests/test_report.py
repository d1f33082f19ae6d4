"""``selfsup report`` on real runs: every figure present and non-blank, every number equal to the
run's files, partial folders reported with what is missing, several runs compared."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.cli import main
from selfsup.report.run import lookup, read_run

FAST = ["backbone.cifar_stem=false", "train.knn_every=1", "train.progress=false", "train.log_every=1",
        "optim.warmup_epochs=1"]
REPORT = ["--tsne-images", "50", "--database-images", "100"]


class Page(HTMLParser):
    """The parts of a report page a reader relies on: images, links, tagged numbers, missing lines."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.numbers: list[dict[str, str]] = []
        self.missing: dict[str, str] = {}
        self._open: dict[str, str] | None = None
        self._text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.sources.append(a["src"])
        if tag in ("a", "link") and "href" in a and not a["href"].startswith("#"):
            self.sources.append(a["href"])
        if (tag == "td" and a.get("class") == "num") or (tag == "p" and a.get("class") == "missing"):
            self._open, self._text = {"tag": tag, **a}, []

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._open is not None and tag == self._open["tag"]:
            text = "".join(self._text)
            if tag == "td":
                self.numbers.append({**self._open, "text": text})
            else:
                self.missing[self._open["data-run"]] = text
            self._open = None


def _report(out: Path, *runs: Path, extra: tuple[str, ...] = ()) -> Page:
    assert main(["report", *map(str, runs), "--out", str(out), *REPORT, *extra]) == 0
    page = Page((out / "report.html").read_text())
    missing_files = [s for s in page.sources if not (out / s).is_file()]
    assert not missing_files, f"the page references files that are not there: {missing_files}"
    return page


def _assert_picture(path: Path, min_size: tuple[int, int] = (200, 150)) -> np.ndarray:
    """A decodable PNG of at least ``min_size`` that is not blank (its pixels vary)."""
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= min_size[0] and im.height >= min_size[1], (path, im.size)
        pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20, f"{path.name} is (nearly) blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, f"{path.name} has almost no colours"
    return pixels


def _numeric_leaves(record, prefix=""):
    if isinstance(record, dict):
        return {k for key, v in record.items() for k in _numeric_leaves(v, f"{prefix}{key}.")}
    if isinstance(record, list) and len(record) <= 12:
        return {k for i, v in enumerate(record) for k in _numeric_leaves(v, f"{prefix}{i}.")}
    return {prefix[:-1]} if isinstance(record, (int, float)) and not isinstance(record, bool) else set()


def _assert_numbers_match(page: Page, runs: dict[str, Path]) -> None:
    """Every tagged number is the one in its file: results JSON by key path, the budget recomputed
    here from last.pt, config.yaml, metrics.jsonl; and every number of every result JSON is shown."""
    assert page.numbers
    shown: dict[tuple[str, str], set[str]] = {}
    for n in page.numbers:
        run = runs[n["data-run"]]
        value, text = float(n["data-value"]), n["text"]
        assert float(text) == pytest.approx(value, rel=6e-4, abs=1e-12), n  # written to 4 significant digits
        file, key = n["data-file"], n["data-key"]
        shown.setdefault((n["data-run"], file), set()).add(key)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        if file.endswith(".json"):
            assert lookup(json.loads((run / file).read_text()), key) == value, n
        elif file == "metrics.jsonl":
            assert key == "online_knn" and value == [r["online_knn"] for r in records if "online_knn" in r][-1]
        else:
            assert file == "budget", n
            steps = records[-1]["step"]
            wall = sum(r["summary"]["epoch_time_s"] for r in records if "summary" in r)
            if key in ("images_seen", "images_per_s"):  # needs the batch size of the run's config
                batch = torch.load(run / "last.pt", weights_only=True)["config"]["train"]["batch_size"]
                expected = steps * batch / (wall if key == "images_per_s" else 1)
            elif key == "world_size":
                expected = json.loads((run / "environment.json").read_text())["world_size"]
            else:
                expected = {"steps": steps, "epochs": records[-1]["epoch"], "wall_time_s": wall}[key]
            assert value == pytest.approx(expected, rel=1e-12), n
    for name, run in runs.items():
        for result in run.glob("*.json"):
            if result.name != "environment.json":
                unshown = _numeric_leaves(json.loads(result.read_text())) - shown.get((name, result.name), set())
                assert not unshown, (result.name, unshown)


@pytest.fixture(scope="module")
def cifar_run(cifar_subset, tmp_path_factory) -> tuple[Path, Path]:
    """A 2-epoch SimCLR run on real CIFAR-10 (100 train / 50 test images) with a linear probe
    and a random-init kNN baseline written beside it."""
    data, out = cifar_subset(10, 5), tmp_path_factory.mktemp("report") / "simclr-run"
    assert main(["pretrain", "--method", "simclr", "--data", str(data), "--config", "cifar10/simclr",
                 "--epochs", "2", "--batch-size", "32", "--out", str(out), "--set", *FAST]) == 0
    assert main(["eval", "linear", "--checkpoint", str(out), "--data", str(data), "--epochs", "3"]) == 0
    assert main(["eval", "knn", "--checkpoint", str(out), "--data", str(data), "--random-init"]) == 0
    return out, data


def test_report_of_a_cifar_run_shows_every_figure_and_the_runs_numbers(cifar_run, tmp_path, capsys):
    run, _ = cifar_run
    out = tmp_path / "page"
    page = _report(out, run)
    assert "report written to" in capsys.readouterr().out
    expected = {"curves.png", "simclr-run_tsne.png", "simclr-run_retrieval.png", "simclr-run_views.png",
                "simclr-run_crops.png"}
    assert expected <= set(page.sources)
    for name in expected:
        _assert_picture(out / name)
    # the curves show every scalar the run logged: the common ones and SimCLR's own
    from selfsup.report.plots import curve_keys

    keys = curve_keys([read_run(run)])
    assert keys[:5] == ["loss", "lr", "online_knn", "z_std", "z_eff_rank"] and {"align", "uniform"} <= set(keys)
    # the t-SNE shows the run beside its random-init baseline: two panels of class-coloured points
    tsne = _assert_picture(out / "simclr-run_tsne.png")
    left, right = tsne[:, : tsne.shape[1] // 2], tsne[:, tsne.shape[1] // 2 :]
    assert all((np.abs(p - p[:1, :1]).sum(-1) > 60).sum() > 500 for p in (left, right))
    # the retrieval grid marks neighbours green (right class) or red (wrong class)
    grid = _assert_picture(out / "simclr-run_retrieval.png").astype(int)
    red = ((grid[..., 0] > 180) & (grid[..., 1] < 80) & (grid[..., 2] < 80)).sum()
    green = ((grid[..., 1] > 120) & (grid[..., 0] < 60) & (grid[..., 2] < 110)).sum()
    assert red > 1000 and green > 100  # after 2 epochs on 100 images most neighbours are wrong, some right
    _assert_numbers_match(page, {"simclr-run": run})
    keys = {(n["data-file"], n["data-key"]) for n in page.numbers}
    assert {("knn.json", "knn_top1"), ("knn_random_init.json", "knn_top1"), ("linear.json", "last_epoch_top1"),
            ("budget", "images_seen"), ("budget", "wall_time_s"), ("budget", "images_per_s")} <= keys
    # what was not evaluated is named, with the command that would produce it
    assert "dense.json (selfsup eval dense)" in page.missing["simclr-run"]
    assert "cluster.json" in page.missing["simclr-run"] and "linear.json" not in page.missing["simclr-run"]
    text = (out / "report.html").read_text()
    assert "torchvision" in text and "device" in text and "temperature: 0.5" in text  # versions and config


def test_a_folder_missing_results_gives_a_partial_report_and_runs_are_compared(cifar_run, tmp_path):
    run, _ = cifar_run
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(run / "metrics.jsonl", partial)
    shutil.copy(run / "linear.json", partial)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "page"
    page = _report(out, run, partial, empty)
    assert set(page.missing) == {"simclr-run", "partial", "empty"}
    for phrase in ("last.pt", "config.yaml", "environment.json", "knn.json", "dense.json"):
        assert phrase in page.missing["partial"]
    assert "linear.json" not in page.missing["partial"] and "metrics.jsonl" in page.missing["empty"]
    # no pictures that need a checkpoint for the partial folders, the curves overlaid for all
    assert not any(s.startswith(("partial_", "empty_")) for s in page.sources) and "curves.png" in page.sources
    _assert_picture(out / "curves.png")
    # one summary row per run, and the partial run's linear result is its own file's number
    rows = {(n["data-run"], n["data-file"], n["data-key"]): float(n["data-value"]) for n in page.numbers}
    assert rows[("partial", "linear.json", "last_epoch_top1")] == json.loads((partial / "linear.json").read_text())[
        "last_epoch_top1"]
    assert not any(r[0] == "empty" for r in rows)
    _assert_numbers_match(page, {"simclr-run": run, "partial": partial})
    text = (out / "report.html").read_text()
    assert text.count('<span class="swatch"') == 3


def test_report_of_a_camvid_run_with_dense_and_cluster_results(camvid_small, tmp_path):
    run = tmp_path / "camvid-run"
    assert main(["pretrain", "--method", "byol", "--data", str(camvid_small), "--config", "cifar10/byol",
                 "--epochs", "1", "--batch-size", "8", "--out", str(run), "--set", "backbone.cifar_stem=false",
                 "views.size=32", "data.load_size=64", "train.knn_every=0", "train.progress=false",
                 "optim.warmup_epochs=0", "train.log_every=1"]) == 0
    assert main(["eval", "dense", "--checkpoint", str(run), "--data", str(camvid_small), "--size", "64", "80",
                 "--epochs", "2", "--batch-size", "4"]) == 0
    assert main(["eval", "cluster", "--checkpoint", str(run), "--data", str(camvid_small), "--size", "64", "80",
                 "--protocol", "pixel", "--seeds", "2"]) == 0
    out = tmp_path / "page"
    page = _report(out, run)
    # the evaluations' own overlay pictures are on the page, copied beside it
    assert {"camvid-run_dense.png", "camvid-run_cluster_pixel.png", "camvid-run_views.png"} <= set(page.sources)
    for name in ("camvid-run_dense.png", "camvid-run_cluster_pixel.png"):
        _assert_picture(out / name, (150, 150))
        assert (out / name).read_bytes() == (run / name.removeprefix("camvid-run_")).read_bytes()
    _assert_picture(out / "camvid-run_views.png")
    keys = {(n["data-file"], n["data-key"]) for n in page.numbers}
    assert {("dense.json", "miou"), ("dense.json", "per_class_iou.road"), ("cluster.json", "pixel.miou.mean")} <= keys
    _assert_numbers_match(page, {"camvid-run": run})
    # CamVid has no class folders: no t-SNE or retrieval, and the page says why
    assert "held-out features" in page.missing["camvid-run"] and "no labelled held-out split" in page.missing[
        "camvid-run"]
    assert not any("tsne" in s or "retrieval" in s for s in page.sources)


# --- the TensorBoard sink ---------------------------------------------------------------------


def _tensorboard_run(data: Path, out: Path, *extra: str) -> list[dict]:
    assert main(["pretrain", "--method", "simclr", "--data", str(data), "--config", "cifar10/simclr", "--epochs", "2",
                 "--batch-size", "32", "--out", str(out), "--log", "tensorboard", "--set", *FAST, *extra]) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_sink_writes_the_metrics_values(cifar_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, data = cifar_run
    records = _tensorboard_run(data, tmp_path / "tb")
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    steps = [r for r in records if "summary" not in r]
    epochs = [r for r in records if "summary" in r]
    for key in ("loss", "lr", "z_std", "z_eff_rank", "align", "uniform", "img_per_s"):
        logged = [(e.step, e.value) for e in events.Scalars(f"train/{key}")]
        assert logged == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in steps], key
    assert [(e.step, e.value) for e in events.Scalars("monitor/online_knn")] == [
        (r["step"], pytest.approx(r["online_knn"], rel=1e-6)) for r in epochs]
    assert [e.value for e in events.Scalars("epoch/loss")] == [pytest.approx(r["summary"]["loss"]) for r in epochs]


def test_without_tensorboard_one_line_says_so_and_the_run_completes(cifar_run, tmp_path, monkeypatch, capsys):
    import sys

    for module in ("tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
    _, data = cifar_run
    records = _tensorboard_run(data, tmp_path / "no-tb")
    notes = [line for line in capsys.readouterr().err.splitlines() if "tensorboard" in line and "package" in line]
    assert notes == ["selfsup: train.log=tensorboard but the tensorboard package is not installed (pip install "
                     "'selfsup[tensorboard]'); logging to metrics.jsonl only"]
    assert len(records) == 2 * 3 + 2 and not list((tmp_path / "no-tb").glob("events.out.tfevents.*"))


# --- progress bars ----------------------------------------------------------------------------


class _Terminal:
    """A stand-in stderr that says it is an interactive terminal and keeps what is written."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_long_evaluations_show_a_bar_on_a_terminal_only(cifar_run, monkeypatch):
    import sys

    from selfsup.data import open_dataset
    from selfsup.eval.linear import linear_probe
    from selfsup.train.runs import load_run
    from selfsup.views.features import extract_features

    run, data = cifar_run
    _, method = load_run(run)
    test = open_dataset(data).test
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    feats, labels = extract_features(method.backbone, test, 32, (0.5,) * 3, (0.25,) * 3, batch_size=10)
    linear_probe(feats, labels, feats, labels, 10, epochs=3, lr=0.1, batch_size=25)
    assert "features:   0%" in terminal.text and "0/5" in terminal.text  # 50 images in batches of 10
    assert "linear probe epochs:   0%" in terminal.text and "0/3" in terminal.text
    assert terminal.text.endswith(" \r")  # the bars are cleared when done
    monkeypatch.setattr(terminal, "isatty", lambda: False)  # a log file: no bar
    terminal.text = ""
    extract_features(method.backbone, test, 32, (0.5,) * 3, (0.25,) * 3, batch_size=10)
    assert terminal.text == ""
