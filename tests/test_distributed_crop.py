"""ContrastiveCrop under DDP: two CPU processes (gloo) each localise their shard of the
dataset and end with the same full box table, in dataset order, as one process."""

import torch

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


def _worker(rank: int, data: str, state: dict) -> dict:
    backbone = build_backbone(BACKBONE)
    backbone.load_state_dict(state)
    crop = _crop()
    crop.update(backbone, _dataset(data), torch.device("cpu"))
    return {"boxes": crop.boxes, "training": backbone.training}


def test_ddp_boxes_are_gathered_in_dataset_order(cifar_subset, ddp_pool):
    data = str(cifar_subset(2, 0))
    torch.manual_seed(0)
    backbone = build_backbone(BACKBONE)
    ranks = ddp_pool.run(_worker, data, backbone.state_dict())
    reference = _crop()
    reference.update(backbone, _dataset(data), torch.device("cpu"))
    assert (reference.boxes != torch.tensor([0.0, 0, 1, 1])).any(1).sum() >= 3  # not all whole images

    assert len(ranks) == WORLD
    for r in ranks:
        assert r["training"]  # train mode restored after localisation
        assert torch.equal(r["boxes"], reference.boxes)
