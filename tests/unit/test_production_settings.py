import pytest

from orchestrator.config import Settings
from orchestrator.errors import ConfigError


def test_switches_parse_from_the_environment() -> None:
    settings = Settings.load({"ORCHESTRATOR_LISTEN": "off",
                              "ORCHESTRATOR_TRANSACTION_POOLING": "true"})
    assert settings.listen is False
    assert settings.transaction_pooling is True
    with pytest.raises(ConfigError, match="ORCHESTRATOR_LISTEN='maybe' is not a valid bool"):
        Settings.load({"ORCHESTRATOR_LISTEN": "maybe"})


def test_listen_through_a_transaction_pooler_is_refused() -> None:
    with pytest.raises(ConfigError, match="LISTEN cannot work through a transaction pooler"):
        Settings.load({}, transaction_pooling=True)
    direct = Settings.load({}, transaction_pooling=True, listen_dsn="postgresql://direct/db")
    assert (direct.transaction_pooling, direct.listen, direct.listen_dsn) == (
        True, True, "postgresql://direct/db")
    polling = Settings.load({}, transaction_pooling=True, listen=False)
    assert (polling.transaction_pooling, polling.listen, polling.listen_dsn) == (
        True, False, None)


def test_one_password_source_at_most() -> None:
    with pytest.raises(ConfigError, match="not both"):
        Settings.load({}, password_command="x", password_provider="m:f")
