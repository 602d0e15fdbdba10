"""The host registry restores the kubelet's sysctls and removes the directories it created only when
the last live real node is gone, whatever the order nodes start, stop or vanish in."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from localcluster.realnode.hoststate import LIVE_FILE, HostRegistry

SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
ORIGINAL = {"vm/overcommit_memory": "0", "kernel/panic": "1", "kernel/panic_on_oops": "0"}
KUBELET = {"vm/overcommit_memory": "1", "kernel/panic": "10", "kernel/panic_on_oops": "1"}


@pytest.fixture
def host(tmp_path: Path) -> tuple[HostRegistry, Path, Path]:
    proc_sys = tmp_path / "proc-sys"
    for name, value in ORIGINAL.items():
        (proc_sys / name).parent.mkdir(parents=True, exist_ok=True)
        (proc_sys / name).write_text(value + "\n")
    pre_existing = tmp_path / "var-log-containers"
    pre_existing.mkdir()
    created = tmp_path / "run-containerd"
    registry = HostRegistry(tmp_path / "registry", proc_sys, SYSCTLS, (pre_existing, created))
    return registry, proc_sys, tmp_path


def values(proc_sys: Path) -> dict[str, str]:
    return {name: (proc_sys / name).read_text().strip() for name in SYSCTLS}


def start_node(registry: HostRegistry, proc_sys: Path, node: Path, created: Path) -> None:
    """What a real node does: its directory and live file, registration, then its kubelet and
    containerd change the host."""
    node.mkdir(parents=True, exist_ok=True)
    (node / LIVE_FILE).write_text("{}")
    registry.register(node)
    for name, value in KUBELET.items():
        (proc_sys / name).write_text(value + "\n")
    (created / "s").mkdir(parents=True, exist_ok=True)


@pytest.mark.parametrize("seed", range(40))
def test_values_come_back_only_after_the_last_node(host: tuple[HostRegistry, Path, Path], seed: int) -> None:
    registry, proc_sys, tmp = host
    rng = random.Random(seed)
    created = tmp / "run-containerd"
    nodes = [tmp / f"cluster-{i}" / "node" for i in range(rng.randint(1, 5))]
    live: set[Path] = set()
    pending = list(nodes)
    rng.shuffle(pending)
    while pending or live:
        if pending and (not live or rng.random() < 0.5):
            node = pending.pop()
            start_node(registry, proc_sys, node, created)
            live.add(node)
            assert values(proc_sys) == KUBELET
            continue
        node = rng.choice(sorted(live))
        live.discard(node)
        if rng.random() < 0.25:  # the node's directory vanished without a teardown (rm -rf):
            (node / LIVE_FILE).unlink()  # the next node's teardown restores what the first recorded
            if not live and not pending:
                pending.append(tmp / f"later-{len(nodes)}" / "node")
                nodes.append(pending[-1])
            continue
        (node / LIVE_FILE).unlink()  # cleanup_host renames it before unregistering
        restored = registry.unregister(node)
        if live:
            assert restored == {}
            assert values(proc_sys) == KUBELET, "restored while another node still runs"
            assert created.exists()
    assert values(proc_sys) == ORIGINAL
    assert not created.exists(), "a directory that did not exist before the first node is left"
    assert (tmp / "var-log-containers").is_dir(), "a directory that existed before was removed"
    assert not registry.dir.exists(), "the registry itself is left behind"


def test_a_directory_holding_files_is_kept(host: tuple[HostRegistry, Path, Path]) -> None:
    registry, proc_sys, tmp = host
    created = tmp / "run-containerd"
    node = tmp / "a" / "node"
    start_node(registry, proc_sys, node, created)
    (created / "s" / "someone-elses.sock").write_text("")
    (node / LIVE_FILE).unlink()
    assert registry.unregister(node) == ORIGINAL
    assert values(proc_sys) == ORIGINAL
    assert (created / "s" / "someone-elses.sock").exists()


def test_unregister_returns_what_it_restored(host: tuple[HostRegistry, Path, Path]) -> None:
    registry, proc_sys, tmp = host
    node = tmp / "a" / "node"
    start_node(registry, proc_sys, node, tmp / "run-containerd")
    (node / LIVE_FILE).unlink()
    assert registry.unregister(node) == ORIGINAL
    assert registry.unregister(node) == {}  # a second teardown finds nothing to do


def test_dead_sockets_do_not_keep_a_directory(host: tuple[HostRegistry, Path, Path]) -> None:
    import socket

    registry, proc_sys, tmp = host
    created = tmp / "run-containerd"
    node = tmp / "a" / "node"
    start_node(registry, proc_sys, node, created)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(created / "s" / "dead.sock"))  # bound, never listening, closed: a dead socket
    (node / LIVE_FILE).unlink()
    registry.unregister(node)
    assert not created.exists()


def test_a_listening_socket_keeps_its_directory(host: tuple[HostRegistry, Path, Path]) -> None:
    import socket

    registry, proc_sys, tmp = host
    created = tmp / "run-containerd"
    node = tmp / "a" / "node"
    start_node(registry, proc_sys, node, created)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(created / "s" / "live.sock"))
        s.listen()
        (node / LIVE_FILE).unlink()
        registry.unregister(node)
        assert (created / "s" / "live.sock").exists()
    assert values(proc_sys) == ORIGINAL
