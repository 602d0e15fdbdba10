"""Running ``finetune-train`` as a real process, as a pod runs it: its own interpreter, its own
signals, its exit code and its result file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from finetune_contract import PROGRESS_PREFIX

REPO = Path(__file__).resolve().parents[2]
ENTRY = Path(sys.executable).with_name("finetune-train")
SOURCES = os.pathsep.join(str(REPO / folder) for folder in ("trainer", "contract"))


def settings_json(data_root: Path, output_dir: Path, result_path: Path, **sections: dict[str, Any]) -> str:
    """Tiny-data settings (ResNet18_vd at 16 px, 2 loader workers), sections merged over them."""
    data: dict[str, Any] = {
        "model": {"architecture": "ResNet18_vd"},
        "dataset": {"root": str(data_root), "imageSize": 16, "resizeShort": 16},
        "finetune": {"freeze": "none"},
        "training": {"epochs": 3, "batchSize": 4, "numWorkers": 2, "warmupEpochs": 1},
        "output": {"dir": str(output_dir), "resultPath": str(result_path)},
        "cacheDir": str(output_dir.parent / "cache"),
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return json.dumps(data)


def start(settings: str, cwd: Path) -> subprocess.Popen[str]:
    """``finetune-train --settings-json SETTINGS`` with its progress (stdout) and log (stderr)
    in one pipe, line by line as it writes them; read it to the end (``proc.stdout.read()``)
    before waiting, so the process never blocks on a full pipe. It leads a process group of its
    own (with its data loader workers), as a container's processes are: ``kill_all`` ends them
    together."""
    return subprocess.Popen(
        [str(ENTRY), "--settings-json", settings],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": SOURCES},
        cwd=cwd,
        start_new_session=True,
    )


def kill_all(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the trainer and its workers at once, as the kubelet kills a container (a SIGTERM,
    by contrast, goes to the main process only: ``proc.send_signal``)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def run(settings: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRY), "--settings-json", settings],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": SOURCES},
        cwd=cwd,
        check=False,
    )


def progress_epoch(line: str) -> int | None:
    """The epoch of a progress line, or None for any other line."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    return int(json.loads(line[len(PROGRESS_PREFIX) :])["epoch"])
