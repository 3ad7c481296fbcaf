"""A test workflow with a deadline: a ticket left open for a second is escalated."""

from __future__ import annotations

from orchestrator import Deadline, Workflow

tickets = Workflow(
    "tickets",
    table="public.tickets",
    states=["open", "answered", "escalated", "closed"],
    initial="open",
    terminal=["closed"],
    transitions=[("answer", "open", "answered"), ("reopen", "answered", "open"),
                 ("escalate", "open", "escalated"), ("close", ["answered", "escalated"],
                                                     "closed")],
    deadlines=[Deadline("open", after_s=1.0, to="escalated")],
)
