"""Operator settings from flags and PFO_* environment variables."""

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
    config = parse_config(["--metrics-port", "9200", "--start-timeout", "42"], env)
    assert config.namespaces == ("team-a", "team-b")
    assert not config.clusterwide
    assert config.trainer_image == "registry.local/trainer:1"
    assert config.metrics_port == 9200  # the flag beats PFO_METRICS_PORT
    assert config.backoff_base_seconds == 0.5
    assert config.start_timeout_seconds == 42.0
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
        (["--scheduling-timeout", "-1"], {}, "--scheduling-timeout: must be >= 0 seconds"),
        (["--start-timeout", "0"], {}, "--start-timeout: must be a number of seconds > 0"),
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
