"""The dashboard app in process, over stores that fake what a test with a real database cannot
arrange on cue: a database that is gone, a redrive that hangs.

httpx's ASGI transport runs the app on the test's own event loop (Starlette's TestClient warns
about httpx since Starlette 1.10), so a blocked loop would hold up every other request."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, cast

import httpx
import pytest

from orchestrator.errors import DatabaseUnavailable
from orchestrator.reports import Reports
from orchestrator.web import create_app

BASE = "http://127.0.0.1"  # a local dashboard refuses other host names


class DownStore:
    """Every database verb raises DatabaseUnavailable."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def down(*args: Any, **kwargs: Any) -> Any:
            raise DatabaseUnavailable("the database cannot be reached: connection refused")
        return down


class SlowRedriveStore(DownStore):
    """No workflows; ``redrive`` waits until released (at most 10 s)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()

    def installed_workflows(self) -> list[Any]:
        return []

    def redrive(self, *args: Any, **kwargs: Any) -> list[Any]:
        self.entered.set()
        self.release.wait(10)
        self.finished.set()
        return []


def client(store: object) -> httpx.AsyncClient:
    app = create_app(cast(Reports, store), where="here")
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


async def get(store: object, path: str) -> httpx.Response:
    async with client(store) as http:
        return await http.get(path)


@pytest.mark.parametrize("path", ["/", "/api/events", "/api/rows?stuck=1",
                                  "/api/history?workflow=food_order&key=1"])
def test_an_unreachable_database_is_503(path: str) -> None:
    response = asyncio.run(get(DownStore(), path))
    assert response.status_code == 503
    assert "cannot be reached" in response.json()["error"]


def test_a_request_the_operator_can_fix_stays_400() -> None:
    async def answers() -> list[httpx.Response]:
        async with client(SlowRedriveStore()) as http:
            return [await http.get("/api/events?limit=many"),
                    await http.post("/api/redrive", json={"ids": []}),
                    await http.post("/api/redrive", json=[1]),
                    await http.post("/api/redrive", json={"dead": True, "handler": 5})]

    limit, no_ids, not_object, bad_handler = asyncio.run(answers())
    assert limit.status_code == no_ids.status_code == 400
    assert not_object.status_code == 400 and not_object.json() == {"error": "send a JSON object"}
    assert bad_handler.status_code == 400
    assert "handler must be a string" in bad_handler.json()["error"]


def test_a_redrive_does_not_hold_up_other_requests() -> None:
    store = SlowRedriveStore()

    async def meanwhile() -> tuple[int, int, bool]:
        async with client(store) as http:
            redrive = asyncio.create_task(http.post("/api/redrive", json={"dead": True}))
            try:
                assert await asyncio.to_thread(store.entered.wait, 10)
                overview = await http.get("/api/overview")
                still_running = not store.finished.is_set()
            finally:
                store.release.set()
            return (await redrive).status_code, overview.status_code, still_running

    assert asyncio.run(meanwhile()) == (200, 200, True)
