"""A remote call is bounded whatever the far end does: an endpoint that trickles its headers or
its body, or answers too much, fails the attempt by the handler's timeout and gives its
connection slot back; a call goes through the proxy it is given or the environment names. The
far end is a raw socket on loopback, so it can misbehave at will."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType, SimpleNamespace
from typing import Any

import pytest

from orchestrator import Remote, asyncloop
from orchestrator.errors import RemoteHandlerError
from orchestrator.events import Event

EVENT = Event(id=7, workflow="calls", key="1", column="status", op="INSERT", old_value=None,
              new_value="new", old_row=MappingProxyType({}),
              new_row=MappingProxyType({"id": 1, "status": "new"}), attempt=1,
              created_at=datetime(2026, 1, 2, tzinfo=UTC))
OK_BODY = b'{"outcome": "none"}'


# How the far end answers: what it sends at once, then what it sends every 50 ms, forever.
BEHAVIOURS = {
    "trickle-headers": (b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a"),
    "trickle-body": (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b" "),
    "declared-too-large": (b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n", b""),
    # No length: the body ends when the connection closes.
    "too-large": (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b" " * 2_000_000, b""),
    "ok": (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(OK_BODY), OK_BODY),
           b""),
}


def misbehave(conn: socket.socket, how: str, stop: threading.Event) -> None:
    """Answer one request as ``how`` says, until the client goes or the test ends."""
    at_once, then = BEHAVIOURS[how]
    try:
        conn.recv(65536)
        conn.sendall(at_once)
        while then and not stop.is_set():
            conn.sendall(then)
            time.sleep(0.05)
    except OSError:
        pass  # the client gave up: what we wanted
    finally:
        conn.close()


@contextmanager
def loopback(accept: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """A server on a loopback port, handing each connection it accepts to ``accept`` (on the
    server's thread) with the flag that says the test is over; yields the port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)  # accept() looks at the stop flag this often
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accept(conn, stop)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


@pytest.fixture
def far_end() -> Iterator[tuple[str, list[str]]]:
    """A loopback server answering each connection as the next behaviour in the list; yields
    its base URL and that list (the test appends to it)."""
    plan: list[str] = []

    def accept(conn: socket.socket, stop: threading.Event) -> None:
        how = plan.pop(0) if plan else "ok"
        threading.Thread(target=misbehave, args=(conn, how, stop), daemon=True).start()

    with loopback(accept) as port:
        yield f"http://127.0.0.1:{port}", plan


def call(handler: Remote, timeout_s: float) -> Any:
    ctx = SimpleNamespace(remaining_s=timeout_s)
    return asyncloop.run(handler(EVENT, ctx))  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["trickle-headers", "trickle-body"])
def test_a_trickling_endpoint_fails_by_the_timeout_and_frees_its_slot(
        far_end: tuple[str, list[str]], how: str) -> None:
    url, plan = far_end
    handler = Remote("slow", f"{url}/x", secrets=["s"], max_concurrency=1)
    plan.append(how)
    began = time.monotonic()
    with pytest.raises(RemoteHandlerError, match=r"did not answer within 0\.5s"):
        call(handler, 0.5)
    assert time.monotonic() - began < 1.5
    assert call(handler, 2.0) is None  # the one slot is free again, the next call goes through
    handler.close()


@pytest.mark.parametrize("how,message", [
    ("declared-too-large", "answered 5000000 bytes; at most 1000 are read"),
    ("too-large", "answered more than 1000 bytes; at most 1000 are read"),
])
def test_an_answer_longer_than_the_limit_fails_the_attempt(
        far_end: tuple[str, list[str]], how: str, message: str) -> None:
    url, plan = far_end
    handler = Remote("big", f"{url}/x", secrets=["s"], max_response_bytes=1000)
    plan.append(how)
    with pytest.raises(RemoteHandlerError, match=message):
        call(handler, 5.0)
    handler.close()


@pytest.fixture
def tls_end(tmp_path: Any) -> Iterator[tuple[str, str]]:
    """An https endpoint on localhost with a certificate of a test CA; yields its URL and the
    CA's PEM file."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    def accept(conn: socket.socket, stop: threading.Event) -> None:
        try:
            wrapped = context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()  # the client refused our certificate
            return
        threading.Thread(target=misbehave, args=(wrapped, "ok", stop), daemon=True).start()

    with loopback(accept) as port:
        yield f"https://localhost:{port}/x", str(ca_file)


def test_https_certificates_are_verified_against_the_trust_store(
        tls_end: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    url, ca_file = tls_end
    untrusted = Remote("tls", url, secrets=["s"])
    with pytest.raises(RemoteHandlerError, match="certificate verify failed"):
        call(untrusted, 5.0)
    untrusted.close()
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)  # as for httpx: a CA bundle of one's own
    trusted = Remote("tls", url, secrets=["s"])
    assert call(trusted, 5.0) is None
    trusted.close()


@pytest.fixture
def proxy_end() -> Iterator[tuple[str, list[bytes]]]:
    """A loopback 'proxy' that answers every request itself; yields its URL and the request
    lines it saw (a request through a proxy names the whole URL)."""
    seen: list[bytes] = []

    def accept(conn: socket.socket, stop: threading.Event) -> None:
        with conn:
            seen.append(conn.recv(65536).split(b"\r\n", 1)[0])
            conn.sendall(BEHAVIOURS["ok"][0])

    with loopback(accept) as port:
        yield f"http://127.0.0.1:{port}", seen


def test_a_call_goes_through_the_proxy_given_or_the_environments_unless_no_proxy_covers_it(
        proxy_end: tuple[str, list[bytes]], far_end: tuple[str, list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    proxy, seen = proxy_end
    given = Remote("p", "http://fn.invalid/given", secrets=["s"], allow_http=True, proxy=proxy)
    assert call(given, 5.0) is None
    given.close()
    monkeypatch.setenv("http_proxy", proxy)
    from_env = Remote("p", "http://fn.invalid/env", secrets=["s"], allow_http=True)
    assert call(from_env, 5.0) is None
    from_env.close()
    assert seen == [b"POST http://fn.invalid/given HTTP/1.1",
                    b"POST http://fn.invalid/env HTTP/1.1"]

    url, _ = far_end  # loopback, answering as itself
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    direct = Remote("p", f"{url}/direct", secrets=["s"])
    assert call(direct, 5.0) is None
    direct.close()
    assert len(seen) == 2
