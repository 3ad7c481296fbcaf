"""A stand-in serverless function for the remote case: it answers every POST after a fixed
latency, like a function that waits on something else (a database, an API) and does little.

``python -m orchestrator.bench.standin PORT LATENCY_MS WORKERS`` serves loopback PORT from
WORKERS processes (SO_REUSEPORT), each an aiohttp server, so it takes more than the load the
bench puts on it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys

from aiohttp import web

ANSWER = {"outcome": "none"}


def app(latency_s: float) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(latency_s)
        return web.json_response(ANSWER)

    served = web.Application()
    served.router.add_post("/{path:.*}", handle)
    return served


def serve(port: int, latency_s: float) -> None:
    web.run_app(app(latency_s), host="127.0.0.1", port=port, reuse_port=True, backlog=4096,
                access_log=None, print=None, handle_signals=True)


def main(argv: list[str]) -> None:
    port, latency_s, workers = int(argv[0]), float(argv[1]) / 1000, int(argv[2])
    procs = [multiprocessing.Process(target=serve, args=(port, latency_s), daemon=True)
             for _ in range(workers - 1)]
    for proc in procs:
        proc.start()
    serve(port, latency_s)


if __name__ == "__main__":
    main(sys.argv[1:])
