"""The recipe's optimiser and learning-rate schedule.

Momentum SGD with L2 weight decay; the learning rate rises linearly from 0 during the warm-up and
then follows a half cosine down to 0, stepped once per iteration (PaddleClas's ``Cosine`` with
``warmup_epoch``, which is ``LinearWarmup(start_lr=0)`` around ``CosineAnnealingDecay``; written
here in closed form so a resumed run lands on exactly the same value).

Default learning rate (``training.learningRate: 0``): the finetune rate is the flowers102
finetune config's 0.0125 per 32 images. The PaddleClas finetune guide's advice is that
finetuning wants a rate about 10x smaller than training from scratch, so ``freeze: from-scratch``
(whether chosen or decided by ``auto``) defaults to 10x that, 0.125 per 32 images. Both scale
linearly with the global batch (batch size per process x number of processes), the linear
scaling rule, which relies on the warm-up for the larger rates. Set ``training.learningRate``
to override either.
"""

from __future__ import annotations

import math

import paddle
from paddle.optimizer.lr import LRScheduler

FINETUNE_LR_PER_32 = 0.0125
FROM_SCRATCH_LR_PER_32 = 0.125


def default_learning_rate(global_batch: int, from_scratch: bool = False) -> float:
    """The recipe's learning rate for a global batch size (see the module docstring)."""
    per_32 = FROM_SCRATCH_LR_PER_32 if from_scratch else FINETUNE_LR_PER_32
    return per_32 * global_batch / 32.0


def warmup_steps_for(warmup_epochs: int, epochs: int, steps_per_epoch: int) -> int:
    """Warm-up iterations; never more than half the run, so a short run still reaches its peak
    rate and has a cosine phase (the recipe's 5 of 20 epochs is a quarter)."""
    total = epochs * steps_per_epoch
    return min(warmup_epochs * steps_per_epoch, total // 2)


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """The learning rate used for iteration ``step`` (0-based)."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


class WarmupCosine(LRScheduler):
    """Linear warm-up from 0, then cosine to 0, per iteration. ``last_epoch`` counts iterations."""

    def __init__(self, base_lr: float, warmup_steps: int, total_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        super().__init__(learning_rate=base_lr, last_epoch=-1)

    def get_lr(self) -> float:
        return lr_at(max(0, self.last_epoch), self.base_lr, self.warmup_steps, self.total_steps)


def build_optimizer(
    parameters: list[paddle.Tensor], scheduler: WarmupCosine, momentum: float, weight_decay: float
) -> paddle.optimizer.Momentum:
    """Momentum SGD with L2 decay over the trainable parameters.

    Per-stage ``lrMultList`` factors reach the optimiser through each parameter's
    ``optimize_attr['learning_rate']``, set by ``model.build_model``.
    """
    return paddle.optimizer.Momentum(
        learning_rate=scheduler,
        momentum=momentum,
        parameters=parameters,
        weight_decay=paddle.regularizer.L2Decay(weight_decay) if weight_decay else None,
    )
