"""The demo with one transition served over real HTTP by the example function
(examples/remote_handler), on loopback."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from orchestrator import signing
from tests.acceptance.test_cli import cli
from tests.support import http

SECRET = "demo-SECRET"


def test_the_demo_completes_with_pick_up_served_by_the_example_function(
        dsn: str, sql: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(signing.SECRETS_ENV, SECRET)  # the function's side
    from examples.remote_handler.app import app

    with http.serve(app) as url:
        done = cli("demo", "--orders", "30", "--json", "--dsn", dsn,
                   env={"FOOD_ORDER_PICK_UP_URL": f"{url}/pick-up", signing.SECRETS_ENV: SECRET})
        unsigned = httpx.post(f"{url}/pick-up", content=b"{}")
        forged = httpx.post(f"{url}/pick-up", content=b"{}",
                            headers={signing.HEADER: signing.sign(b"{}", ["guess"])})
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    states = dict(sql("SELECT status, count(*) FROM orders GROUP BY 1"))
    assert summary["all_terminal"] is True and summary["final_states"] == states
    assert sum(states.values()) == 30 and set(states) <= {"delivered", "rejected", "failed"}
    assert (unsigned.status_code, forged.status_code) == (401, 401)
    served = sql("SELECT id, row_key::int, handler, status, attempts FROM orchestrator.events"
                 " WHERE old_value = 'approved' AND new_value = 'agent_assigned'")
    assert served, "no order reached the remote step"
    assert {(handler, status) for _, _, handler, status, _ in served} == {
        ("remote.pick_up", "done")}
    # The function asks for a retry on the first attempt of every seventh order.
    retried = {event for event, key, *_ in served if key % 7 == 0}
    assert retried, "no order the function delays reached it"
    assert {event for event, _, _, _, attempts in served if attempts == 2} == retried
    errors = sql("SELECT event_id, error FROM orchestrator.event_errors WHERE event_id = ANY(%s)"
                 " ORDER BY event_id",
                 ([event for event, *_ in served],))
    assert errors == [(event, "Retry: remote: courier app busy") for event in sorted(retried)]
