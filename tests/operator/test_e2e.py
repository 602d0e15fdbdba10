"""End to end on the real node: the chart's operator pod runs FineTuneJobs whose trainer
containers containerd starts from the trainer image.

Tiny real data (scikit-learn's digits as 32x32 images) in a PersistentVolumeClaim backed by a
`local` PersistentVolume on the node, pretrained ResNet18_vd weights trained on other digit
classes and served over HTTPS by a server on the host's bridge address with a self-signed
certificate (the CRD accepts only https URLs; the chart's operator.trainerEnv hands the trainer
REQUESTS_CA_BUNDLE, a copy of the certificate in the dataset volume), the operator installed by
Helm from its image, and a namespace enforcing Pod Security "restricted". The trainer runs as the
operator renders it: uid 1000, read-only root file system, writes to /output, /cache, /tmp and
/dev/shm only, its result through the termination message and its progress through the log,
both read by the kubelet.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from finetune_contract import decode_result, parse_last_progress

from localcluster import ChartOperator, Cluster, OperatorProcess, install_chart, make_self_signed, serve_https
from tests.operator.cluster_jobs import apply, condition, events, follow_log, get_job, job_manifest, wait_job

PRETRAIN_CLASSES = (0, 1, 2)
FINETUNE_CLASSES = (5, 6, 7, 8, 9)
CA_FILE = "weights-ca.pem"  # in the dataset volume, mounted at /data
TRAINER_IMAGE = "ghcr.io/paddle-finetune-operator/trainer:0.1.0"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ResNet18_vd weights pretrained (by the trainer, on the host) on digits 0-2."""
    from demo.digits import make_pretrained_weights

    work = tmp_path_factory.mktemp("pretrain")
    path = work / "digits-resnet18_vd.pdparams"
    make_pretrained_weights(path, work / "run", PRETRAIN_CLASSES, epochs=1, warmupEpochs=0)
    return path


@dataclass
class Setup:
    cluster: Cluster
    namespace: str
    operator: ChartOperator | OperatorProcess
    data: Path  # the folder behind claim "digits"
    output: Path  # the folder behind claim "output"
    url: str
    sha256: str
    num_classes: int

    def job(self, name: str, **spec: Any) -> dict[str, Any]:
        manifest = job_manifest(
            name,
            {"persistentVolumeClaim": {"claimName": "digits"}},
            model={"architecture": "ResNet18_vd", "pretrained": {"url": self.url, "sha256": self.sha256}},
            dataset={
                "volume": {"persistentVolumeClaim": {"claimName": "digits"}},
                "numClasses": self.num_classes,
                "imageSize": 32,
            },
            output={"volume": {"persistentVolumeClaim": {"claimName": "output"}}},
            finetune={"freeze": "fc-only"},
            # gpus: 1 is placed on the real node, which advertises nvidia.com/gpu; the CPU trains.
            resources={"gpus": 1},
            template=self.cluster.real_node_pod_spec_extras(),
        )
        manifest["spec"].update(spec)
        return manifest


@contextlib.contextmanager
def prepared(cluster: Cluster, namespace: str, weights: Path) -> Iterator[dict[str, Any]]:
    """The namespace, the trainer image, the data and output claims and the weights server."""
    from demo.digits import write_digits_dataset

    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    cluster.load_images(["trainer"])
    data = cluster.create_node_pvc(namespace, "digits")
    output = cluster.create_node_pvc(namespace, "output")
    info = write_digits_dataset(data, FINETUNE_CLASSES)

    https = Path(tempfile.mkdtemp(prefix="pfo-e2e-https-"))
    host = cluster.pod_host_ip()  # pods reach the host on the node's bridge, nothing else does
    make_self_signed(https / "cert.pem", https / "key.pem", ip=host)
    shutil.copy(https / "cert.pem", data / CA_FILE)
    served = https / "files"
    served.mkdir()
    shutil.copy(weights, served / weights.name)
    server = serve_https(served, https / "cert.pem", https / "key.pem", host=host)
    try:
        yield {
            "data": data, "output": output, "host": host,
            "url": f"https://{host}:{server.server_address[1]}/{weights.name}",
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "num_classes": info["numClasses"],
        }  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(https, ignore_errors=True)


def _setup(cluster: Cluster, namespace: str, operator: Any, parts: dict[str, Any]) -> Setup:
    return Setup(
        cluster, namespace, operator, parts["data"], parts["output"],
        url=parts["url"], sha256=parts["sha256"], num_classes=parts["num_classes"],
    )  # fmt: skip


@pytest.fixture
def e2e(cluster: Cluster, namespace: str, crd_installed: str, weights: Path) -> Iterator[Setup]:
    with prepared(cluster, namespace, weights) as parts:
        operator = install_chart(
            cluster, namespace,
            "--set", f"watchNamespaces={{{namespace}}}",
            "--set", "operator.progressPollSeconds=1",
            "--set", "operator.backoffBaseSeconds=1", "--set", "operator.backoffMaxSeconds=2",
            "--set-string", f"operator.trainerEnv.REQUESTS_CA_BUNDLE=/data/{CA_FILE}",
            release="pfo-e2e",
        )  # fmt: skip
        try:
            yield _setup(cluster, namespace, operator, parts)
        finally:
            operator.uninstall()


@pytest.fixture
def e2e_pushing(
    cluster: Cluster, namespace: str, crd_installed: str, weights: Path, tmp_path: Path
) -> Iterator[Setup]:
    """The operator as a process on the host, its progress endpoint on the node's bridge address
    (what a pod reaches of the host), and log reads only every 10 minutes: progress that reaches
    the status while the job runs came through the endpoint."""
    with prepared(cluster, namespace, weights) as parts:
        operator = OperatorProcess(
            cluster, [namespace], tmp_path / "operator.log",
            extra=["--progress-poll-interval", "600", "--trainer-env", f"REQUESTS_CA_BUNDLE=/data/{CA_FILE}"],
            progress_ips=(parts["host"],),
        )  # fmt: skip
        operator.start()
        try:
            yield _setup(cluster, namespace, operator, parts)
        finally:
            operator.stop()


def only(paths: list[Path], what: str) -> Path:
    assert len(paths) == 1, f"expected one {what}, found {paths}"
    return paths[0]


def test_finetune_job_runs_the_trainer_image_on_the_real_node(e2e: Setup) -> None:
    cluster, namespace = e2e.cluster, e2e.namespace
    t0 = time.monotonic()
    # Two DataLoader workers: batches cross /dev/shm (the pod's memory emptyDir).
    apply(cluster, namespace, e2e.job("digits", training={"epochs": 2, "batchSize": 32, "warmupEpochs": 0,
                                                          "numWorkers": 2}))  # fmt: skip
    seen: list[dict[str, Any]] = []

    def finished(status: dict[str, Any]) -> bool:
        if status.get("phase") == "Running" and (status.get("progress") or {}).get("epoch", 0) >= 1:
            seen.append(status["progress"])
        return status.get("phase") in ("Succeeded", "Failed")

    status = wait_job(cluster, e2e.operator, namespace, "digits", finished, "finished", timeout=420)
    elapsed = time.monotonic() - t0
    pod_log = cluster.kubectl("logs", "digits-attempt-1", namespace=namespace, check=False).stdout
    assert status["phase"] == "Succeeded", f"{json.dumps(status, indent=1)}\ntrainer log:\n{pod_log[-3000:]}"
    assert (status["podName"], status["attempts"]) == ("digits-attempt-1", 1)

    # The trainer's container: on the real node, from the trainer image, as the operator rendered it.
    pod = cluster.get_pod(namespace, "digits-attempt-1")
    assert pod is not None and pod["spec"]["nodeName"] == cluster.real_node
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["runAsUser"] == 1000
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    (cs,) = pod["status"]["containerStatuses"]
    assert cs["image"] == TRAINER_IMAGE and cs["containerID"].startswith("containerd://")
    terminated = cs["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")

    # The result: in the output volume (written as uid 1000), in the termination message the
    # kubelet read from /dev/termination-log, and in the job's status.
    result_file = only(sorted(e2e.output.glob("**/result.json")), "result.json")
    result = json.loads(result_file.read_text())
    assert result_file.stat().st_uid == 1000
    uid = get_job(cluster, namespace, "digits")["metadata"]["uid"]  # type: ignore[index]
    assert result_file == e2e.output / namespace / "digits" / uid / "result.json"  # the job's own folder
    message = decode_result(terminated["message"])
    assert message is not None and message.top1 == pytest.approx(result["top1"])
    assert 0.0 <= status["metrics"]["top1"] <= 1.0
    assert status["metrics"]["top1"] == pytest.approx(result["top1"])
    assert status["metrics"]["bestEpoch"] == result["bestEpoch"]
    assert status["metrics"]["epochsRun"] == 2
    assert status["finetune"]["strippedParameters"] == ["fc.weight", "fc.bias"]  # 3 classes -> 5
    assert status["finetune"]["freeze"]["strategy"] == "fc-only"
    assert status["progress"]["display"] == "2/2"
    assert condition(status, "Succeeded")["status"] == "True"
    # Progress came from the trainer's log lines while it ran (read through the API server and
    # the kubelet), and the log is there afterwards too.
    assert seen, "no progress was reported while the job ran"
    assert "loss" in seen[-1] and seen[-1]["display"].endswith("/2")
    logged = [
        json.loads(line.split(" ", 1)[1])
        for line in pod_log.splitlines()
        if line.startswith("FINETUNE_PROGRESS ")
    ]
    assert [p["epoch"] for p in logged][-2:] == [1, 2], pod_log[-3000:]

    header, row = cluster.kubectl("get", "ftj", "digits", namespace=namespace).stdout.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "PHASE", "EPOCH", "TOP1", "AGE"]
    assert row.split()[1:3] == ["Succeeded", "2/2"]
    print(f"\ne2e on the real node: job to Succeeded {elapsed:.1f}s, top1 {status['metrics']['top1']:.4f}")


class PodWatch:
    """Every state a pod goes through until it is deleted (a watch in a thread), so the final
    status the kubelet writes before the pod is removed is seen however briefly it lasts."""

    def __init__(self, cluster: Cluster, namespace: str, name: str) -> None:
        from kubernetes import client, watch

        self.states: list[dict[str, Any]] = []
        self.deleted = threading.Event()
        api = client.CoreV1Api(cluster.api_client())
        self._watch = watch.Watch()

        def run() -> None:
            stream = self._watch.stream(
                api.list_namespaced_pod, namespace, field_selector=f"metadata.name={name}",
                timeout_seconds=600, _preload_content=True,
            )  # fmt: skip
            for event in stream:
                self.states.append(api.api_client.sanitize_for_serialization(event["object"]))
                if event["type"] == "DELETED":
                    self.deleted.set()
                    return

        threading.Thread(target=run, daemon=True).start()

    def terminated(self) -> dict[str, Any]:
        for pod in reversed(self.states):
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                if (cs.get("state") or {}).get("terminated"):
                    return cs["state"]["terminated"]
        return {}

    def stop(self) -> None:
        self._watch.stop()


def test_the_trainer_on_the_real_node_pushes_its_progress_to_the_operator(e2e_pushing: Setup) -> None:
    """The push end to end: the trainer image's process on the real node POSTs each epoch's record
    over the node's network with its projected token; the operator reviews it with the API server
    and writes the status. No log read while it runs: every progress came by push."""
    from tests.operator.test_operator_lifecycle import metric_value

    cluster, namespace, operator = e2e_pushing.cluster, e2e_pushing.namespace, e2e_pushing.operator
    assert isinstance(operator, OperatorProcess)
    apply(
        cluster,
        namespace,
        e2e_pushing.job("pushed", training={"epochs": 3, "batchSize": 32, "warmupEpochs": 0}),
    )
    seen: list[int] = []

    def finished(status: dict[str, Any]) -> bool:
        if status.get("phase") == "Running" and status.get("progress"):
            seen.append(status["progress"]["epoch"])
        return status.get("phase") in ("Succeeded", "Failed")

    status = wait_job(cluster, operator, namespace, "pushed", finished, "finished", timeout=420)
    pod_log = cluster.kubectl("logs", "pushed-attempt-1", namespace=namespace, check=False).stdout
    assert status["phase"] == "Succeeded", f"{json.dumps(status, indent=1)}\ntrainer log:\n{pod_log[-3000:]}"
    text = operator.metrics()
    accepted = metric_value(text, "finetune_progress_pushes_total", result="accepted") or 0
    # epoch 0 at the start and one per epoch; the rate limit (5 at once, then one per 2 s) may
    # refuse one of the last when epochs take under 2 s.
    assert accepted >= 3, text
    assert metric_value(text, "finetune_api_requests_total", verb="create", resource="tokenreviews") == 1
    assert not metric_value(text, "finetune_api_requests_total", verb="get", resource="pods/log")
    assert seen and max(seen) >= 1, seen
    assert "progress push failed" not in pod_log


def _logged_epoch(line: str) -> int:
    """The epoch a progress line of the trainer's log reports (0 for any other line)."""
    return (parse_last_progress(line) or {}).get("epoch", 0)


def test_deleting_the_pod_mid_epoch_checkpoints_and_the_next_attempt_resumes(e2e: Setup) -> None:
    """kubectl delete pod -> the kubelet's SIGTERM -> the trainer saves its position inside the
    epoch and exits 143 within the grace period -> the operator starts attempt 2, which resumes
    from that checkpoint and finishes the job."""
    cluster, namespace = e2e.cluster, e2e.namespace
    training = {"epochs": 3, "batchSize": 16, "warmupEpochs": 0, "numWorkers": 0}
    apply(cluster, namespace, e2e.job("resume", training=training, runPolicy={"backoffLimit": 2}))
    first = "resume-attempt-1"
    watcher = PodWatch(cluster, namespace, first)
    try:
        # Deleted as soon as the trainer says epoch 1 is done: it is then inside epoch 2 (31 steps
        # of 16 images), past the end of epoch 1's bookkeeping (a SIGTERM there stops at the epoch's
        # own checkpoint, no mid-epoch one).
        follow_log(cluster, namespace, first, lambda line: _logged_epoch(line) >= 1, timeout=300)
        grace = cluster.get_pod(namespace, first)["spec"]["terminationGracePeriodSeconds"]  # type: ignore[index]
        assert grace == 120  # spec.runPolicy.terminationGracePeriodSeconds' default, rendered
        t0 = time.monotonic()
        cluster.kubectl("delete", "pod", first, "--wait=false", namespace=namespace)
        assert watcher.deleted.wait(grace + 30), f"{first} was not removed"
        stopped = time.monotonic() - t0
    finally:
        watcher.stop()
    terminated = watcher.terminated()
    assert terminated.get("exitCode") == 143, f"not a clean exit on SIGTERM: {terminated}"
    assert stopped < grace, f"the trainer took {stopped:.1f}s, the grace period is {grace}s"
    checkpoint = only(sorted(e2e.output.glob("**/checkpoints/epoch-*-step*")), "mid-epoch checkpoint")
    step = int(checkpoint.name.rsplit("-step", 1)[1])
    assert step > 0, checkpoint

    status = wait_job(
        cluster, e2e.operator, namespace, "resume",
        lambda s: s.get("phase") in ("Succeeded", "Failed"), "finished", timeout=420,
    )  # fmt: skip
    log = cluster.kubectl("logs", "resume-attempt-2", namespace=namespace, check=False).stdout
    assert status["phase"] == "Succeeded", f"{json.dumps(status, indent=1)}\n{log[-3000:]}"
    assert status["attempts"] == 2 and status["podName"] == "resume-attempt-2"
    resumed = [line for line in log.splitlines() if "resuming from" in line]
    assert len(resumed) == 1 and checkpoint.name in resumed[0], log[-3000:]
    assert f"step {step} of the next" in resumed[0]
    assert status["metrics"]["epochsRun"] == 3
    reasons = [reason for _, reason, _ in events(cluster, namespace, "resume")]
    print(f"\nSIGTERM -> checkpoint at step {step} and exit 143 in {stopped:.1f}s (grace {grace}s); "
          f"events: {reasons}")  # fmt: skip


def test_a_job_recreated_with_the_same_name_starts_afresh_in_its_own_folder(e2e: Setup) -> None:
    """Deleted and created again with the same name (how a spec is changed): a new run in a
    folder of its own (<namespace>/<name>/<uid>), never the old run continued or reported
    finished at once; the old run's folder is left as it was."""
    cluster, namespace = e2e.cluster, e2e.namespace
    manifest = e2e.job("again", training={"epochs": 1, "batchSize": 32, "warmupEpochs": 0, "numWorkers": 0})
    finished = lambda s: s.get("phase") in ("Succeeded", "Failed")  # noqa: E731
    folders = []
    for run in (1, 2):
        apply(cluster, namespace, manifest)
        status = wait_job(
            cluster, e2e.operator, namespace, "again", finished, f"finished ({run})", timeout=420
        )
        assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
        uid = get_job(cluster, namespace, "again")["metadata"]["uid"]  # type: ignore[index]
        folders.append(e2e.output / namespace / "again" / uid)
        result = json.loads((folders[-1] / "result.json").read_text())
        assert result.get("resumedFromEpoch") is None and result["epochsRun"] == 1
        assert result["outputDir"] == f"/output/{namespace}/again/{uid}"
        if run == 1:
            first = (folders[0] / "result.json").read_text()
            cluster.kubectl("delete", "ftj", "again", "--wait=true", "--timeout=60s", namespace=namespace)
            cluster.kubectl(
                "wait",
                "--for=delete",
                "pod/again-attempt-1",
                "--timeout=120s",
                namespace=namespace,
                check=False,
            )
    assert folders[0] != folders[1]
    assert (folders[0] / "result.json").read_text() == first
