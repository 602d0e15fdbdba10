"""The Helm chart: lint, values schema, rendering, RBAC, and the real thing on the local cluster.

The decisive test installs the chart with the locally built operator image: its Deployment's pod
runs on the real node (kubelet, containerd) with the chart's ServiceAccount token, in a namespace
enforcing Pod Security "restricted", its liveness probe passing; a job going end to end (on a
fake GPU node) proves the chart's RBAC is enough, and the same run with one rule removed proves
the test would notice a missing rule.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import tarfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from bench.failover import run_failover
from localcluster import CHART, ChartOperator, fullname, install_chart, service_account_kubeconfig
from localcluster.helm import local_values
from tests.contract.sample import SAMPLE_RESULT
from tests.operator import crd
from tests.operator.chart import by_kind, documents, helm, release_name, render
from tests.operator.fake_jobs import create_job, get_json, job_status, run_to_success, wait_for

DASHBOARD = CHART / "dashboards" / "paddle-finetune-operator.json"
# The rules the operator needs (operator/finetune_operator/RBAC.md); nothing more may be granted.
ALLOWED = {
    ("finetune.paddle.dev", "finetunejobs"): {"get", "list", "watch", "delete"},
    ("finetune.paddle.dev", "finetunejobs/status"): {"patch"},
    ("finetune.paddle.dev", "finetunejobs/finalizers"): {"update"},
    ("", "pods"): {"get", "list", "watch", "create", "delete"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"create"},
    ("kueue.x-k8s.io", "workloads"): {"get"},
    ("", "configmaps"): {"get", "create"},
}
# Only with operator.gangScheduler set: create on that scheduler's PodGroups, nothing else.
GANG_RULES = {
    "coscheduling": {("scheduling.x-k8s.io", "podgroups"): {"create"}},
    "volcano": {("scheduling.volcano.sh", "podgroups"): {"create"}},
}
# Leader election: one Lease, in the release namespace only, by name where RBAC allows it.
LEASES = ("coordination.k8s.io", "leases")
# The progress endpoint (progress.push.enabled, the default): create on TokenReviews, cluster-scoped,
# in a ClusterRole of its own in either mode; nothing else.
TOKENREVIEWS = ("authentication.k8s.io", "tokenreviews")
# Where the Deployment mounts the progress endpoint's Secret.
PROGRESS_TLS = "/etc/finetune-operator/progress-tls"
PROGRESS_ENV = ("PFO_PROGRESS_PORT", "PFO_PROGRESS_URL", "PFO_PROGRESS_TLS_CERT", "PFO_PROGRESS_TLS_KEY")
PROGRESS_ENV += ("PFO_PROGRESS_CA",)


def _grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                out.setdefault((group, resource), set()).update(rule.get("verbs", []))
    return out


def _operator_roles(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The (Cluster)Roles with the operator's rules on jobs and pods (not the Lease's, not the
    TokenReviews')."""
    return [
        r
        for r in by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
        if not r["metadata"]["name"].endswith(("-leader-election", "-tokenreview"))
    ]


def _service(docs: list[dict[str, Any]], suffix: str) -> dict[str, Any]:
    (svc,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith(suffix)]
    return svc


def _tls_files(docs: list[dict[str, Any]]) -> dict[str, bytes]:
    """The progress endpoint's Secret, decoded: tls.crt, tls.key and ca.crt."""
    (secret,) = by_kind(docs, "Secret")
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def _parse(docs: list[dict[str, Any]], tmp_path: Path, pod: str = "pfo-7d9f8-abcde") -> Any:
    """finetune_operator.config.parse_config of the Deployment's environment, as the pod would run
    it: the progress endpoint's Secret written where the pod mounts it (under tmp_path here)."""
    from finetune_operator import config

    (deployment,) = by_kind(docs, "Deployment")
    env = _env(deployment, pod=pod)
    if by_kind(docs, "Secret"):
        mounted = tmp_path / "progress-tls"
        mounted.mkdir(exist_ok=True)
        for name, data in _tls_files(docs).items():
            (mounted / name).write_bytes(data)
        env = {k: v.replace(PROGRESS_TLS, str(mounted)) for k, v in env.items()}
    return config.parse_config([], env)


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> None:
    """A TLS handshake between the two contexts in memory (no sockets); raises what the client
    raises (ssl.SSLCertVerificationError for a certificate it refuses)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, tls in (("client", tls_client), ("server", tls_server)):
            if not done[side]:
                try:
                    tls.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError(f"the handshake did not finish: {done}")


def _env(deployment: dict[str, Any], pod: str = "pfo-7d9f8-abcde") -> dict[str, str]:
    """The container's environment as the pod `pod` would see it (downward API resolved)."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    fields = {"metadata.name": pod, "metadata.namespace": deployment["metadata"]["namespace"]}
    env = {}
    for e in container.get("env", []):
        ref = (e.get("valueFrom") or {}).get("fieldRef")
        env[e["name"]] = fields[ref["fieldPath"]] if ref else e.get("value", "")
    return env


# ------------------------------------------------------------------------------------------------
# Without a cluster: helm alone
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values",
    [
        [],
        ["--set", "watchNamespaces={team-a,team-b}"],
        ["--set", "serviceMonitor.enabled=true,grafanaDashboard.enabled=true"],
        ["--set", "podMonitor.enabled=true,rbac.create=false"],
    ],
    ids=["defaults", "namespaced", "servicemonitor+dashboard", "podmonitor-norbac"],
)
def test_helm_lint_strict_is_clean(values: list[str]) -> None:
    proc = helm("lint", "--strict", str(CHART), "--kube-version", "1.35.0", *values, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["--set", "metrics.port=http"], "at '/metrics/port': got string, want integer"),
        (["--set", "operator.workers=0"], "at '/operator/workers': minimum: got 0, want 1"),
        (
            ["--set", "operator.logFormat=xml"],
            "at '/operator/logFormat': value must be one of 'json', 'text'",
        ),
        (
            ["--set", "operator.logFromat=json"],
            "at '/operator': additional properties 'logFromat' not allowed",
        ),
        (["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
        (["--set", "serviceMonitor.interval=often"], "at '/serviceMonitor/interval'"),
        (["--set", "watchNamespaces={Team_A}"], "at '/watchNamespaces/0'"),
        (["--set", "replicaCount=0"], "at '/replicaCount': minimum: got 0, want 1"),
        (["--set", "leaderElection.leaseDurationSeconds=0"], "at '/leaderElection/leaseDurationSeconds'"),
        (["--set", "podDisruptionBudget.maxUnavailable=0"], "at '/podDisruptionBudget/maxUnavailable'"),
        (["--set", "operator.gangScheduler=kube-batch"], "at '/operator/gangScheduler'"),
        (["--set", "operator.schedulerName=My_Scheduler"], "at '/operator/schedulerName'"),
        (["--set", "progress.push.port=0"], "at '/progress/push/port': minimum: got 0, want 1"),
        (
            ["--set", "progress.push.enable=false"],
            "at '/progress/push': additional properties 'enable' not allowed",
        ),
    ],
    ids=[
        "wrong-type",
        "out-of-range",
        "bad-enum",
        "unknown-nested-key",
        "unknown-top-key",
        "bad-duration",
        "bad-ns",
        "no-replicas",
        "zero-lease",
        "pdb-blocks-drains",
        "bad-gang-scheduler",
        "bad-scheduler-name",
        "zero-progress-port",
        "misspelt-progress-switch",
    ],
)
def test_values_schema_rejects_bad_values_with_a_clear_message(values: list[str], expected: str) -> None:
    proc = helm("template", "x", str(CHART), "--kube-version", "1.35.0", *values, check=False)
    assert proc.returncode != 0, f"helm accepted {values}"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert expected in proc.stderr, proc.stderr


def test_existing_service_account_and_external_rbac() -> None:
    no_name = ["--set", "serviceAccount.create=false"]
    proc = helm("template", "x", str(CHART), "--kube-version", "1.35.0", *no_name, check=False)
    assert proc.returncode != 0 and "serviceAccount.name: name an existing ServiceAccount" in proc.stderr
    docs = documents(
        render("--set", "serviceAccount.create=false,serviceAccount.name=ops-sa,rbac.create=false")
    )
    # No RBAC object at all (the TokenReview rule neither); the progress endpoint's Secret stays.
    assert {d["kind"] for d in docs} == {"Service", "Deployment", "PodDisruptionBudget", "Secret"}
    (d,) = by_kind(docs, "Deployment")
    assert d["spec"]["template"]["spec"]["serviceAccountName"] == "ops-sa"


def test_kube_version_floor() -> None:
    proc = helm("template", "x", str(CHART), "--kube-version", "1.28.9", check=False)
    assert proc.returncode != 0 and "requires kubeVersion: >=1.29.0-0" in proc.stderr, proc.stderr
    assert helm("template", "x", str(CHART), "--kube-version", "1.29.0", check=False).returncode == 0


def test_values_schema_is_strict_at_every_level() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: Any, path: str) -> list[str]:
        loose: list[str] = []
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                loose.append(path or "/")
            for key, child in node.items():
                loose += walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                loose += walk(child, f"{path}/{i}")
        return loose

    assert walk(schema, "") == [], "objects with listed properties must set additionalProperties: false"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"]), "values.yaml has keys the schema does not describe"


def test_chart_ships_the_repository_crd() -> None:
    link = CHART / "crds" / crd.CRD_FILE.name
    assert link.is_symlink() and link.resolve() == crd.CRD_FILE.resolve(), (
        f"{link} must link to {crd.CRD_FILE}"
    )
    crds = by_kind(documents(render(include_crds=True)), "CustomResourceDefinition")
    assert len(crds) == 1, f"the chart renders {len(crds)} CRDs"
    assert crds[0] == crd.load_crd(), f"the chart's CRD differs from {crd.CRD_FILE}"


def test_packaged_chart_carries_the_crd_as_a_file(tmp_path: Path) -> None:
    """`helm package` resolves the symbolic link: the published chart holds the CRD's bytes."""
    helm("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("paddle-finetune-operator-*.tgz")
    with tarfile.open(archive) as tar:
        member = tar.getmember(f"paddle-finetune-operator/crds/{crd.CRD_FILE.name}")
        assert member.isfile(), "the packaged CRD is not a regular file"
        packaged = tar.extractfile(member).read()  # type: ignore[union-attr]
    assert packaged == crd.CRD_FILE.read_bytes()


@pytest.mark.parametrize(
    "values", [[], ["--set", "watchNamespaces={team-a,team-b}"]], ids=["cluster", "namespaced"]
)
def test_rendered_rbac_is_least_privilege(values: list[str]) -> None:
    docs = documents(render(*values))
    roles = by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
    assert roles
    for role in roles:
        where = f"{role['kind']} {role['metadata']['name']}"
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), f"{where}: wildcard in {field}: {rule}"
            assert not rule.get("nonResourceURLs"), f"{where}: grants non-resource URLs"
        if role["metadata"]["name"].endswith("-leader-election"):
            continue  # the Lease's own Role: test_lease_rbac_is_one_lease_in_the_release_namespace
        if role["metadata"]["name"].endswith("-tokenreview"):
            assert _grants(role["rules"]) == {TOKENREVIEWS: {"create"}}, f"{where}: more than TokenReviews"
            continue  # test_tokenreview_rights_are_create_only_and_cluster_scoped_in_both_modes
        for key, verbs in _grants(role["rules"]).items():
            assert key in ALLOWED, f"{where}: grants {key} which the operator does not use"
            assert verbs <= ALLOWED[key], f"{where}: grants {sorted(verbs - ALLOWED[key])} on {key}"


def test_namespaced_mode_renders_roles_in_the_listed_namespaces() -> None:
    docs = documents(render("--set", "watchNamespaces={team-a,team-b}", namespace="ops"))
    lease_role = fullname("pfo") + "-leader-election"
    roles = {
        (r["metadata"]["namespace"], r["metadata"]["name"])
        for r in by_kind(docs, "Role")
        if r["metadata"]["name"] != lease_role
    }
    bindings = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"] != lease_role]
    assert {ns for ns, _ in roles} == {"team-a", "team-b"}
    assert {b["metadata"]["namespace"] for b in bindings} == {"team-a", "team-b"}
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": fullname("pfo"), "namespace": "ops"}]
        assert b["roleRef"]["kind"] == "Role"
    # Namespaced mode grants nothing cluster-wide but TokenReviews (progress.push, on by default),
    # and nothing at all without them.
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        assert [r["metadata"]["name"] for r in by_kind(docs, kind)] == [fullname("pfo") + "-tokenreview"]
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert _grants(cluster_role["rules"]) == {TOKENREVIEWS: {"create"}}
    no_push = documents(render("--set", "watchNamespaces={team-a,team-b},progress.push.enabled=false"))
    assert not by_kind(no_push, "ClusterRole") and not by_kind(no_push, "ClusterRoleBinding")
    (deployment,) = by_kind(docs, "Deployment")
    assert _env(deployment)["PFO_NAMESPACES"] == "team-a,team-b"

    cluster_docs = documents(render(namespace="ops"))
    assert [r["metadata"]["name"] for r in by_kind(cluster_docs, "Role")] == [lease_role]
    (cluster_deployment,) = by_kind(cluster_docs, "Deployment")
    assert _env(cluster_deployment)["PFO_NAMESPACES"] == ""


@pytest.mark.parametrize(
    "values", [[], ["--set", "watchNamespaces={team-a,team-b}"]], ids=["cluster", "namespaced"]
)
def test_lease_rbac_is_one_lease_in_the_release_namespace(values: list[str]) -> None:
    docs = documents(render(*values, namespace="ops"))
    (deployment,) = by_kind(docs, "Deployment")
    lease = _env(deployment)["PFO_LEADER_ELECTION_ID"]
    granting = [
        r for r in by_kind(docs, "ClusterRole") + by_kind(docs, "Role") if LEASES in _grants(r["rules"])
    ]
    assert len(granting) == 1, [r["metadata"]["name"] for r in granting]
    (role,) = granting
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "ops", (
        "the Lease rights leave the namespace"
    )
    assert _grants(role["rules"]) == {LEASES: {"get", "update", "create"}}, "only the Lease, only these verbs"
    for rule in role["rules"]:
        if set(rule["verbs"]) & {"get", "update"}:
            assert rule.get("resourceNames") == [lease], f"get/update must name the Lease: {rule}"
        else:  # create cannot be limited by name (RBAC authorises it before the object exists)
            assert rule["verbs"] == ["create"] and "resourceNames" not in rule, rule
    (binding,) = [b for b in by_kind(docs, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]]
    assert binding["metadata"]["namespace"] == "ops"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": fullname("pfo"), "namespace": "ops"}]


def test_two_replicas_get_a_disruption_budget_and_are_spread_over_nodes() -> None:
    docs = documents(render())
    (d,) = by_kind(docs, "Deployment")
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == d["spec"]["selector"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    (term,) = d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"] == d["spec"]["selector"]
    mine = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    (d,) = by_kind(documents(render("--set-json", f"affinity={json.dumps(mine)}")), "Deployment")
    assert d["spec"]["template"]["spec"]["affinity"] == mine, "a given affinity is used as it is"


def test_one_replica_without_leader_election_is_recreated_and_has_no_lease() -> None:
    docs = documents(render("--set", "replicaCount=1,leaderElection.enabled=false"))
    (d,) = by_kind(docs, "Deployment")
    assert d["spec"]["replicas"] == 1 and d["spec"]["strategy"] == {"type": "Recreate"}
    assert _env(d)["PFO_LEADER_ELECT"] == "false" and "PFO_LEADER_ELECTION_ID" not in _env(d)
    assert not by_kind(docs, "PodDisruptionBudget") and "affinity" not in d["spec"]["template"]["spec"]
    assert all(
        LEASES not in _grants(r["rules"]) for r in by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
    )


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ("replicaCount=2,leaderElection.enabled=false", "replicaCount > 1 needs leaderElection.enabled=true"),
        (
            "leaderElection.leaseDurationSeconds=8,leaderElection.renewDeadlineSeconds=8",
            "leaderElection.renewDeadlineSeconds (8) must be shorter than "
            "leaderElection.leaseDurationSeconds (8)",
        ),
        (
            "leaderElection.retryPeriodSeconds=6",
            "leaderElection.retryPeriodSeconds (6) x 1.2 must be shorter",
        ),
        (
            "progress.push.port=8081",
            "progress.push.port (8081) must differ from metrics.port (8080) and healthPort (8081)",
        ),
    ],
    ids=["replicas-without-election", "renew-not-shorter", "retry-too-long", "progress-port-clash"],
)
def test_values_that_only_fail_together_stop_the_install(values: str, expected: str) -> None:
    proc = helm("template", "x", str(CHART), "--kube-version", "1.35.0", "--set", values, check=False)
    assert proc.returncode != 0 and expected in proc.stderr, proc.stderr


def test_deployment_meets_pod_security_restricted_and_carries_the_settings() -> None:
    docs = documents(
        render(
            "--set",
            "operator.logFormat=text,operator.startTimeoutSeconds=120,metrics.port=9100,healthPort=9101",
        )
    )
    (d,) = by_kind(docs, "Deployment")
    spec = d["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert c["resources"]["requests"] and c["resources"]["limits"]
    env = _env(d)
    assert env["PFO_LOG_FORMAT"] == "text" and env["PFO_START_TIMEOUT"] == "120"
    assert env["PFO_METRICS_PORT"] == "9100" and env["PFO_HEALTH_PORT"] == "9101"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9100, "health": 9101, "progress": 8443}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    svc = _service(docs, "-metrics")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    # The progress endpoint's Secret mounted read-only; the pod stays "restricted" with it.
    assert {"name": "progress-tls", "mountPath": PROGRESS_TLS, "readOnly": True} in c["volumeMounts"]
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True


@pytest.mark.parametrize("scheduler", ["", "coscheduling", "volcano"])
@pytest.mark.parametrize("namespaced", [False, True], ids=["clusterwide", "namespaced"])
def test_pod_group_rights_only_with_a_gang_scheduler(
    scheduler: str, namespaced: bool, tmp_path: Path
) -> None:
    values = f"operator.gangScheduler={scheduler}" + (",watchNamespaces={team-a}" if namespaced else "")
    docs = documents(render("--set", values))
    roles = _operator_roles(docs)
    assert roles
    for role in roles:
        grants = _grants(role["rules"])
        assert {k: v for k, v in grants.items() if k not in ALLOWED} == GANG_RULES.get(scheduler, {})
        assert grants[("", "configmaps")] == {"get", "create"}, "never delete, update or list ConfigMaps"
    assert _parse(docs, tmp_path).gang_scheduler == scheduler


def test_operator_settings_in_the_chart_are_ones_the_operator_reads(tmp_path: Path) -> None:
    from finetune_operator import config

    known = {opt[2] for opt in config._OPTIONS}
    values = (
        "operator.trainerEnv.HTTPS_PROXY=http://proxy:3128,operator.cacheClaim=weights,"
        "operator.workers=7,watchNamespaces={a,b},operator.sweepSeconds=90"
    )
    docs = documents(render("--set", values))
    (d,) = by_kind(docs, "Deployment")
    env = _env(d)
    unknown = set(env) - known
    assert not unknown, f"the chart sets variables finetune-operator does not read: {sorted(unknown)}"
    # What the chart passes parses into the settings the values asked for.
    parsed = _parse(docs, tmp_path)
    assert parsed.trainer_env == (("HTTPS_PROXY", "http://proxy:3128"),)
    assert (parsed.cache_claim, parsed.workers, parsed.namespaces) == ("weights", 7, ("a", "b"))
    assert parsed.sweep_seconds == 90
    defaults = _parse(documents(render()), tmp_path, pod="pfo-abc-12")
    assert defaults.clusterwide and defaults.log_format == "json"
    assert defaults.allow_host_path is False and defaults.scheduling_timeout_seconds == 0
    allowing = documents(render("--set", "operator.allowHostPath=true"))
    assert _parse(allowing, tmp_path, pod="pfo-abc-12").allow_host_path is True
    # Leader election as the chart sets it: the Lease in the release namespace, the pod's name as
    # holder, and the operator's own default durations (those bench/failover.py measures).
    assert defaults.leader_elect
    assert (defaults.leader_election_namespace, defaults.leader_election_identity) == (
        "pfo-system",
        "pfo-abc-12",
    )
    assert defaults.leader_election_id == fullname("pfo") + "-leader"
    built_in = config.OperatorConfig()
    durations = ("lease_duration_seconds", "renew_deadline_seconds", "retry_period_seconds")
    assert [getattr(defaults, d) for d in durations] == [getattr(built_in, d) for d in durations]
    off = documents(render("--set", "replicaCount=1,leaderElection.enabled=false"))
    assert not _parse(off, tmp_path).leader_elect


def test_monitors_and_dashboard_render_when_enabled() -> None:
    docs = documents(render())
    assert not [d for d in docs if d["kind"] in ("ServiceMonitor", "PodMonitor")], (
        "monitors must be off by default"
    )
    assert not [d for d in docs if d["kind"] == "ConfigMap"]
    docs = documents(
        render(
            "--set",
            "serviceMonitor.enabled=true,podMonitor.enabled=true,grafanaDashboard.enabled=true,"
            "grafanaDashboard.namespace=monitoring,serviceMonitor.labels.release=kps",
        )
    )
    (sm,) = by_kind(docs, "ServiceMonitor")
    (pm,) = by_kind(docs, "PodMonitor")
    svc = _service(docs, "-metrics")
    assert sm["apiVersion"] == pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    (cm,) = by_kind(docs, "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["paddle-finetune-operator.json"]) == json.loads(DASHBOARD.read_text())


def test_dashboard_queries_use_the_operators_metric_names() -> None:
    from finetune_operator.metrics import Metrics
    from prometheus_client import generate_latest

    metrics = Metrics()
    # Touch the labelled families so every series name appears in the exposition.
    metrics.outcomes.labels(phase="Succeeded", reason="Completed").inc()
    metrics.retries.labels(reason="Interrupted").inc()
    metrics.duration.labels(phase="Succeeded").observe(1)
    metrics.reconcile_errors.labels(kind="ApiException").inc()
    metrics.observe_job("n", "j", "u", "Running", top1=0.5)
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in generate_latest(metrics.registry).decode().splitlines()
        if line and not line.startswith("#")
    }
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bfinetune_[a-z0-9_]+", e)}
    assert used, "the dashboard queries no finetune_* metric"
    assert used <= exposed, (
        f"the dashboard queries metrics the operator does not export: {sorted(used - exposed)}"
    )
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("phase", "outcome", "duration", "accuracy"):
        assert topic in titles, f"no dashboard panel about {topic}"


# ------------------------------------------------------------------------------------------------
# The progress endpoint (progress.push): Secret, Deployment wiring, Service, TokenReview rights
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values",
    [[], ["--set", "progress.push.port=9443,watchNamespaces={team-a}"]],
    ids=["defaults", "port+namespaced"],
)
def test_progress_push_is_on_by_default_and_wired_to_its_service(values: list[str], tmp_path: Path) -> None:
    docs = documents(render(*values, namespace="ops", release="pfo"))
    port = 9443 if values else 8443
    name = fullname("pfo")
    # The Secret: the certificate, its key and the CA the pods get.
    (secret,) = by_kind(docs, "Secret")
    assert secret["metadata"] == {**secret["metadata"], "name": f"{name}-progress-tls", "namespace": "ops"}
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    files = _tls_files(docs)
    assert files["tls.crt"].startswith(b"-----BEGIN CERTIFICATE-----")
    assert files["ca.crt"].startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY-----" in files["tls.key"]
    # The Service: ClusterIP, the port the pods are told, to the container's named port.
    service = _service(docs, "-progress")
    assert service["metadata"]["name"] == f"{name}-progress" and service["metadata"]["namespace"] == "ops"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "progress", "port": port, "targetPort": "progress", "protocol": "TCP"}
    ]
    # The Deployment: the five variables, the port, the Secret mounted read-only.
    (d,) = by_kind(docs, "Deployment")
    pod = d["spec"]["template"]["spec"]
    assert service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    (c,) = pod["containers"]
    env = _env(d)
    assert {k: env[k] for k in PROGRESS_ENV} == {
        "PFO_PROGRESS_PORT": str(port),
        "PFO_PROGRESS_URL": f"https://{name}-progress.ops.svc:{port}",
        "PFO_PROGRESS_TLS_CERT": f"{PROGRESS_TLS}/tls.crt",
        "PFO_PROGRESS_TLS_KEY": f"{PROGRESS_TLS}/tls.key",
        "PFO_PROGRESS_CA": f"{PROGRESS_TLS}/ca.crt",
    }
    url = urlsplit(env["PFO_PROGRESS_URL"])
    assert url.hostname == f"{service['metadata']['name']}.ops.svc" and url.port == port and not url.path
    assert {"name": "progress", "containerPort": port, "protocol": "TCP"} in c["ports"]
    assert {"name": "progress-tls", "mountPath": PROGRESS_TLS, "readOnly": True} in c["volumeMounts"]
    assert {"name": "progress-tls", "secret": {"secretName": secret["metadata"]["name"]}} in pod["volumes"]
    # The operator reads those settings: the endpoint on, the CA's text handed to the pods.
    parsed = _parse(docs, tmp_path)
    assert (parsed.progress_port, parsed.progress_url) == (port, env["PFO_PROGRESS_URL"])
    assert parsed.progress_ca_pem == files["ca.crt"].decode()


def test_progress_push_off_renders_none_of_it(tmp_path: Path) -> None:
    for values in (
        ["--set", "progress.push.enabled=false"],
        ["--set", "progress.push.enabled=false,watchNamespaces={a}"],
    ):
        docs = documents(render(*values))
        assert not by_kind(docs, "Secret")
        assert [s["metadata"]["name"] for s in by_kind(docs, "Service")] == [fullname("pfo") + "-metrics"]
        (d,) = by_kind(docs, "Deployment")
        (c,) = d["spec"]["template"]["spec"]["containers"]
        assert not [k for k in _env(d) if k in PROGRESS_ENV]
        assert "progress" not in {p["name"] for p in c["ports"]}
        assert "progress-tls" not in {v["name"] for v in d["spec"]["template"]["spec"]["volumes"]}
        assert "progress-tls" not in {m["name"] for m in c["volumeMounts"]}
        for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
            assert TOKENREVIEWS not in _grants(role["rules"]), role["metadata"]["name"]
        assert not [
            b for b in by_kind(docs, "ClusterRoleBinding") if b["metadata"]["name"].endswith("-tokenreview")
        ]
        assert _parse(docs, tmp_path).progress_port == 0, "the operator would serve no endpoint"


@pytest.mark.parametrize(
    "values", [[], ["--set", "watchNamespaces={team-a,team-b}"]], ids=["clusterwide", "namespaced"]
)
def test_tokenreview_rights_are_create_only_and_cluster_scoped_in_both_modes(values: list[str]) -> None:
    docs = documents(render(*values, namespace="ops"))
    granting = [
        r for r in by_kind(docs, "ClusterRole") + by_kind(docs, "Role") if TOKENREVIEWS in _grants(r["rules"])
    ]
    assert [(r["kind"], r["metadata"]["name"]) for r in granting] == [
        ("ClusterRole", fullname("pfo") + "-tokenreview")
    ]
    (role,) = granting
    assert role["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    ], "exactly create on tokenreviews: no wildcard, no other verb or resource"
    (binding,) = [
        b for b in by_kind(docs, "ClusterRoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]
    ]
    assert binding["roleRef"]["kind"] == "ClusterRole"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": fullname("pfo"), "namespace": "ops"}]
    # The operator's other rules never carry it.
    assert all(TOKENREVIEWS not in _grants(r["rules"]) for r in _operator_roles(docs))
    # rbac.create=false: none (the administrators grant it).
    external = documents(render(*values, "--set", "rbac.create=false", namespace="ops"))
    assert not by_kind(external, "ClusterRole") and not by_kind(external, "ClusterRoleBinding")


def test_progress_certificate_is_valid_for_the_service_and_signed_by_its_ca(tmp_path: Path) -> None:
    """A TLS handshake as the operator serves it and the trainer checks it: the trainer's context
    (create_default_context with the CA's text, hostname checked; X.509 strict as Python 3.13
    defaults to) accepts the certificate for each of the Service's DNS names, and refuses it for
    another name and with another install's CA."""
    docs = documents(render(namespace="ops", release="pfo"))
    files = _tls_files(docs)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    server.load_cert_chain(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))

    def client(ca_pem: str) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=ca_pem)
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        return context

    trainer = client(files["ca.crt"].decode())
    service = _service(docs, "-progress")["metadata"]["name"]
    (d,) = by_kind(docs, "Deployment")
    host = urlsplit(_env(d)["PFO_PROGRESS_URL"]).hostname
    assert host == f"{service}.ops.svc"
    for name in (host, service, f"{service}.ops", f"{service}.ops.svc.cluster.local"):
        _handshake(server, trainer, name)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(server, trainer, f"{service}.other.svc")
    # Each install makes its own CA: another's does not vouch for this certificate.
    other = _tls_files(documents(render(namespace="ops", release="pfo")))["ca.crt"]
    assert other != files["ca.crt"]
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
        _handshake(server, client(other.decode()), host)


# ------------------------------------------------------------------------------------------------
# Against the local control plane
# ------------------------------------------------------------------------------------------------
def _helm(cluster: Any, *args: str) -> str:
    """helm against the test cluster (the pinned binary from its bin_dir)."""
    return helm(*args, bin_dir=cluster.bin_dir, kubeconfig=cluster.kubeconfig).stdout


def _install(cluster: Any, release: str, namespace: str, *values: str, action: str = "install") -> str:
    return _helm(cluster, action, release, str(CHART), "--namespace", namespace, *values, "--wait=false")


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _make_namespace(cluster: Any, base: str, suffix: str) -> str:
    name = f"{base}-{suffix}"[:63].rstrip("-")
    cluster.kubectl("create", "namespace", name)
    return name


@pytest.fixture
def extra_namespaces(cluster: Any, namespace: str):
    """More namespaces derived from the test's own, deleted afterwards."""
    made: list[str] = []

    def make(suffix: str) -> str:
        made.append(_make_namespace(cluster, namespace, suffix))
        return made[-1]

    yield make
    for ns in made:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.mark.parametrize("namespaced", [False, True], ids=["cluster", "namespaced"])
def test_rendered_chart_applies_with_server_dry_run(
    cluster: Any, crd_installed: str, namespace: str, extra_namespaces: Any, namespaced: bool
) -> None:
    values = ["--set", f"watchNamespaces={{{extra_namespaces('jobs')}}}"] if namespaced else []
    manifest = render(
        *values,
        "--set",
        "grafanaDashboard.enabled=true",
        namespace=namespace,
        release=release_name(namespace),
    )
    proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    assert proc.returncode == 0, proc.stderr
    applied = [line for line in proc.stdout.splitlines() if "(server dry run)" in line]
    assert len(applied) == len(documents(manifest)), proc.stdout
    assert "Warning" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_install_upgrade_uninstall_leaves_no_orphans(
    cluster: Any, crd_installed: str, namespace: str
) -> None:
    # The release namespace enforces Pod Security "restricted": the operator pod must be admitted.
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    release = release_name(namespace)
    name = fullname(release)
    notes = _install(cluster, release, namespace)
    assert "kubectl get ftj -w" in notes, "NOTES.txt should tell the user how to watch a job"
    lease = f"{fullname(release)}-leader"
    assert f"get lease {lease} -o jsonpath='{{.spec.holderIdentity}}" in notes, "NOTES.txt: which pod leads"

    wait_for(
        "both operator pods admitted under Pod Security 'restricted'",
        lambda: (
            len(
                (
                    get_json(cluster, namespace, "pods", "-l", f"app.kubernetes.io/instance={release}") or {}
                ).get("items", [])
            )
            == 2
        ),
        120,  # the replicaset controller's pace on a busy 2-core machine; a refusal shows in the events
        lambda: cluster.kubectl("get", "events,replicasets", namespace=namespace).stdout,
    )
    deployment = get_json(cluster, namespace, "deployment", name)
    assert deployment and _env(deployment)["PFO_LOG_FORMAT"] == "json"
    tls = get_json(cluster, namespace, "secret", f"{name}-progress-tls")
    assert tls and set(tls["data"]) == {"tls.crt", "tls.key", "ca.crt"}

    _install(cluster, release, namespace, "--set", "operator.logFormat=text", action="upgrade")
    deployment = get_json(cluster, namespace, "deployment", name)
    assert deployment and _env(deployment)["PFO_LOG_FORMAT"] == "text", (
        "helm upgrade did not change the setting"
    )
    # The progress endpoint's CA and certificate survive the upgrade (lookup): running trainer pods
    # hold the CA's text and keep verifying the operator with it.
    kept = get_json(cluster, namespace, "secret", f"{name}-progress-tls")
    assert kept and kept["data"] == tls["data"], "helm upgrade issued a new progress certificate"
    history = json.loads(_helm(cluster, "history", release, "-n", namespace, "-o", "json"))
    assert [h["revision"] for h in history] == [1, 2]

    rendered = documents(_helm(cluster, "get", "manifest", release, "-n", namespace))
    kinds = {d["kind"] for d in rendered}
    assert kinds >= {
        "Secret",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    }, kinds
    _helm(cluster, "uninstall", release, "-n", namespace, "--wait", "--timeout=60s")

    def leftovers() -> list[str]:
        left = []
        for d in rendered:
            ns = d["metadata"].get("namespace")
            proc = cluster.kubectl("get", d["kind"], d["metadata"]["name"], namespace=ns, check=False)
            if proc.returncode == 0:
                left.append(f"{d['kind']} {ns}/{d['metadata']['name']}")
        selector = f"app.kubernetes.io/instance={release}"
        owned = cluster.kubectl("get", "replicasets,pods", "-l", selector, "-o", "name", namespace=namespace)
        return left + owned.stdout.split()

    wait_for("no objects of the release left", lambda: not leftovers(), 60, lambda: "\n".join(leftovers()))
    # Helm's convention for crds/: the CRD stays (and with it every FineTuneJob).
    assert cluster.kubectl("get", "crd", crd.CRD_NAME, check=False).returncode == 0


def test_namespaced_install_grants_only_the_listed_namespaces(
    cluster: Any, crd_installed: str, namespace: str, extra_namespaces: Any
) -> None:
    watched, other = extra_namespaces("watched"), extra_namespaces("other")
    release = release_name(namespace)
    _install(cluster, release, namespace, "--set", f"watchNamespaces={{{watched}}}")
    try:
        sa = f"system:serviceaccount:{namespace}:{fullname(release)}"

        def can(verb: str, resource: str, ns: str, *extra: str) -> bool:
            proc = cluster.kubectl(
                "auth", "can-i", verb, resource, *extra, "--as", sa, namespace=ns, check=False
            )
            return proc.stdout.strip() == "yes"

        ftj = "finetunejobs.finetune.paddle.dev"
        assert can("create", "pods", watched) and can("patch", ftj, watched, "--subresource=status")
        assert not can("patch", ftj, watched), "the operator writes only the status subresource"
        assert not can("create", "pods", other) and not can("list", ftj, other)
        assert not can("get", "secrets", watched), "the operator must not read secrets"
        assert get_json(cluster, watched, "role", fullname(release)), "no Role in the watched namespace"
        # The Lease: its own, in the release namespace; create anywhere there (RBAC cannot name it).
        lease = f"leases/{fullname(release)}-leader"
        assert can("get", lease, namespace) and can("update", lease, namespace)
        assert can("create", "leases", namespace)
        assert not can("update", "leases/kube-scheduler", namespace), "another component's Lease"
        assert not can("delete", lease, namespace) and not can("patch", lease, namespace)
        assert not can("list", "leases", namespace) and not can("watch", "leases", namespace)
        for ns in (watched, other, "kube-system"):
            assert not can("create", "leases", ns) and not can("update", lease, ns), f"Lease rights in {ns}"
        # The progress endpoint: TokenReviews (cluster-scoped), even in the namespaced mode; no
        # way to make tokens.
        assert can("create", "tokenreviews.authentication.k8s.io", "")
        assert not can("create", "serviceaccounts/token", watched), "the operator must not mint tokens"
    finally:
        _helm(cluster, "uninstall", release, "-n", namespace)


# The chart's initial delay (kopf's /healthz answers once the operator has started), probes more often.
FAST_PROBE = ("--set", "livenessProbe.periodSeconds=2")


def _serves_tls(ip: str, port: int, context: ssl.SSLContext, hostname: str) -> str | None:
    """The TLS version a server at ip:port negotiates with `context` for `hostname`; None while
    nothing listens there."""
    try:
        with (
            socket.create_connection((ip, port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=hostname) as tls,
        ):
            return tls.version()
    except ConnectionRefusedError:
        return None


def _check_progress_endpoint(cluster: Any, operator: ChartOperator) -> None:
    """The leader serves the chart's certificate on the progress port, verified with the Secret's
    CA for the progress Service's DNS name (as a trainer does); a standby's port is closed."""
    secret = get_json(cluster, operator.namespace, "secret", f"{operator.name}-progress-tls")
    assert secret, "no progress Secret"
    context = ssl.create_default_context(cadata=base64.b64decode(secret["data"]["ca.crt"]).decode())
    deployment = get_json(cluster, operator.namespace, "deployment", operator.name)
    url = urlsplit(_env(deployment or {})["PFO_PROGRESS_URL"])
    assert url.hostname and url.port
    leader = operator.pod()
    version = wait_for(
        "the leader's progress endpoint",
        lambda: _serves_tls(leader["status"]["podIP"], url.port, context, url.hostname),
        30,
        operator.log_tail,
    )
    assert version in ("TLSv1.2", "TLSv1.3")
    for standby in [p for p in operator.pods() if p["metadata"]["name"] != leader["metadata"]["name"]]:
        ip = standby["status"].get("podIP")
        if ip and standby["status"].get("phase") == "Running":
            assert _serves_tls(ip, url.port, context, url.hostname) is None, "a standby listens"


@pytest.mark.slow
@pytest.mark.parametrize("namespaced", [False, True], ids=["all-namespaces", "watchNamespaces"])
def test_the_charts_operator_pod_runs_a_job(
    cluster: Any, crd_installed: str, namespace: str, extra_namespaces: Any, namespaced: bool
) -> None:
    """helm install -> the operator's pod on the real node, from the operator image, with the
    ServiceAccount's token and in-cluster configuration, Pod Security "restricted", liveness
    probe passing, /metrics served at the pod's IP, the progress endpoint at the leader's; it runs
    a job as the chart's ServiceAccount."""
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    release = release_name(namespace)
    jobs_ns = extra_namespaces("jobs")
    watch = ["--set", f"watchNamespaces={{{jobs_ns}}}"] if namespaced else []
    t0 = time.monotonic()
    operator = install_chart(cluster, namespace, *watch, *FAST_PROBE, release=release)
    rolled_out = time.monotonic() - t0
    try:
        pod = operator.pod()
        assert pod["spec"]["nodeName"] == cluster.real_node
        assert pod["spec"]["serviceAccountName"] == fullname(release)
        (status,) = pod["status"]["containerStatuses"]
        assert status["image"] == "ghcr.io/paddle-finetune-operator/operator:0.1.0"
        assert status["containerID"].startswith("containerd://") and status["ready"]
        mounts = {m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts, "no ServiceAccount token"
        wait_for(
            "a passing liveness probe (the kubelet's prober_probe_total)",
            lambda: operator.probe_results().get("successful", 0) >= 2,
            60,
            lambda: f"{operator.probe_results()}\n{operator.log_tail()}",
        )
        assert operator.probe_results().get("failed", 0) == 0
        assert "finetune_jobs" in operator.metrics()
        _check_progress_endpoint(cluster, operator)

        t1 = time.monotonic()
        status = run_to_success(cluster, jobs_ns, "ftj-rbac", operator.log_tail)
        elapsed = time.monotonic() - t1
        assert status["metrics"]["top1"] == pytest.approx(SAMPLE_RESULT.top1)
        assert status["metrics"]["bestEpoch"] == SAMPLE_RESULT.bestEpoch
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        assert conditions.get("Succeeded") == "True", status
        events = json.loads(cluster.kubectl("get", "events", "-o", "json", namespace=jobs_ns).stdout)["items"]
        about_job = [e for e in events if e["involvedObject"].get("kind") == "FineTuneJob"]
        assert about_job, "the operator posted no Event about the job"
        log = operator.log_tail(2000)
        assert operator.restarts() == 0, log
    finally:
        operator.uninstall()
    # An RBAC refusal reads 'User "system:serviceaccount:..." cannot <verb> resource ...'. (Other
    # 403s, such as a leftover job in a namespace another test is deleting, are not about RBAC.)
    refused = re.findall(r'cannot [a-z]+ resource \\?"[^"\\]+\\?"[^)]*', log)
    assert not refused, f"the ServiceAccount was refused: {refused}\n{log}"
    mode = "namespaced" if namespaced else "cluster"
    print(f"chart rolled out in {rolled_out:.1f}s; job end to end by its pod ({mode}): {elapsed:.1f}s")


@pytest.mark.slow
def test_operator_without_the_pod_create_rule_is_refused_and_the_job_stalls(
    cluster: Any, crd_installed: str, namespace: str, extra_namespaces: Any
) -> None:
    release = release_name(namespace)
    docs = documents(render(*local_values(cluster), namespace=namespace, release=release))
    (role,) = [r for r in _operator_roles(docs) if r["kind"] == "ClusterRole"]
    for rule in role["rules"]:
        if rule["resources"] == ["pods"]:
            rule["verbs"].remove("create")
    assert "create" not in _grants(role["rules"])[("", "pods")]
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    cluster.kubectl("apply", "-f", "-", input=listing)
    jobs_ns = extra_namespaces("jobs")
    operator = ChartOperator(cluster, namespace, release)
    try:
        operator.wait_rolled_out()
        t0 = time.monotonic()
        create_job(cluster, jobs_ns, "ftj-norbac")
        wait_for(
            "the operator to log a 403 for creating the pod",
            lambda: re.search(r"\b403\b|[Ff]orbidden", operator.log_tail(200)),
            45,
            operator.log_tail,
        )
        log = operator.log_tail(200)
        assert re.search(r'cannot create resource \\?"pods\\?"', log), log
        print(f"403 on pod creation logged {time.monotonic() - t0:.1f}s after the job was applied")
        # The job says so at once (a SelfSubjectAccessReview confirmed it), not as a quota would.
        status = wait_for(
            "the job to say MissingPermission",
            lambda: (
                (s := job_status(cluster, jobs_ns, "ftj-norbac")).get("reason") == "MissingPermission" and s
            ),
            30,
            lambda: f"{job_status(cluster, jobs_ns, 'ftj-norbac')}\n{operator.log_tail(200)}",
        )
        assert status["phase"] == "Pending" and status["waiting"]["kind"] == "Permission"
        assert f"may not create pods in namespace {jobs_ns}" in status["message"]
        # The chart's operator logs JSON: the line that says so is an error.
        log = operator.log_tail(200)
        assert re.search(r'may not create pods.*"severity": "error"', log), log
        time.sleep(3)  # give a wrongly working operator time to make progress anyway
        pods = cluster.kubectl("get", "pods", "-o", "name", namespace=jobs_ns).stdout.split()
        assert pods == [], f"a pod was created without the 'create pods' rule: {pods}"
        phase = job_status(cluster, jobs_ns, "ftj-norbac").get("phase")
        assert phase not in ("Running", "Succeeded"), f"the job progressed to {phase} without its pod"
    finally:
        cluster.kubectl("delete", "-f", "-", "--wait=true", "--timeout=60s", input=listing, check=False)


@pytest.mark.slow
def test_two_replicas_with_the_charts_service_account_elect_one_leader_and_fail_over(
    cluster: Any, crd_installed: str, namespace: str, extra_namespaces: Any, tmp_path: Path
) -> None:
    """Both replicas as the chart's ServiceAccount, with its Lease in the release namespace: the
    standby reads, the leader creates and renews, the survivor takes over; no request refused."""
    release = release_name(namespace)
    jobs_ns = extra_namespaces("jobs")
    _install(cluster, release, namespace, "--set", f"watchNamespaces={{{jobs_ns}}}")
    try:
        kubeconfig = service_account_kubeconfig(
            cluster, namespace, fullname(release), tmp_path / "sa.kubeconfig"
        )
        report = run_failover(
            cluster,
            jobs_ns,
            tmp_path,
            kills=1,
            restarts=0,
            kubeconfig=str(kubeconfig),
            lease_namespace=namespace,
            lease_name=f"{fullname(release)}-leader",
        )
    finally:
        _helm(cluster, "uninstall", release, "-n", namespace)
    assert report["violations"] == [], "\n".join(report["violations"][:20])
    (kill,) = report["kills"]
    assert kill["newLeader"] != kill["killed"]
    logs = "\n".join(_read(log) for log in tmp_path.glob("replica-*.log"))
    assert "became the leader" in logs
    refused = re.findall(r'cannot [a-z]+ resource \\?"[^"\\]+\\?"[^)]*', logs)
    assert not refused, f"the ServiceAccount was refused: {refused}"
    print(f"failover as the chart's ServiceAccount: {kill}")
