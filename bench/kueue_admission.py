"""Benchmark: admission latency of FineTuneJobs with Kueue against the same jobs without it, on one
local control plane with fake (kwok) GPU nodes and the real Kueue (localcluster/kueue.py).

For each round, in the same cluster and run, N 1-GPU FineTuneJobs are created at once (16 client
threads), watched by one real operator process (`python -m finetune_operator`, production
defaults):
* kueue: the jobs carry `kueue.x-k8s.io/queue-name` and live in a namespace Kueue manages, with
  a ClusterQueue of its own whose GPU quota holds all N (so Kueue's time is admission, not
  waiting for quota);
* plain: the same jobs without the label, in a namespace Kueue does not manage.
The sides alternate ABBA over the rounds (plain, kueue, kueue, plain, ...) so that a drift in the
machine's load falls on both. Per job, from the job's ADDED watch event: its first pod created (with
Kueue: gated), the pod admitted (no Kueue gate left; plain: created), scheduled, and Running (kwok
runs a scheduled pod at once); and Kueue's own part, pod created -> admitted. The samples of all
rounds of a side are pooled; the ratios kueue / plain of their percentiles are the figures (both
measured in the same run).

    .venv/bin/python bench/kueue_admission.py [--jobs 100] [--rounds 2] [--nodes 16]

Writes bench/results/kueue_admission.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "contract", ROOT / "operator", ROOT / "trainer"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from finetune_operator.api import KUEUE_QUEUE_NAME, LABEL_JOB  # noqa: E402
from finetune_operator.config import OperatorConfig  # noqa: E402
from finetune_operator.kueue import kueue_gated  # noqa: E402

import localcluster  # noqa: E402
from bench.goals import ratio  # noqa: E402
from bench.kube_watch import Watcher, parallel  # noqa: E402
from bench.operator_scale import (  # noqa: E402
    FTJ,
    PODS,
    TIMED_OUT,
    Recorder,
    Track,
    delete_all,
    intervals,
    job_manifest,
    machine,
    percentiles,
    production_flags,
    wait_until,
)
from localcluster import GPUS_PER_NODE, Cluster, OperatorProcess  # noqa: E402
from localcluster.kueue import Kueue, start_kueue  # noqa: E402

SIDES = ("plain", "kueue")
# What is timed, from and to (Track attributes): from the job's creation, and Kueue's own part.
STAGES = {
    "podCreated": ("created", "pod_created"),
    "podAdmitted": ("created", "pod_admitted"),
    "podScheduled": ("created", "pod_scheduled"),
    "podRunning": ("created", "pod_running"),
    "podCreatedToAdmitted": ("pod_created", "pod_admitted"),
}


def side_order(rounds: int) -> list[str]:
    """ABBA: plain, kueue, kueue, plain, plain, kueue, ... (`rounds` of each side)."""
    order: list[str] = []
    for r in range(rounds):
        order += list(SIDES) if r % 2 == 0 else list(reversed(SIDES))
    return order


@dataclass
class AdmissionTrack(Track):
    pod_admitted: float | None = None  # the first pod event without Kueue's admission gate


class AdmissionRecorder(Recorder):
    """operator_scale's Recorder, plus the moment each job's pod is admitted (Kueue's gate gone;
    a pod Kueue does not hold is admitted when created)."""

    def __init__(self) -> None:
        super().__init__(LABEL_JOB, lambda _job: False)

    def track(self, name: str) -> AdmissionTrack:
        return self.tracks.setdefault(name, AdmissionTrack())  # type: ignore[return-value]

    def on_pod(self, at: float, kind: str, obj: dict[str, Any]) -> None:
        super().on_pod(at, kind, obj)
        job = (obj["metadata"].get("labels") or {}).get(LABEL_JOB)
        if kind == "DELETED" or not job or kueue_gated(obj):
            return
        with self.lock:
            t = self.track(job)
            if t.pod_admitted is None:
                t.pod_admitted = at


def stage_samples(tracks: dict[str, Track]) -> dict[str, list[float]]:
    """Seconds of each stage, over the jobs that reached its end."""
    return {stage: intervals(tracks, start, end) for stage, (start, end) in STAGES.items()}


def pooled(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per side, the percentiles of every stage over the samples of all its rounds."""
    out: dict[str, dict[str, Any]] = {}
    for side in SIDES:
        mine = [r for r in rounds if r["side"] == side]
        out[side] = {stage: percentiles([v for r in mine for v in r["samples"][stage]]) for stage in STAGES}
    return out


def ratios(stats: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """kueue / plain for every stage and percentile (above 1: Kueue adds time)."""
    return {
        f"{stage}.{q}": ratio(stats["kueue"][stage][q], stats["plain"][stage][q])
        for stage in STAGES
        for q in ("p50", "p95", "p99")
    }


def queued_manifest(name: str, queue: str | None) -> dict[str, Any]:
    manifest = job_manifest(name, gpus=1)
    if queue:
        manifest["metadata"]["labels"] = {KUEUE_QUEUE_NAME: queue}
    return manifest


def run_round(cluster: Cluster, kueue: Kueue, side: str, index: int, n: int) -> dict[str, Any]:
    namespace = f"{side}-{index}"  # created before the operator started (it watches it)
    with contextlib.ExitStack() as queues:
        # The quota holds every job: what is timed is admission, not waiting for quota.
        queue = queues.enter_context(kueue.queues(namespace, gpus=n)) if side == "kueue" else None
        result = _timed_round(cluster, side, index, n, namespace, queue)
        result["cleanupSeconds"] = round(delete_all(cluster, namespace), 1)
    return result


def _timed_round(
    cluster: Cluster, side: str, index: int, n: int, namespace: str, queue: str | None
) -> dict[str, Any]:
    kubeconfig = Path(cluster.kubeconfig)
    rec = AdmissionRecorder()
    watchers = [
        Watcher(kubeconfig, FTJ.format(ns=namespace), rec.on_job).start(),
        Watcher(kubeconfig, PODS.format(ns=namespace), rec.on_pod).start(),
    ]
    label = f"{side} round {index}"
    names = [f"job-{i:05d}" for i in range(n)]
    try:
        t0 = time.monotonic()
        parallel(
            lambda r, nm: r.create(FTJ.format(ns=namespace), queued_manifest(nm, queue)), names, kubeconfig
        )
        created = time.monotonic() - t0
        print(f"  {label}: {n} created in {created:.1f}s", file=sys.stderr)
        budget = 120 + n * 0.5
        wait_until(f"{label}: every pod Running", lambda: rec.count("pod_running") >= n, budget, watchers)
        last = max((t.pod_running for t in rec.tracks.values() if t.pod_running), default=t0)
    finally:
        for w in watchers:
            w.stop()
    samples = stage_samples(rec.tracks)
    return {
        "side": side,
        "round": index,
        "namespace": namespace,
        "n": n,
        "loadAverage1m": round(os.getloadavg()[0], 1),  # the machine is shared: how busy it was
        "createSeconds": round(created, 3),
        "allRunningSeconds": round(last - t0, 3),
        "stats": {stage: percentiles(v) for stage, v in samples.items()},
        "samples": {stage: [round(v, 4) for v in values] for stage, values in samples.items()},
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [f"### Admission latency, N={report['n']} ({report['machine']})", ""]
    lines.append("| side | " + " | ".join(f"{s} p50 / p95 / p99 s" for s in STAGES) + " |")
    lines.append("|---" * (len(STAGES) + 1) + "|")
    for side in SIDES:
        st = report["pooled"][side]
        cells = [f"{st[s]['p50']} / {st[s]['p95']} / {st[s]['p99']}" for s in STAGES]
        lines.append(f"| {side} (n={st['podCreated']['n']}) | " + " | ".join(cells) + " |")
    r = report["ratios"]
    cells = [" / ".join(str(r[f"{s}.{q}"]) for q in ("p50", "p95", "p99")) for s in STAGES]
    lines.append("| kueue / plain | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100, help="N FineTuneJobs per round (default 100)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each side, ABBA (default 2)")
    parser.add_argument("--nodes", type=int, default=16, help=f"fake GPU nodes, {GPUS_PER_NODE} GPUs each")
    parser.add_argument("--state-dir", type=Path, default=Path(tempfile.gettempdir()) / "pfo-bench-kueue")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kueue_admission.json")
    args = parser.parse_args(argv)
    if args.jobs > args.nodes * GPUS_PER_NODE:
        parser.error(f"--jobs {args.jobs} needs more GPUs than --nodes {args.nodes} x {GPUS_PER_NODE}")

    t_start = time.monotonic()
    order = side_order(args.rounds)
    print(f"starting a local control plane with {args.nodes} fake GPU nodes and Kueue", file=sys.stderr)
    cluster = localcluster.start(args.state_dir, gpu_nodes=args.nodes, owner_pid=os.getpid(), real_node=False)
    report: dict[str, Any] = {
        "benchmark": "FineTuneJob admission latency with Kueue against without",
        "command": "bench/kueue_admission.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "n": args.jobs,
        "nodes": args.nodes,
        "order": order,
        "rounds": [],
    }
    operator = None
    try:
        cluster.install_crds(ROOT / "crds")
        kueue = start_kueue(cluster)
        report["kueueStartSeconds"] = kueue.state.get("start_seconds")
        namespaces = [f"{side}-{i}" for i, side in enumerate(order)]
        for ns in namespaces:
            cluster.kubectl("create", "namespace", ns)
        log_path = Path(tempfile.gettempdir()) / "pfo-bench-kueue-operator.log"
        log_path.unlink(missing_ok=True)
        report["operatorLog"] = str(log_path)
        operator = OperatorProcess(
            cluster, namespaces, log_path, extra=production_flags(OperatorConfig().workers)
        )
        operator.start()
        for i, side in enumerate(order):
            print(f"== {side}, round {i}, N={args.jobs}", file=sys.stderr)
            report["rounds"].append(run_round(cluster, kueue, side, i, args.jobs))
            _save(args.out, report)
        report["pooled"] = pooled(report["rounds"])
        report["ratios"] = ratios(report["pooled"])
    finally:
        if operator is not None:
            operator.stop()
        cluster.stop()
        report["totalSeconds"] = round(time.monotonic() - t_start, 1)
        report["timedOut"] = TIMED_OUT
        _save(args.out, report)
    if "ratios" in report:
        print(markdown(report))
    print(f"\nwrote {args.out} in {report['totalSeconds']}s")
    return 1 if TIMED_OUT else 0


def _save(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
