"""Setting up the real node: kubelet v1.35.4 with containerd, runc and bridge networking.

Pods bound to it run as containers from images imported into its containerd (nothing is pulled:
no registry is reachable here). Everything lives under <state dir>/node/ so nodes of several
clusters coexist: containerd's root, state, socket and runc state; the kubelet's root dir and pod
logs; the CNI configuration and IP allocations. What cannot be private is created per node and
removed by teardown.cleanup_host(): the bridge `pfobr-<id>` (a free 10.123.X.0/24, the bridge
holds .1), the cgroup subtree /pfo-<id> in every cgroup v1 hierarchy (the kubelet's cgroupRoot),
the links in /var/log/containers; the host-wide sysctls the kubelet sets are restored by
hoststate.HostRegistry when the last node goes.

The node is named 127.0.0.1 (the kubelet refuses a loopback --node-ip, but a hostname override
that is an IP becomes the InternalIP the API server connects to for logs and exec), labelled
pfo.dev/real-node=true and tainted pfo.dev/real-node=true:NoSchedule, so only pods that ask for it
(pod_spec_extras()) land there.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from localcluster.pki import PKI, CertPair
from localcluster.realnode import apiservice
from localcluster.realnode.containerd import Containerd
from localcluster.realnode.hoststate import HostRegistry

NODE_NAME = "127.0.0.1"
LABEL = "pfo.dev/real-node"
GPU_RESOURCE = "nvidia.com/gpu"
CGROUP_FS = Path("/sys/fs/cgroup")
SUBNET_POOL = ipaddress.ip_network("10.123.0.0/16")  # one /24 per node
REQUIRED_COMMANDS = ("containerd", "runc", "ctr", "ip", "nft")


class NodeError(RuntimeError):
    pass


def pod_spec_extras() -> dict[str, Any]:
    """The nodeSelector and toleration a pod needs to land on the real node."""
    return {
        "nodeSelector": {LABEL: "true"},
        "tolerations": [{"key": LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
    }


def host_names(directory: Path) -> dict[str, str]:
    """The names of what the node in `directory` creates on the host, derived from its path."""
    ident = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:8]
    return {
        "id": ident,
        "bridge": f"pfobr-{ident}",
        "network": f"pfo-{ident}",
        "cgroup_root": f"/pfo-{ident}",
    }


def check_prerequisites() -> None:
    """Raise a NodeError that says what to do when the node cannot run on this machine."""
    if os.geteuid() != 0:
        raise NodeError("the real node (containerd, kubelet) needs root; or start the cluster without it")
    missing = [c for c in REQUIRED_COMMANDS if not any(Path(p, c).exists() for p in os.get_exec_path())]
    if missing or not Path("/usr/lib/cni/bridge").exists():
        raise NodeError(f"missing {missing or ['/usr/lib/cni/bridge']}: run `make node-runtime` (as root)")
    if not (CGROUP_FS / "memory").is_dir():
        raise NodeError(f"no cgroup v1 memory hierarchy under {CGROUP_FS}: the node expects cgroup v1")


def ip_command(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NodeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def v1_hierarchies() -> list[Path]:
    """Every cgroup v1 hierarchy mounted under /sys/fs/cgroup (cpu, memory, ..., name=systemd)."""
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mountpoint, fstype, *_ = line.split()
        if fstype == "cgroup" and Path(mountpoint).parent == CGROUP_FS:
            found.append(Path(mountpoint))
    return sorted(found)


class RealNode:
    """The node whose files live in `directory` (<state dir>/node); its settings are in node.json."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.info: dict[str, Any] = json.loads((directory / "node.json").read_text())
        self.containerd = Containerd(directory / "containerd")
        self.kubelet_root = directory / "kubelet"
        self.name: str = self.info["name"]
        self.ca = Path(self.info["ca"])
        self.identity = CertPair(Path(self.info["identity"][0]), Path(self.info["identity"][1]))
        self.serving = CertPair(Path(self.info["serving"][0]), Path(self.info["serving"][1]))

    @classmethod
    def load(cls, state_dir: Path) -> RealNode | None:
        directory = state_dir / "node"
        return cls(directory) if (directory / "node.json").exists() else None

    # ----------------------------------------------------------------- set-up
    @classmethod
    def prepare(cls, state_dir: Path, pki: PKI, apiserver_port: int) -> RealNode:
        """Certificates, configuration, the bridge, the route to the API server's Service
        (apiservice.py) and cgroups; nothing started yet. Registers the node with the host
        registry first, so the sysctls are recorded before any kubelet runs."""
        check_prerequisites()
        directory = (state_dir / "node").resolve()
        longest = directory / "kubelet" / "plugins_registry" / "some.csi.driver-reg.sock"
        if len(str(longest)) > 107:  # a unix socket's path holds at most 107 bytes
            raise NodeError(f"the state directory {state_dir} is too long for the node's sockets")
        directory.mkdir(parents=True, exist_ok=True)
        identity = pki.issue("realnode", f"system:node:{NODE_NAME}", ("system:nodes",))
        serving = pki.issue(
            "realnode-serving", NODE_NAME, server_names=("localhost",), server_ips=(NODE_NAME,)
        )
        info: dict[str, Any] = {
            **host_names(directory),
            "name": NODE_NAME,
            "ca": str(pki.ca.cert),
            "identity": [str(identity.cert), str(identity.key)],
            "serving": [str(serving.cert), str(serving.key)],
        }
        (directory / "node.json").write_text(json.dumps(info, indent=2))  # cleanup_host reads it
        registry = HostRegistry()
        registry.register(directory)  # before anything changes the host
        with registry.exclusive():  # two nodes starting at once must not take the same subnet
            info["subnet"] = str(_free_subnet())
            (directory / "node.json").write_text(json.dumps(info, indent=2))
            _create_bridge(info["bridge"], ipaddress.ip_network(info["subnet"]))
        apiservice.install(info["id"], info["bridge"], apiserver_port)
        for hierarchy in v1_hierarchies():
            _make_cgroup(hierarchy, info["cgroup_root"])
        node = cls(directory)
        node._write_cni_config()
        return node

    def _write_cni_config(self) -> None:
        subnet = ipaddress.ip_network(self.info["subnet"])
        gateway, first, *_ = subnet.hosts()
        conflist = {
            "cniVersion": "1.0.0",
            "name": self.info["network"],
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.info["bridge"],
                    # No default gateway and no masquerade: pods reach each other, the bridge's
                    # own address (the host) and, through it, the API server's Service IP
                    # (apiservice.py); nothing else.
                    "isGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [
                            [{"subnet": str(subnet), "rangeStart": str(first), "gateway": str(gateway)}]
                        ],
                        "routes": [{"dst": apiservice.SERVICE_CIDR, "gw": str(gateway)}],
                        "dataDir": str(self.dir / "cni-ipam"),
                    },
                }
            ],
        }
        self.containerd.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        (self.containerd.cni_conf_dir / "10-pfo.conflist").write_text(json.dumps(conflist, indent=2))

    def containerd_argv(self, pause_image: str) -> list[str]:
        self.containerd.write_config(pause_image)
        return self.containerd.argv()

    def kubelet_argv(self, kubelet: Path, server: str, port: int) -> list[str]:
        """Write the kubelet's kubeconfig and KubeletConfiguration; its command line."""
        kubeconfig = self.dir / "kubelet.kubeconfig"
        cluster = {"server": server, "certificate-authority": str(self.ca)}
        user = {"client-certificate": str(self.identity.cert), "client-key": str(self.identity.key)}
        kubeconfig.write_text(
            yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config",
                "clusters": [{"name": "local", "cluster": cluster}],
                "users": [{"name": "node", "user": user}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": "node"}}],
                "current-context": "local",
            })
        )  # fmt: skip
        kubeconfig.chmod(0o600)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_NAME,
            "port": port,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "tlsCertFile": str(self.serving.cert),
            "tlsPrivateKeyFile": str(self.serving.key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.ca)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": self.containerd.endpoint,
            "imageServiceEndpoint": self.containerd.endpoint,
            # cgroup v1 here (kubelet 1.35 refuses it unless told), cgroupfs like containerd, and a
            # cgroup root of our own so that kubelets of several clusters do not share kubepods.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.info["cgroup_root"],
            "failSwapOn": False,
            "makeIPTablesUtilChains": False,  # would add chains to the host's iptables
            "resolvConf": "",  # no host DNS inside pods (nothing to resolve here)
            "podLogsDir": str(self.dir / "pod-logs"),
            "volumePluginDir": str(self.dir / "volume-plugins"),
            "registerWithTaints": [{"key": LABEL, "value": "true", "effect": "NoSchedule"}],
            # A shared disk must never make this node evict or collect images.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%",
                             "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "shutdownGracePeriod": "0s",
        }  # fmt: skip
        (self.dir / "kubelet.yaml").write_text(yaml.safe_dump(config))
        return [
            str(kubelet), "--config", str(self.dir / "kubelet.yaml"), "--kubeconfig", str(kubeconfig),
            "--root-dir", str(self.kubelet_root), "--cert-dir", str(self.kubelet_root / "pki"),
            "--hostname-override", NODE_NAME, "--node-labels", f"{LABEL}=true", "--v=1",
        ]  # fmt: skip

    def wait_containerd(self, alive: Callable[[], None], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.containerd.ready():
            alive()
            if time.monotonic() > deadline:
                raise NodeError(f"containerd did not answer on {self.containerd.socket} in {timeout:.0f}s")
            time.sleep(0.05)

    def import_image(self, archive: Path) -> None:
        self.containerd.import_image(archive)

    def advertise_gpus(self, cluster: Any, count: int, timeout: float = 30) -> None:
        """Advertise `count` nvidia.com/gpu as an extended resource (a PATCH of the Node's status
        capacity, as Kubernetes documents for resources without a device plugin), so pods that
        ask for GPUs can be placed here; their containers get no device and run on the CPU. The
        kubelet keeps the resource in later status updates and derives allocatable from it."""
        path = "/status/capacity/" + GPU_RESOURCE.replace("/", "~1")
        patch = json.dumps([{"op": "add", "path": path, "value": str(count)}])
        cluster.kubectl("patch", "node", self.name, "--subresource=status", "--type=json", "-p", patch)

        def advertised() -> bool:
            node = json.loads(cluster.kubectl("get", "node", self.name, "-o", "json").stdout)
            return node["status"].get("allocatable", {}).get(GPU_RESOURCE) == str(count)

        deadline = time.monotonic() + timeout
        while not advertised():
            if time.monotonic() > deadline:
                raise NodeError(
                    f"{GPU_RESOURCE} not allocatable on {self.name} {timeout:.0f}s after the patch"
                )
            time.sleep(0.2)


# --------------------------------------------------------------------- host pieces
def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of SUBNET_POOL that no address or route on this host overlaps."""
    used = []
    for args in (("-4", "-o", "addr", "show"), ("-4", "route", "show", "table", "all")):
        for word in ip_command(*args).stdout.split():
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(word, strict=False))
    for candidate in SUBNET_POOL.subnets(new_prefix=24):
        if not any(candidate.overlaps(u) for u in used if u.prefixlen > 0):
            return candidate
    raise NodeError(f"no free /24 left in {SUBNET_POOL} for a node bridge")


def _create_bridge(name: str, subnet: ipaddress.IPv4Network) -> None:
    if ip_command("link", "show", name, check=False).returncode == 0:
        ip_command("link", "del", name)  # left by a node whose directory was reused
    ip_command("link", "add", "name", name, "type", "bridge")
    ip_command("addr", "add", f"{next(subnet.hosts())}/{subnet.prefixlen}", "dev", name)
    ip_command("link", "set", name, "up")


def _make_cgroup(hierarchy: Path, root: str) -> None:
    path = hierarchy / root.lstrip("/")
    path.mkdir(exist_ok=True)
    if hierarchy.name == "cpuset":  # a new cpuset is empty: give it the parent's CPUs and memory nodes
        for f in ("cpuset.cpus", "cpuset.mems"):
            (path / f).write_text((hierarchy / f).read_text())
    if (path / "cpu.shares").exists():
        # cgroup v1 weighs a child cgroup like one process of its parent: at the default 1024 the
        # node's pods together would get the CPU time of a single busy host process. Weigh the
        # node like one process per CPU, as the kubelet weighs its kubepods (allocatable CPUs).
        (path / "cpu.shares").write_text(str(1024 * (os.cpu_count() or 1)))
