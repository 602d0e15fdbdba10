"""What the real node (localcluster/realnode/) costs, against the cluster without it, in one run.

    .venv/bin/python bench/real_node.py [--rounds 3] [--pods 5] [--out bench/results/real_node.json]

* start: `localcluster.start()` with and without the real node, alternating rounds (same machine, same
  load): wall clock until every node is Ready, and when the real node and the last kwok node became
  Ready and schedulable after the API server first answered /readyz (polled every ~0.2 s).
* pods: create -> Running of a sleeping pod on the real node (containerd, runc, a sandbox with a
  network namespace, the operator image) against the same pod on a kwok fake node (the control
  plane's own share: admission, scheduling, status), in the same cluster, alternating, from the
  arrival of watch events; and create -> Succeeded of a trivial pod (`true`) on the real node.
* memory: resident memory (VmRSS) of kubelet and containerd idle and with `--pods` pods sleeping,
  and of the whole cluster's processes with and without the node.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import localcluster  # noqa: E402
from bench.proc_sampler import read  # noqa: E402
from localcluster import Cluster, realnode  # noqa: E402
from localcluster.binaries import bin_dir  # noqa: E402

MIB = 1024 * 1024


def rss_mib(cluster: Cluster, names: tuple[str, ...] | None = None) -> float:
    total = 0
    for p in cluster.state["processes"]:
        if names is None or p["name"] in names:
            total += read(p["pid"]).rss_bytes
    return round(total / MIB, 1)


def pod(name: str, image: str, command: list[str], extras: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never", "command": command}],
            **extras,
        },
    }


def time_to_phase(cluster: Cluster, namespace: str, manifest: dict[str, Any], phase: str) -> float:
    """Seconds from create to the watch event showing `phase`."""
    from kubernetes import client, watch

    api = client.CoreV1Api(cluster.api_client())
    name = manifest["metadata"]["name"]
    w = watch.Watch()
    t0 = time.monotonic()
    api.create_namespaced_pod(namespace, manifest)
    for event in w.stream(
        api.list_namespaced_pod, namespace, field_selector=f"metadata.name={name}", timeout_seconds=120
    ):
        if event["object"].status.phase == phase:
            w.stop()
            return round(time.monotonic() - t0, 2)
        if event["object"].status.phase in ("Succeeded", "Failed"):
            raise RuntimeError(f"pod {name} ended {event['object'].status.phase}, not {phase}")
    raise RuntimeError(f"pod {name} never reached {phase}")


def start_round(real_node: bool) -> dict[str, Any]:
    """Start a cluster (in a thread) while polling its nodes: the wall clock of Cluster.start and,
    after the API server first answers /readyz, when each node is Ready and schedulable (the
    node-lifecycle controller has lifted the not-ready taint)."""
    state_dir = Path(tempfile.mkdtemp(prefix="pfo-bench-node-"))
    started: dict[str, Any] = {}

    def start() -> None:
        try:
            started["cluster"] = localcluster.start(state_dir, real_node=real_node)
        except BaseException as e:  # reported below
            started["error"] = e

    t0 = time.monotonic()
    thread = threading.Thread(target=start)
    thread.start()
    kubectl = [str(bin_dir() / "kubectl"), "--kubeconfig", str(state_dir / "kubeconfig")]
    api_ready: float | None = None
    ready: dict[str, float] = {}
    while thread.is_alive():
        time.sleep(0.1)
        if not (state_dir / "kubeconfig").exists():
            continue
        if api_ready is None:
            if subprocess.run([*kubectl, "get", "--raw", "/readyz"], capture_output=True).returncode == 0:
                api_ready = time.monotonic()
            continue
        proc = subprocess.run([*kubectl, "get", "nodes", "-o", "json"], capture_output=True, text=True)
        for node in json.loads(proc.stdout)["items"] if proc.returncode == 0 else []:
            name = node["metadata"]["name"]
            conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            taints = {t["key"] for t in node["spec"].get("taints", [])}
            if conditions.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints:
                ready.setdefault(name, round(time.monotonic() - api_ready, 1))
    thread.join()
    if "error" in started:
        raise started["error"]
    cluster = started["cluster"]
    fake = [ready.get(n) for n in (*cluster.gpu_nodes, *cluster.cpu_nodes)]
    out = {
        "startSeconds": round(time.monotonic() - t0, 1),
        "realNodeReadyAfterApiSeconds": ready.get(cluster.real_node) if cluster.real_node else None,
        "lastKwokNodeReadyAfterApiSeconds": max((f for f in fake if f is not None), default=None),
        "clusterRssMiB": rss_mib(cluster),
    }
    t0 = time.monotonic()
    localcluster.stop(state_dir)
    out["stopSeconds"] = round(time.monotonic() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pods", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "real_node.json")
    args = parser.parse_args(argv)

    rounds: dict[str, list[dict[str, Any]]] = {"with": [], "without": []}
    for i in range(args.rounds):
        for label in ("with", "without") if i % 2 == 0 else ("without", "with"):
            rounds[label].append(start_round(label == "with"))
            print(label, rounds[label][-1], flush=True)

    state_dir = Path(tempfile.mkdtemp(prefix="pfo-bench-node-"))
    cluster = localcluster.start(state_dir)
    try:
        image = cluster.load_images(["operator"])[0].reference
        cluster.kubectl("create", "namespace", "bench")
        cluster.wait_for(
            "the default ServiceAccount",
            lambda: cluster.kubectl("get", "sa", "default", namespace="bench", check=False).returncode == 0,
        )
        kubelet = ("kubelet",)
        runtime = ("containerd",)
        idle = {"kubeletMiB": rss_mib(cluster, kubelet), "containerdMiB": rss_mib(cluster, runtime)}
        extras = cluster.real_node_pod_spec_extras()
        real, fake, done = [], [], []
        for i in range(args.pods):  # alternate so that load drifts hit both alike
            real.append(
                time_to_phase(
                    cluster, "bench", pod(f"sleep-{i}", image, ["sleep", "3600"], extras), "Running"
                )
            )
            fake.append(time_to_phase(cluster, "bench", pod(f"fake-{i}", "fake:0", ["sleep"], {}), "Running"))
            done.append(
                time_to_phase(cluster, "bench", pod(f"true-{i}", image, ["true"], extras), "Succeeded")
            )
        time.sleep(2)
        busy = {"kubeletMiB": rss_mib(cluster, kubelet), "containerdMiB": rss_mib(cluster, runtime)}
        shims = _shims_rss_mib(state_dir)
    finally:
        t0 = time.monotonic()
        localcluster.stop(state_dir)
        stop_with_pods = round(time.monotonic() - t0, 1)

    def med(label: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[label])

    result = {
        "rounds": rounds,
        "startMedianSeconds": {
            "with": med("with", "startSeconds"),
            "without": med("without", "startSeconds"),
        },
        "startRatioWithOverWithout": round(med("with", "startSeconds") / med("without", "startSeconds"), 2),
        "realNodeReadyAfterApiMedianSeconds": med("with", "realNodeReadyAfterApiSeconds"),
        "lastKwokNodeReadyAfterApiMedianSeconds": med("with", "lastKwokNodeReadyAfterApiSeconds"),
        "clusterRssMedianMiB": {
            "with": med("with", "clusterRssMiB"),
            "without": med("without", "clusterRssMiB"),
        },
        "podCreateToRunningSeconds": {"realNode": real, "kwokNode": fake},
        "podRatioRealOverKwok": round(statistics.median(real) / statistics.median(fake), 2),
        "trivialPodCreateToSucceededSeconds": done,
        "memoryIdle": idle,
        f"memoryWith{args.pods}SleepingPods": {**busy, "shimsAndPodProcessesMiB": shims},
        f"stopWith{args.pods}RunningPodsSeconds": stop_with_pods,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    return 0


def _shims_rss_mib(state_dir: Path) -> float:
    """RSS of the node's containerd shims and of every process in its pods."""
    total = 0
    for pid in realnode.node_processes(state_dir):
        with contextlib.suppress(OSError):  # it ended meanwhile
            total += read(pid).rss_bytes
    return round(total / MIB, 1)


if __name__ == "__main__":
    sys.exit(main())
