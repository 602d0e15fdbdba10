"""Running the trainer as several real processes on this host, split as a multi-node job would
be: ``python -m paddle.distributed.launch --master 127.0.0.1:PORT --nnodes N --rank i
--nproc_per_node K`` once per "node" (each launcher hosts K ranks; rank 0's launcher hosts the
rendezvous), or one plain ``finetune-train`` process. The collectives are real (gloo on CPU).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from tests.trainer.tiny_data import write_list_dataset

REPO = Path(__file__).resolve().parents[2]
SOURCES = os.pathsep.join(str(REPO / folder) for folder in ("trainer", "contract"))
ENTRY = REPO / "trainer" / "finetune_trainer" / "__main__.py"  # the launcher takes a script path
ENV = {**os.environ, "PYTHONPATH": SOURCES}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def calibrated_weights(path: Path, data_root: Path, classes: int = 5, size: int = 16) -> Path:
    """Stand-in pretrained weights: a ResNet18_vd whose BatchNorm statistics were measured on
    ``size``-pixel images (forward passes in train mode, no updates), so frozen layers give sane
    features the way real pretrained ones do (a fresh model's BatchNorm leaves activations
    unscaled); train at that image size."""
    from finetune_trainer.data import ImageDataset, index_dataset
    from finetune_trainer.model import build_model

    index = index_dataset(write_list_dataset(data_root, classes=classes), "list", classes)
    images = ImageDataset(index.train, size, size, train=True, seed=1)
    paddle.seed(1)
    model = build_model("ResNet18_vd", classes)
    model.train()
    batch = paddle.to_tensor(np.stack([images[i][0] for i in range(len(images))]))
    with paddle.no_grad():
        for _ in range(30):
            model(batch)
    paddle.save(model.state_dict(), str(path))
    return path


@dataclass
class Run:
    """One training run: how it was split, its processes' exit codes and what they wrote."""

    name: str
    out: Path
    codes: list[int]
    logs: list[str] = field(default_factory=list)  # each launcher's (or the process's) output
    result_paths: list[Path] = field(default_factory=list)  # each node's termination message

    def state(self, epoch: int) -> dict[str, Any]:
        return json.loads((self.out / "checkpoints" / f"epoch-{epoch:04d}" / "state.json").read_text())

    def weights(self, epoch: int) -> dict[str, np.ndarray]:
        path = self.out / "checkpoints" / f"epoch-{epoch:04d}" / "model.pdparams"
        return {k: v.numpy() for k, v in paddle.load(str(path)).items()}

    def explain(self) -> str:
        return f"{self.name}: exit codes {self.codes}\n" + "\n".join(log[-3000:] for log in self.logs)


def settings_args(values: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return args


def node_command(master: str, nnodes: int, rank: int, nproc: int, log_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--master",
        master,
        "--nnodes",
        str(nnodes),
        "--rank",
        str(rank),
        "--nproc_per_node",
        str(nproc),
        "--log_dir",
        str(log_dir),
        str(ENTRY),
    ]


def start(
    root: Path,
    name: str,
    nnodes: int,
    nproc: int,
    settings: dict[str, Any],
    per_node: list[dict[str, Any]] | None = None,
) -> tuple[list[subprocess.Popen], Run]:
    """Start a run split into ``nnodes`` launchers of ``nproc`` processes (1 x 1: the plain
    trainer, no launcher). ``settings`` are shared; ``per_node`` adds settings for each node
    (its termination message file is always its own: ``<name>.node<i>.tl``)."""
    out = root / name
    run = Run(name, out, [])
    procs = []
    master = f"127.0.0.1:{free_port()}"
    for i in range(nnodes):
        result_path = root / f"{name}.node{i}.tl"
        run.result_paths.append(result_path)
        own = (per_node or [{}] * nnodes)[i]
        # The world the operator would put in the settings: nnodes pods of nproc processes.
        world = {"world.nodes": nnodes, "world.processesPerNode": nproc}
        values = {**world, **settings, "output.dir": out, "output.resultPath": result_path, **own}
        if nnodes == 1 and nproc == 1:
            command = [sys.executable, str(ENTRY)]
        else:
            command = node_command(master, nnodes, i, nproc, root / f"{name}-logs-node{i}")
        procs.append(
            subprocess.Popen(
                [*command, *settings_args(values)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=ENV,
                cwd=root,
            )
        )
    return procs, run


def finish(procs: list[subprocess.Popen], run: Run, timeout: float = 900) -> Run:
    for proc in procs:
        try:
            output, _ = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
        run.logs.append(output or "")
        run.codes.append(proc.returncode)
    return run


def run_split(root: Path, name: str, nnodes: int, nproc: int, settings: dict[str, Any], **kw: Any) -> Run:
    procs, run = start(root, name, nnodes, nproc, settings, **kw)
    return finish(procs, run)
