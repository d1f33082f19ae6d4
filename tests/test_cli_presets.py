"""A pip-installed user: presets by name (shipped in the package), the right recipe for a named
dataset, suggestions for mistyped commands, and benchmarks that leave the checkout alone."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from selfsup.cli import _default_preset, main
from selfsup.config import ConfigError, find_config, load_yaml, preset_names

ROOT = Path(__file__).resolve().parents[1]


def test_presets_are_named_listed_and_found_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no checkout around: the package's own data
    names = preset_names()
    assert {"cifar10/simclr", "cifar10/byol", "camvid/pixpro"} <= set(names)
    assert find_config("cifar10/simclr") == find_config("cifar10/simclr.yaml") == find_config(
        "configs/cifar10/simclr.yaml")
    assert load_yaml(find_config("cifar10/simclr"))["method"] == "simclr"
    with pytest.raises(ConfigError, match=r"cifar10/simcrl is neither a file nor a preset \(did you mean the preset "
                                          r"'cifar10/simclr'\?\)"):
        find_config("cifar10/simcrl")
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == names and listed[0].split(maxsplit=1)[1]


def test_a_named_dataset_picks_its_own_preset_and_says_so():
    raw, notice = _default_preset("cifar10", "byol")
    assert raw == load_yaml(find_config("cifar10/byol")) and raw["views"]["size"] == 32
    assert "using the preset cifar10/byol" in notice
    raw, notice = _default_preset("/some/folder", "byol")
    assert raw == {} and "the 224 px ImageNet-style recipe" in notice


def test_the_wheel_ships_the_presets(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("selfsup-*.whl"))
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("selfsup/presets/")}
    assert {f"selfsup/presets/{name}.yaml" for name in preset_names()} == shipped


def test_train_is_an_alias_and_a_mistyped_command_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit):
        main(["pretrian"])
    assert "invalid choice: 'pretrian'" in capsys.readouterr().err.splitlines()[-1]
    with pytest.raises(SystemExit):
        main(["evla"])
    assert capsys.readouterr().err.strip().endswith("did you mean 'eval'?")
    assert main(["train", "--method", "simclr"]) == 2  # the alias parses; then: no data
    assert "no data given" in capsys.readouterr().err


def _throughput_module():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks/throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_throughput_benchmark_writes_into_the_checkout_only_when_asked(tmp_path, cifar_subset):
    bench = _throughput_module()
    default = bench.output_path(None, False)
    assert not default.is_relative_to(ROOT) and default.name == "throughput.json"
    default.parent.rmdir()
    assert bench.output_path(str(tmp_path), False) == tmp_path / "throughput.json"
    assert bench.output_path(None, True) == ROOT / "benchmarks/results/throughput.json"
    # the ceiling is the same network's step, in the method's layout and batching, timed alike
    small = {"backbone": {"cifar_stem": False}, "simclr": {"proj_hidden": 32, "proj_dim": 16}}
    row = bench.bench_method("simclr", str(cifar_subset(3, 0)), 4, 2, "cpu", str(tmp_path / "run"), small)
    assert row["layout"] == "channels_last" and row["views_per_step"] == 8 and row["precision"] == "float32"
    for part in ("end_to_end", "ceiling"):
        r = row[part]
        assert r["min"] <= r["img_s"] <= r["max"] and r["std"] >= 0
    assert row["ratio"] == pytest.approx(row["end_to_end"]["img_s"] / row["ceiling"]["img_s"])


def test_the_eta_follows_a_smoothed_per_step_rate_every_step():
    """The report's case: 20 steps, a slow start; at step 17 with 3 steps of 1 s left, the
    estimate must be near 3 s, not the 2:36 that the mean over all steps so far gave."""
    from selfsup.train.progress import StepClock

    now = [0.0]
    clock = StepClock(clock=lambda: now[0])
    durations = [120.0, 30.0, 10.0] + [1.0] * 14  # start-up, two slow steps, then steady
    for dt in durations:
        now[0] += dt
        clock.tick()
    assert clock.eta(3) == pytest.approx(3.0, rel=0.02)
    assert sum(durations) / len(durations) * 3 > 25  # the old estimate: elapsed / steps done
