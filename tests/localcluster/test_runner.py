"""The local process runner really runs pods: exit codes, termination messages, logs, volumes, deletion."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from kubernetes import client

from localcluster import Cluster

RESTRICTED = {  # what Pod Security "restricted" demands of a container
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def runner_pod(cluster: Cluster, name: str, code: str, **extra: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "python:3.11", "command": ["python", "-c", code]}
    container.update(extra.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [container],
            **cluster.runner_pod_spec_extras(),
            **extra,
        },
    }


def create(cluster: Cluster, namespace: str, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body), namespace=namespace)


def terminated(p: dict[str, Any]) -> dict[str, Any]:
    return p["status"]["containerStatuses"][0]["state"]["terminated"]


def test_runs_a_real_command_and_reports_exit_code_message_and_logs(cluster: Cluster, namespace: str) -> None:
    code = (
        "import os, sys\n"
        "print('progress epoch=1/2', flush=True)\n"
        "print('progress epoch=2/2 for', os.environ['JOB'], flush=True)\n"
        "open('/dev/termination-log', 'w').write('{\"error\": \"boom\"}')\n"
        "sys.exit(3)\n"
    )
    env = [{"name": "JOB", "value": "ftj-$(POD_NAME)"},
           {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]  # fmt: skip
    # POD_NAME is defined after JOB, so $(POD_NAME) stays literal in JOB: Kubernetes' rule, kept.
    create(cluster, namespace, runner_pod(cluster, "exits-3", code, container={"env": env}))
    got = cluster.wait_pod_phase(namespace, "exits-3", "Failed", timeout=60)
    assert got["spec"]["nodeName"] == cluster.runner_node
    term = terminated(got)
    assert (term["exitCode"], term["reason"], term["message"]) == (3, "Error", '{"error": "boom"}')

    # The operator reads progress from the pod log through the API server.
    core = client.CoreV1Api(cluster.api_client())
    tail = core.read_namespaced_pod_log("exits-3", namespace, tail_lines=1)
    assert tail == "progress epoch=2/2 for ftj-$(POD_NAME)\n"
    assert cluster.kubectl("logs", "exits-3", namespace=namespace).stdout.startswith("progress epoch=1/2\n")


def test_success_and_env_from_the_pod(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "configmap", "settings", "--from-literal=lr=0.0125", namespace=namespace)
    code = (
        "import json, os, shutil\n"
        "json.dump({'lr': os.environ['LR'], 'ns': os.environ['NS'], 'python': shutil.which('python'),\n"
        "           'cwd': os.getcwd()}, open('/dev/termination-log', 'w'))\n"
    )
    env = [{"name": "LR", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "lr"}}},
           {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]  # fmt: skip
    create(cluster, namespace, runner_pod(cluster, "ok", code, container={"env": env, "workingDir": "/tmp"}))
    term = terminated(cluster.wait_pod_phase(namespace, "ok", "Succeeded", timeout=60))
    assert (term["exitCode"], term["reason"]) == (0, "Completed")
    seen = json.loads(term["message"])
    assert seen["lr"] == "0.0125" and seen["ns"] == namespace and seen["cwd"] == "/tmp"
    assert seen["python"].endswith("/.venv/bin/python")  # the repository's venv comes first on PATH


def test_fallback_to_logs_on_error(cluster: Cluster, namespace: str) -> None:
    code = "import sys\nprint('Traceback: something broke', flush=True)\nsys.exit(1)\n"
    body = runner_pod(cluster, "crash", code, container={"terminationMessagePolicy": "FallbackToLogsOnError"})
    create(cluster, namespace, body)
    term = terminated(cluster.wait_pod_phase(namespace, "crash", "Failed", timeout=60))
    assert term["exitCode"] == 1 and term["message"] == "Traceback: something broke"


def test_a_missing_command_is_a_start_error(cluster: Cluster, namespace: str) -> None:
    body = runner_pod(cluster, "nope", "", container={"command": ["no-such-program-pfo"]})
    create(cluster, namespace, body)
    term = terminated(cluster.wait_pod_phase(namespace, "nope", "Failed", timeout=60))
    assert (term["exitCode"], term["reason"]) == (128, "StartError")
    assert "no-such-program-pfo" in term["message"]


def test_a_pvc_volume_is_the_local_folder(cluster: Cluster, namespace: str) -> None:
    folder = cluster.create_runner_pvc(namespace, "dataset")
    (folder / "train_list.txt").write_text("img/0.jpg 0\n")
    code = (
        "import os\n"
        "lines = open('/data/train_list.txt').read()\n"
        "open('/data/out/seen.txt', 'w').write(lines.upper())\n"
        "try:\n"
        "    open('/ro/x', 'w')\n"
        "except OSError as e:\n"
        "    open('/dev/termination-log', 'w').write(f'ro:{e.errno} uid:{os.getuid()}')\n"
    )
    body = runner_pod(
        cluster, "reader", code,
        container={
            "securityContext": {**RESTRICTED, "runAsUser": 1000, "runAsGroup": 1000},
            "volumeMounts": [{"name": "data", "mountPath": "/data"},
                             {"name": "data", "mountPath": "/ro", "readOnly": True},
                             {"name": "scratch", "mountPath": "/data/out"}],
        },
        securityContext={"fsGroup": 1000},
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "dataset"}},
                 {"name": "scratch", "emptyDir": {}}],
    )  # fmt: skip
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    create(cluster, namespace, body)
    term = terminated(cluster.wait_pod_phase(namespace, "reader", "Succeeded", timeout=60))
    assert term["message"] == "ro:30 uid:1000"  # EROFS through the readOnly mount; ran as the pod's user
    assert not (folder / "out" / "seen.txt").exists()  # /data/out is the emptyDir mounted over the claim


def test_a_pvc_volume_is_written_back(cluster: Cluster, namespace: str) -> None:
    folder = cluster.create_runner_pvc(namespace, "output")
    code = "open('/out/model.txt', 'w').write('weights')\n"
    body = runner_pod(
        cluster, "writer", code,
        container={"volumeMounts": [{"name": "out", "mountPath": "/out"}]},
        volumes=[{"name": "out", "persistentVolumeClaim": {"claimName": "output"}}],
    )  # fmt: skip
    create(cluster, namespace, body)
    cluster.wait_pod_phase(namespace, "writer", "Succeeded", timeout=60)
    assert (folder / "model.txt").read_text() == "weights"


def test_deleting_a_pod_stops_its_process(cluster: Cluster, namespace: str) -> None:
    code = "import time\nprint('started', flush=True)\nwhile True: time.sleep(0.1)\n"
    create(cluster, namespace, runner_pod(cluster, "forever", code, terminationGracePeriodSeconds=30))
    running = cluster.wait_pod_phase(namespace, "forever", "Running", timeout=60)
    pid = int(running["status"]["containerStatuses"][0]["containerID"].removeprefix("runner://"))
    assert os.path.exists(f"/proc/{pid}")
    t0 = time.monotonic()
    cluster.kubectl("delete", "pod", "forever", "--wait=true", "--timeout=30s", namespace=namespace)
    assert time.monotonic() - t0 < 15  # SIGTERM ends python at once: far less than the 30 s grace period
    assert cluster.get_pod(namespace, "forever") is None
    cluster.wait_for(f"process {pid} to exit", lambda: not os.path.exists(f"/proc/{pid}"), timeout=10)


def test_active_deadline_is_enforced(cluster: Cluster, namespace: str) -> None:
    code = "import time\ntime.sleep(60)\n"
    create(cluster, namespace, runner_pod(cluster, "slow", code, activeDeadlineSeconds=2))
    got = cluster.wait_pod_phase(namespace, "slow", "Failed", timeout=60)
    assert got["status"]["reason"] == "DeadlineExceeded"
    assert terminated(got)["exitCode"] == 143  # SIGTERM


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(
    cluster: Cluster, namespace: str
) -> None:
    code = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring SIGTERM', flush=True)\nwhile True: time.sleep(0.1)\n"
    )
    create(cluster, namespace, runner_pod(cluster, "stubborn", code, terminationGracePeriodSeconds=2))
    running = cluster.wait_pod_phase(namespace, "stubborn", "Running", timeout=60)
    pid = int(running["status"]["containerStatuses"][0]["containerID"].removeprefix("runner://"))
    cluster.wait_for(  # the handler is in place only once Python has started and said so
        "the process to ignore SIGTERM",
        lambda: "ignoring" in cluster.kubectl("logs", "stubborn", namespace=namespace).stdout,
        timeout=30,
    )
    t0 = time.monotonic()
    cluster.kubectl("delete", "pod", "stubborn", "--wait=true", "--timeout=30s", namespace=namespace)
    assert time.monotonic() - t0 >= 2  # it survived SIGTERM until the grace period ran out
    cluster.wait_for(f"process {pid} to exit", lambda: not os.path.exists(f"/proc/{pid}"), timeout=10)


def test_in_cluster_config_works_with_the_mounted_service_account_token(
    cluster: Cluster, namespace: str
) -> None:
    """The projected token, CA and KUBERNETES_SERVICE_* let a pod talk to the API server as its
    ServiceAccount (which RBAC then judges): what an operator Deployment on this node would do."""
    code = (
        "from kubernetes import client, config\n"
        "NS_FILE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace'\n"
        "from kubernetes.client.exceptions import ApiException\n"
        "config.load_incluster_config()\n"
        "core = client.CoreV1Api()\n"
        "try:\n"
        "    core.list_namespaced_secret(open(NS_FILE).read())\n"
        "except ApiException as e:\n"
        "    open('/dev/termination-log', 'w').write(f'{e.status} {e.body}')\n"
    )
    body = runner_pod(cluster, "in-cluster", code)
    body["spec"]["automountServiceAccountToken"] = True
    create(cluster, namespace, body)
    message = terminated(cluster.wait_pod_phase(namespace, "in-cluster", "Succeeded", timeout=60))["message"]
    assert message.startswith("403 ")
    assert f"system:serviceaccount:{namespace}:default" in message
