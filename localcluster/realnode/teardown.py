"""Tearing the real node down: its pods first (while the API server and kubelet run), then
everything it changed outside its directory, from the state directory's path alone, so a
cluster whose processes were killed is cleaned up as well."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from localcluster.realnode import apiservice
from localcluster.realnode.containerd import K8S_NAMESPACE, Containerd
from localcluster.realnode.hoststate import HostRegistry
from localcluster.realnode.node import CGROUP_FS, NODE_NAME, NodeError, host_names, ip_command, v1_hierarchies

CNI_RESULTS = Path("/var/lib/cni/results")  # libcni's cache (containerd 1.6 cannot move it)
CONTAINER_LOG_LINKS = Path("/var/log/containers")  # the kubelet's links (fixed path in kubelet)
SHIM_SOCKETS = Path("/run/containerd/s")  # containerd 1.6's shim sockets (fixed path)


def drain(state_dir: Path, state: dict[str, Any], kubectl: list[str] | None) -> None:
    """Stop the node's pods while the API server and kubelet still run: cordon the node (no new pod
    lands there), delete its pods (the kubelet stops their containers and sandboxes, and the CNI
    plugin releases their addresses), then stop the kubelet and SIGKILL any container left.
    `kubectl`: the admin kubectl command line; `state`: the cluster's state.json."""
    directory = state_dir / "node"
    if not directory.is_dir():
        return
    containerd = Containerd(directory / "containerd")
    if kubectl is not None:
        _delete_pods(containerd, kubectl)
    for p in state.get("processes", []):
        if p["name"] == "kubelet":
            _terminate(p["pid"], p["marker"])
    if containerd.socket.exists():
        containerd.kill_all_tasks()


def _terminate(pid: int, marker: str, grace: float = 10) -> None:
    """SIGTERM `pid` if its command line holds `marker` (never a recycled pid), SIGKILL after `grace`."""

    def alive() -> bool:
        return pid in _processes_with(marker) and not _is_zombie(pid)

    sig = signal.SIGTERM
    deadline = time.monotonic() + grace
    while alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        time.sleep(0.1)


def _delete_pods(containerd: Containerd, kubectl: list[str], timeout: float = 30) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*kubectl, *args], capture_output=True, text=True, check=False, timeout=30)

    if run("get", "--raw", "/readyz").returncode != 0:
        return
    run("cordon", NODE_NAME)
    selector = f"spec.nodeName={NODE_NAME}"
    run("delete", "pods", "-A", "--field-selector", selector, "--grace-period=1", "--wait=false")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = run("get", "pods", "-A", "--field-selector", selector, "-o", "name")
        if pods.returncode == 0 and not pods.stdout.strip() and not containerd.running_tasks():
            return
        time.sleep(0.2)


def cleanup_host(state_dir: Path) -> list[str]:
    """Undo what the node changed outside its directory, after its processes were stopped: kill
    what still runs in its cgroups (and its containerd shims), unmount everything under the state
    directory, delete its bridge, cgroups, CNI cache entries, shim sockets and container log links,
    and unregister it (the last node restores the sysctls). Works from the directory's path alone
    (every name derives from it). Returns what it removed; raises NodeError if a mount is left
    (removing the directory then would delete through it)."""
    directory = (state_dir / "node").resolve()
    if not directory.is_dir():
        return []
    info = host_names(directory)
    done: list[str] = []
    done += _kill_leftovers(directory, info["cgroup_root"])
    done += _unmount_under(state_dir.resolve())
    if apiservice.remove(info["id"]):
        done.append(f"nftables table {apiservice.table_name(info['id'])}")
    if ip_command("link", "show", info["bridge"], check=False).returncode == 0:
        ip_command("link", "del", info["bridge"])
        done.append(f"bridge {info['bridge']}")
    done += _remove_cgroups(info["cgroup_root"])
    done += _remove_host_files(directory)
    (directory / "node.json").unlink(missing_ok=True)  # no longer live for the registry
    HostRegistry().unregister(directory)
    left = _mounts_under(state_dir.resolve())
    if left:
        raise NodeError(f"mounts under {state_dir} could not be removed: {left}")
    return done


def _remove_host_files(directory: Path) -> list[str]:
    """The node's entries in host-wide directories: libcni's cached results (they name the pod's
    network namespace, which lies under our directory), the sockets of shims that were killed
    (containerd 1.6 names them sha256(<containerd socket>/<namespace>/<id>) under
    /run/containerd/s) and the kubelet's links to our pod logs."""
    removed = []
    marker = f"{directory}/"
    if CNI_RESULTS.is_dir():
        for cached in CNI_RESULTS.iterdir():
            with contextlib.suppress(OSError):
                if marker in cached.read_text(errors="replace"):
                    cached.unlink()
                    removed.append(str(cached))
    containerd = Containerd(directory / "containerd")
    bundles = containerd.state / "io.containerd.runtime.v2.task" / K8S_NAMESPACE
    for bundle in bundles.iterdir() if bundles.is_dir() else []:
        key = os.path.join(str(containerd.socket), K8S_NAMESPACE, bundle.name)
        socket = SHIM_SOCKETS / hashlib.sha256(key.encode()).hexdigest()
        if socket.exists():
            socket.unlink()
            removed.append(str(socket))
    if CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(marker):
                link.unlink()
                removed.append(str(link))
    return removed


def node_processes(state_dir: Path) -> set[int]:
    """The processes the node's containerd started: its shims and everything in its pods' cgroups."""
    directory = (state_dir / "node").resolve()
    others = set(_processes_with(f"{directory}/containerd/config.toml"))  # containerd itself
    others |= set(_processes_with(f"{directory}/kubelet.yaml"))  # the kubelet
    pids = set(_processes_with(f"{directory}/")) | _cgroup_pids(host_names(directory)["cgroup_root"])
    return pids - others


def _processes_with(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(proc.name))
    return pids


def _cgroup_pids(cgroup_root: str) -> set[int]:
    pids: set[int] = set()
    for hierarchy in v1_hierarchies():
        base = hierarchy / cgroup_root.lstrip("/")
        if base.is_dir():
            for procs in base.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
    return pids


def _kill_leftovers(directory: Path, cgroup_root: str, timeout: float = 10) -> list[str]:
    """SIGKILL the containerd shims of this node and every process in its cgroups, until none is left."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = set(_processes_with(f"{directory}/")) | _cgroup_pids(cgroup_root)
        alive = {p for p in pids if Path(f"/proc/{p}").exists() and not _is_zombie(p)}
        if not alive:
            break
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= alive
        time.sleep(0.1)
    return [f"process {p}" for p in sorted(killed)]


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


_MNT_DETACH = 2


def _mounts_under(directory: Path) -> list[str]:
    prefix = f"{directory}/"
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        mountpoint = line.split()[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        if mountpoint.startswith(prefix) or mountpoint == str(directory):
            found.append(mountpoint)
    return found


def _unmount_under(directory: Path) -> list[str]:
    """Lazily unmount every mount at or under `directory`, deepest first, until none is left
    (overlay root filesystems, /dev/shm of sandboxes, network namespaces, secret volumes, the
    kubelet's bind mount of its own root dir)."""
    libc = ctypes.CDLL(None, use_errno=True)
    done = []
    for _ in range(20):  # stacked mounts show up again once the upper one is gone
        mounts = _mounts_under(directory)
        if not mounts:
            break
        for mountpoint in sorted(mounts, key=len, reverse=True):
            if libc.umount2(mountpoint.encode(), _MNT_DETACH) == 0:
                done.append(f"mount {mountpoint}")
    return done


def _remove_cgroups(cgroup_root: str, timeout: float = 10) -> list[str]:
    """rmdir the node's cgroup subtree in every hierarchy, children first (a cgroup whose last
    process just died can take a moment to become removable)."""
    done = []
    deadline = time.monotonic() + timeout
    for hierarchy in sorted(CGROUP_FS.iterdir()):
        base = hierarchy / cgroup_root.lstrip("/")
        if not base.is_dir():
            continue
        while base.exists():
            for dirpath, _, _ in os.walk(base, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
            if base.exists():
                if time.monotonic() > deadline:
                    raise NodeError(f"cannot remove cgroup {base}: {_cgroup_pids(cgroup_root)} still in it")
                time.sleep(0.1)
        done.append(f"cgroup {base}")
    return done


def process_memory_mib(pid: int) -> float:
    """Resident memory of a process in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
