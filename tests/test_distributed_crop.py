"""ContrastiveCrop under DDP: two CPU processes (gloo) each localise their shard of the
dataset and end with the same full box table, in dataset order, as one process."""

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp_helpers import free_port, join_gloo

from selfsup.data import open_dataset
from selfsup.models.backbones import BackboneConfig, build_backbone
from selfsup.views.config import CIFAR10_MEAN, CIFAR10_STD
from selfsup.views.contrastive_crop import ContrastiveCrop

WORLD = 2
NUM_IMAGES = 13  # odd: shards of 7 and 6 images
# 32 px through a ResNet-18 with a dilated last stage: 2x2 heat maps, k = 0.5 for varied boxes
BACKBONE = BackboneConfig("resnet18", output_stride=16)


def _crop() -> ContrastiveCrop:
    return ContrastiveCrop(NUM_IMAGES, threshold=0.5, warmup_epochs=0, interval=1, size=32, mean=CIFAR10_MEAN,
                           std=CIFAR10_STD, batch_size=4)


def _dataset(folder: str):
    return open_dataset(folder).train.subset(torch.arange(NUM_IMAGES))


def _worker(rank: int, port: int, data: str, folder: str) -> None:
    join_gloo(rank, WORLD, port)
    backbone = build_backbone(BACKBONE)
    backbone.load_state_dict(torch.load(Path(folder) / "backbone.pt", weights_only=True))
    crop = _crop()
    crop.update(backbone, _dataset(data), torch.device("cpu"))
    torch.save({"boxes": crop.boxes, "training": backbone.training}, Path(folder) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_boxes_are_gathered_in_dataset_order(cifar_subset, tmp_path):
    data = str(cifar_subset(2, 0))
    torch.manual_seed(0)
    backbone = build_backbone(BACKBONE)
    torch.save(backbone.state_dict(), tmp_path / "backbone.pt")
    reference = _crop()
    reference.update(backbone, _dataset(data), torch.device("cpu"))
    assert (reference.boxes != torch.tensor([0.0, 0, 1, 1])).any(1).sum() >= 3  # not all whole images

    mp.start_processes(_worker, args=(free_port(), data, str(tmp_path)), nprocs=WORLD, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for r in ranks:
        assert r["training"]  # train mode restored after localisation
        assert torch.equal(r["boxes"], reference.boxes)
