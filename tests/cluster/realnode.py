"""A real node in the local cluster: kubelet v1.35.4 with containerd, runc and bridge networking.

Pods bound to it run as containers from images imported into its containerd (nothing is pulled:
no registry is reachable here). Everything lives under <state dir>/node/ so nodes of several
clusters coexist: containerd's root, state, socket and runc state; the kubelet's root dir and pod
logs; the CNI configuration and IP allocations. What cannot be private is created per node and
removed by cleanup_host(): the bridge `pfobr-<id>` (a free 10.123.X.0/24, the bridge holds .1),
the cgroup subtree /pfo-<id> in every cgroup v1 hierarchy (the kubelet's cgroupRoot), the links in
/var/log/containers; the host-wide sysctls the kubelet sets are restored by hoststate.HostRegistry
when the last node goes.

The node is named 127.0.0.1 (the kubelet refuses a loopback --node-ip, but a hostname override
that is an IP becomes the InternalIP the API server connects to for logs and exec), labelled
pfo.dev/real-node=true and tainted pfo.dev/real-node=true:NoSchedule, so only pods that ask for it
(pod_spec_extras()) land there.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.containerd import K8S_NAMESPACE, Containerd
from tests.cluster.hoststate import HostRegistry
from tests.cluster.pki import PKI, CertPair

NODE_NAME = "127.0.0.1"
LABEL = "pfo.dev/real-node"
CGROUP_FS = Path("/sys/fs/cgroup")
SUBNET_POOL = ipaddress.ip_network("10.123.0.0/16")  # one /24 per node
CNI_RESULTS = Path("/var/lib/cni/results")  # libcni's cache (containerd 1.6 cannot move it)
CONTAINER_LOG_LINKS = Path("/var/log/containers")  # the kubelet's links (fixed path in kubelet)
SHIM_SOCKETS = Path("/run/containerd/s")  # containerd 1.6's shim sockets (fixed path)
# How the pause image is made: a command printing the image archive's path and the image
# reference as its last two lines. `python -m images.build pause` answers the same way.
PAUSE_IMAGE_COMMAND = (sys.executable, "-m", "tests.cluster.nodeimages", "pause")
REQUIRED_COMMANDS = ("containerd", "runc", "ctr", "ip")


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


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NodeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _v1_hierarchies() -> list[Path]:
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
    def prepare(cls, state_dir: Path, pki: PKI) -> RealNode:
        """Certificates, configuration, the bridge and cgroups; nothing started yet. Registers the
        node with the host registry first, so the sysctls are recorded before any kubelet runs."""
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
        for hierarchy in _v1_hierarchies():
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
                    # No gateway and no masquerade: pods reach each other and the bridge's own
                    # address (the host), and have no route to anywhere else.
                    "isGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [
                            [{"subnet": str(subnet), "rangeStart": str(first), "gateway": str(gateway)}]
                        ],
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

    def pause_image(self) -> tuple[Path, str]:
        """Build (or find in the cache) the pause image through PAUSE_IMAGE_COMMAND."""
        proc = subprocess.run(list(PAUSE_IMAGE_COMMAND), capture_output=True, text=True, check=False)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or len(lines) < 2:
            raise NodeError(f"{' '.join(PAUSE_IMAGE_COMMAND)} failed: {proc.stderr.strip()}")
        return Path(lines[-2]), lines[-1]

    def wait_containerd(self, alive: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.containerd.ready():
            alive()
            if time.monotonic() > deadline:
                raise NodeError(f"containerd did not answer on {self.containerd.socket} in {timeout:.0f}s")
            time.sleep(0.05)

    def import_image(self, archive: Path) -> None:
        self.containerd.import_image(archive)


# --------------------------------------------------------------------- host pieces
def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of SUBNET_POOL that no address or route on this host overlaps."""
    used = []
    for args in (("-4", "-o", "addr", "show"), ("-4", "route", "show", "table", "all")):
        for word in _ip(*args).stdout.split():
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(word, strict=False))
    for candidate in SUBNET_POOL.subnets(new_prefix=24):
        if not any(candidate.overlaps(u) for u in used if u.prefixlen > 0):
            return candidate
    raise NodeError(f"no free /24 left in {SUBNET_POOL} for a node bridge")


def _create_bridge(name: str, subnet: ipaddress.IPv4Network) -> None:
    if _ip("link", "show", name, check=False).returncode == 0:
        _ip("link", "del", name)  # left by a node whose directory was reused
    _ip("link", "add", "name", name, "type", "bridge")
    _ip("addr", "add", f"{next(subnet.hosts())}/{subnet.prefixlen}", "dev", name)
    _ip("link", "set", name, "up")


def _make_cgroup(hierarchy: Path, root: str) -> None:
    path = hierarchy / root.lstrip("/")
    path.mkdir(exist_ok=True)
    if hierarchy.name == "cpuset":  # a new cpuset is empty: give it the parent's CPUs and memory nodes
        for f in ("cpuset.cpus", "cpuset.mems"):
            (path / f).write_text((hierarchy / f).read_text())


# --------------------------------------------------------------------- teardown
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
    if _ip("link", "show", info["bridge"], check=False).returncode == 0:
        _ip("link", "del", info["bridge"])
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
    for hierarchy in _v1_hierarchies():
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
