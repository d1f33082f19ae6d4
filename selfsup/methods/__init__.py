"""All pre-training methods, by name (``selfsup methods`` prints this table)."""

from selfsup.methods.barlow import BarlowTwins
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.methods.beit import BEiT
from selfsup.methods.byol import BYOL
from selfsup.methods.cae import CAE
from selfsup.methods.cmc import CMC
from selfsup.methods.colorization import Colorization
from selfsup.methods.context import Context
from selfsup.methods.counting import Counting
from selfsup.methods.dino import DINO
from selfsup.methods.exemplar import Exemplar
from selfsup.methods.ibot import IBOT
from selfsup.methods.instdisc import InstDisc
from selfsup.methods.invaspread import InvaSpread
from selfsup.methods.jigclu import JigClu
from selfsup.methods.jigsaw import Jigsaw
from selfsup.methods.mae import MAE
from selfsup.methods.maskcontrast import MaskContrast
from selfsup.methods.moco import MoCo, MoCoV2
from selfsup.methods.mocov3 import MoCoV3
from selfsup.methods.pic import PIC
from selfsup.methods.pixcontrast import PixContrast
from selfsup.methods.pixpro import PixPro
from selfsup.methods.rotation import Rotation
from selfsup.methods.simclr import SimCLR
from selfsup.methods.simmim import SimMIM
from selfsup.methods.simsiam import SimSiam
from selfsup.methods.swav import SwAV
from selfsup.methods.vicreg import VICReg

METHODS: dict[str, type[Method]] = {
    # instance discrimination with negatives
    "instdisc": InstDisc,
    "exemplar": Exemplar,
    "invaspread": InvaSpread,
    "pic": PIC,
    "simclr": SimCLR,
    "mocov1": MoCo,
    "mocov2": MoCoV2,
    "mocov3": MoCoV3,
    # without negatives
    "byol": BYOL,
    "simsiam": SimSiam,
    "barlow": BarlowTwins,
    "vicreg": VICReg,
    # clustering and self-distillation (multi-crop)
    "swav": SwAV,
    "dino": DINO,
    # pixel level
    "pixcontrast": PixContrast,
    "pixpro": PixPro,
    # unsupervised semantic segmentation (saliency masks)
    "maskcontrast": MaskContrast,
    # classic pretext tasks (pretext.py: a classification of the views, held-out accuracy)
    "rotation": Rotation,
    "jigsaw": Jigsaw,
    "context": Context,
    "counting": Counting,
    "jigclu": JigClu,
    "colorization": Colorization,
    "cmc": CMC,
    # masked image modelling (ViT backbones)
    "mae": MAE,
    "simmim": SimMIM,
    "cae": CAE,
    "beit": BEiT,
    "ibot": IBOT,
}


def build_method(cfg, run: RunInfo | None = None) -> Method:
    """The method named by ``cfg.method`` (a PretrainConfig) on a freshly built backbone."""
    from selfsup.models.backbones import build_backbone

    return METHODS[cfg.method](build_backbone(cfg.backbone), cfg.params, run or RunInfo())


__all__ = ["METHODS", "Method", "RunInfo", "StepOutput", "build_method"]
