"""The jobs workflow as a later release would ship it: same states, one handler fewer (no
`noted`). Installing it with `orchestrator migrate` is a rolling deploy for the dispatchers
still serving tests.support.jobs."""

from __future__ import annotations

from orchestrator import Event, Workflow
from tests.support import jobs as v1

jobs = Workflow.from_definition(v1.jobs.definition())


@jobs.on_enter("new")
def start(event: Event) -> str:
    return "working"


@jobs.on("new", "working")
def finish(event: Event) -> str:
    return "finished"
