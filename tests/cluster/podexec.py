"""Starts one container of a runner pod: runs inside a private mount namespace (`unshare -m`),
bind-mounts the pod's volumes and termination-message file at the paths the pod asked for, drops
to the pod's user if it set one, and execs the container's command with the pod's environment.

    unshare --mount --propagation private -- python -m tests.cluster.podexec SPEC.json

SPEC holds: argv, env, workdir, mounts [{source, target, readOnly}], uid, gid, groups,
interpreter (the venv's real Python, exposed to a non-root uid), start_error_file. A failure
before exec writes start_error_file and exits 128, which the runner reports as reason
StartError, like a kubelet whose runtime could not start the container.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _mount(source: str, target: str, read_only: bool) -> None:
    tgt = Path(target)
    if Path(source).is_dir():
        tgt.mkdir(parents=True, exist_ok=True)
    else:
        tgt.parent.mkdir(parents=True, exist_ok=True)
        tgt.touch(exist_ok=True)
    subprocess.run(["mount", "--bind", source, target], check=True, capture_output=True, text=True)
    if read_only:
        subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True, capture_output=True, text=True)


def _expose_for_other_users(path: Path) -> None:
    """Let a non-root user reach `path` even if an ancestor is private (the venv's interpreter may
    live under /root, mode 0700): inside this mount namespace only, replace the first private
    ancestor by a tmpfs that holds just the branch leading to `path`. A container image would
    simply have its interpreter readable by everyone."""
    parts = path.parts
    for i in range(1, len(parts) - 1):
        ancestor = Path(*parts[: i + 1])
        if ancestor.stat().st_mode & 0o001:
            continue
        branch = ancestor / parts[i + 1]
        staging = Path(os.environ.get("PFO_STAGING", "/tmp")) / f"pfo-expose-{os.getpid()}"
        staging.mkdir(parents=True, exist_ok=True)
        mode = f"mode={ancestor.stat().st_mode & 0o7777 | 0o711:o}"
        subprocess.run(
            ["mount", "--bind", str(branch), str(staging)], check=True, capture_output=True, text=True
        )
        subprocess.run(["mount", "-t", "tmpfs", "-o", mode, "tmpfs", str(ancestor)], check=True,
                       capture_output=True, text=True)  # fmt: skip
        (ancestor / parts[i + 1]).mkdir()
        subprocess.run(
            ["mount", "--move", str(staging), str(branch)], check=True, capture_output=True, text=True
        )
        staging.rmdir()
        return


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    try:
        # Parents first, so a volume mounted inside another volume's path stays visible.
        for m in sorted(spec["mounts"], key=lambda m: m["target"].count("/")):
            _mount(m["source"], m["target"], m["readOnly"])
        if spec.get("uid"):
            _expose_for_other_users(Path(spec["interpreter"]))
        if spec.get("gid") is not None or spec.get("groups"):
            os.setgroups(spec.get("groups") or [])
        if spec.get("gid") is not None:
            os.setgid(spec["gid"])
        if spec.get("uid") is not None:
            os.setuid(spec["uid"])
        os.chdir(spec["workdir"])
        argv = spec["argv"]
        os.execvpe(argv[0], argv, spec["env"])
    except subprocess.CalledProcessError as exc:
        _start_error(spec, f"mounting a volume failed: {' '.join(exc.cmd)}: {exc.stderr.strip()}")
    except FileNotFoundError as exc:
        _start_error(spec, f"exec: {exc.filename or spec['argv'][0]!r}: no such file or directory in $PATH")
    except OSError as exc:
        _start_error(spec, f"starting the container failed: {exc}")


def _start_error(spec: dict, message: str) -> None:
    Path(spec["start_error_file"]).write_text(message)
    print(message, file=sys.stderr)
    sys.exit(128)


if __name__ == "__main__":
    main(sys.argv[1])
