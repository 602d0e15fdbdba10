"""A real Prometheus server scrapes the operator's pod; the scraped series show a job's outcome.

The operator runs as the chart installs it: the Deployment's pod on the real node. Prometheus
and promtool come from Debian's `prometheus` package (`make prometheus` installs it; `make test`
depends on that). The server runs on the host as a child process with a temporary config that
scrapes the pod's /metrics at its IP (the host reaches pods on the node's bridge) every second,
and is stopped at the end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import CHART, ChartOperator, free_port, install_chart
from tests.contract.sample import SAMPLE_RESULT
from tests.operator.fake_jobs import run_to_success, wait_for

SCRAPE_JOB = "finetune-operator"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed: run `make prometheus` (Debian's prometheus package)")
    return path


class Prometheus:
    """A Prometheus server process with its own config, data directory and port."""

    def __init__(self, workdir: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [{"job_name": SCRAPE_JOB, "static_configs": [{"targets": targets}]}],
                }
            )
        )
        check = subprocess.run(
            [_tool("promtool"), "check", "config", str(self.config)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, f"promtool rejects the test's config:\n{check.stdout}{check.stderr}"
        self.argv = [
            _tool("prometheus"),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"prometheus exited:\n{self.log()}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    return r.status == 200
            except (urllib.error.URLError, OSError):
                return False

        wait_for("prometheus /-/ready", ready, timeout, self.log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 400/422: a bad query, with Prometheus's reason
            body = json.loads(exc.read())
        assert body.get("status") == "success", f"GET {url}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of `expr` now."""
        return self.api("query", query=expr)["result"]


@pytest.fixture
def operator(cluster: Any, crd_installed: str, namespace: str) -> Iterator[ChartOperator]:
    """The chart's operator pod, watching this test's namespace only."""
    op = install_chart(cluster, namespace, "--set", f"watchNamespaces={{{namespace}}}", release="pfo-prom")
    try:
        yield op
    finally:
        op.uninstall()


@pytest.fixture
def prometheus(operator: ChartOperator, tmp_path: Path) -> Iterator[Prometheus]:
    target = urllib.parse.urlsplit(operator.metrics_url()).netloc  # <pod IP>:<metrics port>
    server = Prometheus(tmp_path, [target])
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert server.proc is not None and server.proc.poll() is not None, "prometheus is still running"


def _value(series: list[dict[str, Any]]) -> float:
    assert len(series) == 1, f"expected one series, got {series}"
    return float(series[0]["value"][1])


@pytest.mark.slow
def test_prometheus_scrapes_the_jobs_outcome(
    cluster: Any, namespace: str, operator: ChartOperator, prometheus: Prometheus
) -> None:
    def explain() -> str:
        return f"operator log:\n{operator.log_tail()}\nprometheus log:\n{prometheus.log()[-2000:]}"

    wait_for(
        "prometheus to scrape the operator (up == 1)",
        lambda: [s for s in prometheus.query(f'up{{job="{SCRAPE_JOB}"}}') if s["value"][1] == "1"],
        30,
        explain,
    )
    before = prometheus.query(f'finetune_job_outcomes_total{{job="{SCRAPE_JOB}",phase="Succeeded"}}')
    assert before == [], f"a fresh operator already counts successes: {before}"

    t0 = time.monotonic()
    run_to_success(cluster, namespace, "ftj-prom", explain)
    selector = f'job="{SCRAPE_JOB}"'
    outcome = wait_for(
        "the Succeeded outcome in Prometheus",
        lambda: prometheus.query(
            f'finetune_job_outcomes_total{{{selector},phase="Succeeded",reason="Completed"}}'
        ),
        30,
        explain,
    )
    seen_after = time.monotonic() - t0
    assert _value(outcome) == 1
    (target,) = prometheus.api("targets")["activeTargets"]
    assert target["health"] == "up" and target["scrapeUrl"] == operator.metrics_url()
    top1 = prometheus.query(f'finetune_job_top1{{{selector},namespace="{namespace}",name="ftj-prom"}}')
    assert _value(top1) == pytest.approx(SAMPLE_RESULT.top1)
    assert _value(prometheus.query(f'finetune_jobs{{{selector},phase="Succeeded"}}')) >= 1
    assert _value(prometheus.query(f'finetune_jobs{{{selector},phase="Running"}}')) == 0
    assert _value(prometheus.query(f"sum(finetune_attempts_total{{{selector}}})")) >= 1
    durations = prometheus.query(f'finetune_job_duration_seconds_count{{{selector},phase="Succeeded"}}')
    assert _value(durations) == 1
    failed = prometheus.query(f'finetune_job_outcomes_total{{{selector},phase="Failed"}}')
    assert sum(float(s["value"][1]) for s in failed) == 0

    # Every query of the Grafana dashboard parses and runs against these real series.
    dashboard = json.loads((CHART / "dashboards" / "paddle-finetune-operator.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$__rate_interval", "1m")
                .replace("$__range", "1h")
                .replace('job=~"$job"', f'job=~"{SCRAPE_JOB}"')
            )
            prometheus.api("query", query=expr)  # raises on a bad query
    outcome_panel = next(p for p in dashboard["panels"] if "outcome" in p["title"].lower())
    expr = outcome_panel["targets"][0]["expr"].replace("$__range", "1h").replace("$job", SCRAPE_JOB)
    shown = {
        (s["metric"].get("phase"), s["metric"].get("reason")): float(s["value"][1])
        for s in prometheus.query(expr)
    }
    assert shown.get(("Succeeded", "Completed")) == 1, f"the dashboard's outcome panel shows {shown}"
    print(f"outcome visible in Prometheus {seen_after:.1f}s after the job started (1s scrape interval)")


def test_promtool_finds_nothing_to_complain_about(
    cluster: Any, namespace: str, operator: ChartOperator
) -> None:
    run_to_success(cluster, namespace, "ftj-lint", operator.log_tail)  # so the labelled series exist too
    exposition = operator.metrics()
    assert "finetune_job_outcomes_total{" in exposition and "finetune_job_top1{" in exposition
    proc = subprocess.run(
        [_tool("promtool"), "check", "metrics"], input=exposition, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), (
        f"promtool check metrics complains:\n{proc.stdout}{proc.stderr}"
    )
