"""Shared fixtures: one local Kubernetes control plane per test session, a fresh namespace per test.

The session starts its own cluster in a temporary directory and stops it at the end (also on
failure, Ctrl-C or SIGTERM through a finalizer and atexit, and on SIGKILL through a watchdog
process that notices the session is gone). Set PFO_REUSE_CLUSTER=1 to run against
the cluster `make cluster-up` left running in .cluster/ instead (it is then left running; CI=true
always starts a fresh one).
Tests that use `cluster` (directly or through `namespace`) are marked `cluster` automatically, so
`pytest -m "not cluster"` never starts one.
"""

from __future__ import annotations

import atexit
import os
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import localcluster
from localcluster import DEFAULT_STATE_DIR, Cluster
from localcluster.kueue import Kueue, start_kueue


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)
    # Tests that check the host is restored exactly go first, before the session's cluster (and
    # its real node) changes the host-wide sysctls.
    items.sort(key=lambda item: item.get_closest_marker("pristine_host") is None)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if os.environ.get("PFO_REUSE_CLUSTER") == "1" and os.environ.get("CI") != "true":
        existing = localcluster.attach(DEFAULT_STATE_DIR)
        if existing is None or not existing.healthy():
            pytest.fail(
                f"PFO_REUSE_CLUSTER=1 but no healthy cluster in {DEFAULT_STATE_DIR}: run `make cluster-up`"
            )
        yield existing
        return
    state_dir = Path(tempfile.mkdtemp(prefix="pfo-cluster-"))
    atexit.register(localcluster.stop, state_dir)  # if the finalizer below never runs
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # `timeout` and CI cancel with SIGTERM:
        signal.signal(signal.SIGTERM, _interrupt)  # let pytest unwind and run the finalizer
    try:
        # The watchdog covers what no finalizer can: this process being SIGKILLed.
        yield localcluster.start(state_dir, owner_pid=os.getpid())
    finally:
        localcluster.stop(state_dir)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    # The ServiceAccount controller adds "default" shortly after; pods cannot be created before it
    # exists (ServiceAccount admission), so wait for it.
    cluster.wait_for(
        f"ServiceAccount {name}/default",
        lambda: (
            cluster.kubectl("get", "serviceaccount", "default", namespace=name, check=False).returncode == 0
        ),
        timeout=30,
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="session")
def kueue(cluster: Cluster) -> Kueue:
    """Kueue started beside the session's cluster on first use (localcluster/kueue.py); it runs
    until the cluster stops."""
    return start_kueue(cluster)
