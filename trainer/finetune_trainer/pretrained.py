"""Pretrained weights: where they come from, how they are fetched, how they are loaded.

Sources (``finetune_contract.PretrainedSource``, exactly one of):

* ``name``: an official PaddleClas ImageNet model (``OFFICIAL_WEIGHTS``);
* ``url``: any ``https`` URL. Plain ``http`` is accepted only for loopback hosts (tests serve
  files from 127.0.0.1); the CRD also requires ``https``, so this is a second line of defence;
* ``path``: a local ``.pdparams`` file (relative paths resolve against ``base_dir``, the dataset
  volume's root in a pod).

An optional ``sha256`` is verified for every source. Downloads stream into ``cache_dir`` under a
name derived from the URL (and the expected sha256), are written to a temporary file in the same
directory and renamed into place only once complete and verified, so a cache shared by several
pods never holds a partial file; a cached file is reused (and re-verified when a sha256 is given).

Errors: ``PretrainedError`` is permanent (bad checksum, HTTP 4xx, missing file, not a state dict,
weights of another architecture); ``DownloadError`` is transient (network, timeouts, HTTP 5xx/429,
truncated bodies) and worth retrying. They map to the contract's exit codes.

Loading never relies on Paddle's warnings: ``load_pretrained`` compares every key and shape and
reports four lists (loaded, stripped, missing, unexpected). ``.pdparams`` files are pickles; they
are read by ``statefile.load``, which admits only numpy arrays and plain containers (what
``paddle.save`` writes for a state dict), so a crafted file cannot run code in the trainer.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import paddle
import requests
from finetune_contract import LoadSummary, PretrainedSource
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from . import statefile
from .statefile import UnsafeFileError

log = logging.getLogger(__name__)

OFFICIAL_BASE_URL = "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/legendary_models/"
# ImageNet-1k weights PaddleClas publishes for the vd family (SSLD: knowledge-distilled, higher
# top-1; PaddleClas publishes them for the 34/50/101 depths).
OFFICIAL_NAMES = (
    "ResNet18_vd",
    "ResNet34_vd",
    "ResNet50_vd",
    "ResNet101_vd",
    "ResNet152_vd",
    "ResNet34_vd_ssld",
    "ResNet50_vd_ssld",
    "ResNet101_vd_ssld",
)
OFFICIAL_WEIGHTS: dict[str, str] = {
    name: f"{OFFICIAL_BASE_URL}{name}_pretrained.pdparams" for name in OFFICIAL_NAMES
}


def official_architecture(name: str) -> str:
    """The architecture an official weights name belongs to (``ResNet50_vd_ssld`` -> ``ResNet50_vd``)."""
    if name not in OFFICIAL_WEIGHTS:
        raise PretrainedError(f"model.pretrained.name: {name!r} is not one of {', '.join(OFFICIAL_WEIGHTS)}")
    return name.removesuffix("_ssld")


DOWNLOAD_TIMEOUT_S = 60.0  # per connect / per read, not for the whole file
DOWNLOAD_RETRIES = 4
DOWNLOAD_BACKOFF_S = 2.0  # urllib3 backoff factor: 0, 4, 8, 16 s between retries
RETRY_STATUSES = (429, 500, 502, 503, 504)
CHUNK_BYTES = 1 << 20
HEAD_PREFIX = "fc."
MIN_BACKBONE_COVERAGE = 0.5  # below this share of non-head keys loaded, the file is the wrong model


class PretrainedError(Exception):
    """Permanent: retrying will not help (the spec or the file must change)."""


class DownloadError(Exception):
    """Transient: the weights could not be fetched now (network, server error)."""


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------
def fetch_pretrained(
    source: PretrainedSource,
    cache_dir: str | Path,
    *,
    base_dir: str | Path | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    retries: int = DOWNLOAD_RETRIES,
    backoff: float = DOWNLOAD_BACKOFF_S,
) -> Path | None:
    """A local file holding the source's weights, or None when the source is empty."""
    sha = source.sha256.lower()
    if source.path:
        path = Path(source.path)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not path.is_file():
            raise PretrainedError(f"model.pretrained.path: {path} does not exist or is not a file")
        if sha:
            _verify(path, sha, "model.pretrained.path")
        return path
    if source.name:
        official_architecture(source.name)  # validates the name
        url = OFFICIAL_WEIGHTS[source.name]
    elif source.url:
        url = source.url
    else:
        return None
    _check_url(url)

    cache = Path(cache_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PretrainedError(f"cacheDir: cannot create {cache}: {exc}") from exc
    target = cache / cache_name(url, sha)
    if target.is_file():
        if not sha or _sha256(target) == sha:
            log.info("pretrained weights: reusing %s for %s", target, url)
            return target
        log.warning("pretrained weights: cached %s fails its sha256, downloading again", target)
        target.unlink()

    attempts = retries + 1
    for attempt in range(1, attempts + 1):
        try:
            _download(url, target, sha, timeout=timeout, retries=retries, backoff=backoff)
            return target
        except DownloadError as exc:
            # urllib3 retries connections and 5xx statuses itself; this loop covers failures
            # in the middle of the body, which it cannot retry.
            if attempt == attempts:
                raise
            delay = backoff * 2 ** (attempt - 1)
            log.warning(
                "pretrained weights: %s (attempt %d/%d, retrying in %.1fs)", exc, attempt, attempts, delay
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def cache_name(url: str, sha256: str = "") -> str:
    """The cache file name for a URL: a URL digest, the expected sha256 if any, the file name."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", urlsplit(url).path.rsplit("/", 1)[-1]) or "weights.pdparams"
    return f"{digest}-{sha256[:16]}-{base}" if sha256 else f"{digest}-{base}"


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and _is_loopback(parts.hostname or ""):
        return
    raise PretrainedError(f"model.pretrained.url: {url!r} must be an https URL")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _session(retries: int, backoff: float) -> requests.Session:
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET"}),
        raise_on_status=False,  # the last response comes back; we classify its status
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _download(url: str, target: Path, sha: str, *, timeout: float, retries: int, backoff: float) -> None:
    log.info("pretrained weights: downloading %s", url)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    except OSError as exc:
        raise PretrainedError(f"cacheDir: cannot write in {target.parent}: {exc}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, _session(retries, backoff) as session:
            try:
                response = session.get(url, stream=True, timeout=timeout)
            except requests.RequestException as exc:
                raise DownloadError(f"{url}: {type(exc).__name__}: {exc}") from exc
            with response:
                status = response.status_code
                if status in RETRY_STATUSES or status >= 500:
                    raise DownloadError(f"{url}: HTTP {status} after {retries} retries")
                if status != 200:
                    raise PretrainedError(f"model.pretrained: {url} answered HTTP {status}")
                expected_len = response.headers.get("Content-Length")
                digest = hashlib.sha256()
                received = 0
                try:
                    for chunk in response.iter_content(CHUNK_BYTES):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                except requests.RequestException as exc:
                    raise DownloadError(f"{url}: download interrupted after {received} bytes: {exc}") from exc
                except OSError as exc:  # e.g. the cache volume is full: may pass once space frees up
                    raise DownloadError(f"{url}: cannot write {tmp} after {received} bytes: {exc}") from exc
            if expected_len is not None and expected_len.isdigit() and received != int(expected_len):
                raise DownloadError(f"{url}: truncated download ({received} of {expected_len} bytes)")
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if sha and got != sha:
            raise PretrainedError(f"model.pretrained.sha256: {url} has sha256 {got}, expected {sha}")
        os.replace(tmp, target)
        log.info("pretrained weights: saved %s (%d bytes, sha256 %s)", target, received, got)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, sha: str, field_name: str) -> None:
    got = _sha256(path)
    if got != sha:
        raise PretrainedError(f"{field_name}: {path} has sha256 {got}, expected {sha}")


# --------------------------------------------------------------------------------------------
# Reading a .pdparams file safely
# --------------------------------------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a ``.pdparams`` file, keyed by structured name (read by ``statefile.load``:
    plain data only, nothing in the file is run)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"{path}: pretrained weights file does not exist")
    try:
        data = statefile.load(path)
    except UnsafeFileError as exc:
        raise PretrainedError(f"{path}: not a Paddle state dict (.pdparams): {exc.reason}") from None
    if not isinstance(data, dict):
        raise PretrainedError(f"{path}: not a Paddle state dict: holds a {type(data).__name__}, not a dict")
    state = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
    if not state:
        raise PretrainedError(f"{path}: not a Paddle state dict: no named arrays in it")
    return state


# --------------------------------------------------------------------------------------------
# Loading into a model
# --------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What happened to each key. All lists hold state-dict keys."""

    path: str
    loaded: list[str] = field(default_factory=list)
    stripped: list[str] = field(default_factory=list)  # in both, shapes differ: not loaded
    missing: list[str] = field(default_factory=list)  # model keys absent from the file
    unexpected: list[str] = field(default_factory=list)  # file keys absent from the model
    shapes: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)  # stripped: file, model

    def load_summary(self) -> LoadSummary:
        """The result's part (the contract's encoding truncates long lists)."""
        return LoadSummary(list(self.stripped), list(self.missing), list(self.unexpected))

    def summary(self) -> str:
        stripped = ", ".join(f"{k} {self.shapes[k][0]}->{self.shapes[k][1]}" for k in self.stripped)
        return (
            f"loaded {len(self.loaded)} tensors from {self.path}; stripped {len(self.stripped)}"
            f"{f' ({stripped})' if stripped else ''}; missing {len(self.missing)}; "
            f"unexpected {len(self.unexpected)}"
        )


def load_pretrained(model: paddle.nn.Layer, path: str | Path, strip_mismatched: bool = True) -> LoadReport:
    """Load a ``.pdparams`` file into ``model``, stripping parameters whose shapes differ.

    Raises PretrainedError when ``strip_mismatched`` is False and a shape differs, or when fewer
    than half of the model's non-head tensors are found with the right shape (the file belongs to
    another architecture or naming scheme; training on would silently start from random weights).
    """
    file_state = read_state_dict(path)
    model_state = model.state_dict()
    report = LoadReport(path=str(path))
    to_set: dict[str, np.ndarray] = {}
    for name, target in model_state.items():
        if name not in file_state:
            report.missing.append(name)
            continue
        value = file_state[name]
        model_shape, file_shape = list(target.shape), list(value.shape)
        if model_shape != file_shape:
            if not strip_mismatched:
                raise PretrainedError(
                    f"{path}: parameter {name} has shape {file_shape} in the file but {model_shape} in "
                    "the model (set finetune.stripMismatched: true to drop it)"
                )
            report.stripped.append(name)
            report.shapes[name] = (file_shape, model_shape)
            continue
        to_set[name] = value.astype(_numpy_dtype(target), copy=False)
        report.loaded.append(name)
    report.unexpected = [k for k in file_state if k not in model_state]

    backbone = [k for k in model_state if not k.startswith(HEAD_PREFIX)]
    loaded_backbone = sum(1 for k in report.loaded if not k.startswith(HEAD_PREFIX))
    if backbone and loaded_backbone < MIN_BACKBONE_COVERAGE * len(backbone):
        examples = ", ".join(list(file_state)[:3])
        raise PretrainedError(
            f"{path}: only {loaded_backbone} of the model's {len(backbone)} backbone tensors match the "
            f"file by name and shape (file keys look like: {examples}); it holds another architecture "
            f"or naming scheme than {getattr(model, 'architecture', type(model).__name__)}"
        )
    for name, value in to_set.items():  # in place: keys left out stay as they are, without warnings
        model_state[name].set_value(value)
    log.info("pretrained weights: %s", report.summary())
    return report


def _numpy_dtype(tensor: paddle.Tensor) -> np.dtype:
    return np.dtype(str(tensor.dtype).replace("paddle.", ""))
