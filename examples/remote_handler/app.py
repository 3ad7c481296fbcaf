"""A remote handler as a serverless function: the food-order pick-up step, over HTTP.

An ASGI app (Starlette) that any ASGI host can serve: uvicorn on Cloud Run, Azure Functions or
AWS Lambda through their ASGI adapters. It checks the request's signature, then answers with
the order's next state, or asks to be called again when the courier app is busy.

    ORCHESTRATOR_REMOTE_SECRETS=s3cret uvicorn examples.remote_handler.app:app --port 8080

and dispatch with FOOD_ORDER_PICK_UP_URL=http://127.0.0.1:8080/pick-up and the same secret.
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator.errors import SignatureError
from orchestrator.signing import secrets_from_env, verify_headers


async def pick_up(request: Request) -> JSONResponse:
    body = await request.body()
    try:
        verify_headers(body, request.headers, secrets_from_env())
    except SignatureError as exc:
        return JSONResponse({"error": str(exc)}, status_code=401)
    event = json.loads(body)
    if event["transition"]["to"] != "agent_assigned":
        return JSONResponse({"error": "this function serves approved -> agent_assigned"},
                            status_code=422)
    if event["attempt"] == 1 and int(event["key"]) % 7 == 0:
        # Busy now and then: the dispatcher calls again after delay_s (same idempotency key).
        return JSONResponse({"version": 1, "outcome": "retry", "delay_s": 0.1,
                             "reason": "courier app busy"})
    return JSONResponse({"version": 1, "outcome": "next", "state": "picked_up"})


app = Starlette(routes=[Route("/pick-up", pick_up, methods=["POST"])])
