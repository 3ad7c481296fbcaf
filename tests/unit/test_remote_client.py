"""The remote handlers' HTTP client on its own, without an endpoint."""

from __future__ import annotations

import asyncio
import math
import os
import selectors
import socket
from collections.abc import Callable
from typing import Any

import certifi
import pycurl
import pytest

from orchestrator import remote_http


def test_the_trust_store_is_looked_up_only_where_tls_may_be_spoken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up: list[str] = []

    def trust_store() -> tuple[tuple[int, str], ...]:
        looked_up.append("looked up")
        return ((pycurl.CAINFO, certifi.where()),)

    monkeypatch.setattr(remote_http, "trust_store", trust_store)

    async def client(url: str, proxy: str | None = None) -> None:
        await remote_http.Client(url, max_connections=1, headers={}, proxy=proxy).close()

    asyncio.run(client("http://127.0.0.1:9/call"))
    assert looked_up == []
    asyncio.run(client("https://fn.example/call"))
    asyncio.run(client("http://127.0.0.1:9/call", proxy="https://proxy.example:3128"))
    assert looked_up == ["looked up", "looked up"]


def test_the_trust_store_is_the_environments_else_certifis(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    bundle = certifi.where()
    assert remote_http.trust_store() == ((pycurl.CAINFO, bundle), (pycurl.PROXY_CAINFO, bundle))
    monkeypatch.setenv("SSL_CERT_DIR", "/etc/my-cas")
    assert remote_http.trust_store() == ((pycurl.CAPATH, "/etc/my-cas"),
                                         (pycurl.PROXY_CAPATH, "/etc/my-cas"))
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/my-ca.pem")
    assert remote_http.trust_store() == ((pycurl.CAINFO, "/etc/my-ca.pem"),
                                         (pycurl.PROXY_CAINFO, "/etc/my-ca.pem"))


def post_once(url: str, *, proxy: str | None = None, timeout_s: float = 5.0,
              multi: Callable[[pycurl.CurlMulti], Any] | None = None) -> None:
    """One call to ``url`` with a client of its own (its libcurl multi handle wrapped by
    ``multi``), closed after; raises what the call raises."""
    async def call() -> None:
        client = remote_http.Client(url, max_connections=1, headers={}, proxy=proxy)
        if multi is not None:
            client._multi = multi(client._multi)
        try:
            await client.post(url, content=b"{}", headers={}, timeout_s=timeout_s,
                              max_bytes=100)
        finally:
            await client.close()

    # A bound of its own, shorter than a test's own deadline: a call stuck past it ends
    # the test with a TimeoutError.
    asyncio.run(asyncio.wait_for(call(), timeout=min(timeout_s, 5.0) + 5.0))


def test_a_call_to_a_closed_port_fails_with_one_line_naming_it() -> None:
    with pytest.raises(remote_http.CallFailed,
                       match=r"^cannot connect to 127\.0\.0\.1:9: Connection refused$"):
        post_once("http://127.0.0.1:9/x")


def test_a_refused_connection_to_a_proxy_names_the_proxy() -> None:
    with pytest.raises(remote_http.CallFailed,
                       match=r"^cannot connect to proxy 127\.0\.0\.1:9: Connection refused$"):
        post_once("http://fn.invalid/x", proxy="http://127.0.0.1:9")


class FailingMulti:
    """libcurl's multi handle, but its socket_action fails as on an internal error."""

    def __init__(self, real: pycurl.CurlMulti) -> None:
        self._real = real

    def socket_action(self, fd: int, event: int) -> tuple[int, int]:
        raise pycurl.error(pycurl.E_MULTI_INTERNAL_ERROR, "internal error")

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


def test_when_libcurl_itself_fails_the_calls_in_flight_fail_at_once() -> None:
    # Its own deadline is 30 s: failing by it would end in post_once's TimeoutError first.
    with pytest.raises(remote_http.CallFailed, match=r"^libcurl failed: internal error$"):
        post_once("http://127.0.0.1:9/x", timeout_s=30.0, multi=FailingMulti)


def test_a_call_without_a_time_limit_is_a_call_like_another() -> None:
    with pytest.raises(remote_http.CallFailed, match=r"^cannot connect to 127\.0\.0\.1:9: "):
        post_once("http://127.0.0.1:9/x", timeout_s=math.inf)


def test_a_socket_number_given_to_a_new_socket_is_watched_anew() -> None:
    """A socket closed without libcurl saying so first, its number taken by a new socket:
    the new one is watched, not refused by the selector."""
    async def watch() -> None:
        client = remote_http.Client("http://127.0.0.1:9/x", max_connections=1, headers={})
        client._loop = asyncio.get_running_loop()
        old, old_peer = socket.socketpair()
        new, new_peer = socket.socketpair()
        number = old.fileno()
        try:
            client._watch(pycurl.POLL_IN, number, None, None)
            os.dup2(new.fileno(), number)  # the old socket is gone; its number is the new one's
            client._watch(pycurl.POLL_OUT, number, None, None)
            ready = {key.fd: events for key, events in client._sockets.select(0)}
            assert ready == {number: selectors.EVENT_WRITE}
        finally:
            for s in (old, old_peer, new, new_peer):
                s.close()
            await client.close()

    asyncio.run(watch())


def test_a_url_without_a_port_is_named_with_its_schemes() -> None:
    assert remote_http.host_port("https://fn.example/call") == "fn.example:443"
    assert remote_http.host_port("http://fn.example/call") == "fn.example:80"
    assert remote_http.host_port("http://[::1]:8080/call") == "[::1]:8080"
