"""Operator settings from flags and PFO_* environment variables."""

from pathlib import Path

import pytest
from finetune_operator.config import DEFAULT_TRAINER_IMAGE, ConfigError, parse_config


def test_defaults_watch_every_namespace():
    config = parse_config([], {})
    assert config.namespaces == ()
    assert config.clusterwide
    assert config.trainer_image == DEFAULT_TRAINER_IMAGE
    assert (config.metrics_port, config.health_port, config.log_format) == (8080, 8081, "text")


def test_environment_is_read_and_flags_win():
    env = {
        "PFO_NAMESPACES": "team-a, team-b",
        "PFO_TRAINER_IMAGE": "registry.local/trainer:1",
        "PFO_METRICS_PORT": "9100",
        "PFO_BACKOFF_BASE": "0.5",
        "PFO_LOG_FORMAT": "json",
    }
    config = parse_config(["--metrics-port", "9200", "--start-timeout", "42", "--sweep-interval", "45"], env)
    assert config.namespaces == ("team-a", "team-b")
    assert not config.clusterwide
    assert config.trainer_image == "registry.local/trainer:1"
    assert config.metrics_port == 9200  # the flag beats PFO_METRICS_PORT
    assert config.backoff_base_seconds == 0.5
    assert config.start_timeout_seconds == 42.0
    assert config.sweep_seconds == 45.0 and parse_config([], {}).sweep_seconds == 600.0
    assert config.scheduling_timeout_seconds == 0  # waiting for GPUs: no limit unless asked
    assert config.allow_host_path is False
    assert config.log_format == "json"


@pytest.mark.parametrize("value", ["", "*"])
def test_empty_or_star_namespaces_mean_all(value):
    assert parse_config(["--namespaces", value], {"PFO_NAMESPACES": "x"}).namespaces == ()


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (
            ["--metrics-port", "eighty"],
            {},
            "--metrics-port / PFO_METRICS_PORT: 'eighty' (from --metrics-port)",
        ),
        ([], {"PFO_WORKERS": "1.5"}, "(from PFO_WORKERS) is not a int"),
        (["--log-format", "xml"], {}, "--log-format / PFO_LOG_FORMAT: 'xml' is not one of text, json"),
        (["--metrics-port", "70000"], {}, "--metrics-port: 70000 is not a TCP port"),
        (["--metrics-port", "9000", "--health-port", "9000"], {}, "must differ"),
        (["--backoff-base", "0"], {}, "--backoff-base: must be a number of seconds > 0"),
        (["--backoff-base", "60", "--backoff-max", "10"], {}, "--backoff-max: must be >= --backoff-base"),
        (["--namespaces", "a,,b"], {}, "empty name"),
        (["--run-as-user", "0"], {}, "--run-as-user: must be a non-zero uid"),
        (["--trainer-image", " "], {}, "--trainer-image / PFO_TRAINER_IMAGE: must not be empty"),
        ([], {"PFO_GANG_SCHEDULER": "yunikorn"}, "--gang-scheduler / PFO_GANG_SCHEDULER: 'yunikorn' is not"),
        (["--scheduler-name", "My Scheduler"], {}, "--scheduler-name / PFO_SCHEDULER_NAME: 'My Scheduler'"),
        (["--scheduling-timeout", "-1"], {}, "--scheduling-timeout: must be >= 0 seconds"),
        (["--start-timeout", "0"], {}, "--start-timeout: must be a number of seconds > 0"),
        ([], {"PFO_SWEEP_INTERVAL": "-5"}, "--sweep-interval: must be a number of seconds > 0"),
        (
            [],
            {"PFO_ALLOW_HOST_PATH": "maybe"},
            "PFO_ALLOW_HOST_PATH: 'maybe' (from PFO_ALLOW_HOST_PATH) is not",
        ),
    ],
)
def test_bad_values_name_the_setting(argv, env, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(argv, env)
    assert fragment in str(info.value)


def test_main_reports_config_errors_without_a_traceback(capsys):
    from finetune_operator.__main__ import main

    assert main(["--log-format", "xml"]) == 2
    assert "finetune-operator: --log-format" in capsys.readouterr().err


def test_trainer_env_pairs():
    config = parse_config(["--trainer-env", "REQUESTS_CA_BUNDLE=/etc/ca.pem, HTTPS_PROXY=http://p:3128"], {})
    assert config.trainer_env == (("REQUESTS_CA_BUNDLE", "/etc/ca.pem"), ("HTTPS_PROXY", "http://p:3128"))
    with pytest.raises(ConfigError, match="'1BAD=x' is not NAME=VALUE"):
        parse_config([], {"PFO_TRAINER_ENV": "1BAD=x"})


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("True", True), ("1", True), ("false", False), ("", False)]
)
def test_allow_host_path_is_a_boolean(text, value):
    assert parse_config([], {"PFO_ALLOW_HOST_PATH": text}).allow_host_path is value


def test_allow_host_path_flag_alone_means_true():
    assert parse_config(["--allow-host-path"], {}).allow_host_path is True
    assert (
        parse_config(["--allow-host-path", "false"], {"PFO_ALLOW_HOST_PATH": "true"}).allow_host_path is False
    )


# --- leader election -------------------------------------------------------------------------
def test_leader_election_is_off_by_default_and_its_defaults_fit_client_gos_rules():
    config = parse_config([], {})
    assert not config.leader_elect
    assert config.renew_deadline_seconds < config.lease_duration_seconds
    assert config.renew_deadline_seconds > 1.2 * config.retry_period_seconds


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--leader-elect"], {}, True),
        (["--leader-elect=false"], {"PFO_LEADER_ELECT": "true"}, False),
        ([], {"PFO_LEADER_ELECT": "True"}, True),
        ([], {"PFO_LEADER_ELECT": "0"}, False),
    ],
)
def test_leader_elect_flag_and_variable(argv, env, expected):
    config = parse_config([*argv, "--leader-election-namespace", "ops"], env)
    assert config.leader_elect is expected


def test_leader_election_settings_from_the_environment():
    env = {
        "PFO_LEADER_ELECT": "true",
        "PFO_LEADER_ELECTION_NAMESPACE": "pfo-system",
        "PFO_LEADER_ELECTION_ID": "pfo-paddle-finetune-operator",
        "PFO_LEADER_ELECTION_IDENTITY": "pfo-paddle-finetune-operator-7d9f8-abcde",
        "PFO_LEADER_ELECT_LEASE_DURATION": "15",
        "PFO_LEADER_ELECT_RENEW_DEADLINE": "10",
        "PFO_LEADER_ELECT_RETRY_PERIOD": "2",
    }
    config = parse_config([], env)
    assert (config.leader_election_namespace, config.leader_election_id) == (
        "pfo-system",
        "pfo-paddle-finetune-operator",
    )
    assert config.leader_election_identity == "pfo-paddle-finetune-operator-7d9f8-abcde"
    assert (config.lease_duration_seconds, config.renew_deadline_seconds, config.retry_period_seconds) == (
        15.0,
        10.0,
        2.0,
    )


def test_each_process_started_by_hand_gets_an_identity_of_its_own():
    a = parse_config(["--leader-elect", "--leader-election-namespace", "ops"], {})
    b = parse_config(["--leader-elect", "--leader-election-namespace", "ops"], {})
    assert a.leader_election_identity and a.leader_election_identity != b.leader_election_identity


def test_the_lease_namespace_defaults_to_the_pods_own(tmp_path, monkeypatch):
    from finetune_operator import config as config_module

    missing = tmp_path / "absent"
    monkeypatch.setattr(config_module, "IN_CLUSTER_NAMESPACE_FILE", missing)
    with pytest.raises(ConfigError) as info:
        parse_config(["--leader-elect"], {})
    message = str(info.value)
    assert (
        "--leader-election-namespace / PFO_LEADER_ELECTION_NAMESPACE" in message
        and "outside a pod" in message
    )
    assert parse_config([], {}).leader_election_namespace == "", "not needed without --leader-elect"
    in_pod = tmp_path / "namespace"
    in_pod.write_text("pfo-system\n")
    monkeypatch.setattr(config_module, "IN_CLUSTER_NAMESPACE_FILE", in_pod)
    assert parse_config(["--leader-elect"], {}).leader_election_namespace == "pfo-system"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (
            ["--leader-elect=maybe"],
            "--leader-elect / PFO_LEADER_ELECT: 'maybe' (from --leader-elect) is not true or false",
        ),
        (
            ["--leader-election-namespace", "Ops"],
            "--leader-election-namespace / PFO_LEADER_ELECTION_NAMESPACE: 'Ops'",
        ),
        (["--leader-election-id", "my_lease"], "--leader-election-id / PFO_LEADER_ELECTION_ID: 'my_lease'"),
        (
            ["--leader-election-identity", "x" * 254],
            "--leader-election-identity / PFO_LEADER_ELECTION_IDENTITY",
        ),
        (
            ["--leader-elect-lease-duration", "soon"],
            "--leader-elect-lease-duration / PFO_LEADER_ELECT_LEASE_DURATION: 'soon'",
        ),
        (
            ["--leader-elect-retry-period", "0"],
            "--leader-elect-retry-period / PFO_LEADER_ELECT_RETRY_PERIOD: must be a number of seconds > 0",
        ),
        (
            ["--leader-elect-lease-duration", "5", "--leader-elect-renew-deadline", "5"],
            "--leader-elect-renew-deadline / PFO_LEADER_ELECT_RENEW_DEADLINE: must be shorter than "
            "--leader-elect-lease-duration",
        ),
        (
            ["--leader-elect-renew-deadline", "2", "--leader-elect-retry-period", "2"],
            "--leader-elect-retry-period / PFO_LEADER_ELECT_RETRY_PERIOD: 1.2 x the retry period",
        ),
    ],
)
def test_bad_leader_election_values_name_the_flag_and_the_variable(argv, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(argv, {})
    assert fragment in str(info.value)


def test_gang_scheduler_settings():
    assert (parse_config([], {}).gang_scheduler, parse_config([], {}).scheduler_name) == ("", "")
    config = parse_config(["--gang-scheduler", "volcano"], {"PFO_SCHEDULER_NAME": "volcano"})
    assert (config.gang_scheduler, config.scheduler_name) == ("volcano", "volcano")


def _endpoint_files(tmp_path):
    from localcluster.pki import PKI

    pki = PKI(tmp_path / "pki")
    pair = pki.issue("progress", "finetune-operator", server_names=("pfo.ns.svc",))
    return {
        "PFO_PROGRESS_PORT": "8443",
        "PFO_PROGRESS_URL": "https://pfo.ns.svc:8443",
        "PFO_PROGRESS_TLS_CERT": str(pair.cert),
        "PFO_PROGRESS_TLS_KEY": str(pair.key),
        "PFO_PROGRESS_CA": str(pki.ca.cert),
    }


def test_the_progress_endpoint_reads_its_files_at_start(tmp_path):
    env = _endpoint_files(tmp_path)
    config = parse_config([], env)
    assert (config.progress_port, config.progress_url) == (8443, "https://pfo.ns.svc:8443")
    assert config.progress_ca_pem == Path(env["PFO_PROGRESS_CA"]).read_text()
    assert parse_config([], {}).progress_port == 0  # off unless asked for


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"PFO_PROGRESS_URL": ""}, "--progress-url / PFO_PROGRESS_URL: '' is not an https URL"),
        ({"PFO_PROGRESS_URL": "http://pfo:8443"}, "is not an https URL without a path"),
        ({"PFO_PROGRESS_URL": "https://pfo:8443/v1"}, "is not an https URL without a path"),
        (
            {"PFO_PROGRESS_TLS_KEY": ""},
            "--progress-tls-key / PFO_PROGRESS_TLS_KEY: required with --progress-port",
        ),
        (
            {"PFO_PROGRESS_TLS_CERT": "/nonexistent.crt"},
            "--progress-tls-cert / PFO_PROGRESS_TLS_CERT: cannot read",
        ),
        ({"PFO_PROGRESS_CA": "KEY"}, "--progress-ca / PFO_PROGRESS_CA: "),
        ({"PFO_PROGRESS_PORT": "8080"}, "--metrics-port, --health-port and --progress-port must differ"),
        ({"PFO_PROGRESS_PORT": "99999"}, "--progress-port: 99999 is not a TCP port"),
    ],
)
def test_a_bad_progress_endpoint_names_the_setting(tmp_path, change, fragment):
    env = _endpoint_files(tmp_path)
    if change.get("PFO_PROGRESS_CA") == "KEY":  # a readable file that holds no certificate
        change = {"PFO_PROGRESS_CA": env["PFO_PROGRESS_TLS_KEY"]}
        fragment += change["PFO_PROGRESS_CA"] + " holds no PEM certificate"
    with pytest.raises(ConfigError) as info:
        parse_config([], {**env, **change})
    assert fragment in str(info.value)
