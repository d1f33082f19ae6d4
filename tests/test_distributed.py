"""Two CPU processes (gloo) must produce the single-process gradients for the same global batch.

This is where public libraries have had bugs: a gather without a summed backward drops
the cross-rank terms of contrastive losses, and per-rank batch norm changes the statistics.
"""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.config import build_config
from selfsup.methods import build_method
from selfsup.train.distributed import DistInfo, wrap_model
from selfsup.views.view import View

WORLD = 2
PER_RANK = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(method: str):
    small_heads = {"simclr": {"proj_hidden": 64, "proj_dim": 32},
                   "byol": {"proj_hidden": 64, "proj_dim": 32, "pred_hidden": 64}}
    return build_config({"method": method, "backbone": {"name": "resnet18"}, method: small_heads[method]})


def _views(images: torch.Tensor, sl: slice) -> list[View]:
    n = images.shape[1]
    return [View(images[i, sl], torch.zeros(n, 4)[sl], torch.zeros(n, dtype=torch.bool)[sl])
            for i in range(2)]


def _grads(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in method.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int, method_name: str, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    data = torch.load(Path(folder) / "inputs.pt", weights_only=True)
    method = build_method(_config(method_name))
    method.load_state_dict(data["state"])
    info = DistInfo(rank, WORLD, rank, torch.device("cpu"))
    method, model = wrap_model(method, info, sync_bn=True)
    out = model(_views(data["images"], slice(rank * PER_RANK, (rank + 1) * PER_RANK)))
    out.loss.backward()
    torch.save({"grads": _grads(method), "loss": out.loss.detach()}, Path(folder) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("method_name", ["simclr", "byol"])
def test_ddp_gradients_equal_single_process(method_name, tmp_path, cifar_images):
    torch.manual_seed(0)
    method = build_method(_config(method_name))
    n = WORLD * PER_RANK
    # two differently augmented "views" of the same real images: a crop-free flip and a shift
    x = cifar_images[:n]
    images = torch.stack([x, torch.roll(x.flip(3), shifts=2, dims=2)])
    torch.save({"state": method.state_dict(), "images": images}, tmp_path / "inputs.pt")

    out = method(_views(images, slice(0, n)))
    out.loss.backward()
    reference = _grads(method)

    mp.start_processes(_worker, args=(_free_port(), method_name, str(tmp_path)), nprocs=WORLD,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert torch.allclose(torch.stack([r["loss"] for r in ranks]).mean(), out.loss, rtol=1e-4)
    for r in ranks:
        assert r["grads"].keys() == reference.keys()
        for k, g in reference.items():
            # float32 round-off only (a dropped cross-rank term or per-rank BN statistics give
            # errors of order 1); the absolute term covers gradients that are zero in exact
            # arithmetic, e.g. a bias followed by batch norm (BYOL's projector output)
            diff = (r["grads"][k] - g).norm()
            assert diff < 1e-3 * g.norm() + 1e-6, (
                f"{method_name}: gradient of {k} differs under DDP (|diff| {diff:.3g}, |g| {g.norm():.3g})"
            )

