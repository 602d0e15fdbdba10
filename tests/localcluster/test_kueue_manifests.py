"""How Kueue's release manifests are adapted to the local cluster, and the Configuration we run it
with (no cluster needed; tests/localcluster/test_kueue.py runs the real thing)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from localcluster import ClusterError
from localcluster.kueue import (
    CONFIG_FILE,
    NAMESPACE,
    NAMESPACE_LABEL,
    WEBHOOK_SERVICE,
    adapt_manifests,
    kueue_configuration,
)


def _ref(path: str) -> dict[str, Any]:
    return {"service": {"name": WEBHOOK_SERVICE, "namespace": NAMESPACE, "path": path}}


def _rendered() -> list[dict[str, Any]]:
    """The shapes `helm template` gives for Kueue's chart, one of each kind that matters."""
    meta = {"namespace": NAMESPACE}
    return [
        {"kind": "Deployment", "metadata": {"name": "kueue-controller-manager", **meta}},
        {"kind": "ConfigMap", "metadata": {"name": "kueue-manager-config", **meta}},
        {"kind": "Service", "metadata": {"name": "kueue-controller-manager-metrics-service", **meta}},
        {"kind": "Service", "metadata": {"name": "kueue-visibility-server", **meta}},
        {"kind": "APIService", "metadata": {"name": "v1beta2.visibility.kueue.x-k8s.io"}},
        {"kind": "Service", "metadata": {"name": WEBHOOK_SERVICE, **meta},
         "spec": {"type": "ClusterIP", "selector": {"control-plane": "controller-manager"},
                  "ports": [{"port": 443, "targetPort": 9443}]}},
        {"kind": "Secret", "metadata": {"name": "kueue-webhook-server-cert", **meta}},
        {"kind": "ClusterRole", "metadata": {"name": "kueue-manager-role"}},
        {"kind": "MutatingWebhookConfiguration", "metadata": {"name": "kueue-mutating-webhook-configuration"},
         "webhooks": [{"name": "mpod.kb.io", "clientConfig": _ref("/mutate--v1-pod")},
                      {"name": "mjob.kb.io", "clientConfig": _ref("/mutate-batch-v1-job")}]},
        {"kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": "kueue-validating-webhook-configuration"},
         "webhooks": [{"name": "vpod.kb.io", "clientConfig": _ref("/validate--v1-pod")}]},
        {"kind": "CustomResourceDefinition", "metadata": {"name": "workloads.kueue.x-k8s.io"},
         "spec": {"conversion": {"strategy": "Webhook", "webhook": {"clientConfig": _ref("/convert")}}}},
        {"kind": "CustomResourceDefinition", "metadata": {"name": "resourceflavors.kueue.x-k8s.io"},
         "spec": {"group": "kueue.x-k8s.io"}},
    ]  # fmt: skip


def test_kueue_runs_as_a_process_and_its_webhook_service_points_at_it() -> None:
    out = adapt_manifests(_rendered(), webhook_port=40123)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in out}
    assert kinds == {
        ("Service", WEBHOOK_SERVICE),
        ("Secret", "kueue-webhook-server-cert"),
        ("ClusterRole", "kueue-manager-role"),
        ("MutatingWebhookConfiguration", "kueue-mutating-webhook-configuration"),
        ("ValidatingWebhookConfiguration", "kueue-validating-webhook-configuration"),
        ("CustomResourceDefinition", "workloads.kueue.x-k8s.io"),
        ("CustomResourceDefinition", "resourceflavors.kueue.x-k8s.io"),
    }
    by_name = {o["metadata"]["name"]: o for o in out}
    assert by_name[WEBHOOK_SERVICE]["spec"] == {"type": "ExternalName", "externalName": "127.0.0.1"}
    refs = [h["clientConfig"]["service"] for k in ("kueue-mutating-webhook-configuration",
            "kueue-validating-webhook-configuration") for h in by_name[k]["webhooks"]]  # fmt: skip
    refs.append(
        by_name["workloads.kueue.x-k8s.io"]["spec"]["conversion"]["webhook"]["clientConfig"]["service"]
    )
    assert len(refs) == 4
    for ref in refs:  # only the port changes: name, namespace and path stay the release's
        assert ref["port"] == 40123
        assert (ref["name"], ref["namespace"]) == (WEBHOOK_SERVICE, NAMESPACE)
        assert ref["path"].startswith("/")
    assert "conversion" not in by_name["resourceflavors.kueue.x-k8s.io"]["spec"]


@pytest.mark.parametrize("client_config", [
    {"url": "https://example.invalid/mutate"},
    {"service": {"name": "other-service", "namespace": NAMESPACE, "path": "/x"}},
    {"service": {"name": WEBHOOK_SERVICE, "namespace": "elsewhere", "path": "/x"}},
])  # fmt: skip
def test_a_webhook_that_does_not_reference_kueues_service_is_refused(client_config: dict[str, Any]) -> None:
    docs = _rendered()
    hooks = next(d for d in docs if d["kind"] == "ValidatingWebhookConfiguration")
    hooks["webhooks"].append({"name": "vother.kb.io", "clientConfig": copy.deepcopy(client_config)})
    with pytest.raises(ClusterError, match="unexpected webhook client config"):
        adapt_manifests(docs, webhook_port=1)


def test_the_configuration_queues_only_labelled_work_in_opted_in_namespaces(tmp_path: Any) -> None:
    base = yaml.safe_load(CONFIG_FILE.read_text())
    assert base["apiVersion"] == "config.kueue.x-k8s.io/v1beta2" and base["kind"] == "Configuration"
    assert base["manageJobsWithoutQueueName"] is False
    key, value = NAMESPACE_LABEL
    assert base["managedJobsNamespaceSelector"] == {"matchLabels": {key: value}}
    assert {"pod", "batch/job"} <= set(base["integrations"]["frameworks"])
    assert base["internalCertManagement"]["enable"] is True
    assert base["featureGates"]["VisibilityOnDemand"] is False

    config = kueue_configuration(1001, 1002, 1003, tmp_path / "certs")
    assert config["namespace"] == NAMESPACE
    assert config["webhook"] == {"host": "127.0.0.1", "port": 1001, "certDir": str(tmp_path / "certs")}
    assert config["metrics"] == {"bindAddress": "127.0.0.1:1002"}
    assert config["health"] == {"healthProbeBindAddress": "127.0.0.1:1003"}
    assert config["leaderElection"] == {"leaderElect": False}
    assert config["internalCertManagement"] == {
        "enable": True,
        "webhookServiceName": WEBHOOK_SERVICE,
        "webhookSecretName": "kueue-webhook-server-cert",
    }
    # Everything else is the file's.
    assert {k: v for k, v in config.items() if k in base and k != "internalCertManagement"} == {
        k: v for k, v in base.items() if k != "internalCertManagement"
    }


class _NoKueueYet:
    state_dir = None  # Kueue.attach finds no state.json under it


@pytest.mark.parametrize("exits", [0, 1, 2, 3])
def test_a_kueue_that_exits_while_starting_is_started_once_more(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, exits: int
) -> None:
    """Its ports are picked free before it binds them; on a busy host one can be taken meanwhile, so
    one exit while starting costs a second start on fresh ports, two exits are an error that shows
    the end of Kueue's log."""
    from localcluster import kueue as kueue_module

    starts: list[int] = []

    def install_and_run(cluster: Any, timeout: float) -> str:
        starts.append(1)
        if len(starts) <= exits:
            raise kueue_module.KueueExited(f"Kueue exited; log ends with: bind {len(starts)}")
        return "running"

    monkeypatch.setattr(kueue_module, "_install_and_run", install_and_run)
    cluster = _NoKueueYet()
    cluster.state_dir = tmp_path
    if exits >= 2:
        with pytest.raises(kueue_module.KueueExited, match="bind 2"):
            kueue_module.start_kueue(cluster)  # type: ignore[arg-type]
        assert len(starts) == 2
    else:
        assert kueue_module.start_kueue(cluster) == "running"  # type: ignore[arg-type]
        assert len(starts) == exits + 1
