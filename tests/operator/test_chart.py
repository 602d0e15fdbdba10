"""The Helm chart: lint, values schema, rendering, RBAC, and the real thing on the local cluster.

The decisive test runs the operator as a local process (kwok's fake nodes run no containers, so
the Deployment itself cannot) authenticated as the chart's ServiceAccount, not as an admin: a job
going end to end proves the chart's RBAC is enough, and the same run with one rule removed proves
the test would notice a missing rule.
"""

from __future__ import annotations

import json
import re
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import CHART, OperatorProcess, fullname, service_account_kubeconfig
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
}


def _grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                out.setdefault((group, resource), set()).update(rule.get("verbs", []))
    return out


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


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
    ],
    ids=[
        "wrong-type",
        "out-of-range",
        "bad-enum",
        "unknown-nested-key",
        "unknown-top-key",
        "bad-duration",
        "bad-ns",
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
    assert {d["kind"] for d in docs} == {"Service", "Deployment"}
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
        for key, verbs in _grants(role["rules"]).items():
            assert key in ALLOWED, f"{where}: grants {key} which the operator does not use"
            assert verbs <= ALLOWED[key], f"{where}: grants {sorted(verbs - ALLOWED[key])} on {key}"


def test_namespaced_mode_renders_roles_in_the_listed_namespaces() -> None:
    docs = documents(render("--set", "watchNamespaces={team-a,team-b}", namespace="ops"))
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in by_kind(docs, "Role")}
    bindings = by_kind(docs, "RoleBinding")
    assert {ns for ns, _ in roles} == {"team-a", "team-b"}
    assert {b["metadata"]["namespace"] for b in bindings} == {"team-a", "team-b"}
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": fullname("pfo"), "namespace": "ops"}]
        assert b["roleRef"]["kind"] == "Role"
    # Namespaced mode grants nothing cluster-wide.
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    (deployment,) = by_kind(docs, "Deployment")
    assert _env(deployment)["PFO_NAMESPACES"] == "team-a,team-b"

    cluster_docs = documents(render(namespace="ops"))
    assert not by_kind(cluster_docs, "Role")
    (cluster_deployment,) = by_kind(cluster_docs, "Deployment")
    assert _env(cluster_deployment)["PFO_NAMESPACES"] == ""


def test_deployment_meets_pod_security_restricted_and_carries_the_settings() -> None:
    docs = documents(
        render(
            "--set",
            "operator.logFormat=text,operator.startTimeoutSeconds=120,metrics.port=9100,healthPort=9101",
        )
    )
    (d,) = by_kind(docs, "Deployment")
    spec = d["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
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
    assert ports == {"metrics": 9100, "health": 9101}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    (svc,) = by_kind(docs, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()


def test_operator_settings_in_the_chart_are_ones_the_operator_reads() -> None:
    from finetune_operator import config

    known = {opt[2] for opt in config._OPTIONS}
    values = (
        "operator.trainerEnv.HTTPS_PROXY=http://proxy:3128,operator.cacheClaim=weights,"
        "operator.workers=7,watchNamespaces={a,b}"
    )
    (d,) = by_kind(documents(render("--set", values)), "Deployment")
    env = _env(d)
    unknown = set(env) - known
    assert not unknown, f"the chart sets variables finetune-operator does not read: {sorted(unknown)}"
    # What the chart passes parses into the settings the values asked for.
    parsed = config.parse_config([], env)
    assert parsed.trainer_env == (("HTTPS_PROXY", "http://proxy:3128"),)
    assert (parsed.cache_claim, parsed.workers, parsed.namespaces) == ("weights", 7, ("a", "b"))
    defaults = config.parse_config([], _env(by_kind(documents(render()), "Deployment")[0]))
    assert defaults.clusterwide and defaults.log_format == "json"
    assert defaults.allow_host_path is False and defaults.scheduling_timeout_seconds == 0
    (allowing,) = by_kind(documents(render("--set", "operator.allowHostPath=true")), "Deployment")
    assert config.parse_config([], _env(allowing)).allow_host_path is True


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
    (svc,) = by_kind(docs, "Service")
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
    metrics.top1.labels(namespace="n", name="j").set(0.5)
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

    wait_for(
        "the operator pod admitted under Pod Security 'restricted'",
        lambda: (
            get_json(cluster, namespace, "pods", "-l", f"app.kubernetes.io/instance={release}") or {}
        ).get("items"),
        30,
        lambda: cluster.kubectl("get", "events", namespace=namespace).stdout,
    )
    deployment = get_json(cluster, namespace, "deployment", name)
    assert deployment and _env(deployment)["PFO_LOG_FORMAT"] == "json"

    _install(cluster, release, namespace, "--set", "operator.logFormat=text", action="upgrade")
    deployment = get_json(cluster, namespace, "deployment", name)
    assert deployment and _env(deployment)["PFO_LOG_FORMAT"] == "text", (
        "helm upgrade did not change the setting"
    )
    history = json.loads(_helm(cluster, "history", release, "-n", namespace, "-o", "json"))
    assert [h["revision"] for h in history] == [1, 2]

    rendered = documents(_helm(cluster, "get", "manifest", release, "-n", namespace))
    kinds = {d["kind"] for d in rendered}
    assert kinds >= {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment"}, kinds
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
    finally:
        _helm(cluster, "uninstall", release, "-n", namespace)


@pytest.mark.slow
@pytest.mark.parametrize("namespaced", [False, True], ids=["all-namespaces", "watchNamespaces"])
def test_operator_with_the_charts_service_account_runs_a_job(
    cluster: Any, crd_installed: str, namespace: str, extra_namespaces: Any, tmp_path: Path, namespaced: bool
) -> None:
    release = release_name(namespace)
    jobs_ns = extra_namespaces("jobs")
    _install(
        cluster, release, namespace, *(["--set", f"watchNamespaces={{{jobs_ns}}}"] if namespaced else [])
    )
    kubeconfig = service_account_kubeconfig(cluster, namespace, fullname(release), tmp_path / "sa.kubeconfig")
    log_path = tmp_path / "operator.log"
    op = OperatorProcess(cluster, [jobs_ns] if namespaced else [], log_path, kubeconfig=str(kubeconfig))
    try:
        op.start()
        t0 = time.monotonic()
        status = run_to_success(cluster, jobs_ns, "ftj-rbac", lambda: _read(log_path))
        elapsed = time.monotonic() - t0
        assert status["metrics"]["top1"] == pytest.approx(SAMPLE_RESULT.top1)
        assert status["metrics"]["bestEpoch"] == SAMPLE_RESULT.bestEpoch
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        assert conditions.get("Succeeded") == "True", status
        events = json.loads(cluster.kubectl("get", "events", "-o", "json", namespace=jobs_ns).stdout)["items"]
        about_job = [e for e in events if e["involvedObject"].get("kind") == "FineTuneJob"]
        assert about_job, "the operator posted no Event about the job"
    finally:
        op.stop()
        _helm(cluster, "uninstall", release, "-n", namespace)
    # An RBAC refusal reads 'User "system:serviceaccount:..." cannot <verb> resource ...'. (Other
    # 403s, such as a leftover job in a namespace another test is deleting, are not about RBAC.)
    log = _read(log_path)
    refused = re.findall(r'cannot [a-z]+ resource \\?"[^"\\]+\\?"[^)]*', log)
    assert not refused, f"the ServiceAccount was refused: {refused}\n{log}"
    mode = "namespaced" if namespaced else "cluster"
    print(f"job end to end as the chart's ServiceAccount ({mode}): {elapsed:.1f}s")


@pytest.mark.slow
def test_operator_without_the_pod_create_rule_is_refused_and_the_job_stalls(
    cluster: Any, crd_installed: str, namespace: str, extra_namespaces: Any, tmp_path: Path
) -> None:
    release = release_name(namespace)
    docs = documents(render(namespace=namespace, release=release))
    (role,) = by_kind(docs, "ClusterRole")
    for rule in role["rules"]:
        if rule["resources"] == ["pods"]:
            rule["verbs"].remove("create")
    assert "create" not in _grants(role["rules"])[("", "pods")]
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    cluster.kubectl("apply", "-f", "-", input=listing)
    jobs_ns = extra_namespaces("jobs")
    kubeconfig = service_account_kubeconfig(cluster, namespace, fullname(release), tmp_path / "sa.kubeconfig")
    log_path = tmp_path / "operator.log"
    op = OperatorProcess(cluster, [], log_path, kubeconfig=str(kubeconfig))
    try:
        op.start()
        t0 = time.monotonic()
        create_job(cluster, jobs_ns, "ftj-norbac")
        wait_for(
            "the operator to log a 403 for creating the pod",
            lambda: re.search(r"\b403\b|[Ff]orbidden", _read(log_path)),
            45,
            lambda: _read(log_path),
        )
        assert re.search(r'cannot create resource \\?"pods\\?"', _read(log_path)), _read(log_path)
        print(f"403 on pod creation logged {time.monotonic() - t0:.1f}s after the job was applied")
        # The job says so at once (a SelfSubjectAccessReview confirmed it), not as a quota would.
        status = wait_for(
            "the job to say MissingPermission",
            lambda: (
                (s := job_status(cluster, jobs_ns, "ftj-norbac")).get("reason") == "MissingPermission" and s
            ),
            30,
            lambda: f"{job_status(cluster, jobs_ns, 'ftj-norbac')}\n{_read(log_path)}",
        )
        assert status["phase"] == "Pending" and status["waiting"]["kind"] == "Permission"
        assert f"may not create pods in namespace {jobs_ns}" in status["message"]
        assert re.search(r"ERROR.*may not create pods", _read(log_path)), _read(log_path)
        time.sleep(3)  # give a wrongly working operator time to make progress anyway
        pods = cluster.kubectl("get", "pods", "-o", "name", namespace=jobs_ns).stdout.split()
        assert pods == [], f"a pod was created without the 'create pods' rule: {pods}"
        phase = job_status(cluster, jobs_ns, "ftj-norbac").get("phase")
        assert phase not in ("Running", "Succeeded"), f"the job progressed to {phase} without its pod"
    finally:
        op.stop()
        cluster.kubectl("delete", "-f", "-", "--wait=false", input=listing, check=False)
