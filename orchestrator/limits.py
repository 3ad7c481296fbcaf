"""Fleet-wide limits: a claimed event whose handler has a Limit starts only once it wins a turn.

The turn is taken in the database (``Store.admit``: a slot for runs at once, a token for the
rate), so the bound holds across every dispatcher; an event that does not win one goes back
to the queue, its attempt not counted, and is claimed again a little later.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from orchestrator.events import Event
from orchestrator.observe import Observer
from orchestrator.registry import Registry
from orchestrator.routing import Limit
from orchestrator.verbs import EventQueue

# How long an event over its handler's limit waits before it is claimed again (a random half
# to one and a half times this, so waiting dispatchers do not come back in step).
WAIT_S = 0.2


def take_turns(events: Sequence[Event], registry: Registry, store: EventQueue,
               observer: Observer) -> tuple[list[Event], int]:
    """The events that may start now, and how many went back to wait: those whose handler
    has a Limit must win a turn of it. Raises DatabaseUnavailable when the connection is
    lost (nothing started: the claims are released once it is back)."""
    wanted: dict[Limit, list[int]] = {}
    if registry.limits:
        for event in events:
            spec = registry.route(event) if event.op != "TIMER" else None
            if spec is not None and spec.limit is not None:
                wanted.setdefault(spec.limit, []).append(event.id)
    if not wanted:
        return list(events), 0
    admitted = store.admit(wanted, wait_s=WAIT_S * random.uniform(0.5, 1.5))
    held: set[int] = set()
    for limit, ids in wanted.items():
        if waiting := [i for i in ids if i not in admitted]:
            held.update(waiting)
            observer.waited(str(limit.name), len(waiting))
    return [e for e in events if e.id not in held], len(held)
