"""Host-wide state the real nodes change, and how it is put back once the last of them is gone.

A kubelet sets kernel sysctls when it starts (vm.overcommit_memory=1, kernel.panic=10,
kernel.panic_on_oops=1, ...), and the kubelet, containerd and the CNI plugins create a few
host-wide directories when missing (/var/log/containers, /run/containerd, /var/lib/cni). Several
clusters may run real nodes side by side, so the values are recorded by the first node that
registers (before its kubelet starts) and restored when the last registered node unregisters.
The record lives in /run/pfo-realnode/ (tmpfs: a reboot forgets it along with the changes), under
an flock so that nodes starting and stopping at once see one consistent record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REGISTRY_DIR = Path("/run/pfo-realnode")
PROC_SYS = Path("/proc/sys")
# What kubelet's container manager sets (pkg/kubelet/cm: setupKernelTunables) when it may modify them.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Host-wide directories created on demand: kubelet's container log links and device plugin socket
# directory (both fixed paths, whatever --root-dir says), containerd's shim sockets (fixed in 1.6),
# libcni's result cache.
HOST_DIRS = (
    Path("/var/log/containers"),
    Path("/var/lib/kubelet"),
    Path("/run/containerd"),
    Path("/var/lib/cni"),
)
LIVE_FILE = "node.json"  # in a registered node's directory while the node is live


class HostRegistry:
    """The record of live real nodes and of the host's values before the first of them started."""

    def __init__(
        self,
        directory: Path = REGISTRY_DIR,
        proc_sys: Path = PROC_SYS,
        sysctls: tuple[str, ...] = KUBELET_SYSCTLS,
        host_dirs: tuple[Path, ...] = HOST_DIRS,
    ) -> None:
        self.dir = directory
        self.proc_sys = proc_sys
        self.sysctls = sysctls
        self.host_dirs = host_dirs
        self.file = directory / "registry.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The record, read and written under the lock. An empty record removes the directory
        (lock included): a waiter then finds its lock file unlinked and takes a fresh one."""
        lock_path = self.dir / "lock"
        while True:
            self.dir.mkdir(parents=True, exist_ok=True)
            lock = lock_path.open("a")
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if os.fstat(lock.fileno()).st_ino == lock_path.stat().st_ino:
                    break
            except FileNotFoundError:
                pass
            lock.close()
        try:
            try:
                record = json.loads(self.file.read_text())
            except (OSError, ValueError):
                record = {}
            yield record
            if record:
                tmp = self.file.with_suffix(".tmp")
                tmp.write_text(json.dumps(record, indent=2))
                tmp.replace(self.file)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
        finally:
            lock.close()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the host-wide lock (e.g. to pick a free pod subnet and create its bridge)."""
        with self._locked():
            yield

    def read_sysctls(self) -> dict[str, str]:
        return {name: (self.proc_sys / name).read_text().strip() for name in self.sysctls}

    def register(self, node_dir: Path) -> None:
        """Record `node_dir` as a live node; the first live node records the host's values."""
        with self._locked() as record:
            nodes = self._live(record)
            if not nodes and "sysctls" not in record:
                # (a record without live nodes is one whose nodes vanished without a teardown:
                # the host still has their changes, so it keeps the values from before them)
                record["sysctls"] = self.read_sysctls()
                record["absent_dirs"] = [str(d) for d in self.host_dirs if not d.exists()]
            record["nodes"] = sorted({*nodes, str(node_dir)})

    def unregister(self, node_dir: Path) -> dict[str, str]:
        """Forget `node_dir`; if no live node is left, restore the recorded values and remove the
        directories that did not exist before (when they hold nothing but empty directories).
        Returns the sysctls restored (empty while other nodes live)."""
        with self._locked() as record:
            if not record:
                return {}
            nodes = [n for n in self._live(record) if n != str(node_dir)]
            record["nodes"] = nodes
            if nodes:
                return {}
            restored = {}
            for name, value in record.get("sysctls", {}).items():
                path = self.proc_sys / name
                if path.read_text().strip() != value:
                    path.write_text(value + "\n")
                    restored[name] = value
            for d in map(Path, record.get("absent_dirs", [])):
                if d.is_dir() and _only_dirs_and_dead_sockets(d):
                    shutil.rmtree(d)
            record.clear()
        return restored

    def live_nodes(self) -> list[str]:
        """The registered nodes that are live now."""
        if not self.file.exists():
            return []
        with self._locked() as record:
            return self._live(record)

    @staticmethod
    def _live(record: dict[str, Any]) -> list[str]:
        """Registered nodes that still hold their LIVE_FILE (a node whose directory was removed, or
        cleaned without unregistering, is gone)."""
        return [n for n in record.get("nodes", []) if (Path(n) / LIVE_FILE).exists()]


def _only_dirs_and_dead_sockets(directory: Path) -> bool:
    """True if `directory` holds nothing but directories and sockets no process listens on (what a
    stopped kubelet leaves: /var/lib/kubelet/device-plugins/kubelet.sock)."""
    listening = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8:
                listening.add(fields[7])
    for p in directory.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            continue
        if not (p.is_socket() and str(p) not in listening):
            return False
    return True
