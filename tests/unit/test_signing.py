import pytest

from orchestrator import signing
from orchestrator.errors import ConfigError, SignatureError

BODY = b'{"id": 1}'
NOW = 1_800_000_000.0


def test_a_signed_body_verifies_and_gives_its_timestamp() -> None:
    header = signing.sign(BODY, ["new"], now=NOW)
    assert header.startswith(f"t={int(NOW)},v1=")
    assert signing.verify(BODY, header, ["new"], now=NOW + 10) == int(NOW)


def test_a_changed_body_or_timestamp_or_secret_fails() -> None:
    header = signing.sign(BODY, ["new"], now=NOW)
    with pytest.raises(SignatureError, match="no signature matches"):
        signing.verify(b'{"id": 2}', header, ["new"], now=NOW)
    with pytest.raises(SignatureError, match="no signature matches"):
        signing.verify(BODY, header.replace(f"t={int(NOW)}", f"t={int(NOW) + 1}"), ["new"],
                       now=NOW)
    with pytest.raises(SignatureError, match="no signature matches"):
        signing.verify(BODY, header, ["other"], now=NOW)


def test_an_old_request_is_refused_as_a_replay() -> None:
    header = signing.sign(BODY, ["new"], now=NOW)
    with pytest.raises(SignatureError, match="more than 300s"):
        signing.verify(BODY, header, ["new"], now=NOW + 301)


@pytest.mark.parametrize("header", [
    None, "", "v1=abc", "t=12", "t=x,v1=abc", "garbage",
    "t=\u00b2,v1=abc", "t=\u0661\u0662,v1=abc",  # superscript two, Arabic-Indic digits
    "t=" + "9" * 5000 + ",v1=abc",  # more digits than int() parses, or a float holds
    "t=-5,v1=abc", "t= 5,v1=abc",
])
def test_a_missing_or_malformed_header_is_refused(header: str | None) -> None:
    with pytest.raises(SignatureError):
        signing.verify(BODY, header, ["new"], now=NOW)


def test_rotation_with_two_active_secrets_on_either_side() -> None:
    # 1. The sender signs with the new and the old secret: a receiver still on the old passes.
    both = signing.sign(BODY, ["new", "old"], now=NOW)
    assert signing.verify(BODY, both, ["old"], now=NOW)
    assert signing.verify(BODY, both, ["new"], now=NOW)
    # 2. A receiver accepting both passes a sender on either.
    for sender in (["old"], ["new"]):
        assert signing.verify(BODY, signing.sign(BODY, sender, now=NOW), ["new", "old"], now=NOW)
    # 3. Once the old secret is retired on both sides, it no longer signs anything accepted.
    with pytest.raises(SignatureError):
        signing.verify(BODY, signing.sign(BODY, ["old"], now=NOW), ["new"], now=NOW)


def test_headers_are_looked_up_case_insensitively() -> None:
    header = signing.sign(BODY, ["new"], now=NOW)
    assert signing.verify_headers(BODY, {"orchestrator-signature": header}, ["new"], now=NOW)


def test_secrets_come_from_the_environment_newest_first() -> None:
    env = {signing.SECRETS_ENV: " new , old ,"}
    assert signing.secrets_from_env(env=env) == ["new", "old"]
    assert signing.secrets_from_env(env={}) == []
    with pytest.raises(ConfigError, match=signing.SECRETS_ENV):
        signing.sign(BODY, [])
