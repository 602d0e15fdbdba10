"""Starts one container of a runner pod: runs inside a private mount namespace (`unshare -m`),
bind-mounts the pod's volumes and termination-message file at the paths the pod asked for, drops
to the pod's user if it set one, and execs the container's command with the pod's environment.

    unshare --mount --propagation private -- python -m localcluster.runner.podexec SPEC.json

SPEC holds: argv, env, workdir, mounts [{source, target, readOnly}], uid, gid, groups,
expose (paths a non-root uid must reach: the venv's real Python, the venv, the sources),
start_error_file. A failure
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


def _expose_for_other_users(paths: list[str]) -> None:
    """Let a non-root user reach `paths` even where an ancestor is private (the interpreter may
    live under /root, the checkout under a mode-0700 temporary folder): inside this mount
    namespace only, each private ancestor is replaced by a tmpfs that holds just the branches
    leading to those paths. A container image would simply have them readable by everyone."""
    while True:
        branches: dict[Path, set[str]] = {}
        for path in map(Path, paths):
            for i in range(1, len(path.parts) - 1):
                ancestor = Path(*path.parts[: i + 1])
                if not ancestor.stat().st_mode & 0o001:
                    branches.setdefault(ancestor, set()).add(path.parts[i + 1])
                    break
        if not branches:
            return
        # Shallowest first; deeper private ancestors are found again on the next pass.
        ancestor = min(branches, key=lambda a: len(a.parts))
        _replace_by_tmpfs(ancestor, sorted(branches[ancestor]))


def _replace_by_tmpfs(ancestor: Path, keep: list[str]) -> None:
    def run(*cmd: str) -> None:
        subprocess.run(list(cmd), check=True, capture_output=True, text=True)

    staging = Path(os.environ.get("PFO_STAGING", "/tmp")) / f"pfo-expose-{os.getpid()}"
    held = []
    for name in keep:
        stage = staging / name
        stage.mkdir(parents=True, exist_ok=True)
        run("mount", "--bind", str(ancestor / name), str(stage))
        held.append((stage, ancestor / name))
    mode = f"mode={ancestor.stat().st_mode & 0o7777 | 0o711:o}"
    run("mount", "-t", "tmpfs", "-o", mode, "tmpfs", str(ancestor))
    for stage, branch in held:
        branch.mkdir()
        run("mount", "--move", str(stage), str(branch))
        stage.rmdir()
    staging.rmdir()


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    # Opened while still root (the pod's user may not write the runner's folder); not inherited
    # by the container's process.
    spec["start_error_fd"] = os.open(spec["start_error_file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        # Parents first, so a volume mounted inside another volume's path stays visible.
        for m in sorted(spec["mounts"], key=lambda m: m["target"].count("/")):
            _mount(m["source"], m["target"], m["readOnly"])
        if spec.get("uid"):
            _expose_for_other_users(spec["expose"])
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
    os.write(spec["start_error_fd"], message.encode())
    print(message, file=sys.stderr)
    sys.exit(128)


if __name__ == "__main__":
    main(sys.argv[1])
