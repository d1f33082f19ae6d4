"""The sync-free step check (``selfsup.train.syncs``) on the CPU: the same code path the device
script runs under CUDA's sync debug mode, here with the mode unavailable, and its reporting of
a synchronising call through a guard that treats ``Tensor.tolist`` as one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from test_golden import raw_config

from selfsup.config import build_config
from selfsup.methods import METHODS
from selfsup.train.syncs import check_sync_free
from selfsup.train.trainer import Trainer


@pytest.fixture
def trainer(cifar_subset, tmp_path) -> Trainer:
    raw = raw_config("simclr", cifar_subset(2, 0), tmp_path)
    return Trainer(build_config(raw, METHODS))


def _batches(trainer: Trainer) -> Iterator:
    return trainer.splits.train.batches(trainer.micro_batch, shuffle=True, seed=0, drop_last=True)


def test_steps_run_unchecked_on_cpu(trainer):
    before = [p.detach().clone() for p in trainer.method.parameters()]
    result = check_sync_free(trainer, _batches(trainer), steps=2, warmup=1)
    assert result.ok is None and result.steps == 2 and result.error is None
    assert result.mode == "unavailable: CUDA's sync debug mode needs a CUDA device, not cpu"
    assert trainer.step == 3  # one warm-up and two checked steps trained the model
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.method.parameters(), strict=True))


@contextlib.contextmanager
def _tolist_syncs() -> Iterator[None]:
    """Inside: ``Tensor.tolist`` raises as CUDA's sync debug mode raises on a synchronising call."""
    original = torch.Tensor.tolist

    def tolist(self):
        raise RuntimeError("called a synchronizing CUDA operation")

    torch.Tensor.tolist = tolist
    try:
        yield
    finally:
        torch.Tensor.tolist = original


def test_a_synchronising_call_is_reported_with_its_line(trainer):
    result = check_sync_free(trainer, _batches(trainer), steps=2, warmup=0, guard=_tolist_syncs)
    assert result.ok is False and result.steps == 0
    assert result.error == "called a synchronizing CUDA operation"
    # the first .tolist() of a step: the crop geometry of the views (on host tensors, so no
    # sync on a GPU; here it stands in for one)
    assert result.where.startswith("selfsup/views/ops.py:") and "tolist()" in result.where
    assert torch.Tensor.tolist is not None and torch.tensor([1]).tolist() == [1]  # the guard undid itself


def test_other_errors_are_raised(trainer):
    @contextlib.contextmanager
    def broken() -> Iterator[None]:
        raise RuntimeError("out of memory")
        yield

    with pytest.raises(RuntimeError, match="out of memory"):
        check_sync_free(trainer, _batches(trainer), steps=1, warmup=0, guard=broken)
