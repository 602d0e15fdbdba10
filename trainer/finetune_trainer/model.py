"""The ResNet_vd family (18, 34, 50, 101, 152) with PaddleClas's parameter names.

The state dict matches PaddleClas 2.6.0's ``legendary_models/resnet.py`` key for key and shape for
shape (ResNet50_vd: 277 entries, 25,629,512 values with 1000 classes), so the official
``*_pretrained.pdparams`` files load without renaming; ``tests/trainer/test_parity.py`` proves the
names, the shapes and the function against the reference implementation.

Layout (names are the state-dict prefixes)::

    stem.0/1/2            3x3 conv units 3->32 (stride 2), 32->32, 32->64, then 3x3 max-pool /2
    blocks.<i>            residual blocks, numbered across the four stages
      .conv0 .conv1 (.conv2)  the block's conv units (basic: 2 of 3x3; bottleneck: 1x1, 3x3, 1x1)
      .short                  projection shortcut, first block of each stage only; "vd": a 2x2
                              avg-pool carries the stride, then a stride-1 1x1 conv
    fc                    Linear [feature_dim, num_classes] after global average pooling

Each conv unit holds ``conv.weight`` and ``bn.{weight,bias,_mean,_variance}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import paddle
import paddle.nn.functional as F
from paddle import ParamAttr, nn
from paddle.nn.initializer import Uniform


@dataclass(frozen=True)
class Depth:
    """One row of the family table."""

    bottleneck: bool
    blocks: tuple[int, int, int, int]  # residual blocks per stage


# Stage widths (the 3x3 conv's channels) are the same for every depth; bottleneck blocks
# expand their output by 4.
STAGE_WIDTHS = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4
STEM = ((3, 32, 2), (32, 32, 1), (32, 64, 1))  # (in, out, stride) of the three 3x3 stem units

DEPTHS: dict[str, Depth] = {
    "ResNet18_vd": Depth(bottleneck=False, blocks=(2, 2, 2, 2)),
    "ResNet34_vd": Depth(bottleneck=False, blocks=(3, 4, 6, 3)),
    "ResNet50_vd": Depth(bottleneck=True, blocks=(3, 4, 6, 3)),
    "ResNet101_vd": Depth(bottleneck=True, blocks=(3, 4, 23, 3)),
    "ResNet152_vd": Depth(bottleneck=True, blocks=(3, 8, 36, 3)),
}

# CPU fast path (see ``conv_as_gemm``): feature maps up to this many pixels run their convs as
# one matrix product. Measured on Paddle 3.3 CPU, fwd+bwd, batch 4-8: 1x1 convs 1.3-5x faster up
# to 8x8 maps, 3x3 convs 1.3-2.7x faster up to 7x7; on larger maps the conv kernel wins.
GEMM_MAX_PIXELS = {1: 64, 3: 49}
CPU_GEMM_CONV = True  # switch for tests and benchmarks

NUM_STAGES = 4
STEM_STAGE = 0
HEAD_STAGE = NUM_STAGES + 1  # the fc layer
DEFAULT_LR_MULT = (1.0, 1.0, 1.0, 1.0, 1.0)


class ConvBN(nn.Layer):
    """conv (no bias) -> BatchNorm -> optional ReLU, optionally preceded by a 2x2 avg-pool.

    With ``pool_stride`` the average pool carries the stride and the conv runs at stride 1
    (the "vd" shortcut, which sees every input pixel instead of skipping three in four).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        relu: bool = True,
        pool_stride: bool = False,
        lr_mult: float = 1.0,
    ) -> None:
        super().__init__()
        self.pool = (
            # Same settings as PaddleClas so odd feature maps are pooled identically.
            nn.AvgPool2D(kernel_size=2, stride=stride, padding="SAME", ceil_mode=True)
            if pool_stride
            else None
        )
        self.conv = nn.Conv2D(
            in_channels,
            out_channels,
            kernel,
            stride=1 if pool_stride else stride,
            padding=(kernel - 1) // 2,
            weight_attr=ParamAttr(learning_rate=lr_mult),
            bias_attr=False,
        )
        self.bn = nn.BatchNorm2D(
            out_channels,
            weight_attr=ParamAttr(learning_rate=lr_mult),
            bias_attr=ParamAttr(learning_rate=lr_mult),
        )
        self.relu = nn.ReLU() if relu else None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        x = conv_as_gemm(x, self.conv) if use_gemm(x, self.conv) else self.conv(x)
        x = self.bn(x)
        return self.relu(x) if self.relu is not None else x


def use_gemm(x: paddle.Tensor, conv: nn.Conv2D) -> bool:
    """Only eagerly on a CPU: exported (static) graphs keep conv2d, which inference fuses with BN,
    and GPUs have cuDNN."""
    if not CPU_GEMM_CONV or not paddle.in_dynamic_mode() or not x.place.is_cpu_place():
        return False
    limit = GEMM_MAX_PIXELS.get(conv._kernel_size[0])
    return limit is not None and x.shape[2] * x.shape[3] <= limit


def conv_as_gemm(x: paddle.Tensor, conv: nn.Conv2D) -> paddle.Tensor:
    """The same convolution as one matrix product over the whole batch.

    Paddle's CPU conv kernel multiplies sample by sample, so on small maps with many channels its
    weight gradient is a sum of tiny products (inner size H*W, e.g. 4 at stage 4) over a large
    weight. Folding the batch into the product's inner dimension makes that one large product.
    """
    n, c, h, w = x.shape
    weight = conv.weight
    out_c, _, k, _ = weight.shape
    stride, pad = conv._stride[0], conv._padding
    if k == 1 and stride == 1:
        cols = x.transpose([0, 2, 3, 1]).reshape([n * h * w, c])
        out = paddle.matmul(cols, weight.reshape([out_c, c]), transpose_y=True)
        return out.reshape([n, h, w, out_c]).transpose([0, 3, 1, 2])
    pad = pad[0] if isinstance(pad, (list, tuple)) else pad
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    cols = F.unfold(x, [k, k], strides=stride, paddings=pad)  # [n, c*k*k, oh*ow]
    cols = cols.transpose([0, 2, 1]).reshape([n * oh * ow, c * k * k])
    out = paddle.matmul(cols, weight.reshape([out_c, c * k * k]), transpose_y=True)
    return out.reshape([n, oh, ow, out_c]).transpose([0, 3, 1, 2])


class BasicBlock(nn.Layer):
    """Two 3x3 conv units (ResNet18/34)."""

    def __init__(
        self, in_channels: int, width: int, stride: int, project: bool, pool_short: bool, lr_mult: float
    ) -> None:
        super().__init__()
        self.conv0 = ConvBN(in_channels, width, 3, stride, lr_mult=lr_mult)
        self.conv1 = ConvBN(width, width, 3, relu=False, lr_mult=lr_mult)
        self.short = (
            ConvBN(in_channels, width, 1, stride, relu=False, pool_stride=pool_short, lr_mult=lr_mult)
            if project
            else None
        )
        self.relu = nn.ReLU()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        short = x if self.short is None else self.short(x)
        return self.relu(self.conv1(self.conv0(x)) + short)


class BottleneckBlock(nn.Layer):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4 (ResNet50/101/152)."""

    def __init__(
        self, in_channels: int, width: int, stride: int, project: bool, pool_short: bool, lr_mult: float
    ) -> None:
        super().__init__()
        out_channels = width * BOTTLENECK_EXPANSION
        self.conv0 = ConvBN(in_channels, width, 1, lr_mult=lr_mult)
        self.conv1 = ConvBN(width, width, 3, stride, lr_mult=lr_mult)
        self.conv2 = ConvBN(width, out_channels, 1, relu=False, lr_mult=lr_mult)
        self.short = (
            ConvBN(in_channels, out_channels, 1, stride, relu=False, pool_stride=pool_short, lr_mult=lr_mult)
            if project
            else None
        )
        self.relu = nn.ReLU()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        short = x if self.short is None else self.short(x)
        return self.relu(self.conv2(self.conv1(self.conv0(x))) + short)


class ResNetVd(nn.Layer):
    """A ResNet_vd classifier. ``forward`` returns logits, ``forward_features`` the pooled features."""

    def __init__(
        self, architecture: str, num_classes: int, lr_mult_list: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        if architecture not in DEPTHS:
            raise ValueError(f"architecture: {architecture!r} is not one of {', '.join(DEPTHS)}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: must be a positive integer (got {num_classes!r})")
        lr_mult = tuple(float(v) for v in (lr_mult_list if lr_mult_list is not None else DEFAULT_LR_MULT))
        if len(lr_mult) != NUM_STAGES + 1 or any(not math.isfinite(v) or v < 0 for v in lr_mult):
            raise ValueError(
                f"lr_mult_list: must be {NUM_STAGES + 1} non-negative numbers (stem, stage1..4), "
                f"got {list(lr_mult_list or [])}"
            )
        depth = DEPTHS[architecture]
        self.architecture = architecture
        self.num_classes = num_classes
        self.lr_mult_list = lr_mult

        self.stem = nn.Sequential(
            *[ConvBN(i, o, 3, s, lr_mult=lr_mult[STEM_STAGE]) for i, o, s in STEM],
        )
        self.max_pool = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)

        block_cls = BottleneckBlock if depth.bottleneck else BasicBlock
        expansion = BOTTLENECK_EXPANSION if depth.bottleneck else 1
        blocks: list[nn.Layer] = []
        self._block_stage: list[int] = []  # stage (1..4) of each entry of self.blocks
        in_channels = STEM[-1][1]
        for stage, (count, width) in enumerate(zip(depth.blocks, STAGE_WIDTHS, strict=True), start=1):
            for i in range(count):
                first = i == 0
                blocks.append(
                    block_cls(
                        in_channels,
                        width,
                        # Stage 1 follows the max-pool, which already halved the map.
                        stride=2 if first and stage > 1 else 1,
                        # PaddleClas projects in every stage's first block, even stage 1 of
                        # ResNet18/34 where the channel count does not change.
                        project=first,
                        pool_short=first and stage > 1,
                        lr_mult=lr_mult[stage],
                    )
                )
                self._block_stage.append(stage)
                in_channels = width * expansion
        self.blocks = nn.Sequential(*blocks)

        self.feature_dim = in_channels
        self.avg_pool = nn.AdaptiveAvgPool2D(1)
        self.flatten = nn.Flatten()
        bound = 1.0 / math.sqrt(self.feature_dim)
        self.fc = nn.Linear(
            self.feature_dim, num_classes, weight_attr=ParamAttr(initializer=Uniform(-bound, bound))
        )

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        """The globally pooled, flattened features ``[N, feature_dim]`` (the fc layer's input)."""
        x = self.max_pool(self.stem(x))
        x = self.blocks(x)
        return self.flatten(self.avg_pool(x))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.fc(self.forward_features(x))

    def stage_of(self, param_name: str) -> int:
        """0 for the stem, 1..4 for the residual stages, 5 for the fc head."""
        return stage_of(param_name, self.architecture)

    def stage_end_blocks(self) -> list[int]:
        """Index in ``blocks`` of each stage's last block (ResNet50: 2, 6, 12, 15)."""
        return [max(i for i, s in enumerate(self._block_stage) if s == st) for st in range(1, NUM_STAGES + 1)]


def stage_of(param_name: str, architecture: str = "ResNet50_vd") -> int:
    """The stage a state-dict key belongs to: 0 stem, 1..4 residual stages, 5 the fc head.

    ``blocks.<i>`` numbering runs across stages, so the architecture decides where stages end
    (ResNet50: blocks 0-2 are stage 1, 3-6 stage 2, 7-12 stage 3, 13-15 stage 4).
    """
    head, _, rest = param_name.partition(".")
    if head == "stem":
        return STEM_STAGE
    if head == "fc":
        return HEAD_STAGE
    if head == "blocks":
        index_text = rest.partition(".")[0]
        if architecture not in DEPTHS:
            raise ValueError(f"architecture: {architecture!r} is not one of {', '.join(DEPTHS)}")
        if index_text.isdigit():
            index = int(index_text)
            end = 0
            for stage, count in enumerate(DEPTHS[architecture].blocks, start=1):
                end += count
                if index < end:
                    return stage
    raise ValueError(f"{param_name!r} is not a parameter of {architecture}")


def build_model(architecture: str, num_classes: int, lr_mult_list: Sequence[float] | None = None) -> ResNetVd:
    """Build a randomly initialised ResNet_vd (use ``pretrained.load_pretrained`` for weights).

    ``lr_mult_list`` (stem, stage1..4) scales each stage's learning rate through its parameters'
    ``ParamAttr(learning_rate=...)``, as PaddleClas's ``lr_mult_list`` does; the fc head keeps 1.0.
    """
    return ResNetVd(architecture, num_classes, lr_mult_list)


def running_stat_names(model: nn.Layer) -> set[str]:
    """State-dict keys of BatchNorm running statistics (Paddle keeps them as non-trainable parameters)."""
    return {name for name, _ in model.named_parameters() if name.endswith(("._mean", "._variance"))}
