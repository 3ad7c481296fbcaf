from types import MappingProxyType

import pytest

from orchestrator import credentials
from orchestrator.config import Settings
from orchestrator.errors import ConfigError, CredentialsError

PARAMS = MappingProxyType({"host": "db.example", "port": "5432", "user": "app",
                           "dbname": "shop"})


def test_a_password_command_prints_the_password_and_sees_the_connection() -> None:
    command = credentials.PasswordCommand('printf "  tok-%s-%s-%s-%s \\n" "$PGHOST" "$PGPORT" '
                                          '"$PGUSER" "$PGDATABASE"')
    assert command(PARAMS) == "tok-db.example-5432-app-shop"


def test_a_failing_command_says_why_without_its_output() -> None:
    command = credentials.PasswordCommand("echo tok-SECRET; echo expired >&2; exit 3")
    with pytest.raises(CredentialsError) as caught:
        command(PARAMS)
    assert str(caught.value) == "password command failed (exit 3): expired"


def test_a_command_that_prints_nothing_or_hangs_fails() -> None:
    with pytest.raises(CredentialsError, match="printed no password"):
        credentials.PasswordCommand("true")(PARAMS)
    with pytest.raises(CredentialsError, match="timed out"):
        credentials.PasswordCommand("sleep 5", timeout_s=0.1)(PARAMS)


def provider(params: object) -> str:
    return "from-provider"


def test_settings_name_the_provider() -> None:
    assert credentials.from_settings(Settings.load({})) is None
    command = credentials.from_settings(Settings.load({}, password_command="echo x"))
    assert isinstance(command, credentials.PasswordCommand)
    chosen = credentials.from_settings(
        Settings.load({}, password_provider=f"{__name__}:provider"))
    assert chosen is not None and chosen(PARAMS) == "from-provider"


@pytest.mark.parametrize("spec,message", [
    ("no_colon", "must look like"), ("no_such_module:x", "cannot load"),
    (f"{__name__}:nothing_here", "cannot load"), (f"{__name__}:PARAMS", "not callable"),
])
def test_a_bad_provider_name_is_a_config_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        credentials.load_provider(spec)


def test_any_failure_of_a_provider_is_a_credentials_error() -> None:
    from orchestrator.db import connect_kwargs

    def broken(params: object) -> str:
        raise KeyError("AWS_REGION")

    with pytest.raises(CredentialsError, match="password provider failed: KeyError"):
        connect_kwargs("host=db.example", password=broken)
    with pytest.raises(CredentialsError, match="returned no password"):
        connect_kwargs("host=db.example", password=lambda params: "")
    assert connect_kwargs("host=db.example", password=lambda params: "tok")["password"] == "tok"


def test_a_watched_provider_counts_calls_failures_and_time() -> None:
    from orchestrator.db import connect_kwargs

    answers = iter(["tok-1", KeyError("AWS_REGION"), "", "tok-2"])

    def provider(params: object) -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    watched = credentials.watched(provider)
    assert watched is not None and credentials.watched(watched) is watched
    assert credentials.watched(None) is None
    assert connect_kwargs("host=db.example", password=watched)["password"] == "tok-1"
    with pytest.raises(CredentialsError, match="KeyError"):
        connect_kwargs("host=db.example", password=watched)
    with pytest.raises(CredentialsError, match="returned no password"):
        connect_kwargs("host=db.example", password=watched)
    assert connect_kwargs("host=db.example", password=watched)["password"] == "tok-2"
    assert (watched.calls, watched.failures) == (4, 2) and watched.seconds >= 0
