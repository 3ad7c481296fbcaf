"""Remote(..., shape="hasura"): the request of Hasura's event triggers, and its answers."""

from datetime import UTC, datetime
from types import MappingProxyType, SimpleNamespace

import pytest

from orchestrator import hasura, remote
from orchestrator.errors import DefinitionError, RemoteHandlerError
from orchestrator.events import Event, Retry

WHERE = "https://fn.example/on-order"
EVENT = Event(id=7, workflow="food_order", key="42", column="status", op="UPDATE",
              old_value="approved", new_value="agent_assigned",
              old_row=MappingProxyType({"id": 42, "status": "approved"}),
              new_row=MappingProxyType({"id": 42, "status": "agent_assigned"}),
              attempt=2, created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
              session_variables=MappingProxyType({"x-hasura-role": "user",
                                                  "x-hasura-user-id": "9"}),
              related=MappingProxyType({"items": [{"sku": "A1", "qty": 2}]}))
CTX = SimpleNamespace(table=("public", "orders"), max_attempts=5)


def test_the_request_is_the_shape_hasura_sends() -> None:
    trace = remote.traceparent(EVENT)
    body = hasura.request_body(EVENT, CTX, "order_assigned", trace)
    _, trace_id, span_id, _ = trace.split("-")
    assert body == {
        "event": {"op": "UPDATE",
                  "data": {"old": {"id": 42, "status": "approved"},
                           "new": {"id": 42, "status": "agent_assigned"}},
                  "session_variables": {"x-hasura-role": "user", "x-hasura-user-id": "9"},
                  "related": {"items": [{"sku": "A1", "qty": 2}]},
                  "trace_context": {"trace_id": trace_id, "span_id": span_id}},
        "created_at": "2026-01-02T03:04:05+00:00",
        "id": hasura.event_uuid(EVENT),
        "delivery_info": {"max_retries": 4, "current_retry": 1},
        "trigger": {"name": "order_assigned"},
        "table": {"schema": "public", "name": "orders"},
    }


def test_the_id_is_a_uuid_the_same_for_every_attempt() -> None:
    again = hasura.request_body(EVENT, CTX, "t", remote.traceparent(EVENT))["id"]
    assert again == hasura.event_uuid(EVENT) and len(again) == 36
    other = Event(**{**{f: getattr(EVENT, f) for f in EVENT.__dataclass_fields__}, "id": 8})
    assert hasura.event_uuid(other) != again


def test_an_insert_has_no_old_data() -> None:
    insert = Event(**{**{f: getattr(EVENT, f) for f in EVENT.__dataclass_fields__},
                      "op": "INSERT", "old_row": MappingProxyType({}), "attempt": 1})
    body = hasura.request_body(insert, CTX, "t", remote.traceparent(insert))
    assert body["event"]["data"]["old"] is None
    assert body["delivery_info"]["current_retry"] == 0


@pytest.mark.parametrize("status,content", [(200, b""), (201, b"not json"),
                                            (204, b'{"outcome": "retry"}')])
def test_any_2xx_is_success_with_nothing_to_write(status: int, content: bytes) -> None:
    assert hasura.outcome(status, {}, content, WHERE, max_delay_s=3600) is None


def test_a_non_2xx_with_retry_after_asks_for_a_retry_cut_to_the_maximum() -> None:
    with pytest.raises(Retry) as caught:
        hasura.outcome(500, {"retry-after": "30"}, b"", WHERE, max_delay_s=3600)
    assert caught.value.delay_s == 30.0
    with pytest.raises(Retry) as caught:
        hasura.outcome(400, {"retry-after": "99999"}, b"", WHERE, max_delay_s=60)
    assert caught.value.delay_s == 60.0


def test_a_non_2xx_without_retry_after_fails_the_attempt() -> None:
    with pytest.raises(RemoteHandlerError, match=r"answered HTTP 500: boom"):
        hasura.outcome(500, {}, b"boom", WHERE, max_delay_s=3600)


def test_a_remote_takes_only_the_shapes_it_knows() -> None:
    assert remote.Remote("fn", WHERE, secrets=["s"], shape="hasura").trigger == "fn"
    assert remote.Remote("fn", WHERE, secrets=["s"], shape="hasura", trigger="t").trigger == "t"
    with pytest.raises(DefinitionError, match="shape must be one of"):
        remote.Remote("fn", WHERE, secrets=["s"], shape="lambda")
