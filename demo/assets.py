"""What the demo job needs besides the cluster: pretrained weights it makes itself (cached), the
finetune data on the node's volume, and an HTTPS server for the weights."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from demo.digits import FINETUNE_CLASSES, PRETRAIN_CLASSES
from localcluster import Cluster, make_self_signed

ROOT = Path(__file__).resolve().parents[1]

# The stand-in for ImageNet is a model that knows digits 0-5 (a 6-class fc); the demo job's task
# is digits it never saw, 6-9 (numClasses 4), so the pretrained fc does not fit and is stripped,
# as the 1000-class ImageNet fc is for flowers102.
IMAGE_SIZE = 32  # = spec.dataset.imageSize of examples/demo-digits.yaml (the CRD's minimum)
PRETRAIN = {"epochs": 3, "warmupEpochs": 1, "learningRate": 0.05}
HTTPS_NAME = "demo-https"


def cache_dir() -> Path:
    return Path(os.environ.get("PFO_CACHE", Path.home() / ".cache" / "paddle-finetune-operator")) / "demo"


def weights_path() -> Path:
    """Where the pretrained weights are cached, keyed by the recipe (a changed recipe makes new ones)."""
    recipe = {"classes": PRETRAIN_CLASSES, "imageSize": IMAGE_SIZE, **PRETRAIN}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "weights" / f"ResNet18_vd_digits0-5_{key}.pdparams"


def make_weights(path: Path) -> dict[str, Any]:
    """Train ResNet18_vd from scratch on digits 0-5 (the trainer itself) and save its best weights
    at `path`; returns the trainer's result."""
    from demo.digits import make_pretrained_weights

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pfo-demo-pretrain-") as work:
        partial = Path(work) / path.name
        result = make_pretrained_weights(partial, Path(work), PRETRAIN_CLASSES, IMAGE_SIZE, **PRETRAIN)
        partial.chmod(0o644)
        shutil.move(partial, path)  # only complete files ever carry the final name
    return result


def start_pretraining(path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """make_weights in a child process (its own log), so the cluster starts meanwhile."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "demo.assets", "pretrain", str(path)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_finetune_data(folder: Path) -> dict[str, Any]:
    """Digits 6-9 (relabelled 0-3, labels.txt names them) in PaddleClas list format, replacing what
    was there."""
    from demo.digits import write_digits_dataset

    for child in folder.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    return write_digits_dataset(folder, FINETUNE_CLASSES, IMAGE_SIZE)


def https_server(cluster: Cluster, folder: Path) -> tuple[int, Path]:
    """An HTTPS server for `folder` with a self-signed certificate, on the address pods reach the
    host at (the real node's bridge: only pods and this host reach it), started as a companion of
    the cluster (make cluster-down stops it), or the one a previous run left. Returns (port,
    certificate); the trainer gets a copy of the certificate in its dataset volume."""
    host = cluster.pod_host_ip()
    tls = cluster.state_dir / "demo"
    cert, key, port_file = tls / "cert.pem", tls / "key.pem", tls / "https.port"
    if cluster.companion(HTTPS_NAME) is not None and port_file.is_file():
        return int(port_file.read_text()), cert
    tls.mkdir(mode=0o755, parents=True, exist_ok=True)
    port_file.unlink(missing_ok=True)
    make_self_signed(cert, key, ip=host)
    argv = [sys.executable, "-m", "localcluster.https_files", "--dir", str(folder), "--cert", str(cert),
            "--key", str(key), "--host", host, "--port-file", str(port_file)]  # fmt: skip
    with open(cluster.state_dir / "logs" / f"{HTTPS_NAME}.log", "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=ROOT, start_new_session=True,
        )  # fmt: skip
    cluster.add_companion(HTTPS_NAME, proc.pid, f"{cluster.state_dir}/")  # the cert path is in its argv
    deadline = time.monotonic() + 30
    while not port_file.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"the HTTPS server did not start; see {cluster.state_dir}/logs/{HTTPS_NAME}.log"
            )
        time.sleep(0.1)
    return int(port_file.read_text()), cert


def main(argv: list[str] | None = None) -> int:
    """`python -m demo.assets pretrain PATH`: what start_pretraining runs."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m demo.assets")
    parser.add_argument("action", choices=["pretrain"])
    parser.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    result = make_weights(args.path)
    print(f"PRETRAINED {json.dumps({'top1': result['top1'], 'path': str(args.path)})}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
