"""End to end: a FineTuneJob runs the real trainer on the local process runner node.

Tiny real data (scikit-learn's digits as 32x32 images) in a PersistentVolumeClaim, pretrained
ResNet18_vd weights trained on other digit classes and served over HTTPS by a local server with a
self-signed certificate (the CRD accepts only https URLs; the operator's --trainer-env hands the
trainer REQUESTS_CA_BUNDLE), and the real operator. The job must reach Succeeded with the top-1
the trainer measured, with progress read from the trainer's log on the way; deleted and created
again with the same name, it must train afresh in a folder of its own. Suspended mid-run, its pod
must checkpoint and exit within the job's terminationGracePeriodSeconds (the runner SIGKILLs after
it, as a kubelet does), and the resumed attempt must continue from that checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import OperatorProcess, make_self_signed, serve_https
from tests.operator.cluster_jobs import apply, condition, get_job, job_manifest, wait_job

PRETRAIN_CLASSES = (0, 1, 2)
FINETUNE_CLASSES = (5, 6, 7, 8, 9)


@pytest.fixture
def https_dir() -> Iterator[tuple[Path, int]]:
    """A folder served over HTTPS on 127.0.0.1; yields (folder, port). The folder and the
    certificate are readable by the trainer's non-root user."""
    root = Path(tempfile.mkdtemp(prefix="pfo-e2e-https-"))
    root.chmod(0o755)
    served = root / "files"
    served.mkdir(mode=0o755)
    make_self_signed(root / "cert.pem", root / "key.pem")
    server = serve_https(served, root / "cert.pem", root / "key.pem")
    yield root, server.server_address[1]
    server.shutdown()
    server.server_close()
    shutil.rmtree(root, ignore_errors=True)


def test_finetune_job_runs_the_real_trainer(cluster, namespace, crd_installed, https_dir, tmp_path):
    from demo.digits import make_pretrained_weights, write_digits_dataset

    t0 = time.monotonic()
    https_root, port = https_dir
    weights = https_root / "files" / "digits-resnet18_vd.pdparams"
    make_pretrained_weights(weights, tmp_path / "pretrain", PRETRAIN_CLASSES, epochs=1, warmupEpochs=0)
    weights.chmod(0o644)
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    folder = cluster.create_runner_pvc(namespace, "digits")
    info = write_digits_dataset(folder, FINETUNE_CLASSES)
    prepared = time.monotonic() - t0

    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    operator = OperatorProcess(
        cluster,
        [namespace],
        tmp_path / "operator.log",
        extra=["--trainer-env", f"REQUESTS_CA_BUNDLE={https_root / 'cert.pem'}"],
    )
    operator.start()
    try:
        manifest = job_manifest(
            "digits",
            {"persistentVolumeClaim": {"claimName": "digits"}},
            model={
                "architecture": "ResNet18_vd",
                "pretrained": {"url": f"https://127.0.0.1:{port}/{weights.name}", "sha256": sha256},
            },
            dataset={
                "volume": {"persistentVolumeClaim": {"claimName": "digits"}},
                "numClasses": info["numClasses"],
                "imageSize": 32,
            },
            finetune={"freeze": "fc-only"},
            training={"epochs": 2, "batchSize": 32, "warmupEpochs": 0, "numWorkers": 0},
            resources={"gpus": 0},
            runPolicy={"backoffLimit": 0, "activeDeadlineSeconds": 600},
            template=cluster.runner_pod_spec_extras(),
        )
        apply(cluster, namespace, manifest)
        seen: list[dict] = []

        def finished(status: dict) -> bool:
            if status.get("phase") == "Running" and (status.get("progress") or {}).get("epoch", 0) >= 1:
                seen.append(status["progress"])
            return status.get("phase") in ("Succeeded", "Failed")

        status = wait_job(cluster, operator, namespace, "digits", finished, "finished", timeout=300)
        trained = time.monotonic() - t0 - prepared
        pod_log = cluster.kubectl("logs", "digits-attempt-1", namespace=namespace, check=False).stdout[-3000:]
        assert status["phase"] == "Succeeded", f"{json.dumps(status, indent=1)}\ntrainer log:\n{pod_log}"
        assert status["podName"] == "digits-attempt-1"
        assert status["attempts"] == 1

        # The top-1 in the status is the one the trainer wrote to the output volume, in the job's
        # own folder: <namespace>/<name>/<uid>.
        first_uid = get_job(cluster, namespace, "digits")["metadata"]["uid"]
        result = json.loads((folder / namespace / "digits" / first_uid / "result.json").read_text())
        assert 0.0 <= status["metrics"]["top1"] <= 1.0
        assert status["metrics"]["top1"] == pytest.approx(result["top1"])
        assert status["metrics"]["bestEpoch"] == result["bestEpoch"]
        assert status["metrics"]["epochsRun"] == 2
        assert status["finetune"]["strippedParameters"] == ["fc.weight", "fc.bias"]  # 3 classes -> 5
        assert status["finetune"]["freeze"]["strategy"] == "fc-only"
        assert status["finetune"]["freeze"]["decidedBy"] == "user"
        assert status["progress"]["display"] == "2/2"
        assert condition(status, "Succeeded")["status"] == "True"
        # Progress came from the trainer's log lines while it ran (read through the API server).
        assert seen, "no progress was reported while the job ran"
        assert "loss" in seen[-1] and seen[-1]["display"].endswith("/2")

        waited = cluster.kubectl(
            "wait", "--for=condition=Succeeded", "--timeout=30s", "ftj/digits", namespace=namespace
        )
        assert "condition met" in waited.stdout
        header, row = cluster.kubectl("get", "ftj", "digits", namespace=namespace).stdout.splitlines()[:2]
        assert header.split()[:5] == ["NAME", "PHASE", "EPOCH", "TOP1", "AGE"]
        assert row.split()[1:3] == ["Succeeded", "2/2"]
        assert float(row.split()[3]) == pytest.approx(status["metrics"]["top1"])
        print(f"\ne2e: preparing data and weights {prepared:.1f}s, job to Succeeded {trained:.1f}s, "
              f"top1 {status['metrics']['top1']:.4f}")  # fmt: skip

        # Deleted and created again with the same name (how a spec is changed): a new run in a
        # folder of its own, never the old run continued or reported finished at once.
        cluster.kubectl("delete", "ftj", "digits", "--wait=true", "--timeout=60s", namespace=namespace)
        cluster.kubectl("wait", "--for=delete", "pod/digits-attempt-1", "--timeout=60s", namespace=namespace)
        apply(cluster, namespace, manifest)
        again = wait_job(cluster, operator, namespace, "digits", finished, "finished again", timeout=300)
        second_uid = get_job(cluster, namespace, "digits")["metadata"]["uid"]
        assert again["phase"] == "Succeeded", json.dumps(again, indent=1)
        assert second_uid != first_uid
        rerun = json.loads((folder / namespace / "digits" / second_uid / "result.json").read_text())
        assert rerun.get("resumedFromEpoch") is None and rerun["epochsRun"] == 2
        assert rerun["outputDir"] == f"/output/{namespace}/digits/{second_uid}"
        assert again["metrics"]["epochsRun"] == 2
        assert json.loads((folder / namespace / "digits" / first_uid / "result.json").read_text()) == result
    finally:
        operator.stop()


def test_a_suspended_job_checkpoints_within_its_grace_and_the_next_attempt_resumes(
    cluster, namespace, crd_installed, https_dir, tmp_path
):
    """Suspension deletes the pod: SIGTERM, then SIGKILL after the pod's grace period (here the
    spec's terminationGracePeriodSeconds, rendered by the operator). The trainer must checkpoint
    and exit within it, and the attempt after the resume must continue from that checkpoint."""
    from finetune_trainer import checkpoint  # imports Paddle: a few seconds

    from demo.digits import make_pretrained_weights, write_digits_dataset

    grace = 60
    https_root, port = https_dir
    weights = https_root / "files" / "digits-resnet18_vd.pdparams"
    make_pretrained_weights(weights, tmp_path / "pretrain", PRETRAIN_CLASSES, epochs=1, warmupEpochs=0)
    weights.chmod(0o644)
    folder = cluster.create_runner_pvc(namespace, "digits")
    info = write_digits_dataset(folder, FINETUNE_CLASSES)
    operator = OperatorProcess(
        cluster,
        [namespace],
        tmp_path / "operator.log",
        extra=["--trainer-env", f"REQUESTS_CA_BUNDLE={https_root / 'cert.pem'}"],
    )
    operator.start()
    try:
        manifest = job_manifest(
            "grace",
            {"persistentVolumeClaim": {"claimName": "digits"}},
            model={
                "architecture": "ResNet18_vd",
                "pretrained": {
                    "url": f"https://127.0.0.1:{port}/{weights.name}",
                    "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                },
            },
            dataset={
                "volume": {"persistentVolumeClaim": {"claimName": "digits"}},
                "numClasses": info["numClasses"],
                "imageSize": 32,
            },
            finetune={"freeze": "fc-only"},
            # Small batches: many steps per epoch, so the SIGTERM most likely lands inside one.
            training={"epochs": 3, "batchSize": 4, "warmupEpochs": 0, "numWorkers": 0},
            resources={"gpus": 0},
            runPolicy={
                "backoffLimit": 0,
                "activeDeadlineSeconds": 900,
                "terminationGracePeriodSeconds": grace,
            },
            template=cluster.runner_pod_spec_extras(),
        )
        apply(cluster, namespace, manifest)

        def past_first_epoch(status: dict) -> bool:
            return status.get("phase") == "Running" and (status.get("progress") or {}).get("epoch", 0) >= 1

        wait_job(cluster, operator, namespace, "grace", past_first_epoch, "past its first epoch", timeout=300)
        pod = cluster.kubectl("get", "pod", "grace-attempt-1", "-o", "json", namespace=namespace).stdout
        assert json.loads(pod)["spec"]["terminationGracePeriodSeconds"] == grace
        uid = get_job(cluster, namespace, "grace")["metadata"]["uid"]
        out = folder / namespace / "grace" / uid
        suspended_at = time.monotonic()
        patch = json.dumps({"spec": {"runPolicy": {"suspend": True}}})
        cluster.kubectl("patch", "ftj", "grace", "--type=merge", "-p", patch, namespace=namespace)
        suspended = lambda s: s.get("phase") == "Suspended"  # noqa: E731
        wait_job(cluster, operator, namespace, "grace", suspended, "Suspended", timeout=60)
        cluster.kubectl(
            "wait", "--for=delete", "pod/grace-attempt-1", f"--timeout={2 * grace}s", namespace=namespace
        )
        stopped = time.monotonic() - suspended_at
        # The runner keeps the container's log after the pod is gone (as a node's log files).
        (log_file,) = (cluster.runner_root / "pods").glob(f"{namespace}_grace-attempt-1_*/trainer.log")
        first = log_file.read_text(errors="replace")
        assert "failed (Interrupted): received SIGTERM" in first, first[-3000:]
        assert stopped < grace, f"{stopped:.1f}s from the suspension to the pod's end (grace {grace}s)"
        saved = checkpoint.find_latest(out)
        assert saved is not None
        position = checkpoint.position(saved.name)
        assert position is not None and position >= (1, 0)
        if position[1]:  # mid-epoch (training or an abandoned evaluation): the trainer said so
            assert f"interrupted: saved epoch {position[0] + 1} step {position[1]}" in first, first[-3000:]

        patch = json.dumps({"spec": {"runPolicy": {"suspend": False}}})
        cluster.kubectl("patch", "ftj", "grace", "--type=merge", "-p", patch, namespace=namespace)
        done = wait_job(
            cluster,
            operator,
            namespace,
            "grace",
            lambda s: s.get("phase") in ("Succeeded", "Failed"),
            "finished",
            timeout=300,
        )
        second = cluster.kubectl("logs", "grace-attempt-2", namespace=namespace, check=False).stdout
        assert done["phase"] == "Succeeded", f"{json.dumps(done, indent=1)}\n{second[-3000:]}"
        assert done["attempts"] == 2 and done["metrics"]["epochsRun"] == 3
        (log_file,) = (cluster.runner_root / "pods").glob(f"{namespace}_grace-attempt-2_*/trainer.log")
        second = log_file.read_text(errors="replace")
        resumed = re.search(r"resuming from (\S+) \(epoch (\d+), step (\d+) of the next\)", second)
        assert resumed, second[-3000:]
        assert resumed[1] == f"/output/{namespace}/grace/{uid}/checkpoints/{saved.name}"
        assert (int(resumed[2]), int(resumed[3])) == position
        result = json.loads((out / "result.json").read_text())
        assert result["resumedFromEpoch"] == position[0] and result["epochsRun"] == 3
        print(
            f"\ne2e grace: suspended at epoch {position[0]} step {position[1]} of the next; the pod "
            f"checkpointed and ended {stopped:.1f}s later (grace {grace}s); attempt 2 resumed there"
        )
    finally:
        operator.stop()
