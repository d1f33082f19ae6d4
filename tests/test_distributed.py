"""Two CPU processes (gloo) must produce the single-process gradients for the same global batch.

This is where public libraries have had bugs: a gather without a summed backward drops
the cross-rank terms of contrastive losses, and per-rank batch norm changes the statistics.
"""

import os

import pytest
import torch
from ddp_helpers import free_port

from selfsup.config import build_config
from selfsup.methods import METHODS, build_method
from selfsup.train.distributed import DistInfo, wrap_model
from selfsup.views.view import View

WORLD = 2
PER_RANK = 6


def _config(method: str):
    small_heads = {"simclr": {"proj_hidden": 64, "proj_dim": 32},
                   "byol": {"proj_hidden": 64, "proj_dim": 32, "pred_hidden": 64}}
    return build_config({"method": method, "backbone": {"name": "resnet18"}, method: small_heads[method]}, METHODS)


def _views(images: torch.Tensor, sl: slice) -> list[View]:
    n = images.shape[1]
    return [View(images[i, sl], torch.zeros(n, 4)[sl], torch.zeros(n, dtype=torch.bool)[sl])
            for i in range(2)]


def _grads(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in method.named_parameters() if p.grad is not None}


def _worker(rank: int, method_name: str, state: dict, images: torch.Tensor) -> dict:
    method = build_method(_config(method_name)).double()
    method.load_state_dict(state)
    info = DistInfo(rank, WORLD, rank, torch.device("cpu"))
    method, model = wrap_model(method, info, sync_bn=True)
    out = model(_views(images, slice(rank * PER_RANK, (rank + 1) * PER_RANK)))
    out.loss.backward()
    return {"grads": _grads(method), "loss": out.loss.detach()}


@pytest.mark.parametrize("method_name", ["simclr", "byol"])
def test_ddp_gradients_equal_single_process(method_name, cifar_images, ddp_pool):
    torch.manual_seed(0)
    method = build_method(_config(method_name)).double()
    n = WORLD * PER_RANK
    # two differently augmented "views" of the same real images: a crop-free flip and a shift;
    # float64 throughout, so the comparison is not at the mercy of float32 summation order
    x = cifar_images[:n].double()
    images = torch.stack([x, torch.roll(x.flip(3), shifts=2, dims=2)])
    ranks = ddp_pool.run(_worker, method_name, method.state_dict(), images)

    out = method(_views(images, slice(0, n)))
    out.loss.backward()
    reference = _grads(method)

    assert torch.allclose(torch.stack([r["loss"] for r in ranks]).mean(), out.loss, rtol=1e-4)
    for r in ranks:
        assert r["grads"].keys() == reference.keys()
        for k, g in reference.items():
            # in float64 only round-off remains (float32 round-off, amplified by batch norm over
            # 6 real images, reached 6e-3 of the first layer's gradient on an AMD CPU), while a
            # dropped cross-rank term or per-rank BN statistics give errors of order 1; the
            # absolute term covers gradients that are zero in exact arithmetic, e.g. a bias
            # followed by batch norm (BYOL's projector output)
            diff = (r["grads"][k] - g).norm()
            assert diff < 1e-6 * g.norm() + 1e-9, (
                f"{method_name}: gradient of {k} differs under DDP (|diff| {diff:.3g}, |g| {g.norm():.3g})"
            )



def test_torchrun_two_cpu_processes_train_and_checkpoint(cifar_subset, tmp_path):
    """The same CLI command under torchrun (gloo): sharded batches, rank-0-only outputs."""
    import subprocess
    import sys

    data = cifar_subset(10, 5)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), "-m", "selfsup.cli", "pretrain", "--method", "simclr",
           "--data", str(data), "--config", "cifar10/simclr",
           "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "run"),
           "--set", "backbone.cifar_stem=false", "train.sync_bn=true", "train.progress=false",
           "train.log_every=1", "optim.warmup_epochs=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = torch.load(tmp_path / "run/last.pt", weights_only=True)
    # 100 images, global batch 32 over 2 ranks (16 each): 3 steps; one metrics line per step
    assert state["step"] == 3 and state["epoch"] == 1
    lines = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 + 1  # rank 0 only: 3 step records + 1 epoch record
    assert proc.stderr.count("selfsup: simclr on 100 images") == 1
