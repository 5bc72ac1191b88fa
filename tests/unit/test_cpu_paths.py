"""The CPU model preparation (handler/cpu_paths.py) changes speed, not results.

Small inputs and small networks: the full-size check against the reference
pipeline is tests/integration/test_cpu_accuracy.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from handler.checkpoint import build_model
from handler.cpu_paths import Autocast, NchwRoiPool, fold_batchnorm, nchw, prepare_for_cpu


def _trained_looking_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh norms are the identity map; give them statistics, so folding has work to do."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            count = module.running_mean.numel()
            module.running_mean.copy_(torch.randn(count, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(count, generator=generator) * 2 + 0.1)
            module.weight.data.copy_(torch.randn(count, generator=generator))
            module.bias.data.copy_(torch.randn(count, generator=generator) * 0.1)
    return model


def test_folding_batchnorm_keeps_a_resnets_output() -> None:
    model = _trained_looking_norms(resnet18(num_classes=10)).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
        folded = copy.deepcopy(model)
        # conv1/bn1 + 8 blocks x (bn1, bn2) + 3 downsample pairs
        assert fold_batchnorm(folded) == 20
        after = folded(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_frozen_batchnorm_is_folded_too_and_training_norms_are_not() -> None:
    frozen = _trained_looking_norms(nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), FrozenBatchNorm2d(8)))
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        before = frozen(x)
        assert fold_batchnorm(frozen) == 1
        torch.testing.assert_close(frozen(x), before, rtol=1e-5, atol=1e-5)
    training = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).train()
    assert fold_batchnorm(training) == 0 and isinstance(training[1], nn.BatchNorm2d)


def test_nchw_copy_has_the_same_values() -> None:
    x = torch.rand(1, 16, 10, 12).to(memory_format=torch.channels_last)
    copied = nchw(x)
    assert copied.is_contiguous() and torch.equal(copied, x)
    assert nchw(x.bfloat16()).dtype == torch.float32
    plain = torch.rand(1, 4, 5, 6)
    assert torch.equal(nchw(plain), plain)


def test_roi_pool_fed_nchw_gives_the_same_features() -> None:
    pool = MultiScaleRoIAlign(["0", "1"], output_size=7, sampling_ratio=2)
    generator = torch.Generator().manual_seed(2)
    features = {
        "0": torch.rand(1, 8, 50, 60, generator=generator).to(memory_format=torch.channels_last),
        "1": torch.rand(1, 8, 25, 30, generator=generator).to(memory_format=torch.channels_last),
    }
    boxes = [torch.tensor([[10.0, 12.0, 150.0, 90.0], [0.0, 0.0, 40.0, 30.0], [60.0, 20.0, 230.0, 190.0]])]
    sizes = [(200, 240)]
    assert torch.equal(NchwRoiPool(pool)(features, boxes, sizes), pool(features, boxes, sizes))


@pytest.fixture(scope="module")
def small_detector() -> nn.Module:
    model = _trained_looking_norms(build_model(64)).eval()
    model.transform.min_size, model.transform.max_size = (160,), 224  # small and quick
    return model


def test_prepared_fp32_backbone_matches_the_original(small_detector: nn.Module) -> None:
    x = torch.rand(1, 3, 160, 224, generator=torch.Generator().manual_seed(3))
    prepared = prepare_for_cpu(copy.deepcopy(small_detector), "fp32")
    with torch.inference_mode():
        want = small_detector.backbone(x)
        got = prepared.backbone(x)
    for name in want:
        # Random statistics grow activations to ~1e5: compare against the map's own scale
        # (float rounding of reordered sums is ~1e-6 of it; an unfolded or wrong shift is not).
        scale = want[name].abs().max().item()
        assert (got[name] - want[name]).abs().max().item() <= 1e-5 * scale, name
    assert isinstance(prepared.roi_heads.box_roi_pool, NchwRoiPool)


def test_bf16_runs_per_stage_and_keeps_box_maths_in_fp32(small_detector: nn.Module) -> None:
    prepared = prepare_for_cpu(copy.deepcopy(small_detector), "bf16")
    assert isinstance(prepared.backbone, Autocast) and isinstance(prepared.roi_heads.box_head, Autocast)
    assert isinstance(prepared.rpn.head.conv, Autocast)
    # The layers whose outputs are decoded into boxes stay fp32 modules, outside autocast.
    assert isinstance(prepared.roi_heads.box_predictor, FastRCNNPredictor)
    assert prepared.rpn.head.bbox_pred.weight.dtype == torch.float32
    x = torch.rand(3, 160, 224, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        features = prepared.backbone(prepared.transform([x])[0].tensors)
        [output] = prepared([x])
    assert all(f.dtype == torch.float32 for f in features.values())
    assert output["boxes"].dtype == torch.float32 and output["scores"].dtype == torch.float32
