"""Reading and writing the trainer's pickled state files, safely.

Paddle's ``.pdparams``/``.pdopt`` files are pickles, and ``paddle.load`` unpickles whatever a file
asks for: a crafted file runs code in the trainer. Every pickled file the trainer reads (the
pretrained weights, a checkpoint's model and optimiser state, the best model) goes through
``load`` instead, which admits exactly what a state dict is made of: plain containers (dict,
list, tuple), numbers, strings, bytes, None, and numpy arrays and scalars of non-object dtypes.
Anything else is refused before it is built (the unpickler never looks up another global) and
the whole structure is checked after loading (no object arrays, bounded nesting).

``save`` writes the same format (a protocol 4 pickle, as ``paddle.save`` writes; ``paddle.load``
reads it too) after converting Paddle tensors to numpy, and returns the file's size and sha256,
computed while writing, so a checkpoint can record them and be verified before it is trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

PROTOCOL = 4  # paddle.save's default
MAX_DEPTH = 16  # an optimiser state is 3 deep (master_weights -> name -> array)

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class UnsafeFileError(ValueError):
    """The file is not a plain state file: it asks for other objects, or it is cut or corrupt.
    ``reason`` says which (and never comes from running anything the file holds)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class _NotPlain(ValueError):
    """What ``_check_plain`` found, before the path is known."""


class _Refused(pickle.UnpicklingError):
    """The file asked for something a state file never holds."""


class _PlainUnpickler(pickle.Unpickler):
    """Resolves only numpy's array/scalar/dtype constructors and OrderedDict; every other global
    (os.system, builtins.eval, paddle's own classes, ...) is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            # numpy 2 writes numpy._core, numpy 1 numpy.core: either reads under both.
            for candidate in (module, module.replace("numpy._core", "numpy.core"), "numpy.core.multiarray"):
                with contextlib.suppress(ImportError, AttributeError):
                    return getattr(importlib.import_module(candidate), name)
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise _Refused(
            f"it refers to {module}.{name}, which a state file never holds (refused, nothing was run)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("it holds a persistent reference, which a state file never holds (refused)")


def _check_plain(value: Any, depth: int = 0) -> None:
    """Raise _NotPlain unless ``value`` is plain data (see the module docstring)."""
    if depth > MAX_DEPTH:
        raise _NotPlain(f"nested deeper than {MAX_DEPTH} levels")
    kind = type(value)  # exact types: a subclass (Counter, a str subclass, ...) is another class
    if value is None or kind in (bool, int, float, complex, str, bytes):
        return
    if isinstance(value, np.ndarray):
        if type(value) is not np.ndarray or value.dtype.hasobject:
            raise _NotPlain(f"holds an array of {value.dtype} ({type(value).__name__}), not of numbers")
        return
    if isinstance(value, np.generic):
        if value.dtype.hasobject:
            raise _NotPlain("holds a numpy object scalar")
        return
    if kind in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise _NotPlain(f"holds a dict key of type {type(key).__name__}")
            _check_plain(item, depth + 1)
        return
    if kind in (list, tuple):
        for item in value:
            _check_plain(item, depth + 1)
        return
    raise _NotPlain(f"holds a {type(value).__name__}, which a state file never holds")


class _DigestReader:
    """A file object for the unpickler that hashes and counts what it reads."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def _seen(self, data: bytes | memoryview) -> None:
        self.digest.update(data)
        self.size += len(data)

    def read(self, n: int = -1) -> bytes:
        data = self.handle.read(n)
        self._seen(data)
        return data

    def readline(self) -> bytes:
        data = self.handle.readline()
        self._seen(data)
        return data

    def readinto(self, buffer: Any) -> int:
        count = self.handle.readinto(buffer)
        self._seen(memoryview(buffer).cast("B")[:count])
        return count


def load(path: str | Path, expect: dict[str, Any] | None = None) -> Any:
    """The plain data a state file holds. Raises FileNotFoundError when it does not exist and
    UnsafeFileError when it asks for anything but plain data, cannot be read to its end, or
    (with ``expect``, a ``{"bytes", "sha256"}`` that ``save`` returned) is not that file."""
    path = Path(path)
    if expect is not None and path.stat().st_size != expect.get("bytes"):
        raise UnsafeFileError(path, f"{path.stat().st_size} bytes, but {expect.get('bytes')} were written")
    with path.open("rb") as handle:
        reader = _DigestReader(handle)
        try:
            data = _PlainUnpickler(reader).load()
        except _Refused as exc:
            raise UnsafeFileError(path, str(exc)) from None
        except EOFError:
            raise UnsafeFileError(path, "not a readable state file (cut short)") from None
        except (
            pickle.UnpicklingError,
            ValueError,
            TypeError,
            LookupError,
            AttributeError,
            ArithmeticError,
            MemoryError,
        ) as exc:
            # Bytes that are not a pickle, or a pickle whose arrays do not add up or cannot fit.
            raise UnsafeFileError(path, f"not a readable state file ({type(exc).__name__}: {exc})") from None
        if expect is not None:
            reader.read()  # anything after the pickle's end counts too
            if reader.digest.hexdigest() != expect.get("sha256"):
                raise UnsafeFileError(path, "its sha256 differs from the one recorded when it was written")
    try:
        _check_plain(data)
    except _NotPlain as exc:
        raise UnsafeFileError(path, f"{exc} (refused)") from None
    return data


def plain(value: Any) -> Any:
    """``value`` with Paddle tensors (at any depth) replaced by numpy arrays."""
    if type(value) in (dict, OrderedDict):
        return type(value)((key, plain(item)) for key, item in value.items())
    if type(value) in (list, tuple):
        return type(value)(plain(item) for item in value)
    if hasattr(value, "numpy") and callable(value.numpy) and not isinstance(value, (np.ndarray, np.generic)):
        return np.asarray(value.numpy())
    return value


class _DigestWriter:
    """A file object for pickle that hashes and counts what it writes."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)


def save(value: Any, path: str | Path) -> dict[str, Any]:
    """Pickle ``value`` (tensors as numpy arrays) to ``path``; returns ``{"bytes", "sha256"}``.

    The data is checked first, so nothing is written that ``load`` would refuse."""
    data = plain(value)
    try:
        _check_plain(data)
    except _NotPlain as exc:
        raise UnsafeFileError(path, f"cannot be saved: {exc}") from None
    with open(path, "wb") as handle:
        writer = _DigestWriter(handle)
        pickle.Pickler(writer, protocol=PROTOCOL).dump(data)
    return {"bytes": writer.size, "sha256": writer.digest.hexdigest()}
