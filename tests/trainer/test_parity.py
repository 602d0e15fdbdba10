"""Our ResNet_vd against PaddleClas 2.6.0's reference module: names, shapes, the same function.

The reference is the unchanged ``ppcls/arch/backbone/legendary_models/resnet.py`` from the
installed ``paddleclas==2.6.0`` source, loaded with light stand-ins for its heavy package imports
(``bench/paddleclas_reference.py``).
"""

from __future__ import annotations

import finetune_trainer.model as model_module
import numpy as np
import paddle
import pytest
from finetune_trainer.model import build_model

from bench.paddleclas_reference import ReferenceUnavailable, load_reference_resnet


@pytest.fixture(scope="module")
def ref():
    try:
        return load_reference_resnet()
    except ReferenceUnavailable as exc:  # pragma: no cover - make venv installs it
        pytest.fail(f"PaddleClas reference unavailable: {exc}")


def _shapes(layer: paddle.nn.Layer) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in layer.state_dict().items()]


@pytest.mark.parametrize(
    "arch, classes",
    [
        ("ResNet50_vd", 1000),
        ("ResNet50_vd", 10),
        ("ResNet18_vd", 10),
        ("ResNet34_vd", 102),
        ("ResNet101_vd", 10),
        ("ResNet152_vd", 10),
    ],
)
def test_state_dict_keys_and_shapes_match_reference(ref, arch, classes):
    paddle.seed(0)
    expected = _shapes(getattr(ref, arch)(class_num=classes))
    got = _shapes(build_model(arch, classes))
    assert got == expected  # same keys, same order, same shapes


def test_resnet50_vd_reference_facts(ref):
    sd = ref.ResNet50_vd(class_num=1000).state_dict()
    assert len(sd) == 277
    assert sum(int(np.prod(v.shape)) for v in sd.values()) == 25_629_512


def _randomise(layer: paddle.nn.Layer, seed: int) -> None:
    """Give every tensor, BatchNorm statistics included, non-default values."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, value in layer.state_dict().items():
        shape = value.shape
        if name.endswith("_variance"):
            arr = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("bn.weight"):
            arr = rng.uniform(0.5, 1.2, shape)
        elif name.endswith(("_mean", "bn.bias", "fc.bias")):
            arr = rng.normal(0.0, 0.1, shape)
        else:
            arr = value.numpy() * rng.uniform(0.8, 1.2, shape)
        state[name] = paddle.to_tensor(arr.astype("float32"))
    layer.set_state_dict(state)


@pytest.mark.parametrize("gemm", [False, True], ids=["conv-kernels", "cpu-gemm-path"])
@pytest.mark.parametrize("size", [64, 50])  # 50: odd maps at stage 4 exercise the vd "SAME" avg-pool
def test_same_function_as_reference_eval(ref, size, gemm, monkeypatch):
    """With Paddle's conv kernels the output is the reference's to 1e-5; the CPU fast path
    (convs on small maps as one matrix product) sums in another order, so it is held to 1e-5
    relative to the largest logit."""
    monkeypatch.setattr(model_module, "CPU_GEMM_CONV", gemm)
    paddle.seed(1)
    reference = ref.ResNet50_vd(class_num=10)
    _randomise(reference, seed=size)
    ours = build_model("ResNet50_vd", 10)
    ours.set_state_dict(reference.state_dict())
    for name, value in reference.state_dict().items():
        np.testing.assert_array_equal(ours.state_dict()[name].numpy(), value.numpy(), err_msg=name)
    reference.eval()
    ours.eval()
    x = paddle.to_tensor(np.random.default_rng(2).standard_normal((2, 3, size, size)).astype("float32"))
    with paddle.no_grad():
        want = reference(x).numpy()
        got = ours(x).numpy()
    scale = float(np.abs(want).max())
    assert scale > 1e-3  # a meaningful output, not all zeros
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * (max(1.0, scale) if gemm else 1.0))


def test_same_function_and_gradients_train_mode(ref):
    """Batch statistics, running-stat updates and gradients agree too (ResNet18_vd for speed)."""
    paddle.seed(3)
    reference = ref.ResNet18_vd(class_num=7)
    _randomise(reference, seed=3)
    ours = build_model("ResNet18_vd", 7)
    ours.set_state_dict(reference.state_dict())
    reference.train()
    ours.train()
    x = paddle.to_tensor(np.random.default_rng(4).standard_normal((4, 3, 48, 48)).astype("float32"))
    y = paddle.to_tensor([0, 1, 2, 3], dtype="int64")
    losses = []
    for model in (reference, ours):
        loss = paddle.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        losses.append(float(loss))
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)
    ref_params = dict(reference.named_parameters())
    for name, param in ours.named_parameters():
        other = ref_params[name]
        if param.stop_gradient:  # running statistics: updated identically by the forward pass
            np.testing.assert_allclose(param.numpy(), other.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_allclose(
                param.grad.numpy(), other.grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=name
            )


def test_lr_multipliers_match_reference(ref):
    mults = [0.1, 0.2, 0.3, 0.4, 0.5]
    reference = ref.ResNet50_vd(class_num=10, lr_mult_list=mults)
    ours = build_model("ResNet50_vd", 10, lr_mult_list=mults)
    want = {n: p.optimize_attr["learning_rate"] for n, p in reference.named_parameters()}
    got = {n: p.optimize_attr["learning_rate"] for n, p in ours.named_parameters()}
    assert got == want
    assert sorted(set(got.values())) == [0.1, 0.2, 0.3, 0.4, 0.5, 1.0]  # fc keeps 1.0
