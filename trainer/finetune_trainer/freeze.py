"""Choosing what to train: freeze strategies and the ``auto`` rule (the seed's step 3).

Strategies
----------
``none``          train every layer (PaddleClas's default).
``fc-only``       train only the fc head; the backbone is a fixed feature extractor.
``stages`` N      freeze the stem and the first N residual stages (1..4), train the rest.
``from-scratch``  re-initialise every weight (pretrained weights are discarded), train everything.

Frozen parameters get ``stop_gradient = True`` so the optimiser skips them. BatchNorm running
statistics are not parameters the optimiser touches: they move in every forward pass in train
mode. ``freeze_batchnorm_stats`` puts the BatchNorm layers whose affine parameters are frozen in
eval mode, so their statistics stay those of the pretrained model; call it after every
``model.train()``.

The ``auto`` rule
-----------------
The seed's four rules need two judgements about the new data:

*Size* (``size_class``): the data is **large** when it has at least ``LARGE_MIN_PER_CLASS`` (100)
images per class **and** ``LARGE_MIN_TOTAL`` (10,000) images in all, otherwise **small**.
Why these numbers: rules 1 and 3 exist because training deep layers on few examples overfits,
and the examples that matter are those per class; flowers102 (10 per class), CUB (about 30) and
the like are the "small" case the recipe targets. Rule 4 trains from scratch, which needs data
on the order of ten thousand images: He, Girshick and Dollar ("Rethinking ImageNet
Pre-training", 2019) report that training from scratch catches up with ImageNet pretraining with
about 10k COCO training images but falls far behind with 1k. Both conditions must hold.

*Similarity* (``similarity_score``): the pretrained model's pooled features (the fc layer's
input) are computed for a class-balanced sample of the training set, L2-normalised, and each
sample is classified by the nearest class mean (cosine) computed without that sample
(leave-one-out). The accuracy is rescaled so that chance (1/C) is 0 and perfect is 1::

    similarity = (accuracy - 1/C) / (1 - 1/C)

This asks directly what rules 1 and 2 assume: do the pretrained features already separate the
new classes? A nearest-class-mean classifier has no trainable parameters, so the score cannot
overfit the sample, and the rescaling makes it comparable across class counts. The data counts
as **similar** when the score is at least ``SIMILARITY_THRESHOLD`` (0.5): the frozen features
alone get at least halfway from chance to perfect, so a trained fc head (rule 1), which can only
do better than a class mean, starts from features that already carry most of the class
structure. Features that do not describe the data's domain score near 0 (random labels score
0 +- 0.2 in the tests); nearest-class-mean on ImageNet features is a strong few-shot baseline on
natural-image sets such as flowers or pets, where it is expected to score well above 0.5.
Note what the score measures: whether the features separate these classes, not where they came
from. On easy data even untrained features can score high (measured: a randomly initialised
ResNet18_vd scores 0.83 on 16x16 digits 6-9, one pretrained on digits 0-5 only 0.52, its few
classes having narrowed its features); either way the fixed features already work for it.

Decision: small+similar -> ``fc-only`` (rule 1); large+similar -> ``none`` (rule 2);
small+dissimilar -> ``stages`` with ``AUTO_FROZEN_STAGES`` (2: the stem and stages 1-2, whose
edge- and texture-like features transfer across domains, stay frozen) (rule 3);
large+dissimilar -> ``from-scratch`` (rule 4). When the sample cannot be scored (fewer than two
images in every class), the data is taken as similar, the PaddleClas default of trusting the
pretrained weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import paddle

from finetune_trainer.model import HEAD_STAGE, NUM_STAGES, build_model, running_stat_names

STRATEGIES = ("none", "fc-only", "stages", "from-scratch")

LARGE_MIN_PER_CLASS = 100
LARGE_MIN_TOTAL = 10_000
SIMILARITY_THRESHOLD = 0.5
AUTO_FROZEN_STAGES = 2
FEATURE_BATCH = 32


@dataclass
class FreezeReport:
    strategy: str
    stages: int  # strategy "stages": residual stages frozen together with the stem; else 0
    frozen_stages: list[int] = field(default_factory=list)  # 0 = stem, 1..4 = residual stages
    trainable_parameters: int = 0
    frozen_parameters: int = 0
    reinitialized: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "stages": self.stages,
            "frozenStages": list(self.frozen_stages),
            "trainableParameters": self.trainable_parameters,
            "frozenParameters": self.frozen_parameters,
            "reinitialized": self.reinitialized,
        }


@dataclass
class AutoDecision:
    strategy: str
    stages: int
    rule: int  # the seed's rule, 1..4
    evidence: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "stages": self.stages,
            "rule": self.rule,
            "evidence": self.evidence,
        }


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
) -> AutoDecision:
    """Apply the seed's four rules; ``images`` is a preprocessed sample (eval transforms) of the
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
    return AutoDecision(strategy=strategy, stages=stages, rule=rule, evidence=evidence)
