"""Chaos on the real control plane: 24 FineTuneJobs on kwok's fake GPU nodes while the operator is
SIGKILLed every 3 to 6 seconds, kube-apiserver is stopped and started again three times, and
twice, while it is down, etcd is compacted so that the operator's watches expire (410 Gone).
Every job must end in its expected phase, with exactly the attempts its script asks for, one pod
per attempt (no pod name ever seen with two uids, no attempt beyond the script's), its failures
counted once and each of its transitions reported by one Event.

The test plays the trainers: a driver loop lists the pods and, after each has run for 1 to 8
seconds, finishes it as its job's script says (succeed, fail transiently, fail permanently),
suspends and resumes the jobs whose script says so, and goes on through every outage. Pods are
listed every 0.3 s and every uid seen is kept, so a pod name created twice shows as two uids.
The 410: while kube-apiserver is down, etcd's revision is moved on and compacted, so the watches
the operator resumes (from the resourceVersions it saw before) are too old for both the new
watch cache and etcd.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from finetune_contract import TrainerResult, encode_result

from localcluster import OperatorProcess, drive_annotations, etcd_compact, start_component, stop_component
from tests.contract.sample import SAMPLE_RESULT
from tests.operator.cluster_jobs import job_manifest

VOLUME = {"csi": {"driver": "datasets.csi.example.com"}}
JOBS = 24
KILLS = 12  # operator SIGKILLs at least
DEADLINE = 300.0  # seconds for every job to end, outages included
SUCCESS = encode_result(SAMPLE_RESULT)
DATA_ERROR = encode_result(TrainerResult(exitCode=3, reason="DataError", message="bad list file"))

# What each attempt's trainer does, per script; and where the job must end.
SCRIPTS: dict[str, dict[str, Any]] = {
    "succeed": {"attempts": ["ok"], "end": ("Succeeded", "Completed"), "failed": 0},
    "retry": {"attempts": ["transient", "ok"], "end": ("Succeeded", "Completed"), "failed": 1},
    "permanent": {"attempts": ["data-error"], "end": ("Failed", "DataError"), "failed": 1},
    "exhaust": {
        "attempts": ["transient", "transient"],
        "end": ("Failed", "BackoffLimitExceeded"),
        "failed": 2,
        "backoffLimit": 1,
    },
    "suspend": {"attempts": ["suspend", "ok"], "end": ("Succeeded", "Completed"), "failed": 0},
    "retry-twice": {
        "attempts": ["transient", "transient", "ok"],
        "end": ("Succeeded", "Completed"),
        "failed": 2,
    },
}


@dataclass
class Chaos:
    kills: int = 0
    apiserver_restarts: int = 0
    compactions: int = 0
    outage_seconds: float = 0.0
    uids: dict[str, set[str]] = field(default_factory=dict)  # pod name -> every uid seen
    driven: set[str] = field(default_factory=set)  # pod uids finished by the driver
    running_since: dict[str, float] = field(default_factory=dict)  # pod uid -> when first seen running
    suspended: set[str] = field(default_factory=set)  # jobs whose suspension was asked
    resumed: set[str] = field(default_factory=set)
    errors: int = 0  # driver calls that failed (outages)


def script_of(index: int) -> str:
    return list(SCRIPTS)[index % len(SCRIPTS)]


GROUP, VERSION, PLURAL = "finetune.paddle.dev", "v1alpha1", "finetunejobs"


def settled(cluster: Any) -> None:
    """Leave the control plane as the next test expects it: every controller has caught up with the
    restarted API server. After an outage client-go's informers re-list with a back-off of up to
    a minute each, one informer at a time, so one probe per controller the other tests rely on:
    a new namespace gets its default ServiceAccount (serviceaccount controller), a Deployment gets
    its ReplicaSet and pod (deployment and replicaset controllers), the pod is bound (scheduler)
    and runs on a fake node (kwok)."""
    probe = f"chaos-probe-{random.randrange(1 << 30):x}"
    cluster.kubectl("create", "namespace", probe)
    try:
        account = ("get", "serviceaccount", "default")
        cluster.wait_for(
            f"ServiceAccount {probe}/default",
            lambda: cluster.kubectl(*account, namespace=probe, check=False).returncode == 0,
            180,
        )
        labels = {"app": "probe"}
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "probe"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {"type": "kwok"},
                        "containers": [{"name": "probe", "image": "probe:never-pulled"}],
                    },
                },
            },
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment), namespace=probe)
        running = ("get", "pods", "-l", "app=probe", "-o", "jsonpath={.items[*].status.phase}")
        cluster.wait_for(
            f"the Deployment {probe}/probe's pod Running on a fake node",
            lambda: cluster.kubectl(*running, namespace=probe, check=False).stdout.split() == ["Running"],
            180,
        )
    finally:
        cluster.kubectl("delete", "namespace", probe, "--wait=false", check=False)


OUTCOMES = {"ok": (0, SUCCESS), "transient": (143, ""), "data-error": (3, DATA_ERROR)}


class Driver:
    """Plays the trainers and the users (suspend, resume) of every job, through outages."""

    def __init__(
        self, cluster: Any, namespace: str, names: dict[str, str], chaos: Chaos, rng: random.Random
    ) -> None:
        from kubernetes import client

        api = cluster.api_client()
        self.core, self.objects = client.CoreV1Api(api), client.CustomObjectsApi(api)
        self.namespace, self.names, self.chaos, self.rng = namespace, names, chaos, rng
        self.runs_for: dict[str, float] = {}  # pod uid -> how long its trainer runs

    def jobs(self) -> dict[str, dict[str, Any]]:
        listed = self.objects.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        return {j["metadata"]["name"]: j for j in listed["items"]}

    def pods(self) -> list[dict[str, Any]]:
        response = self.core.list_namespaced_pod(self.namespace, _preload_content=False)
        return json.loads(response.data)["items"]  # camelCase, as the API server sends it

    def suspend(self, job: str, value: bool) -> None:
        patch = {"spec": {"runPolicy": {"suspend": value}}}
        self.objects.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, job, patch)

    def step(self) -> dict[str, dict[str, Any]]:
        """One look at every job and pod: finish the running pods as their scripts say."""
        chaos = self.chaos
        current = self.jobs()
        for pod in self.pods():
            meta = pod["metadata"]
            chaos.uids.setdefault(meta["name"], set()).add(meta["uid"])
            if (pod.get("status") or {}).get("phase") != "Running" or meta["uid"] in chaos.driven:
                continue
            if meta.get("deletionTimestamp"):
                continue
            # Each trainer runs a few seconds, so the operator is killed while pods run.
            since = chaos.running_since.setdefault(meta["uid"], time.monotonic())
            if time.monotonic() - since < self.runs_for.setdefault(meta["uid"], self.rng.uniform(1, 8)):
                continue
            job = meta["labels"]["finetune.paddle.dev/job-name"]
            steps = SCRIPTS[self.names[job]]["attempts"]
            step = steps[min(int(meta["labels"]["finetune.paddle.dev/attempt"]), len(steps)) - 1]
            if step == "suspend":
                if job not in chaos.suspended:
                    self.suspend(job, True)
                    chaos.suspended.add(job)
                continue
            exit_code, message = OUTCOMES[step]
            annotations = drive_annotations(
                "Succeeded" if exit_code == 0 else "Failed", exit_code, message, "", "", ""
            )
            self.core.patch_namespaced_pod(
                meta["name"], self.namespace, {"metadata": {"annotations": annotations}}
            )
            chaos.driven.add(meta["uid"])
        for job in sorted(chaos.suspended - chaos.resumed):
            if ((current.get(job) or {}).get("status") or {}).get("phase") == "Suspended":
                self.suspend(job, False)
                chaos.resumed.add(job)
        return current


@pytest.mark.slow
def test_every_job_ends_right_through_kills_restarts_and_expired_watches(
    cluster: Any, namespace: str, crd_installed: str, tmp_path: Any
) -> None:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    state_dir = cluster.state_dir
    # Debug logging, as for any investigation (watches.py logs a watch that expired with 410 Gone).
    operator = OperatorProcess(
        cluster, [namespace], tmp_path / "operator.log", extra=["--log-level", "debug"]
    )
    operator.start()
    names = {f"job-{i:02d}": script_of(i) for i in range(JOBS)}
    items = []
    for name, script in names.items():
        policy = {"backoffLimit": SCRIPTS[script].get("backoffLimit", 2)}
        items.append(job_manifest(name, VOLUME, runPolicy=policy, training={"epochs": 2, "warmupEpochs": 1}))
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    cluster.kubectl("apply", "-f", "-", input=listing, namespace=namespace)

    chaos = Chaos()
    rng = random.Random(10)
    driver = Driver(cluster, namespace, names, chaos, rng)
    plan = [(15.0, "restart"), (45.0, "compact"), (80.0, "compact")]
    down = threading.Event()  # kube-apiserver is stopped: no operator restarts meanwhile

    def outage(compact: bool) -> None:
        began = time.monotonic()
        down.set()
        try:
            argv = stop_component(state_dir, "kube-apiserver", grace=20)
            time.sleep(rng.uniform(2, 5))
            if compact:  # every resourceVersion handed out so far is now too old to watch from
                etcd_compact(state_dir, bump=50)
                chaos.compactions += 1
            start_component(state_dir, "kube-apiserver", argv)
            cluster.wait_for(
                "kube-apiserver /readyz",
                lambda: cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
                90,
            )
            chaos.apiserver_restarts += 1
            cluster.state = json.loads((state_dir / "state.json").read_text())  # its new pid
        finally:
            chaos.outage_seconds += time.monotonic() - began
            down.clear()

    outages: list[threading.Thread] = []
    next_kill = 4.0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < DEADLINE:
            elapsed = time.monotonic() - t0
            if plan and elapsed >= plan[0][0] and not down.is_set():
                what = plan.pop(0)[1]
                outages.append(threading.Thread(target=outage, args=(what == "compact",), daemon=True))
                outages[-1].start()
            if elapsed >= next_kill and not down.is_set():
                operator.kill()
                chaos.kills += 1
                time.sleep(rng.uniform(0, 1))
                operator.start(timeout=90)
                next_kill = time.monotonic() - t0 + rng.uniform(2, 5)
            try:
                current = driver.step()
            except (ApiException, OSError, HTTPError):  # the driver goes on through the outages too
                chaos.errors += 1
                time.sleep(0.5)
                continue
            finished = [
                j for j in current.values() if (j.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            ]
            # Kills go on after the last job ends, up to KILLS: a restart must leave finished jobs alone.
            if len(finished) == JOBS and not plan and not down.is_set() and chaos.kills >= KILLS:
                break
            time.sleep(0.3)
    finally:  # whatever happened, the cluster is left running and caught up
        for thread in outages:
            thread.join(120)
        elapsed = time.monotonic() - t0
        operator.stop()
        settled(cluster)

    final = driver.jobs()
    driver.step()  # the last pods' uids
    problems = []
    for name, script in names.items():
        want = SCRIPTS[script]
        status = (final.get(name) or {}).get("status") or {}
        attempts = len(want["attempts"])
        got = (status.get("phase"), status.get("reason"))
        if got != want["end"]:
            problems.append(f"{name} ({script}): ended {got}, not {want['end']}: {status.get('message')}")
        if status.get("attempts") != attempts:
            problems.append(f"{name} ({script}): {status.get('attempts')} attempts, not {attempts}")
        if (status.get("failedAttempts") or 0) != want["failed"]:
            problems.append(
                f"{name} ({script}): failedAttempts {status.get('failedAttempts')}, not {want['failed']}"
            )
        seen = sorted(n for n in chaos.uids if n.startswith(name + "-attempt-"))
        expected = sorted(f"{name}-attempt-{n}" for n in range(1, attempts + 1))
        if seen != expected:
            problems.append(f"{name} ({script}): pods {seen}, not {expected}")
    twice = {n: sorted(u) for n, u in chaos.uids.items() if len(u) > 1}
    if twice:
        problems.append(f"pods created twice (one name, several uids): {twice}")
    # Each transition is reported once (an Event that a pass repeats after a kill or an outage is
    # posted under the same name, and the API server keeps one).
    listed = cluster.kubectl("get", "events", "-o", "json", namespace=namespace)
    reported = Counter(
        (e["involvedObject"]["name"], e["reason"], e["message"])
        for e in json.loads(listed.stdout)["items"]
        if e["involvedObject"].get("kind") == "FineTuneJob"
    )
    repeated = sorted(
        f"{job} {reason}: {message!r} x{n}" for (job, reason, message), n in reported.items() if n > 1
    )
    if repeated:
        problems.append(f"transitions reported more than once: {repeated}")
    log = (tmp_path / "operator.log").read_text(errors="replace")
    gone = log.count("expired (410 Gone): listing again")
    summary = (
        f"chaos: {JOBS} jobs, {chaos.kills} operator SIGKILLs, {chaos.apiserver_restarts} kube-apiserver "
        f"restarts ({chaos.outage_seconds:.0f} s down in all), {chaos.compactions} etcd compactions, "
        f"{gone} watches restarted after 410 Gone, {chaos.errors} driver calls lost to outages, "
        f"{elapsed:.0f} s"
    )
    print(summary)
    assert not problems, summary + "\n" + "\n".join(problems) + f"\n{operator.log_tail(80)}"
    assert chaos.kills >= KILLS and chaos.apiserver_restarts == 3 and chaos.compactions == 2, summary
    assert gone >= 1, f"no watch expired with 410 Gone: {summary}"
