from datetime import timedelta
from pathlib import Path

import pytest

from orchestrator.config import Settings, format_duration, help_for, parse_duration
from orchestrator.errors import ConfigError


def test_defaults_then_env_then_overrides() -> None:
    env = {"ORCHESTRATOR_CONCURRENCY": "3", "ORCHESTRATOR_LEASE_S": "12.5",
           "ORCHESTRATOR_DATA_DIR": "/tmp/x"}
    settings = Settings.load(env, concurrency=5)
    assert settings.concurrency == 5
    assert settings.lease_s == 12.5
    assert settings.data_dir == Path("/tmp/x")
    assert settings.batch_size == Settings().batch_size


def test_dsn_falls_back_to_database_url() -> None:
    assert Settings.load({"DATABASE_URL": "postgresql://a/b"}).dsn == "postgresql://a/b"
    env = {"DATABASE_URL": "postgresql://a/b", "ORCHESTRATOR_DSN": "postgresql://c/d"}
    assert Settings.load(env).dsn == "postgresql://c/d"
    assert Settings.load(env, dsn="postgresql://e/f").dsn == "postgresql://e/f"


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="ORCHESTRATOR_CONCURRENCY='many'"):
        Settings.load({"ORCHESTRATOR_CONCURRENCY": "many"})


@pytest.mark.parametrize("field,value", [("concurrency", 0), ("lease_s", 0.0),
                                         ("poll_interval_s", -1.0), ("max_attempts", 0),
                                         ("pool_max_lifetime_s", 0.0),
                                         ("pool_max_idle_s", -5.0)])
def test_out_of_range_values_are_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        Settings.load({}, **{field: value})


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().concurrency = 2  # type: ignore[misc]


def test_help_names_default_and_env() -> None:
    text = help_for("lease_s")
    assert "Default: 30.0" in text
    assert "ORCHESTRATOR_LEASE_S" in text


def test_observability_settings_parse_and_check() -> None:
    env = {"ORCHESTRATOR_METRICS_PORT": "9100", "ORCHESTRATOR_LOG_FORMAT": "json",
           "ORCHESTRATOR_DASHBOARD_TOKEN": "s3cret"}
    settings = Settings.load(env)
    assert settings.metrics_port == 9100 and settings.log_format == "json"
    assert Settings.load({}).metrics_port is None
    assert "s3cret" not in repr(settings)
    with pytest.raises(ConfigError, match="log_format must be one of text, json"):
        Settings.load({}, log_format="xml")
    with pytest.raises(ConfigError, match="metrics_port must be a port number"):
        Settings.load({}, metrics_port=70000)


def test_the_repr_shows_no_connection_string_nor_password_command() -> None:
    settings = Settings.load({}, dsn="postgresql://app:s3cret@db/app",
                             listen_dsn="host=db password=s3cret",
                             password_command="echo s3cret")
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings)
    assert "dsn=" not in repr(settings) and "lease_s=30.0" in repr(settings)


@pytest.mark.parametrize("text,seconds", [("3d", 259200), ("12h", 43200), ("90m", 5400),
                                          ("1h30m", 5400), ("45s", 45), ("1w", 604800),
                                          ("1.5h", 5400), (" 2D ", 172800)])
def test_durations_read_as_numbers_with_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "3", "d", "3x", "3d-1h", "-3d", "3 days"])
def test_a_malformed_duration_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration(text)


def test_retention_is_a_duration_from_env_or_flag() -> None:
    assert Settings().retention == timedelta(days=3)
    assert Settings.load({"ORCHESTRATOR_RETENTION": "12h"}).retention == timedelta(hours=12)
    assert Settings.load({}, retention="90m").retention == timedelta(minutes=90)
    with pytest.raises(ConfigError, match="ORCHESTRATOR_RETENTION='soon'"):
        Settings.load({"ORCHESTRATOR_RETENTION": "soon"})
    with pytest.raises(ConfigError, match="retention must be positive"):
        Settings.load({}, retention="0s")
    assert "Default: 3d." in help_for("retention")
    assert format_duration(timedelta(hours=36)) == "36h"


def test_pool_lifetimes_come_from_env_and_reach_the_pool() -> None:
    from orchestrator.db import make_pool

    assert (Settings().pool_max_lifetime_s, Settings().pool_max_idle_s) == (3600.0, 600.0)
    settings = Settings.load({"ORCHESTRATOR_POOL_MAX_LIFETIME_S": "840",
                              "ORCHESTRATOR_POOL_MAX_IDLE_S": "60"})
    assert (settings.pool_max_lifetime_s, settings.pool_max_idle_s) == (840.0, 60.0)
    assert "ORCHESTRATOR_POOL_MAX_LIFETIME_S" in help_for("pool_max_lifetime_s")
    pool = make_pool("host=db.example", max_size=2, max_lifetime_s=840, max_idle_s=60)
    assert (pool.max_lifetime, pool.max_idle) == (840, 60)
