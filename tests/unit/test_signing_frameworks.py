"""verify_headers from any WSGI or ASGI framework: a WSGI app served by the standard library's
wsgiref over loopback, and a raw ASGI callable driven the way an ASGI server drives it."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from orchestrator import signing
from orchestrator.errors import SignatureError

SECRETS = ["new-secret", "old-secret"]
BODY = b'{"id": 7, "transition": {"from": "approved", "to": "agent_assigned"}}'


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A remote handler as a bare WSGI app (what Flask, Django or Functions Framework wrap)."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    try:
        signing.verify_headers(body, environ, SECRETS)
    except SignatureError as exc:
        start_response("401 Unauthorized", [("Content-Type", "application/json")])
        return [json.dumps({"error": str(exc)}).encode()]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b'{"version": 1, "outcome": "next", "state": "picked_up"}']


async def asgi_app(scope: dict[str, Any], receive: Callable[..., Any],
                   send: Callable[..., Any]) -> None:
    """The same as a raw ASGI callable (what Starlette, FastAPI or Mangum wrap)."""
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    try:
        signing.verify_headers(body, scope["headers"], SECRETS)
        status, answer = 200, b'{"version": 1, "outcome": "next", "state": "picked_up"}'
    except SignatureError as exc:
        status, answer = 401, json.dumps({"error": str(exc)}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": answer})


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def served(app: Any) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/pick-up"
    finally:
        server.shutdown()
        server.server_close()


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_wsgi_app_verifies_a_signed_request_and_refuses_others() -> None:
    with served(wsgi_app) as url:
        signed = {signing.HEADER: signing.sign(BODY, ["new-secret"])}
        assert post(url, BODY, signed) == (200, {"version": 1, "outcome": "next",
                                                 "state": "picked_up"})
        assert post(url, BODY + b" ", signed) == (401, {"error": "no signature matches"})
        assert post(url, BODY, {}) == (401, {"error": "missing Orchestrator-Signature header"})
        stranger = {signing.HEADER: signing.sign(BODY, ["someone-else"])}
        assert post(url, BODY, stranger)[0] == 401


def call_asgi(body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, Any]]:
    """One request through ``asgi_app``, its body in two chunks, as a server sends it."""
    chunks = [{"type": "http.request", "body": body[:10], "more_body": True},
              {"type": "http.request", "body": body[10:], "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/pick-up", "headers": headers}
    asyncio.run(asgi_app(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_an_asgi_app_verifies_a_signed_request_and_refuses_others() -> None:
    header = signing.sign(BODY, ["old-secret"]).encode()
    ok = call_asgi(BODY, [(b"content-type", b"application/json"),
                          (b"orchestrator-signature", header)])
    assert ok == (200, {"version": 1, "outcome": "next", "state": "picked_up"})
    assert call_asgi(BODY.replace(b"7", b"8"), [(b"orchestrator-signature", header)]) == (
        401, {"error": "no signature matches"})
    assert call_asgi(BODY, [])[0] == 401


@pytest.mark.parametrize("headers", [
    {"Orchestrator-Signature": "HEADER"},  # Starlette, Django, Azure Functions: a mapping
    {"orchestrator-signature": "HEADER"},  # a Lambda function URL event's headers
    {"HTTP_ORCHESTRATOR_SIGNATURE": "HEADER", "wsgi.input": object()},  # a WSGI environ
    [(b"Orchestrator-Signature", b"HEADER")],  # ASGI scope["headers"]
    [("orchestrator-signature", "HEADER"), ("x", "y")],  # werkzeug's Headers iterate so
])
def test_the_header_is_found_however_a_framework_holds_it(headers: Any) -> None:
    header = signing.sign(BODY, ["new-secret"])

    def filled(value: Any) -> Any:
        return header.encode() if value == b"HEADER" else header if value == "HEADER" else value
    if isinstance(headers, dict):
        headers = {k: filled(v) for k, v in headers.items()}
    else:
        headers = [(k, filled(v)) for k, v in headers]
    assert signing.verify_headers(BODY, headers, SECRETS) > 0
