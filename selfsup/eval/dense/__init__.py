"""Dense evaluation: a per-pixel linear probe on frozen features, and tiny-budget fine-tuning.

Probe (the usual frozen-feature segmentation protocol, e.g. as in DenseCL / PixPro /
MaskContrast linear evaluations): the network stays frozen in eval mode; the last feature
map (B, C, h, w) of ``Method.dense_network`` (a ResNet's last stage at whatever output stride
it has, dilated or not; a ViT's patch tokens; MaskContrast's 256-d DeepLab-v3 decoder) is
standardised per channel with the training split's statistics (fixed, like a BatchNorm
without affine parameters), a 1x1 convolution maps it to K class logits, which are
bilinearly upsampled to the label map's size; the loss is the per-pixel cross entropy without
the ignore index. Because the backbone is frozen, the training split's
feature maps are computed once (kept in fp16 when they fit ``feature_memory_gb``, else
recomputed per batch). SGD with momentum 0.9 and a per-step cosine schedule, no
augmentation. The probe is evaluated once, after its LAST step: mIoU, per-class IoU and
pixel accuracy on the validation split from one confusion matrix over all its pixels
(see ``selfsup.eval.segmentation_metrics``); the training split's scores are reported too.

Inputs: ResNets see the images at the load size. A ViT's position embeddings are built for
``backbone.img_size``, so its input is the whole image resized to that square; its logits
are still upsampled to the label size.

Fine-tuning (``finetune_steps`` > 0): starting from the trained probe (LP-FT, Kumar et al.,
2022), the whole network (backbone in train mode + 1x1 head) is trained for that many SGD
steps on random crops (area ``finetune_scale``, the images' aspect ratio) and horizontal
flips of the training pairs, resized back to the load size; then evaluated the same way.
"""

from selfsup.eval.dense.config import DenseConfig
from selfsup.eval.dense.figure import DenseFigure, save_figure
from selfsup.eval.dense.run import DenseOutput, dense_eval

__all__ = ["DenseConfig", "DenseFigure", "DenseOutput", "dense_eval", "save_figure"]
