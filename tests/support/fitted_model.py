"""A SynthDet checkpoint that behaves like a trained one: random trunk, least-squares heads.

The accuracy bound (synthdet.matching) only means something on a model whose
detections are confident and varied; no trained weights can be downloaded here,
so this recipe makes one, deterministically, in about 30 s of CPU. The tests
build it once per session (tests/conftest.py: `fitted_checkpoint`);
benchmarks/bench_inprocess.py uses it when no --checkpoint is given. On the app
frames `make_test_jpeg(1280, 960, seed=100..109)` the reference pipeline finds
12-48 detections per frame above 0.5 (about 200 in all), 3-20 labels per frame,
scores 0.5-0.99. It detects the coloured rectangles of those frames and nothing
of the real world: a test and benchmark model only.

Why not plain random weights: a random Faster R-CNN has no margins anywhere.
Its RPN objectness varies by ~0.5 logit, its box regressors move nothing, so
proposals and final boxes sit on plateaus of near-equal anchors and a 1e-2
relative change in the features (bf16) picks other anchors: measured, 0.5 % of
the proposals and ~20 % of the detections survive. A trained detector's
regressors pull neighbouring proposals onto the same object, so which anchor
wins does not move the box. This recipe gets that property in seconds and
deterministically, without training the network:

- keep every random weight of the backbone, FPN, RPN conv and box head (seed);
- ground truth: the coloured rectangles that `serving.contract.make_test_jpeg`
  draws (its seeded generator is replayed here), on FIT_SEEDS frames; class of a
  rectangle = 1 + its colour's octant (8 classes: (r//128, g//128, b//128));
- fit the four head layers (1x1 convs / linears = linear maps) by ridge
  regression on the frozen features, as a linear probe:
    rpn.head.cls_logits   objectness: +1 for anchors with IoU >= 0.6, -1 below 0.3
    rpn.head.bbox_pred    box deltas of positive anchors to their rectangle
    box_predictor.bbox_pred  deltas of proposals (IoU >= 0.5) to their rectangle
    box_predictor.cls_score  one-hot class (background for IoU < 0.5)
  then scale the class logits by CLS_SCALE and bisect the background bias so the
  reference pipeline finds about TARGET detections per fit frame.

Scores and boxes depend on every layer, so precision errors anywhere show; only
the artificial near-ties of random heads are gone.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import box_iou
from torchvision.transforms.functional import to_tensor

from handler.checkpoint import build_model
from serving.contract import make_test_jpeg
from synthdet.demo_model import unity_config

FIT_SEEDS = tuple(range(200, 212))
RIDGE = 0.1  # relative to the mean feature energy; larger = smoother probes, less noise gain
OBJECTNESS_SCALE = 4.0
CLS_SCALE = 2.5
FG_SCALE = 6.0
PCS = 16
TARGET = 30
NEG_PER_LEVEL = 4000


def rectangles(width: int, height: int, seed: int) -> torch.Tensor:
    """The rectangles make_test_jpeg(width, height, seed=seed) draws (x0, y0, x1, y1) + colour class."""
    rng = np.random.default_rng(seed)
    rng.integers(60, 200, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    rows = []
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        x1 = min(width - 1, x0 + int(rng.integers(30, max(31, width // 4))))
        y1 = min(height - 1, y0 + int(rng.integers(30, max(31, height // 3))))
        r, g, b = (int(v) for v in rng.integers(0, 255, size=3))
        label = 1 + (r // 128) * 4 + (g // 128) * 2 + b // 128  # 8 colour classes, 1..8
        rows.append([x0, y0, x1, y1, label])
    return torch.tensor(rows, dtype=torch.float32)


def _whitened_components(x: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(count x D: top principal directions scaled so each projection has unit variance, mean of x)."""
    mean = x.mean(0)
    centred = (x - mean).double()
    values, vectors = torch.linalg.eigh(centred.T @ centred / (len(x) - 1))
    order = values.argsort(descending=True)[:count]
    return (vectors[:, order].T / values[order].sqrt()[:, None]).float(), mean


def _ridge(
    x: torch.Tensor, y: torch.Tensor, balance: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares y ~ x W^T + b with a ridge; returns (W: out x in, b: out).

    `balance` (bool per row): weight the True and False rows to equal total weight.
    """
    x64 = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    y64 = y.double()
    if balance is not None:
        root = (
            torch.where(balance, len(x) / (2.0 * balance.sum()), len(x) / (2.0 * (~balance).sum()))
            .double()
            .sqrt()
        )
        x64, y64 = x64 * root[:, None], y64 * root[:, None]
    gram = x64.T @ x64
    gram += RIDGE * gram.diagonal().mean() * torch.eye(len(gram), dtype=torch.float64)
    solution = torch.linalg.solve(gram, x64.T @ y64)
    return solution[:-1].T.float(), solution[-1].float()


Frame = dict[str, Any]


def _frames(model: Any) -> list[Frame]:
    out = []
    for seed in FIT_SEEDS:
        jpeg = make_test_jpeg(1280, 960, seed=seed)
        image = to_tensor(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        batch, _ = model.transform([image])
        scale = batch.image_sizes[0][0] / image.shape[1]
        truth = rectangles(1280, 960, seed)
        out.append(
            {
                "batch": batch,
                "features": model.backbone(batch.tensors),
                "boxes": truth[:, :4] * scale,
                "labels": truth[:, 4].long(),
            }
        )
    return out


def _fit_rpn(model: Any, frames: list[Frame]) -> None:
    head, generator = model.rpn.head, torch.Generator().manual_seed(0)
    anchors_per_position = head.cls_logits.out_channels
    coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    xs: list[list[torch.Tensor]] = [[] for _ in range(anchors_per_position)]
    objectness: list[list[torch.Tensor]] = [[] for _ in range(anchors_per_position)]
    deltas: list[list[torch.Tensor]] = [[] for _ in range(anchors_per_position)]
    positive: list[list[torch.Tensor]] = [[] for _ in range(anchors_per_position)]
    for frame in frames:
        features = list(frame["features"].values())
        anchors = model.rpn.anchor_generator(frame["batch"], features)[0]
        start = 0
        for feature in features:
            t = head.conv(feature)[0]  # C x H x W
            count = t.shape[1] * t.shape[2] * anchors_per_position
            level = anchors[start : start + count].view(t.shape[1] * t.shape[2], anchors_per_position, 4)
            start += count
            rows = t.flatten(1).T  # (H*W) x C
            for a in range(anchors_per_position):
                iou = box_iou(level[:, a], frame["boxes"])
                best, match = iou.max(1)
                pos = (best >= 0.6).nonzero().flatten()
                neg = (best < 0.3).nonzero().flatten()
                neg = neg[torch.randperm(len(neg), generator=generator)[:NEG_PER_LEVEL]]
                pick = torch.cat([pos, neg])
                xs[a].append(rows[pick])
                objectness[a].append(torch.cat([torch.ones(len(pos)), -torch.ones(len(neg))]))
                deltas[a].append(coder.encode_single(frame["boxes"][match[pos]], level[pos, a]))
                positive[a].append(torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).bool())
    for a in range(anchors_per_position):
        x, y, d, p = torch.cat(xs[a]), torch.cat(objectness[a]), torch.cat(deltas[a]), torch.cat(positive[a])
        w, b = _ridge(x, y[:, None], balance=p)
        head.cls_logits.weight[a] = OBJECTNESS_SCALE * w[0][:, None, None]
        head.cls_logits.bias[a] = OBJECTNESS_SCALE * b[0]
        w, b = _ridge(x[p], d)
        head.bbox_pred.weight[4 * a : 4 * a + 4] = w[:, :, None, None]
        head.bbox_pred.bias[4 * a : 4 * a + 4] = b


def _box_features(model: Any, frame: Frame) -> tuple[torch.Tensor, list[torch.Tensor]]:
    proposals, _ = model.rpn(frame["batch"], frame["features"])
    pooled = model.roi_heads.box_roi_pool(frame["features"], proposals, frame["batch"].image_sizes)
    return model.roi_heads.box_head(pooled), proposals


Pass = tuple[torch.Tensor, list[torch.Tensor], list[tuple[int, int]]]


def _fit_box_head(model: Any, frames: list[Frame], num_classes: int) -> list[Pass]:
    predictor, coder = model.roi_heads.box_predictor, model.roi_heads.box_coder
    xs: list[torch.Tensor] = []
    onehots: list[torch.Tensor] = []
    pos_x: list[torch.Tensor] = []
    deltas: list[torch.Tensor] = []
    passes: list[Pass] = []
    for frame in frames:
        h, proposals = _box_features(model, frame)
        passes.append((h, proposals, frame["batch"].image_sizes))
        iou = box_iou(proposals[0], frame["boxes"])
        best, match = iou.max(1)
        labels = torch.where(best >= 0.5, frame["labels"][match], torch.zeros_like(match))
        xs.append(h)
        onehots.append(torch.nn.functional.one_hot(labels, num_classes).float())
        pos = best >= 0.5
        pos_x.append(h[pos])
        deltas.append(coder.encode_single(frame["boxes"][match[pos]], proposals[0][pos]))
    # foreground vs background: a balanced linear probe; the background logit is its negative
    h_all, labels_all = torch.cat(xs), torch.cat(onehots).argmax(1)
    fg = labels_all > 0
    w_fg, b_fg = _ridge(h_all, torch.where(fg, 1.0, -1.0)[:, None], balance=fg)
    # which class: a seeded random mix of the box head's top principal components (whitened),
    # so labels vary with appearance and no class wins everywhere
    directions, mean = _whitened_components(h_all, PCS)
    mix = torch.randn(num_classes, PCS, generator=torch.Generator().manual_seed(1))
    mix /= mix.norm(dim=1, keepdim=True)
    weight = CLS_SCALE * mix @ directions
    bias = -weight @ mean
    weight[0], bias[0] = -FG_SCALE * w_fg[0], -FG_SCALE * b_fg[0]
    predictor.cls_score.weight.copy_(weight)
    predictor.cls_score.bias.copy_(bias)
    w, b = _ridge(torch.cat(pos_x), torch.cat(deltas))
    predictor.bbox_pred.weight.copy_(w.repeat(num_classes, 1))
    predictor.bbox_pred.bias.copy_(b.repeat(num_classes))
    return passes


def _count(model: Any, passes: list[Pass]) -> int:
    found = 0
    for h, proposals, sizes in passes:
        logits, deltas = model.roi_heads.box_predictor(h)
        _b, scores, _l = model.roi_heads.postprocess_detections(logits, deltas, proposals, sizes)
        found += int((scores[0] > 0.5).sum())
    return found


def make_fitted_checkpoint(path: Path, seed: int = 0, target: int = TARGET, num_classes: int = 64) -> Path:
    """Write the checkpoint (Unity's form: {"model": state_dict, "config": CfgNode}) to `path`."""
    torch.manual_seed(seed)
    model = build_model(num_classes, score_threshold=0.05).eval()  # the reference's post-processing
    with torch.no_grad():
        frames = _frames(model)
        _fit_rpn(model, frames)
        passes = _fit_box_head(model, frames, num_classes)
        bias = model.roi_heads.box_predictor.cls_score.bias
        base = float(bias[0])
        low, high = -30.0, 30.0  # added to the background logit: higher -> fewer detections
        for _ in range(30):
            bias[0] = base + (low + high) / 2
            if _count(model, passes) > target * len(passes):
                low = (low + high) / 2
            else:
                high = (low + high) / 2
        bias[0] = base + high
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": unity_config(num_classes)}, path)
    return path
