"""Choosing what to train: the freeze strategies and ``auto``, which applies the four rules of the
PaddleClas finetune guide (its step 3).

``none`` trains every layer, ``fc-only`` only the fc head, ``stages`` N freezes the stem and the
first N residual stages, ``from-scratch`` re-initialises every weight. Frozen parameters get
``stop_gradient = True``; ``freeze_batchnorm_stats`` keeps the running statistics of frozen
BatchNorm layers (call it after every ``model.train()``). Why ``auto`` measures size and
similarity as it does, and the reasoning behind its thresholds: the trainer README, "What to
train: the freeze strategies and the auto rule".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import paddle
from finetune_contract import APPLIED_STRATEGIES, FreezeDecision

from finetune_trainer.model import HEAD_STAGE, NUM_STAGES, build_model, running_stat_names

STRATEGIES = APPLIED_STRATEGIES  # none, fc-only, stages, from-scratch

LARGE_MIN_PER_CLASS = 100
LARGE_MIN_TOTAL = 10_000
SIMILARITY_THRESHOLD = 0.5
AUTO_FROZEN_STAGES = 2
FEATURE_BATCH = 32


@dataclass
class FreezeReport:
    """What ``apply_freeze`` did to the model."""

    strategy: str
    stages: int  # strategy "stages": residual stages frozen together with the stem; else 0
    frozen_stages: list[int] = field(default_factory=list)  # 0 = stem, 1..4 = residual stages
    trainable_parameters: int = 0
    frozen_parameters: int = 0
    reinitialized: bool = False

    def applied(self, decision: FreezeDecision) -> FreezeDecision:
        """The decision as applied to the model: with its count of trainable parameters."""
        return replace(decision, trainableParameters=int(self.trainable_parameters))


def user_decision(strategy: str, stages: int) -> FreezeDecision:
    """``finetune.freeze`` set to a strategy by the user."""
    return FreezeDecision(
        strategy=strategy,
        stages=stages if strategy == "stages" else 0,
        decidedBy="user",
        evidence={"setting": f"finetune.freeze={strategy}"},
    )


def without_weights_decision() -> FreezeDecision:
    """``auto`` with no pretrained weights to judge: there is nothing to keep, train everything."""
    return FreezeDecision(
        strategy="from-scratch",
        decidedBy="auto",
        evidence={"note": "no pretrained weights given (model.pretrained is empty): train from scratch"},
    )


def _unwrap(model: paddle.nn.Layer) -> paddle.nn.Layer:
    return getattr(model, "_layers", model)  # paddle.DataParallel keeps the model in _layers


def apply_freeze(model: paddle.nn.Layer, strategy: str, stages: int = 0) -> FreezeReport:
    """Set ``stop_gradient`` for the strategy (idempotent: earlier freezes are undone first)."""
    net = _unwrap(model)
    if strategy not in STRATEGIES:
        hint = " (decide it first with decide_auto)" if strategy == "auto" else ""
        raise ValueError(f"finetune.freeze: {strategy!r} is not one of {', '.join(STRATEGIES)}{hint}")
    if strategy == "stages" and not 1 <= stages <= NUM_STAGES:
        raise ValueError(f"finetune.freezeStages: must be 1..{NUM_STAGES} for 'stages' (got {stages})")

    if strategy == "fc-only":
        frozen = list(range(HEAD_STAGE))
    elif strategy == "stages":
        frozen = list(range(stages + 1))
    else:
        frozen = []
    reinitialized = False
    if strategy == "from-scratch":
        _reinitialise(net)
        reinitialized = True

    stats = running_stat_names(net)
    trainable = frozen_count = 0
    for name, param in net.named_parameters():
        if name in stats:
            continue  # running statistics are never trained
        is_frozen = net.stage_of(name) in frozen
        param.stop_gradient = is_frozen
        n = int(np.prod(param.shape))
        if is_frozen:
            frozen_count += n
        else:
            trainable += n
    return FreezeReport(
        strategy=strategy,
        stages=stages if strategy == "stages" else 0,
        frozen_stages=frozen,
        trainable_parameters=trainable,
        frozen_parameters=frozen_count,
        reinitialized=reinitialized,
    )


def _reinitialise(net: paddle.nn.Layer) -> None:
    """Fresh initial weights and BatchNorm statistics, drawn like a newly built model's."""
    for attr in ("architecture", "num_classes", "lr_mult_list"):
        if not hasattr(net, attr):
            raise TypeError(f"from-scratch needs a ResNetVd model (missing {attr})")
    fresh = build_model(net.architecture, net.num_classes, net.lr_mult_list).state_dict()
    for name, tensor in net.state_dict().items():
        tensor.set_value(fresh[name])


def freeze_batchnorm_stats(model: paddle.nn.Layer) -> int:
    """Put BatchNorm layers with frozen affine parameters in eval mode; returns how many.

    Call after every ``model.train()``: ``train()`` switches every sublayer back to train mode.
    """
    count = 0
    for layer in model.sublayers(include_self=True):
        weight = getattr(layer, "weight", None)
        if (
            hasattr(layer, "_mean")
            and hasattr(layer, "_variance")
            and weight is not None
            and weight.stop_gradient
        ):
            layer.eval()
            count += 1
    return count


# --------------------------------------------------------------------------------------------
# auto
# --------------------------------------------------------------------------------------------
def size_class(num_classes: int, num_train_images: int) -> tuple[str, float]:
    """("small" | "large", images per class)."""
    per_class = num_train_images / max(1, num_classes)
    large = per_class >= LARGE_MIN_PER_CLASS and num_train_images >= LARGE_MIN_TOTAL
    return ("large" if large else "small"), per_class


def sample_indices(
    labels: Sequence[int], per_class: int = 16, max_total: int = 512, seed: int = 0
) -> list[int]:
    """A class-balanced random sample of indices for ``decide_auto`` (at most per_class a class)."""
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    classes = np.unique(labels_arr)
    per_class = max(2, min(per_class, max_total // max(1, len(classes))))
    picked: list[int] = []
    for c in classes:
        idx = np.flatnonzero(labels_arr == c)
        picked.extend(int(i) for i in rng.permutation(idx)[:per_class])
    return sorted(picked)


def extract_features(model: paddle.nn.Layer, images: Any, batch_size: int = FEATURE_BATCH) -> np.ndarray:
    """Pooled features ``[N, feature_dim]`` in eval mode (the model's mode is restored)."""
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    out = []
    try:
        with paddle.no_grad():
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                if not isinstance(batch, paddle.Tensor):
                    batch = paddle.to_tensor(np.asarray(batch, dtype="float32"))
                out.append(net.forward_features(batch).numpy())
    finally:
        if was_training:
            net.train()
    return np.concatenate(out, axis=0) if out else np.zeros((0, net.feature_dim), dtype="float32")


def similarity_score(features: np.ndarray, labels: Sequence[int]) -> dict[str, Any]:
    """Leave-one-out nearest-class-mean accuracy of L2-normalised features, rescaled from chance.

    Returns accuracy, chance, similarity (None when nothing could be scored), queries, classes.
    """
    labels_arr = np.asarray(labels)
    feats = features.astype("float64")
    feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    classes, inverse, counts = np.unique(labels_arr, return_inverse=True, return_counts=True)
    sums = np.zeros((len(classes), feats.shape[1]))
    np.add.at(sums, inverse, feats)
    queries = np.flatnonzero(counts[inverse] >= 2)  # a sample alone in its class has no mean left
    if len(classes) < 2 or len(queries) == 0:
        return {"accuracy": None, "chance": None, "similarity": None, "queries": int(len(queries))}
    correct = 0
    for i in queries:
        means = sums.copy()
        n = counts.astype("float64").copy()
        means[inverse[i]] -= feats[i]
        n[inverse[i]] -= 1
        means = means / n[:, None]
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        correct += int(np.argmax(means @ feats[i]) == inverse[i])
    accuracy = correct / len(queries)
    chance = 1.0 / len(classes)
    return {
        "accuracy": round(accuracy, 4),
        "chance": round(chance, 4),
        "similarity": round((accuracy - chance) / (1.0 - chance), 4),
        "queries": int(len(queries)),
    }


def decide_auto(
    model: paddle.nn.Layer, images: Any, labels: Sequence[int], num_classes: int, num_train_images: int
) -> FreezeDecision:
    """Apply the guide's four rules; ``images`` is a preprocessed sample (eval transforms) of the
    training set ([N, 3, H, W], see ``sample_indices``) and ``labels`` its labels."""
    size, per_class = size_class(num_classes, num_train_images)
    score = similarity_score(extract_features(model, images), labels)
    similar = score["similarity"] is None or score["similarity"] >= SIMILARITY_THRESHOLD
    if similar:
        rule, strategy, stages = (1, "fc-only", 0) if size == "small" else (2, "none", 0)
    else:
        rule, strategy, stages = (
            (3, "stages", AUTO_FROZEN_STAGES) if size == "small" else (4, "from-scratch", 0)
        )
    evidence = {
        "rule": rule,
        "size": size,
        "imagesPerClass": round(per_class, 2),
        "totalImages": num_train_images,
        "numClasses": num_classes,
        "similar": similar,
        "similarity": score["similarity"],
        "nearestMeanAccuracy": score["accuracy"],
        "chance": score["chance"],
        "sampleSize": len(labels),
        "thresholds": {
            "largeMinPerClass": LARGE_MIN_PER_CLASS,
            "largeMinTotal": LARGE_MIN_TOTAL,
            "similarity": SIMILARITY_THRESHOLD,
        },
    }
    if score["similarity"] is None:
        evidence["note"] = "too few images per class in the sample to score similarity; assumed similar"
    return FreezeDecision(strategy=strategy, stages=stages, decidedBy="auto", rule=rule, evidence=evidence)
