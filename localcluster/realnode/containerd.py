"""containerd for one real node: a private root, state directory and socket, so nodes coexist.

Debian's containerd 1.6 with runc (make node-runtime). The settings that matter on these machines:

* `restrict_oom_score_adj = true`: the VM withholds CAP_SYS_RESOURCE, so oom_score_adj cannot go
  below 0; without this every pod sandbox fails in runc ("can't get final child's PID from pipe").
* `SystemdCgroup = false` (cgroupfs, as the kubelet's cgroupDriver) and runc's state in our dir.
* `netns_mounts_under_state_dir = true`: pod network namespaces are mounted under our state
  directory, not the host-wide /var/run/netns.
* `sandbox_image`: the locally built pause image (nothing can be pulled here).
* plugins that would write host-wide paths (/opt/containerd) or are useless here are disabled.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
K8S_NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin (so the kubelet) uses

DISABLED_PLUGINS = (
    "io.containerd.internal.v1.opt",  # would create /opt/containerd
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
)


class Containerd:
    """Paths and commands of one private containerd under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "config.toml"
        self.data = root / "root"
        self.state = root / "state"
        self.socket = root / "containerd.sock"
        self.runc_root = root / "runc"
        self.cni_conf_dir = root / "cni-conf"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def write_config(self, sandbox_image: str) -> None:
        for d in (self.data, self.state, self.runc_root, self.cni_conf_dir):
            d.mkdir(parents=True, exist_ok=True)
        cri = '[plugins."io.containerd.grpc.v1.cri"]'
        runc = '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]'
        q = json.dumps  # TOML basic strings and lists read like JSON's
        self.config.write_text(
            f"""version = 2
root = {q(str(self.data))}
state = {q(str(self.state))}
disabled_plugins = {q(list(DISABLED_PLUGINS))}

[grpc]
  address = {q(str(self.socket))}

[ttrpc]
  address = {q(str(self.socket) + ".ttrpc")}

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = {q(str(self.runc_root) + "-v1")}

{cri}
  sandbox_image = {q(sandbox_image)}
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  max_container_log_line_size = 16384

  {cri[:-1]}.cni]
    bin_dir = {q(CNI_BIN_DIR)}
    conf_dir = {q(str(self.cni_conf_dir))}
    max_conf_num = 1

  {cri[:-1]}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

  {runc}
    runtime_type = "io.containerd.runc.v2"

  {runc[:-1]}.options]
    SystemdCgroup = false
    Root = {q(str(self.runc_root))}
"""
        )

    def argv(self) -> list[str]:
        return ["containerd", "--config", str(self.config), "--log-level", "warn"]

    def ctr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`ctr` against this containerd, in the kubelet's namespace."""
        cmd = ["ctr", "--address", str(self.socket), "--namespace", K8S_NAMESPACE, *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)

    def import_image(self, archive: Path) -> None:
        """Load an OCI (or docker) image archive into the kubelet's namespace, unpacked for overlayfs."""
        proc = self.ctr("images", "import", str(archive), timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"ctr images import {archive} failed: {proc.stderr.strip()}")

    def images(self) -> list[str]:
        proc = self.ctr("images", "list", "--quiet")
        return proc.stdout.split() if proc.returncode == 0 else []

    def image_digest(self, reference: str) -> str | None:
        """The manifest digest `reference` names in the kubelet's namespace, None if absent."""
        proc = self.ctr("images", "list", f"name=={reference}")
        rows = [line.split() for line in proc.stdout.splitlines()[1:]] if proc.returncode == 0 else []
        return next((row[2] for row in rows if len(row) > 2 and row[0] == reference), None)

    def ready(self) -> bool:
        return self.socket.exists() and self.ctr("version", timeout=5).returncode == 0

    def running_tasks(self) -> list[str]:
        """The container tasks that run (`ctr tasks list`: TASK PID STATUS)."""
        proc = self.ctr("tasks", "list", timeout=10)
        rows = [line.split() for line in proc.stdout.splitlines()[1:]] if proc.returncode == 0 else []
        return [row[0] for row in rows if len(row) >= 3 and row[2] == "RUNNING"]

    def kill_all_tasks(self) -> None:
        """SIGKILL every running task (what is left when the kubelet could not stop its pods)."""
        for task in self.running_tasks():
            self.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task, timeout=10)
