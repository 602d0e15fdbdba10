"""Freeze strategies, BatchNorm statistics of frozen layers, and the auto rule."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from finetune_trainer.freeze import (
    LARGE_MIN_PER_CLASS,
    LARGE_MIN_TOTAL,
    SIMILARITY_THRESHOLD,
    apply_freeze,
    decide_auto,
    freeze_batchnorm_stats,
    sample_indices,
    similarity_score,
    size_class,
)
from finetune_trainer.model import build_model


def _trainable(model) -> int:
    return sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)


def _numel_with_prefix(model, prefixes) -> int:
    return sum(
        int(np.prod(p.shape))
        for n, p in model.named_parameters()
        if n.startswith(prefixes) and not n.endswith(("._mean", "._variance"))
    )


@pytest.fixture(scope="module")
def r50():
    paddle.seed(0)
    return build_model("ResNet50_vd", 10)


def test_trainable_counts_resnet50(r50):
    everything = _numel_with_prefix(r50, ("stem.", "blocks.", "fc."))
    # 25,576,264 trainable values at 1000 classes, minus 990 fc columns of 2048 + 990 biases
    assert everything == 25_576_264 - 990 * 2048 - 990 == 23_547_754
    report = apply_freeze(r50, "none")
    assert report.trainable_parameters == everything == _trainable(r50)
    assert report.frozen_parameters == 0 and report.frozen_stages == []

    report = apply_freeze(r50, "fc-only")
    assert report.trainable_parameters == 2048 * 10 + 10 == _trainable(r50)
    assert report.frozen_stages == [0, 1, 2, 3, 4]
    assert report.trainable_parameters + report.frozen_parameters == everything

    # ResNet50 stage 1 = blocks 0-2, stage 2 = blocks 3-6.
    stem_s1_s2 = _numel_with_prefix(r50, ("stem.",) + tuple(f"blocks.{i}." for i in range(7)))
    report = apply_freeze(r50, "stages", 2)
    assert report.frozen_parameters == stem_s1_s2
    assert report.trainable_parameters == everything - stem_s1_s2 == _trainable(r50)
    assert report.frozen_stages == [0, 1, 2]

    # Re-applying undoes earlier freezes, and running statistics never become trainable.
    assert apply_freeze(r50, "none").trainable_parameters == everything
    stats = [p for n, p in r50.named_parameters() if n.endswith(("_mean", "_variance"))]
    # 55 BatchNorm layers: 3 stem, 16 blocks x 3, 4 shortcuts (277 = 55 x 5 + 2)
    assert len(stats) == 55 * 2 and all(p.stop_gradient for p in stats)


def test_bad_strategy_is_named(r50):
    with pytest.raises(ValueError, match="finetune.freeze: 'auto'.*decide_auto"):
        apply_freeze(r50, "auto")
    with pytest.raises(ValueError, match="finetune.freezeStages"):
        apply_freeze(r50, "stages", 0)


def _train_steps(model, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    opt = paddle.optimizer.Momentum(
        learning_rate=0.05,
        momentum=0.9,
        parameters=model.parameters(),
        weight_decay=paddle.regularizer.L2Decay(1e-3),
    )
    for _ in range(steps):
        model.train()
        freeze_batchnorm_stats(model)
        x = paddle.to_tensor(rng.standard_normal((4, 3, 32, 32)).astype("float32") * 2 + 0.5)
        y = paddle.to_tensor(rng.integers(0, 5, 4), dtype="int64")
        loss = paddle.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.clear_grad()


def _snapshot(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "strategy, stages, frozen_prefixes",
    [
        (
            "stages",
            2,
            ("stem.", "blocks.0.", "blocks.1.", "blocks.2.", "blocks.3."),
        ),  # ResNet18: 2 blocks a stage
        ("fc-only", 0, ("stem.", "blocks.")),
    ],
)
def test_frozen_weights_and_bn_stats_do_not_move(strategy, stages, frozen_prefixes):
    paddle.seed(1)
    model = build_model("ResNet18_vd", 5)
    apply_freeze(model, strategy, stages)
    before = _snapshot(model)
    _train_steps(model)
    after = _snapshot(model)
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    frozen = {k for k in before if k.startswith(frozen_prefixes)}
    assert frozen and not (moved & frozen), sorted(moved & frozen)[:5]
    # Everything else trains: weights, BN affine parameters and BN running statistics.
    assert moved == set(before) - frozen, sorted(set(before) - frozen - moved)[:5]


def test_without_freeze_batchnorm_stats_the_running_stats_drift():
    """The control: stop_gradient alone does not keep frozen BatchNorm statistics fixed."""
    paddle.seed(2)
    model = build_model("ResNet18_vd", 5)
    apply_freeze(model, "fc-only")
    before = model.state_dict()["stem.0.bn._mean"].numpy().copy()
    model.train()
    model(paddle.randn([4, 3, 32, 32]) + 1.0)
    assert not np.array_equal(before, model.state_dict()["stem.0.bn._mean"].numpy())
    assert freeze_batchnorm_stats(model) == 3 + 8 * 2 + 4  # every BN: stem, 8 blocks x 2, 4 shortcuts


def test_from_scratch_reinitialises():
    paddle.seed(3)
    model = build_model("ResNet18_vd", 5)
    # Pretend it was pretrained: shift every weight and statistic.
    for tensor in model.state_dict().values():
        tensor.set_value(tensor.numpy() + 0.5)
    pretrained = _snapshot(model)
    report = apply_freeze(model, "from-scratch")
    assert report.reinitialized and report.trainable_parameters == _trainable(model)
    now = _snapshot(model)
    assert all(not np.array_equal(pretrained[k], now[k]) for k in now)
    np.testing.assert_array_equal(now["blocks.4.conv1.bn._mean"], 0.0)
    np.testing.assert_array_equal(now["blocks.4.conv1.bn._variance"], 1.0)
    np.testing.assert_array_equal(now["stem.0.bn.weight"], 1.0)


# -------------------------------------------------------------------------------------- auto
def test_size_thresholds():
    assert size_class(102, 1020) == ("small", 10.0)  # flowers102
    assert size_class(10, LARGE_MIN_TOTAL)[0] == "large"
    assert size_class(10, LARGE_MIN_TOTAL - 1)[0] == "small"  # enough per class, too few in all
    assert size_class(1000, 1000 * (LARGE_MIN_PER_CLASS - 1))[0] == "small"  # many, but thin per class


def test_similarity_score_on_known_features():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    centres = rng.standard_normal((4, 64)) * 3
    clustered = centres[labels] + rng.standard_normal((40, 64)) * 0.5
    assert similarity_score(clustered, labels)["similarity"] == 1.0
    noise = rng.standard_normal((40, 64))
    s = similarity_score(noise, labels)
    assert s["chance"] == 0.25 and s["similarity"] < SIMILARITY_THRESHOLD
    # A sample alone in its class is not scored but its class still competes.
    one = similarity_score(clustered[:31], labels[:31])
    assert one["queries"] == 30
    assert similarity_score(clustered[:1], labels[:1])["similarity"] is None


def test_sample_indices_are_class_balanced():
    labels = [0] * 50 + [1] * 5 + [2] * 30
    idx = sample_indices(labels, per_class=8)
    counts = np.bincount(np.asarray(labels)[idx])
    assert counts.tolist() == [8, 5, 8]


def _dataset(kind: str, classes: int = 4, per_class: int = 8, seed: int = 0):
    """Separable: each class a distinct colour and texture. Unrelated: noise with random labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    if kind == "separable":
        colours = rng.uniform(-2, 2, (classes, 3, 1, 1))
        images = colours[labels] + 0.2 * rng.standard_normal((len(labels), 3, 32, 32))
    else:
        images = rng.standard_normal((len(labels), 3, 32, 32))
        labels = rng.permutation(labels)
    return images.astype("float32"), labels


@pytest.fixture(scope="module")
def feature_model():
    paddle.seed(4)
    return build_model("ResNet18_vd", 4)


@pytest.mark.parametrize(
    "kind, total, rule, strategy, stages",
    [
        ("separable", 4 * 20, 1, "fc-only", 0),
        ("separable", 4 * 5000, 2, "none", 0),
        ("unrelated", 4 * 20, 3, "stages", 2),
        ("unrelated", 4 * 5000, 4, "from-scratch", 0),
    ],
)
def test_auto_rules(feature_model, kind, total, rule, strategy, stages):
    images, labels = _dataset(kind)
    feature_model.train()
    decision = decide_auto(feature_model, images, labels, num_classes=4, num_train_images=total)
    assert feature_model.training  # the model's mode is restored
    assert (decision.rule, decision.strategy, decision.stages) == (rule, strategy, stages)
    ev = decision.evidence
    assert ev["rule"] == rule and ev["totalImages"] == total and ev["imagesPerClass"] == total / 4
    assert ev["sampleSize"] == 32 and ev["chance"] == 0.25
    if kind == "separable":
        assert ev["similar"] and ev["similarity"] >= SIMILARITY_THRESHOLD
    else:
        assert not ev["similar"] and ev["similarity"] < SIMILARITY_THRESHOLD
    assert ev["thresholds"] == {
        "largeMinPerClass": LARGE_MIN_PER_CLASS,
        "largeMinTotal": LARGE_MIN_TOTAL,
        "similarity": SIMILARITY_THRESHOLD,
    }
    assert decision.decidedBy == "auto"


def _stripes(per_class: int, seed: int, amplitude: float = 0.5):
    """Four classes of faint oriented stripes (random phase) under unit Gaussian noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:16, 0:16]
    patterns = [np.sin(2 * np.pi * (np.cos(a) * xx + np.sin(a) * yy) / 4.0) for a in np.pi * np.arange(4) / 4]
    labels = np.repeat(np.arange(4), per_class)
    images = rng.standard_normal((len(labels), 3, 16, 16))
    for i, label in enumerate(labels):
        images[i] += amplitude * np.roll(patterns[label], rng.integers(0, 4), axis=1)[None]
    return images.astype("float32"), labels


def test_pretraining_on_related_data_turns_rule_3_into_rule_1():
    """The similarity score measures the model, not the data alone: untrained features do not
    separate faint stripes from noise (rule 3), features trained on other images of the same
    kind do (rule 1), for the very same sample."""
    images, labels = _stripes(16, seed=1)
    paddle.seed(1)
    model = build_model("ResNet18_vd", 4)
    before = decide_auto(model, images, labels, num_classes=4, num_train_images=400)
    assert before.rule == 3, before.evidence

    train_x, train_y = _stripes(64, seed=2)  # other images: "pretraining data"
    opt = paddle.optimizer.Momentum(learning_rate=0.05, momentum=0.9, parameters=model.parameters())
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(40):
        batch = rng.integers(0, len(train_y), 32)
        loss = paddle.nn.functional.cross_entropy(
            model(paddle.to_tensor(train_x[batch])), paddle.to_tensor(train_y[batch])
        )
        loss.backward()
        opt.step()
        opt.clear_grad()
    after = decide_auto(model, images, labels, num_classes=4, num_train_images=400)
    assert after.rule == 1, after.evidence
    assert after.evidence["similarity"] > before.evidence["similarity"] + 0.3
