"""Load PaddleClas 2.6.0's ResNet module file as the reference implementation.

``import paddleclas`` pulls in the whole toolkit (OpenCV, faiss, its pinned numpy, ...), which is
installed with ``--no-deps`` and would not import. ``ppcls/arch/backbone/legendary_models/resnet.py``
itself needs only Paddle plus five package-relative names; this module provides light stand-ins
for those under a private package name and executes the file unchanged. Used by the parity test
and by ``bench/trainer_step.py``.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path

import paddle.nn as nn

PKG = "_paddleclas_reference"
RESNET_RELATIVE = Path("ppcls/arch/backbone/legendary_models/resnet.py")


class ReferenceUnavailable(RuntimeError):
    """The PaddleClas source is not installed (install ``paddleclas==2.6.0 --no-deps``)."""


def paddleclas_root() -> Path:
    """The installed paddleclas package directory, found without importing it."""
    spec = importlib.util.find_spec("paddleclas")
    if spec is None or not spec.submodule_search_locations:
        raise ReferenceUnavailable("paddleclas is not installed: pip install --no-deps paddleclas==2.6.0")
    return Path(next(iter(spec.submodule_search_locations)))


def _module(name: str, package: bool = True, **attrs: object) -> types.ModuleType:
    mod = types.ModuleType(name)
    if package:
        mod.__path__ = []  # marks it as a package so relative imports resolve through it
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


class _TheseusLayer(nn.Layer):
    """Stand-in for PaddleClas's TheseusLayer: only the feature-return hooks are missing."""

    def init_res(self, stages_pattern, return_patterns=None, return_stages=None):
        if return_patterns or return_stages:
            raise NotImplementedError("the reference stand-in does not support return_patterns")


def _no_pretrained(*_args, **_kwargs):
    raise NotImplementedError("the reference stand-in never downloads weights")


def load_reference_resnet() -> types.ModuleType:
    """The reference ``resnet`` module (``ResNet18_vd``, ``ResNet50_vd``, ... factories)."""
    full = f"{PKG}.ppcls.arch.backbone.legendary_models.resnet"
    if full in sys.modules:
        return sys.modules[full]
    root = paddleclas_root()
    path = root / RESNET_RELATIVE
    if not path.is_file():
        raise ReferenceUnavailable(f"{path}: missing from the installed paddleclas package")

    logger = logging.getLogger("paddleclas-reference")
    _module(PKG)
    _module(f"{PKG}.ppcls")
    utils = _module(f"{PKG}.ppcls.utils", logger=logger)
    _module(f"{PKG}.ppcls.utils.logger", package=False, warning=logger.warning, info=logger.info)
    utils.logger = sys.modules[f"{PKG}.ppcls.utils.logger"]
    _module(f"{PKG}.ppcls.utils.save_load", package=False, load_dygraph_pretrain=_no_pretrained)
    _module(f"{PKG}.ppcls.arch")
    _module(f"{PKG}.ppcls.arch.backbone")
    _module(f"{PKG}.ppcls.arch.backbone.base")
    _module(f"{PKG}.ppcls.arch.backbone.base.theseus_layer", package=False, TheseusLayer=_TheseusLayer)
    _module(f"{PKG}.ppcls.arch.backbone.base.dbb")
    _module(f"{PKG}.ppcls.arch.backbone.base.dbb.dbb_block", package=False, DiverseBranchBlock=None)
    _module(f"{PKG}.ppcls.arch.backbone.legendary_models")

    # custom_devices_layers.py needs only Paddle: execute the real file.
    _exec_file(f"{PKG}.ppcls.arch.backbone.legendary_models.custom_devices_layers", path.parent)
    return _exec_file(full, path.parent)


def _exec_file(name: str, folder: Path) -> types.ModuleType:
    path = folder / (name.rsplit(".", 1)[1] + ".py")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ReferenceUnavailable(f"{path}: cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
