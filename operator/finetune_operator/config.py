"""Operator settings from command-line flags, falling back to PFO_* environment variables.

Every setting has a flag and an environment variable (the Helm chart sets the variables); a flag
wins over the variable, the variable over the default. Bad values raise ConfigError naming the
flag and the variable.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_TRAINER_IMAGE = "ghcr.io/paddle-finetune-operator/trainer:0.1.0"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Gang schedulers whose PodGroup the operator creates per attempt (Kueue needs no object: its pod
# groups are labels on the pods, added whenever the job names a queue).
GANG_SCHEDULERS = ("", "coscheduling", "volcano")
DEFAULT_LEASE_NAME = "paddle-finetune-operator"
# Where a pod finds its own namespace (the ServiceAccount's mounted token folder).
IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# An empty variable means false, as if it were unset.
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class ConfigError(ValueError):
    """A flag or environment variable has a bad value; the message names both."""


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: every namespace (cluster-wide)
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    metrics_port: int = 8080  # prometheus /metrics
    health_port: int = 8081  # kopf's liveness endpoint /healthz; 0 disables it
    log_format: str = "text"
    log_level: str = "info"
    # A pod that cannot run (image pull errors, a bad config, a missing claim) or has not started
    # this long after it was placed on a node fails the job (runPolicy.startTimeoutSeconds wins).
    start_timeout_seconds: float = 600.0
    # How long a pod may wait for capacity (no node with free GPUs, a full quota); 0: no limit
    # (runPolicy.schedulingTimeoutSeconds wins).
    scheduling_timeout_seconds: float = 0.0
    progress_poll_seconds: float = 30.0  # at most one log read per running job per interval
    # The progress endpoint (progress_server.py): trainers POST their progress to
    # <progress_url>/v1/progress/<namespace>/<job> over TLS; 0: none (the log reads alone).
    progress_port: int = 0
    progress_url: str = ""  # how pods reach the port, e.g. https://<service>.<namespace>.svc:8443
    progress_tls_cert: str = ""  # the serving certificate and key (files)
    progress_tls_key: str = ""
    progress_ca: str = ""  # the file with the CA's PEM the pods verify the certificate with
    progress_ca_pem: str = ""  # its text (read by parse_config), handed to the pods
    # How often the watch cache is relisted to drop jobs and pods deleted while a watch was
    # broken (a relist reports no deletions): a paged LIST of every job and pod.
    sweep_seconds: float = 600.0
    backoff_base_seconds: float = 10.0  # retry n waits base * 2^(n-1) ...
    backoff_max_seconds: float = 300.0  # ... but never longer than this
    # Jobs reconciled concurrently (bounds the load on the API server). 16, not 4: at N=1,000 pod
    # created p99 2.9 s against 8.7 s, propagation p99 0.67 s against 5.0 s (bench/README.md).
    workers: int = 16
    log_tail_lines: int = 200  # lines read from the end of a trainer's log for progress
    run_as_user: int = 1000  # the trainer's uid/gid (Pod Security "restricted" wants non-root)
    cache_claim: str = ""  # a PVC for /cache (pretrained downloads); empty: an emptyDir per pod
    # Environment for every trainer container, e.g. HTTPS_PROXY or REQUESTS_CA_BUNDLE for a
    # private CA that serves pretrained weights (the job spec has no env of its own).
    trainer_env: tuple[tuple[str, str], ...] = ()
    # An attempt's pods as one PodGroup for a gang scheduler: the coscheduling plugin of
    # scheduler-plugins or Volcano; empty: none (the operator's own pending timeout still ends an
    # attempt whose ranks cannot all be placed). scheduler_name: the pods' schedulerName
    # (empty: the cluster's default scheduler; Volcano: "volcano" unless set).
    gang_scheduler: str = ""
    scheduler_name: str = ""
    # hostPath volumes give a job's pod the node's files: refused unless the installation allows
    # them (and even then only where the namespace's Pod Security level does).
    allow_host_path: bool = False
    # Leader election on a coordination.k8s.io/v1 Lease (leader.py): off by default for a process
    # started by hand, on in the Helm chart (two replicas, one acting).
    leader_elect: bool = False
    leader_election_namespace: str = ""  # empty: the pod's own namespace (in a cluster)
    leader_election_id: str = DEFAULT_LEASE_NAME  # the Lease's name
    leader_election_identity: str = ""  # holderIdentity; empty: <hostname>_<random>; the chart: the pod name
    lease_duration_seconds: float = 10.0  # a standby takes over this long after the last renewal it saw
    renew_deadline_seconds: float = 7.0  # a leader that has not renewed for this long exits
    retry_period_seconds: float = 1.0  # between renewals, and between a standby's tries

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def client_threads(self) -> int:
        """Threads that share the reconciler's API client: the workers, the sweep, an error
        report (each wants a connection of its own; see kube.load_api_client)."""
        return self.workers + 2


# (field, flag, env, type, help)
_OPTIONS: tuple[tuple[str, str, str, type, str], ...] = (
    (
        "namespaces",
        "--namespaces",
        "PFO_NAMESPACES",
        str,
        "comma-separated namespaces to watch; '' or '*': all",
    ),
    ("trainer_image", "--trainer-image", "PFO_TRAINER_IMAGE", str, "default trainer image"),
    ("metrics_port", "--metrics-port", "PFO_METRICS_PORT", int, "port for /metrics"),
    ("health_port", "--health-port", "PFO_HEALTH_PORT", int, "port for /healthz (0: off)"),
    ("log_format", "--log-format", "PFO_LOG_FORMAT", str, "text or json"),
    ("log_level", "--log-level", "PFO_LOG_LEVEL", str, "debug, info, warning or error"),
    (
        "start_timeout_seconds",
        "--start-timeout",
        "PFO_START_TIMEOUT",
        float,
        "seconds a placed pod may take to start or stay unable to run",
    ),
    (
        "scheduling_timeout_seconds",
        "--scheduling-timeout",
        "PFO_SCHEDULING_TIMEOUT",
        float,
        "seconds a pod may wait for capacity (0: no limit)",
    ),
    ("progress_poll_seconds", "--progress-poll-interval", "PFO_PROGRESS_POLL_INTERVAL", float, "seconds"),
    ("sweep_seconds", "--sweep-interval", "PFO_SWEEP_INTERVAL", float, "seconds between relists"),
    ("progress_port", "--progress-port", "PFO_PROGRESS_PORT", int, "port of the progress endpoint (0: off)"),
    (
        "progress_url",
        "--progress-url",
        "PFO_PROGRESS_URL",
        str,
        "https URL pods reach the progress endpoint at (with --progress-port)",
    ),
    ("progress_tls_cert", "--progress-tls-cert", "PFO_PROGRESS_TLS_CERT", str, "its certificate file"),
    ("progress_tls_key", "--progress-tls-key", "PFO_PROGRESS_TLS_KEY", str, "its key file"),
    ("progress_ca", "--progress-ca", "PFO_PROGRESS_CA", str, "the CA file pods verify it with"),
    ("backoff_base_seconds", "--backoff-base", "PFO_BACKOFF_BASE", float, "seconds"),
    ("backoff_max_seconds", "--backoff-max", "PFO_BACKOFF_MAX", float, "seconds"),
    ("workers", "--workers", "PFO_WORKERS", int, "concurrent reconciles"),
    ("log_tail_lines", "--log-tail-lines", "PFO_LOG_TAIL_LINES", int, "log lines read for progress"),
    ("run_as_user", "--run-as-user", "PFO_RUN_AS_USER", int, "trainer uid (non-zero)"),
    ("cache_claim", "--cache-claim", "PFO_CACHE_CLAIM", str, "PVC name for /cache (default: emptyDir)"),
    (
        "trainer_env",
        "--trainer-env",
        "PFO_TRAINER_ENV",
        str,
        "NAME=VALUE pairs for trainer pods, comma-separated",
    ),
    (
        "gang_scheduler",
        "--gang-scheduler",
        "PFO_GANG_SCHEDULER",
        str,
        "a PodGroup per attempt for: coscheduling or volcano (default: none)",
    ),
    (
        "scheduler_name",
        "--scheduler-name",
        "PFO_SCHEDULER_NAME",
        str,
        "schedulerName of trainer pods (default: the cluster's; volcano with --gang-scheduler=volcano)",
    ),
    (
        "allow_host_path",
        "--allow-host-path",
        "PFO_ALLOW_HOST_PATH",
        bool,
        "true: jobs may use hostPath volumes (default false)",
    ),
    ("leader_elect", "--leader-elect", "PFO_LEADER_ELECT", bool, "act only while holding the Lease"),
    (
        "leader_election_namespace",
        "--leader-election-namespace",
        "PFO_LEADER_ELECTION_NAMESPACE",
        str,
        "namespace of the Lease (default: the pod's own)",
    ),
    ("leader_election_id", "--leader-election-id", "PFO_LEADER_ELECTION_ID", str, "name of the Lease"),
    (
        "leader_election_identity",
        "--leader-election-identity",
        "PFO_LEADER_ELECTION_IDENTITY",
        str,
        "this replica's holderIdentity (default: hostname_random; the chart: the pod name)",
    ),
    (
        "lease_duration_seconds",
        "--leader-elect-lease-duration",
        "PFO_LEADER_ELECT_LEASE_DURATION",
        float,
        "seconds a standby waits after the last renewal it saw",
    ),
    (
        "renew_deadline_seconds",
        "--leader-elect-renew-deadline",
        "PFO_LEADER_ELECT_RENEW_DEADLINE",
        float,
        "seconds a leader may go without renewing before it exits",
    ),
    (
        "retry_period_seconds",
        "--leader-elect-retry-period",
        "PFO_LEADER_ELECT_RETRY_PERIOD",
        float,
        "seconds between renewals and between tries",
    ),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune-operator",
        description="Runs FineTuneJobs as trainer pods. Every flag also reads the environment "
        "variable shown; flags win.",
    )
    for name, flag, env, kind, help_text in _OPTIONS:
        # A true/false flag alone means true (`--leader-elect`); `--leader-elect=false` also works.
        extra: dict[str, str] = {"nargs": "?", "const": "true"} if kind is bool else {}
        parser.add_argument(flag, dest=name, default=None, help=f"{help_text} (env {env})", **extra)
    return parser


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> OperatorConfig:
    """Build the configuration from flags (argv, without the program name) and environment."""
    environ = os.environ if environ is None else environ
    args = _parser().parse_args(list(argv or []))
    values: dict[str, object] = {}
    for name, flag, env, kind, _ in _OPTIONS:
        raw = getattr(args, name)
        source = flag
        if raw is None:
            raw, source = environ.get(env), env
        if raw is None:
            continue
        where = f"{flag} / {env}"
        if kind is str:
            values[name] = raw.strip()
            continue
        if kind is bool:
            word = raw.strip().lower()
            if word not in _TRUE + _FALSE:
                raise ConfigError(f"{where}: {raw!r} (from {source}) is not true or false")
            values[name] = word in _TRUE
            continue
        try:
            values[name] = kind(raw)
        except ValueError:
            raise ConfigError(f"{where}: {raw!r} (from {source}) is not a {kind.__name__}") from None
    if "namespaces" in values:
        text = str(values["namespaces"])
        items = [] if text in ("", "*") else [n.strip() for n in text.split(",")]
        if any(not n for n in items):
            raise ConfigError(f"--namespaces / PFO_NAMESPACES: empty name in {text!r}")
        values["namespaces"] = tuple(items)
    if "trainer_env" in values:
        values["trainer_env"] = _env_pairs(str(values["trainer_env"]))
    config = OperatorConfig(**values)  # type: ignore[arg-type]
    validate(config)
    config = _resolve_progress_endpoint(config)
    return config if not config.leader_elect else _resolve_leader_election(config)


def _resolve_progress_endpoint(config: OperatorConfig) -> OperatorConfig:
    """Check the endpoint's files are readable now (not at the first push) and keep the CA's text
    for the pods."""
    if not config.progress_port:
        return config
    for name, flag in (
        ("progress_tls_cert", "--progress-tls-cert / PFO_PROGRESS_TLS_CERT"),
        ("progress_tls_key", "--progress-tls-key / PFO_PROGRESS_TLS_KEY"),
        ("progress_ca", "--progress-ca / PFO_PROGRESS_CA"),
    ):
        path = getattr(config, name)
        if not path:
            raise ConfigError(f"{flag}: required with --progress-port")
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{flag}: cannot read {path}: {exc}") from None
        if name == "progress_ca":
            if "-----BEGIN CERTIFICATE-----" not in text:
                raise ConfigError(f"{flag}: {path} holds no PEM certificate")
            config = replace(config, progress_ca_pem=text)
    return config


def _resolve_leader_election(config: OperatorConfig) -> OperatorConfig:
    """Fill in the Lease's namespace (the pod's own) and this replica's identity."""
    namespace = config.leader_election_namespace
    if not namespace:
        try:
            namespace = IN_CLUSTER_NAMESPACE_FILE.read_text().strip()
        except OSError:
            raise ConfigError(
                "--leader-election-namespace / PFO_LEADER_ELECTION_NAMESPACE: required with "
                f"--leader-elect outside a pod (no {IN_CLUSTER_NAMESPACE_FILE})"
            ) from None
    # Unique per process, as client-go's examples make it: two operators started by hand on one
    # host must not both believe they hold the Lease.
    identity = config.leader_election_identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    resolved = replace(config, leader_election_namespace=namespace, leader_election_identity=identity)
    validate(resolved)
    return resolved


def _env_pairs(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(f"--trainer-env / PFO_TRAINER_ENV: {item!r} is not NAME=VALUE")
        pairs.append((name, value))
    return tuple(pairs)


def validate(config: OperatorConfig) -> None:
    """Raise ConfigError for values that parse but make no sense."""
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(f"--log-format / PFO_LOG_FORMAT: {config.log_format!r} is not one of text, json")
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"--log-level / PFO_LOG_LEVEL: {config.log_level!r} is not one of {LOG_LEVELS}")
    if not config.trainer_image:
        raise ConfigError("--trainer-image / PFO_TRAINER_IMAGE: must not be empty")
    ports = (
        ("metrics_port", "--metrics-port"),
        ("health_port", "--health-port"),
        ("progress_port", "--progress-port"),
    )
    for name, flag in ports:
        port = getattr(config, name)
        if not 0 <= port <= 65535:
            raise ConfigError(f"{flag}: {port} is not a TCP port (0..65535)")
    used = [getattr(config, name) for name, _ in ports if getattr(config, name)]
    if len(used) != len(set(used)):
        raise ConfigError("--metrics-port, --health-port and --progress-port must differ")
    if config.progress_port:
        url = urlsplit(config.progress_url)
        if url.scheme != "https" or not url.hostname or url.path not in ("", "/") or url.query:
            raise ConfigError(
                f"--progress-url / PFO_PROGRESS_URL: {config.progress_url!r} is not an https URL without "
                "a path (required with --progress-port: the pods send a token to it)"
            )
    if not config.scheduling_timeout_seconds >= 0:
        raise ConfigError(
            "--scheduling-timeout: must be >= 0 seconds, 0 for no limit "
            f"(got {config.scheduling_timeout_seconds})"
        )
    for name, flag in (
        ("start_timeout_seconds", "--start-timeout"),
        ("progress_poll_seconds", "--progress-poll-interval"),
        ("sweep_seconds", "--sweep-interval"),
        ("backoff_base_seconds", "--backoff-base"),
        ("backoff_max_seconds", "--backoff-max"),
    ):
        if not getattr(config, name) > 0:
            raise ConfigError(f"{flag}: must be a number of seconds > 0 (got {getattr(config, name)})")
    if config.backoff_max_seconds < config.backoff_base_seconds:
        raise ConfigError("--backoff-max: must be >= --backoff-base")
    if config.workers < 1:
        raise ConfigError(f"--workers: must be >= 1 (got {config.workers})")
    if config.log_tail_lines < 1:
        raise ConfigError(f"--log-tail-lines: must be >= 1 (got {config.log_tail_lines})")
    if config.run_as_user < 1:
        raise ConfigError(f"--run-as-user: must be a non-zero uid (got {config.run_as_user})")
    if config.gang_scheduler not in GANG_SCHEDULERS:
        raise ConfigError(
            f"--gang-scheduler / PFO_GANG_SCHEDULER: {config.gang_scheduler!r} is not one of "
            "coscheduling, volcano (or empty: none)"
        )
    if config.scheduler_name and not _DNS_SUBDOMAIN.fullmatch(config.scheduler_name):
        raise ConfigError(
            f"--scheduler-name / PFO_SCHEDULER_NAME: {config.scheduler_name!r} is not a scheduler name"
        )
    _validate_leader_election(config)


def _validate_leader_election(config: OperatorConfig) -> None:
    # Checked even with --leader-elect off, so that turning it on later cannot fail on a typo.
    ns = config.leader_election_namespace
    if ns and not _DNS_LABEL.fullmatch(ns):
        raise ConfigError(
            f"--leader-election-namespace / PFO_LEADER_ELECTION_NAMESPACE: {ns!r} is not a namespace name"
        )
    if not _DNS_SUBDOMAIN.fullmatch(config.leader_election_id):
        raise ConfigError(
            f"--leader-election-id / PFO_LEADER_ELECTION_ID: {config.leader_election_id!r} is not a valid "
            "Lease name (lower-case letters, digits, '-' and '.')"
        )
    if len(config.leader_election_identity) > 253:
        raise ConfigError(
            "--leader-election-identity / PFO_LEADER_ELECTION_IDENTITY: longer than 253 characters"
        )
    durations = (
        ("lease_duration_seconds", "--leader-elect-lease-duration / PFO_LEADER_ELECT_LEASE_DURATION"),
        ("renew_deadline_seconds", "--leader-elect-renew-deadline / PFO_LEADER_ELECT_RENEW_DEADLINE"),
        ("retry_period_seconds", "--leader-elect-retry-period / PFO_LEADER_ELECT_RETRY_PERIOD"),
    )
    for name, where in durations:
        if not getattr(config, name) > 0:
            raise ConfigError(f"{where}: must be a number of seconds > 0 (got {getattr(config, name)})")
    # client-go's rules: the leader gives up before a standby may take over, and a leader has
    # room for more than one renewal try before it gives up.
    if not config.renew_deadline_seconds < config.lease_duration_seconds:
        raise ConfigError(
            "--leader-elect-renew-deadline / PFO_LEADER_ELECT_RENEW_DEADLINE: must be shorter than "
            f"--leader-elect-lease-duration ({config.renew_deadline_seconds} >= "
            f"{config.lease_duration_seconds})"
        )
    if not config.renew_deadline_seconds > 1.2 * config.retry_period_seconds:
        raise ConfigError(
            "--leader-elect-retry-period / PFO_LEADER_ELECT_RETRY_PERIOD: 1.2 x the retry period must be "
            f"shorter than --leader-elect-renew-deadline ({config.retry_period_seconds} x 1.2 >= "
            f"{config.renew_deadline_seconds})"
        )
