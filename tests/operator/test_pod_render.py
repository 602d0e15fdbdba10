"""Pod rendering: one pure function, job in, manifest out."""

import json

import pytest
from finetune_operator.config import OperatorConfig
from finetune_operator.pod import job_label_value, pod_name, pod_selector, render_pod

from tests.operator import crd
from tests.operator.jobs import job

CONFIG = OperatorConfig(trainer_image="registry.local/trainer:7")


def settings_from_pod(pod):
    """The trainer settings a rendered pod carries, found by their flag wherever it sits."""
    command = container(pod)["command"]
    return json.loads(command[command.index("--settings-json") + 1])


def container(pod):
    (only,) = pod["spec"]["containers"]
    return only


def volume(pod, name):
    return next(v for v in pod["spec"]["volumes"] if v["name"] == name)


def mount(pod, path):
    return next(m for m in container(pod)["volumeMounts"] if m["mountPath"] == path)


def test_name_labels_and_owner_reference():
    pod = render_pod(job(), 2, CONFIG)
    meta = pod["metadata"]
    assert meta["name"] == "flowers-attempt-2"
    assert meta["namespace"] == "team-a"
    assert meta["labels"] == {
        "finetune.paddle.dev/job-name": "flowers",
        "finetune.paddle.dev/attempt": "2",
        "finetune.paddle.dev/rank": "0",
        "app.kubernetes.io/managed-by": "paddle-finetune-operator",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "finetune.paddle.dev/v1alpha1",
            "kind": "FineTuneJob",
            "name": "flowers",
            "uid": "0b6c1a4e-6f3e-4b6e-9d59-8a6f0f8d2c11",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert "activeDeadlineSeconds" not in pod["spec"]  # the operator enforces it across attempts


def test_termination_grace_period_comes_from_the_run_policy():
    """Time for the trainer's checkpoint between SIGTERM and SIGKILL: the job's, else the CRD's
    default (a job stored before the field existed)."""
    assert render_pod(job(), 1, CONFIG)["spec"]["terminationGracePeriodSeconds"] == 120
    assert crd.node("spec.runPolicy.terminationGracePeriodSeconds")["default"] == 120
    custom = render_pod(job(runPolicy={"terminationGracePeriodSeconds": 900}), 1, CONFIG)
    assert custom["spec"]["terminationGracePeriodSeconds"] == 900


def test_command_is_an_argument_list_carrying_the_settings():
    tricky = "'; rm -rf / #$(reboot)"
    pod = render_pod(
        job(dataset={"volume": {"emptyDir": {}}, "trainList": tricky, "numClasses": 5}), 1, CONFIG
    )
    c = container(pod)
    assert c["command"][:2] == ["finetune-train", "--settings-json"]
    assert len(c["command"]) == 3
    assert "args" not in c
    assert not any(word in ("sh", "bash", "/bin/sh", "-c") for word in c["command"])
    settings = json.loads(c["command"][2])
    assert settings["dataset"]["trainList"] == tricky  # passed verbatim, as one argv element
    assert settings["output"]["dir"] == "/output/team-a/flowers/0b6c1a4e-6f3e-4b6e-9d59-8a6f0f8d2c11"
    assert settings == settings_from_pod(pod)


def test_several_gpus_use_paddle_distributed_launch():
    pod = render_pod(job(resources={"gpus": 4, "cpu": "8", "memory": "32Gi"}), 1, CONFIG)
    c = container(pod)
    assert c["command"][:6] == [
        "python",
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        "4",
        "--log_dir",
    ]
    assert c["command"][6] == "/output/team-a/flowers/0b6c1a4e-6f3e-4b6e-9d59-8a6f0f8d2c11/launch-logs"
    assert c["command"][7:9] == ["finetune-train", "--settings-json"]
    assert c["resources"] == {
        "requests": {"cpu": "8", "memory": "32Gi"},
        "limits": {"nvidia.com/gpu": 4, "memory": "32Gi"},
    }


def test_one_gpu_limit_and_no_gpu_for_cpu_jobs():
    assert container(render_pod(job(), 1, CONFIG))["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    cpu_only = render_pod(job(resources={"gpus": 0, "cpu": "2"}), 1, CONFIG)
    assert container(cpu_only)["resources"] == {"requests": {"cpu": "2"}}
    assert container(cpu_only)["command"][0] == "finetune-train"


def test_image_from_config_overridable_per_job():
    assert container(render_pod(job(), 1, CONFIG))["image"] == "registry.local/trainer:7"
    custom = job()
    custom["spec"]["image"] = "mine/trainer:dev"
    custom["spec"]["imagePullPolicy"] = "Never"
    c = container(render_pod(custom, 1, CONFIG))
    assert (c["image"], c["imagePullPolicy"]) == ("mine/trainer:dev", "Never")


def test_volumes_and_mounts():
    spec_job = job()
    spec_job["spec"]["dataset"]["subPath"] = "flowers102"
    spec_job["spec"]["output"]["subPath"] = "runs"
    pod = render_pod(spec_job, 1, CONFIG)
    assert volume(pod, "dataset") == {"name": "dataset", "persistentVolumeClaim": {"claimName": "flowers102"}}
    assert volume(pod, "output") == {"name": "output", "persistentVolumeClaim": {"claimName": "ft-output"}}
    assert volume(pod, "cache") == {"name": "cache", "emptyDir": {}}
    assert volume(pod, "dshm") == {"name": "dshm", "emptyDir": {"medium": "Memory"}}
    assert mount(pod, "/data") == {
        "name": "dataset",
        "mountPath": "/data",
        "subPath": "flowers102",
        "readOnly": True,
    }
    assert mount(pod, "/output") == {"name": "output", "mountPath": "/output", "subPath": "runs"}
    assert mount(pod, "/cache") == {"name": "cache", "mountPath": "/cache"}
    assert mount(pod, "/dev/shm")["name"] == "dshm"
    # A read-only root file system: every path the trainer writes is a volume.
    assert volume(pod, "tmp") == {"name": "tmp", "emptyDir": {}}
    assert mount(pod, "/tmp") == {"name": "tmp", "mountPath": "/tmp"}
    writable = {m["mountPath"] for m in container(pod)["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/output", "/cache", "/tmp", "/dev/shm"}
    with_cache = render_pod(job(), 1, OperatorConfig(cache_claim="pretrained-cache"))
    assert volume(with_cache, "cache") == {
        "name": "cache",
        "persistentVolumeClaim": {"claimName": "pretrained-cache"},
    }


def test_pod_security_restricted():
    pod = render_pod(job(), 1, CONFIG)
    assert pod["spec"]["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    sc = container(pod)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 1000
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert not any("hostPath" in v for v in pod["spec"]["volumes"])


def test_termination_message_and_unbuffered_output():
    c = container(render_pod(job(), 1, CONFIG))
    assert c["name"] == "trainer"
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert {"name": "PYTHONUNBUFFERED", "value": "1"} in c["env"]


def test_template_pass_through():
    template = {
        "nodeSelector": {"gpu": "a100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "priorityClassName": "batch-low",
        "serviceAccountName": "trainer",
        "imagePullSecrets": [{"name": "regcred"}],
        "labels": {"team": "vision", "finetune.paddle.dev/attempt": "99"},
        "annotations": {"kueue.x-k8s.io/queue-name": "gpu"},
    }
    pod = render_pod(job(template=template), 3, CONFIG)
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "serviceAccountName"):
        assert pod["spec"][key] == template[key]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["metadata"]["labels"]["team"] == "vision"
    assert pod["metadata"]["labels"]["finetune.paddle.dev/attempt"] == "3"  # ours win
    assert pod["metadata"]["annotations"] == {"kueue.x-k8s.io/queue-name": "gpu"}


def test_long_names_are_bounded_and_distinct():
    long_a = "a" * 80 + "-one"
    long_b = "a" * 80 + "-two"
    name_a, name_b = pod_name(long_a, 12), pod_name(long_b, 12)
    assert len(name_a) <= 63 and len(name_b) <= 63
    assert name_a.endswith("-attempt-12")
    assert name_a != name_b
    assert pod_name(long_a, 12) == name_a  # deterministic: a restarted operator finds it
    assert len(job_label_value(long_a)) <= 63
    assert pod_name("x" * 53, 1) == "x" * 53 + "-attempt-1"  # 63 exactly: unchanged
    assert len(pod_name("x" * 54, 1)) == 63
    pod = render_pod(job(metadata={"name": long_a}), 12, CONFIG)
    assert pod["metadata"]["name"] == name_a
    assert pod["metadata"]["labels"]["finetune.paddle.dev/job-name"] == job_label_value(long_a)
    assert pod_selector(long_a).startswith(f"finetune.paddle.dev/job-name={job_label_value(long_a)},")


def test_attempt_must_be_positive():
    with pytest.raises(ValueError, match="attempt"):
        render_pod(job(), 0, CONFIG)


def test_operator_wide_trainer_env():
    pod = render_pod(job(), 1, OperatorConfig(trainer_env=(("REQUESTS_CA_BUNDLE", "/etc/ca.pem"),)))
    assert {"name": "REQUESTS_CA_BUNDLE", "value": "/etc/ca.pem"} in container(pod)["env"]


PUSHING = OperatorConfig(
    trainer_image="registry.local/trainer:7",
    progress_port=8443,
    progress_url="https://pfo.ops.svc:8443/",
    progress_ca_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
)


def test_with_the_progress_endpoint_rank_0_gets_its_url_ca_and_a_token_for_its_job_alone():
    from finetune_operator.pod import render_attempt

    pod = render_pod(job(), 1, PUSHING)
    env = {e["name"]: e["value"] for e in container(pod)["env"]}
    assert env["FINETUNE_PROGRESS_URL"] == "https://pfo.ops.svc:8443/v1/progress/team-a/flowers"
    assert env["FINETUNE_PROGRESS_CA"] == PUSHING.progress_ca_pem
    token = volume(pod, "progress-token")["projected"]["sources"]
    assert token == [
        {
            "serviceAccountToken": {
                "audience": "finetune.paddle.dev/progress/team-a/flowers",
                "expirationSeconds": 3600,
                "path": "token",
            }
        }
    ]
    assert mount(pod, "/var/run/secrets/finetune.paddle.dev/progress") == {
        "name": "progress-token",
        "mountPath": "/var/run/secrets/finetune.paddle.dev/progress",
        "readOnly": True,
    }
    # Still no API token of the ServiceAccount's own.
    assert pod["spec"]["automountServiceAccountToken"] is False
    # Without the endpoint nothing of it; the other ranks of a multi-node job report nothing.
    plain = render_pod(job(), 1, CONFIG)
    assert not any(e["name"].startswith("FINETUNE_PROGRESS") for e in container(plain)["env"])
    assert all(v["name"] != "progress-token" for v in plain["spec"]["volumes"])
    ranks = render_attempt(job(resources={"nodes": 2, "gpus": 1}), 1, PUSHING)
    assert [any(v["name"] == "progress-token" for v in p["spec"]["volumes"]) for p in ranks] == [True, False]
