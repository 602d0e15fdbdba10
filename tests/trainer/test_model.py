"""Structure of the ResNet_vd family: names, counts, stages, lr multipliers, features."""

from __future__ import annotations

import math

import finetune_trainer.model as model_module
import numpy as np
import paddle
import pytest
from finetune_trainer.model import DEPTHS, build_model, stage_of


@pytest.fixture(scope="module")
def r50():
    paddle.seed(0)
    return build_model("ResNet50_vd", 1000)


def count_parameters(model) -> int:
    """Values in the model's parameters, running statistics included."""
    return sum(math.prod(param.shape) for _, param in model.named_parameters())


def test_resnet50_vd_state_dict_matches_paddleclas_facts(r50):
    sd = r50.state_dict()
    assert len(sd) == 277
    assert sum(int(np.prod(v.shape)) for v in sd.values()) == 25_629_512
    assert count_parameters(r50) == 25_629_512
    assert list(sd)[:5] == [
        "stem.0.conv.weight",
        "stem.0.bn.weight",
        "stem.0.bn.bias",
        "stem.0.bn._mean",
        "stem.0.bn._variance",
    ]
    assert list(sd["stem.0.conv.weight"].shape) == [32, 3, 3, 3]
    assert list(sd["stem.2.conv.weight"].shape) == [64, 32, 3, 3]
    assert list(sd["blocks.0.short.conv.weight"].shape) == [256, 64, 1, 1]
    assert list(sd["blocks.3.short.conv.weight"].shape) == [512, 256, 1, 1]
    assert list(sd["blocks.15.conv2.conv.weight"].shape) == [2048, 512, 1, 1]
    assert list(sd["fc.weight"].shape) == [2048, 1000]
    shortcut_blocks = sorted({int(k.split(".")[1]) for k in sd if ".short." in k})
    assert shortcut_blocks == [0, 3, 7, 13]
    assert r50.stage_end_blocks() == [2, 6, 12, 15]
    assert r50.feature_dim == 2048


def test_vd_shortcut_pools_before_its_conv(r50):
    # stage 1's projection sees the max-pooled map already: no pool; later stages pool 2x2.
    assert r50.blocks[0].short.pool is None
    assert r50.blocks[0].short.conv._stride == [1, 1]
    for i in (3, 7, 13):
        assert r50.blocks[i].short.pool is not None
        assert r50.blocks[i].short.conv._stride == [1, 1]
        assert r50.blocks[i].conv1.conv._stride == [2, 2]  # the 3x3 carries the block's stride


@pytest.mark.parametrize(
    "arch, feature_dim, blocks",
    [("ResNet18_vd", 512, 8), ("ResNet34_vd", 512, 16)],  # 101/152: test_parity.py
)
def test_family_table(arch, feature_dim, blocks):
    model = build_model(arch, 5)
    assert model.feature_dim == feature_dim
    assert len(model.blocks) == blocks == sum(DEPTHS[arch].blocks)
    assert list(model.state_dict()["fc.weight"].shape) == [feature_dim, 5]
    # Every parameter maps to a stage, and every stage 0..5 holds parameters.
    stages = {model.stage_of(name) for name in model.state_dict()}
    assert stages == {0, 1, 2, 3, 4, 5}


def test_stage_of_resnet50():
    assert stage_of("stem.2.bn._mean") == 0
    assert stage_of("blocks.0.short.conv.weight") == 1
    assert stage_of("blocks.2.conv2.bn.bias") == 1
    assert stage_of("blocks.3.short.conv.weight") == 2
    assert stage_of("blocks.6.conv0.conv.weight") == 2
    assert stage_of("blocks.7.conv0.conv.weight") == 3
    assert stage_of("blocks.12.conv0.conv.weight") == 3
    assert stage_of("blocks.13.conv0.conv.weight") == 4
    assert stage_of("blocks.15.conv2.bn.weight") == 4
    assert stage_of("fc.weight") == 5


def test_stage_of_depends_on_architecture():
    assert stage_of("blocks.2.conv0.conv.weight", "ResNet18_vd") == 2
    assert stage_of("blocks.29.conv0.conv.weight", "ResNet101_vd") == 3
    assert stage_of("blocks.30.conv0.conv.weight", "ResNet101_vd") == 4
    with pytest.raises(ValueError, match="blocks.16"):
        stage_of("blocks.16.conv0.conv.weight", "ResNet50_vd")
    with pytest.raises(ValueError, match="head.weight"):
        stage_of("head.weight")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="architecture: 'ResNet50'"):
        build_model("ResNet50", 10)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("ResNet18_vd", 0)
    with pytest.raises(ValueError, match="lr_mult_list"):
        build_model("ResNet18_vd", 10, lr_mult_list=[1.0, 1.0])
    with pytest.raises(ValueError, match="lr_mult_list"):
        build_model("ResNet18_vd", 10, lr_mult_list=[1.0, -1.0, 1.0, 1.0, 1.0])


def test_forward_features_feed_the_head():
    paddle.seed(1)
    model = build_model("ResNet18_vd", 4)
    model.eval()
    x = paddle.randn([2, 3, 32, 32])
    with paddle.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    assert list(feats.shape) == [2, 512]
    assert list(logits.shape) == [2, 4]
    np.testing.assert_allclose(model.fc(feats).numpy(), logits.numpy(), rtol=1e-6)


def test_lr_multiplier_scales_each_stage_update():
    """With lr_mult 0 for the stem and 2 vs 1 elsewhere, plain SGD moves weights accordingly."""
    paddle.seed(2)
    mults = [0.0, 1.0, 2.0, 1.0, 1.0]
    model = build_model("ResNet18_vd", 3, lr_mult_list=mults)
    model.train()
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    opt = paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters())
    x, y = paddle.randn([4, 3, 32, 32]), paddle.to_tensor([0, 1, 2, 0])
    loss = paddle.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    after = {k: v.numpy() for k, v in model.state_dict().items()}
    for name in ("stem.0.conv.weight", "blocks.0.conv0.conv.weight", "blocks.2.conv0.conv.weight"):
        expected = 0.1 * mults[model.stage_of(name)]
        np.testing.assert_allclose(before[name] - after[name], expected * grads[name], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        before["fc.weight"] - after["fc.weight"], 0.1 * grads["fc.weight"], rtol=1e-4, atol=1e-7
    )
    np.testing.assert_array_equal(before["stem.1.conv.weight"], after["stem.1.conv.weight"])
    assert not np.array_equal(before["blocks.3.conv1.conv.weight"], after["blocks.3.conv1.conv.weight"])


@pytest.mark.parametrize("kernel, stride, size", [(1, 1, 5), (3, 1, 7), (3, 2, 7), (3, 2, 8), (3, 1, 2)])
def test_cpu_gemm_conv_equals_conv_kernel(kernel, stride, size):
    """The CPU fast path computes the conv's output and gradients."""
    paddle.seed(5)
    conv = paddle.nn.Conv2D(8, 16, kernel, stride=stride, padding=(kernel - 1) // 2, bias_attr=False)
    x = paddle.randn([3, 8, size, size])
    x.stop_gradient = False
    want = conv(x)
    got = model_module.conv_as_gemm(x, conv)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    upstream = paddle.randn(want.shape)
    grads_want = paddle.grad((want * upstream).sum(), [x, conv.weight])
    grads_got = paddle.grad((got * upstream).sum(), [x, conv.weight])
    for g_got, g_want in zip(grads_got, grads_want, strict=True):
        np.testing.assert_allclose(g_got.numpy(), g_want.numpy(), rtol=1e-4, atol=1e-5)


def test_fast_path_only_on_small_maps_and_export_keeps_conv2d(tmp_path):
    model = build_model("ResNet18_vd", 3)
    conv3, conv1 = model.blocks[7].conv1.conv, model.blocks[0].short.conv
    assert model_module.use_gemm(paddle.zeros([1, 512, 7, 7]), conv3)
    assert not model_module.use_gemm(paddle.zeros([1, 64, 8, 8]), conv3)
    assert model_module.use_gemm(paddle.zeros([1, 64, 8, 8]), conv1)
    assert not model_module.use_gemm(paddle.zeros([1, 64, 9, 9]), conv1)
    # An exported inference graph holds plain conv2d ops (which inference fuses with BN).
    model.eval()
    spec = [paddle.static.InputSpec([None, 3, 32, 32], "float32")]
    paddle.jit.save(paddle.jit.to_static(model, input_spec=spec, full_graph=True), str(tmp_path / "m"))
    program = next(p for p in tmp_path.iterdir() if p.suffix in (".json", ".pdmodel")).read_bytes()
    assert program.count(b"conv2d") >= 20 and b"unfold" not in program
