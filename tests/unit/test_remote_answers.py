import json
import math
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType

import pytest

from orchestrator import remote
from orchestrator.errors import DefinitionError, RemoteHandlerError
from orchestrator.events import Event, Next, Retry

WHERE = "https://fn.example/pick-up"


def answer(body: bytes, status: int = 200, **headers: str) -> Next | None:
    return remote.outcome(status, headers, body, WHERE)


def test_answers_map_to_handler_outcomes() -> None:
    assert answer(b'{"version": 1, "outcome": "next", "state": "paid"}') == Next("paid")
    assert answer(b'{"outcome": "next", "state": "paid", "values": {"ref": "x"}}') == Next(
        "paid", {"ref": "x"})
    assert answer(b'{"outcome": "next", "values": {"ref": "x"}}') == Next(None, {"ref": "x"})
    assert answer(b'{"outcome": "none"}') is None
    assert answer(b'{"outcome": "next"}') is None


def test_a_retry_answer_raises_retry_with_its_delay() -> None:
    with pytest.raises(Retry) as caught:
        answer(b'{"outcome": "retry", "delay_s": 2.5, "reason": "busy"}')
    assert caught.value.delay_s == 2.5
    assert str(caught.value) == "remote: busy"
    with pytest.raises(Retry) as caught:
        answer(b'{"outcome": "retry"}')
    assert caught.value.delay_s is None  # the engine's backoff decides


@pytest.mark.parametrize("status", [429, 503])
def test_too_busy_with_retry_after_is_a_retry(status: int) -> None:
    with pytest.raises(Retry) as caught:
        answer(b"", status, **{"retry-after": "7"})
    assert caught.value.delay_s == 7.0


@pytest.mark.parametrize("status,body,message", [
    (500, b"boom", "answered HTTP 500: boom"),
    (503, b"", "answered HTTP 503"),
    (200, b"not json", "without valid JSON"),
    (200, b"[1, 2]", '"outcome"'),
    (200, b'{"outcome": "done"}', '"outcome"'),
    (200, b'{"version": 2, "outcome": "none"}', "unsupported answer version 2"),
    (200, b'{"outcome": "next", "state": 3}', '"state" must be a string'),
    (200, b'{"outcome": "retry", "delay_s": "soon"}', "delay_s must be a number"),
])
def test_anything_else_fails_the_attempt(status: int, body: bytes, message: str) -> None:
    with pytest.raises(RemoteHandlerError, match=message):
        answer(body, status)


def test_errors_and_logs_name_the_endpoint_without_credentials() -> None:
    assert remote.public_url("https://user:pw@fn.example:8443/api/x?code=SECRET#f") == \
        "https://fn.example:8443/api/x"


def test_the_request_body_is_the_documented_shape() -> None:
    event = Event(id=7, workflow="food_order", key="42", column="status", op="UPDATE",
                  old_value="approved", new_value="agent_assigned",
                  old_row=MappingProxyType({"id": 42, "status": "approved", "agent_id": None}),
                  new_row=MappingProxyType({"id": 42, "status": "agent_assigned",
                                            "agent_id": 3}),
                  attempt=2, created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                  session_variables=MappingProxyType({"x-user-id": "9"}),
                  related=MappingProxyType({"customer": {"id": 5}, "items": []}))
    trace = remote.traceparent(event)
    assert remote.request_body(event, 9.5, trace) == {
        "version": 1, "id": 7, "workflow": "food_order", "key": "42",
        "transition": {"column": "status", "op": "UPDATE", "from": "approved",
                       "to": "agent_assigned"},
        "old_row": {"id": 42, "status": "approved", "agent_id": None},
        "new_row": {"id": 42, "status": "agent_assigned", "agent_id": 3},
        "changed": ["agent_id", "status"], "attempt": 2, "idempotency_key": "food_order:7",
        "session_variables": {"x-user-id": "9"}, "related": {"customer": {"id": 5}, "items": []},
        "created_at": "2026-01-02T03:04:05+00:00", "timeout_s": 9.5,
        "trace": {"traceparent": trace},
    }
    version, trace_id, span_id, flags = trace.split("-")
    assert (version, len(trace_id), len(span_id), flags) == ("00", 32, 16, "01")
    assert remote.traceparent(event).split("-")[1] == trace_id  # one trace across attempts


def test_a_request_body_encodes_whatever_a_row_holds() -> None:
    """orjson's encoding where it can; the standard library's for what orjson refuses (an
    integer past 64 bits, a key that is not a string); str() for other types, a date too."""
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert json.loads(remote.encode({"n": 2**70, "at": when, "x": "é"})) == {
        "n": 2**70, "at": str(when), "x": "é"}
    assert json.loads(remote.encode({"ids": {1: "a"}, "amount": Decimal("1.50")})) == {
        "ids": {"1": "a"}, "amount": "1.50"}
    assert json.loads(remote.encode({"id": 42, "status": "paid"})) == {"id": 42,
                                                                       "status": "paid"}
    assert json.loads(remote.encode({"ratio": math.nan, "top": math.inf})) == {
        "ratio": None, "top": None}  # JSON has no such numbers


@pytest.mark.parametrize("body", [
    b'{"outcome": "retry", "delay_s": NaN}',
    b'{"outcome": "retry", "delay_s": Infinity}',
    b'{"outcome": "retry", "delay_s": 1e400}',
    b'{"outcome": "next", "state": "paid", "values": {"amount": -Infinity}}',
])
def test_only_finite_numbers_are_accepted(body: bytes) -> None:
    with pytest.raises(RemoteHandlerError, match="only finite numbers are accepted"):
        answer(body)


@pytest.mark.parametrize("body,headers,delay_s", [
    (b'{"outcome": "retry", "delay_s": 1e11}', {}, 3600.0),
    (b'{"outcome": "retry", "delay_s": 100000000000000000000000000000}', {}, 3600.0),
    (b'{"outcome": "retry", "delay_s": 120}', {}, 120.0),
    (b"", {"retry-after": "99999999999"}, 3600.0),
])
def test_a_delay_the_endpoint_asks_for_is_capped(body: bytes, headers: dict[str, str],
                                                 delay_s: float) -> None:
    with pytest.raises(Retry) as caught:
        answer(body, 503 if headers else 200, **headers)
    assert caught.value.delay_s == delay_s
    with pytest.raises(Retry) as caught:
        remote.outcome(503 if headers else 200, headers, body, WHERE, max_delay_s=60)
    assert caught.value.delay_s == min(delay_s, 60)


@pytest.mark.parametrize("value,seconds", [
    ("7", 7.0), (" 30 ", 30.0), ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
    ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: now
    ("nan", None), ("inf", None), ("-5", None), ("1e3", None), ("²", None), ("", None),
    ("Wed, 21 Oct 2015 07:28:30", None),  # a date without its zone
])
def test_retry_after_is_whole_seconds_or_an_http_date(value: str, seconds: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp()
    assert remote.retry_after_s(value, now=now) == seconds


@pytest.mark.parametrize("url", [
    "https://fn.example/x", "http://127.0.0.1:8080/x", "http://localhost/x",
    "http://[::1]:9000/x", "http://127.8.9.10/x",
])
def test_https_or_a_loopback_host(url: str) -> None:
    remote.Remote("fn", url, secrets=["s"])


@pytest.mark.parametrize("url,message", [
    ("http://fn.example/x", "plain http is only for loopback hosts"),
    ("http://10.0.0.1/x", "plain http is only for loopback hosts"),
    ("http://localhost.evil.example/x", "plain http is only for loopback hosts"),
    ("ftp://fn.example/x", "give an https:// URL"),
    ("https:///x", "give an https:// URL"),
    ("fn.example/x", "give an https:// URL"),
])
def test_other_urls_are_refused_at_definition(url: str, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        remote.Remote("fn", url, secrets=["s"])


def test_plain_http_to_another_host_when_allowed() -> None:
    assert remote.Remote("fn", "http://fn.internal/x", secrets=["s"], allow_http=True)
    with pytest.raises(DefinitionError, match="give an https:// URL"):
        remote.Remote("fn", "ftp://fn.internal/x", secrets=["s"], allow_http=True)
