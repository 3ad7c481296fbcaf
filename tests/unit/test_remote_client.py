"""The remote handlers' HTTP client on its own, without an endpoint."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from orchestrator import remote_http


def test_the_trust_store_is_read_only_where_tls_may_be_spoken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []

    def trust_store() -> ssl.SSLContext:
        read.append("read")
        return ssl.create_default_context()

    monkeypatch.setattr(remote_http.httpx, "create_ssl_context", trust_store)

    async def client(url: str, proxy: str | None = None) -> None:
        await remote_http.Client(url, max_connections=1, headers={}, proxy=proxy).close()

    asyncio.run(client("http://127.0.0.1:9/call"))
    assert read == []
    asyncio.run(client("https://fn.example/call"))
    asyncio.run(client("http://127.0.0.1:9/call", proxy="https://proxy.example:3128"))
    assert read == ["read", "read"]
