"""Ready a loaded Faster R-CNN for a CPU: the exact fast path, and per-stage bf16.

Exact (fp32, the default on every CPU), measured on a 2-core Sapphire Rapids
(docs/performance.md); each step changes at most the order of float additions:

- BatchNorm folded into the convolution before it (eval BatchNorm is an affine
  map per channel): one pass over every activation less per BatchNorm;
- the backbone, FPN and RPN head in channels_last, the layout oneDNN's CPU
  convolutions run fastest;
- RoIAlign fed NCHW fp32 maps, made once per pass by a fast transpose:
  torchvision's CPU RoIAlign reads NCHW and otherwise copies each channels_last
  map again on every call, with ATen's slow 4-D copy.

bf16 (opt-in): the same, and bf16 autocast around only the stages where the
arithmetic is (backbone + FPN, the RPN head's 3x3 conv, the box head's MLP).
Every box computation stays fp32: under a global autocast the RPN's 1x1 deltas
and the box predictor come out in bf16, and torchvision's box decoding then
casts anchors and proposals to bf16 (steps of ~4 px at 1000 px).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def prepare_for_cpu(model: Any, precision: str) -> Any:
    # Any: torchvision's FasterRCNN is typed as a plain Module; its parts are reached by name.
    """Modify an eval torchvision Faster R-CNN in place for CPU inference (fp32 or bf16)."""
    fold_batchnorm(model.backbone)
    model.backbone.to(memory_format=torch.channels_last)
    model.rpn.head.to(memory_format=torch.channels_last)
    model.roi_heads.box_roi_pool = NchwRoiPool(model.roi_heads.box_roi_pool)
    if precision == "bf16":
        stage_autocast(model, torch.bfloat16)
    return model


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every eval BatchNorm that directly follows a convolution into it; returns how many.

    In torchvision's ResNet and its FPN blocks a norm layer always follows the conv
    it normalises within the same parent module (conv1/bn1, conv2/bn2, downsample.0/.1,
    Conv2dNormActivation's 0/1), so pairs are found in each parent's child order.
    """
    folded = 0
    with torch.no_grad():
        for parent in list(module.modules()):
            children = list(parent.named_children())
            for (_, first), (name, second) in zip(children, children[1:], strict=False):
                if isinstance(first, nn.Conv2d) and isinstance(second, NORMS) and _foldable(first, second):
                    _fold(first, second)
                    setattr(parent, name, nn.Identity())
                    folded += 1
    return folded


def _foldable(conv: nn.Conv2d, norm: Any) -> bool:
    if isinstance(norm, nn.BatchNorm2d) and (norm.training or norm.running_mean is None):
        return False  # training mode or no running statistics: not an affine map
    return conv.out_channels == norm.num_features if hasattr(norm, "num_features") else True


def _fold(conv: nn.Conv2d, norm: Any) -> None:
    """conv then norm == one conv: w' = w * s, b' = (b - mean) * s + beta, s = gamma / sqrt(var + eps)."""
    weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
    shift = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
    scale = weight / torch.sqrt(norm.running_var + norm.eps)
    conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    conv.bias = nn.Parameter((bias - norm.running_mean) * scale + shift, requires_grad=False)


def nchw(x: torch.Tensor) -> torch.Tensor:
    """An fp32 NCHW copy of a feature map, made fast.

    ATen's 4-D channels_last -> contiguous copy ran ~3x slower here than the same
    bytes moved as one 2-D transpose (P2 of a 1280x960 frame: 0.21 s vs 0.06 s).
    """
    x = x.float()
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous()
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view: channels_last is N, H*W, C
    return rows.transpose(1, 2).contiguous().view(n, c, h, w)


class NchwRoiPool(nn.Module):
    """MultiScaleRoIAlign, given the NCHW fp32 maps its CPU kernel reads, converted once."""

    def __init__(self, pool: Any) -> None:
        super().__init__()
        self.pool = pool

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        used = {name: nchw(features[name]) for name in self.pool.featmap_names}
        return self.pool(used, proposals, image_shapes)


class Autocast(nn.Module):
    """Run a stage under autocast(dtype) and hand fp32 on, so box arithmetic stays fp32."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, *args: Any) -> Any:
        with torch.autocast("cpu", dtype=self.dtype):
            return _as_float(self.module(*args))


def stage_autocast(model: Any, dtype: torch.dtype = torch.bfloat16) -> None:
    """bf16 where the arithmetic is; fp32 for the RPN's 1x1 outputs and the box predictor."""
    model.backbone = Autocast(model.backbone, dtype)
    model.rpn.head.conv = Autocast(model.rpn.head.conv, dtype)
    model.roi_heads.box_head = Autocast(model.roi_heads.box_head, dtype)


def _as_float(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float()
    if isinstance(value, dict):
        return type(value)((key, _as_float(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_as_float(item) for item in value)
    return value
