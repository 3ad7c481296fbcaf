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


class RecordingStore(DownStore):
    """Event 7 is dead; a redrive records what it was asked; rows of a state wait until
    released (at most 10 s) and count the reads."""

    def __init__(self) -> None:
        from orchestrator import Workflow

        self.workflow = Workflow("jobs", table="public.jobs", states=["new", "done"],
                                 initial="new", terminal=["done"],
                                 transitions=[("finish", "new", "done")])
        self.redriven: list[dict[str, Any]] = []
        self.reads = 0
        self.reading = threading.Event()
        self.release = threading.Event()

    def installed_workflows(self) -> list[Any]:
        return [self.workflow]

    def event_statuses(self, ids: list[int]) -> dict[int, str]:
        return {7: "dead"}

    def redrive(self, *args: Any, **kwargs: Any) -> list[Any]:
        self.redriven.append(kwargs)
        return []

    def rows_in_states(self, *args: Any, **kwargs: Any) -> list[Any]:
        self.reads += 1
        self.reading.set()
        self.release.wait(10)
        return []


@pytest.mark.parametrize("path", ["/", "/api/overview", "/api/events", "/static/dashboard.js",
                                  "/no-such-page"])
def test_every_response_forbids_framing_and_foreign_scripts(path: str) -> None:
    response = asyncio.run(get(SlowRedriveStore(), path))
    assert response.headers["x-frame-options"] == "DENY"
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("ids", ["123", [1, "2"], [True], [1.5], {"1": 1}, list(range(1001))])
def test_redrive_ids_are_a_list_of_numbers(ids: Any) -> None:
    store = RecordingStore()

    async def ask() -> httpx.Response:
        async with client(store) as http:
            return await http.post("/api/redrive", json={"ids": ids})

    response = asyncio.run(ask())
    assert response.status_code == 400
    assert "ids must be a list of at most 1000 event ids" in response.json()["error"]
    assert store.redriven == []


def test_redrive_ids_go_through_as_given() -> None:
    store = RecordingStore()

    async def ask() -> httpx.Response:
        async with client(store) as http:
            return await http.post("/api/redrive", json={"ids": [7]})

    assert asyncio.run(ask()).status_code == 200
    assert [r["ids"] for r in store.redriven] == [[7]]


def throttled(store: RecordingStore, host: str) -> tuple[list[int], int]:
    """Two different expensive reads at once, then the first again: their statuses, and how
    many times the store was read."""
    app = create_app(cast(Reports, store), where="here", host=host, token="t")
    base = "http://dashboard.example" if host == "0.0.0.0" else BASE

    async def ask() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url=base) as http:
            first = asyncio.create_task(http.get("/api/rows?stuck=1"))
            try:
                assert await asyncio.to_thread(store.reading.wait, 10)
                store.reading.clear()
                second = asyncio.create_task(http.get("/api/rows?workflow=jobs&state=new"))
                if host != "0.0.0.0":  # not throttled: both reads run at once
                    assert await asyncio.to_thread(store.reading.wait, 10)
                    store.release.set()
                answered = await second
            finally:
                store.release.set()
            done = await first  # the repeat comes after the first read has finished
            again = await http.get("/api/rows?stuck=1")
            return [done.status_code, answered.status_code, again.status_code,
                    int(answered.headers.get("retry-after", 0))]

    statuses = asyncio.run(ask())
    return statuses, store.reads


def test_beyond_localhost_expensive_reads_go_one_at_a_time_and_repeat_from_cache() -> None:
    assert throttled(RecordingStore(), "0.0.0.0") == ([200, 429, 200, 1], 1)


def test_on_localhost_reads_are_not_throttled() -> None:
    assert throttled(RecordingStore(), "127.0.0.1") == ([200, 200, 200, 0], 3)


def test_a_long_search_is_refused() -> None:
    response = asyncio.run(get(RecordingStore(), "/api/events?search=" + "x" * 201))
    assert response.status_code == 400
    assert "search at most 200 characters" in response.json()["error"]
