"""The speed levers as options: ``train.compile`` (and its eager fallback), ``optim.fused``,
``train.channels_last``, on real CIFAR-10 images, CPU. Each lever must leave the training
logs as they are: the same losses step by step (exactly where the arithmetic is the same,
within round-off where the kernels differ)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from test_golden import raw_config

from selfsup.config import ConfigError, OptimConfig, build_config
from selfsup.methods import METHODS
from selfsup.train import compiled
from selfsup.train.compiled import CompiledForward
from selfsup.train.optim import build_optimizer, use_fused
from selfsup.train.trainer import Trainer

STEPS = 3


def _losses(method: str, data: Path, out: Path, **sections) -> list[float]:
    """Logged loss of each step of a 3-step float64 run (the golden-trajectory setup)."""
    raw = raw_config(method, data, out)
    raw["data"]["max_images"] = STEPS * raw["train"]["batch_size"]
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    torch.set_num_threads(2)
    Trainer(build_config(raw, METHODS)).fit()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.fixture(scope="module")
def data(cifar_subset) -> Path:
    return cifar_subset(2, 0)  # 20 real CIFAR-10 images


@pytest.fixture(scope="module")
def eager(data, tmp_path_factory) -> list[float]:
    return _losses("simclr", data, tmp_path_factory.mktemp("eager"))


def test_compile_falls_back_to_eager_with_one_line(data, eager, tmp_path, monkeypatch, capsys):
    """A compiler that fails at the first call (as inductor does without a C compiler): one line
    on stderr, and the run goes on eagerly with exactly the eager losses."""

    def broken(module):
        def call(*args, **kwargs):
            raise RuntimeError("InductorError: no working C++ compiler found\nlong traceback ...")
        return call

    monkeypatch.setattr(compiled.torch, "compile", broken)
    losses = _losses("simclr", data, tmp_path, train={"compile": True})
    err = capsys.readouterr().err
    assert "selfsup: train.compile failed (RuntimeError: InductorError: no working C++ compiler found); " \
           "continuing eager" in err
    assert err.count("train.compile failed") == 1  # said once, not every step
    assert len(losses) == STEPS and losses == eager


def test_compile_refused_at_construction_falls_back():
    module = torch.nn.Linear(3, 2)

    def refuse(m):
        raise RuntimeError("Python 3.14 is not supported by torch.compile")

    forward = CompiledForward(module, refuse)
    x = torch.randn(4, 3)
    assert forward.failure == "RuntimeError: Python 3.14 is not supported by torch.compile"
    assert torch.equal(forward(x), module(x))


def test_compile_traces_the_method_forward(data, eager, tmp_path, monkeypatch, capsys):
    """The real torch.compile (TorchDynamo capturing SimCLR's forward: views, backbone, head,
    loss) with the eager backend, so no C++ code generation is timed here (inductor on this CPU
    takes minutes to build even a tiny model): same losses as eager, and no fallback."""
    monkeypatch.setattr(compiled.torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    losses = _losses("simclr", data, tmp_path, train={"compile": True})
    assert "train.compile failed" not in capsys.readouterr().err
    assert losses == pytest.approx(eager, rel=1e-9, abs=1e-9)


def test_model_errors_are_raised_by_the_eager_call():
    """A real error of the model is not swallowed: the eager call raises it again."""
    module = torch.nn.Linear(3, 2)
    forward = CompiledForward(module, lambda m: m)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        forward(torch.randn(4, 5))


@pytest.mark.parametrize(("name", "fused", "device", "expected"), [
    ("sgd", "auto", "cuda", True), ("adamw", "auto", "cuda", True), ("sgd", "auto", "cpu", False),
    ("adamw", "auto", "cpu", False), ("lars", "auto", "cuda", False), ("sgd", True, "cpu", True),
    ("adamw", False, "cuda", False),
])
def test_use_fused(name, fused, device, expected):
    assert use_fused(OptimConfig(name=name, fused=fused), torch.device(device)) is expected


def test_fused_builds_torchs_fused_optimisers():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    for name, cls in (("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)):
        for fused in (True, False, "auto"):
            opt = build_optimizer(model, OptimConfig(name=name, fused=fused))
            assert type(opt) is cls and opt.defaults["fused"] is (fused is True)
    with pytest.raises(ConfigError, match=r"optim.fused=true: torch has no fused LARS"):
        OptimConfig(name="lars", fused=True)
    with pytest.raises(ConfigError, match=r"optim.fused: 'yes' is not one of auto, True, False"):
        build_config({"optim": {"fused": "yes"}}, METHODS)


def test_fused_and_channels_last_keep_the_losses(data, eager, tmp_path):
    """Fused SGD (torch's CPU kernel) and a contiguous layout give the eager default's losses
    within float64 round-off."""
    fused = _losses("simclr", data, tmp_path / "fused", optim={"fused": True})
    contiguous = _losses("simclr", data, tmp_path / "contiguous", train={"channels_last": False})
    assert fused == pytest.approx(eager, rel=1e-10)
    assert contiguous == pytest.approx(eager, rel=1e-10)
