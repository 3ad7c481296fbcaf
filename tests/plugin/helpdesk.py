"""A small application under test: helpdesk tickets triaged, assigned to an agent of their
topic, and the agent told. Its tables are in helpdesk.sql."""

from __future__ import annotations

from orchestrator import Context, Event, Next, Retry, Workflow

ticket = Workflow(
    "ticket",
    table="app.tickets",
    states=["new", "triaged", "assigned", "resolved", "rejected", "failed"],
    initial="new",
    terminal=["resolved", "rejected", "failed"],
    failure_state="failed",
    transitions=[("triage", "new", "triaged"), ("reject", "new", "rejected"),
                 ("assign", "triaged", "assigned"), ("resolve", "assigned", "resolved")],
)


@ticket.on_enter("new")
def triage(event: Event) -> Next | str:
    subject = event.new_row["subject"].lower()
    if "lottery" in subject:
        return "rejected"
    return Next("triaged", {"priority": "high" if "urgent" in subject else "normal"})


@ticket.on("new", "triaged")
def assign(event: Event, ctx: Context) -> Next:
    topic = event.new_row["topic"]
    agents = ctx.db.execute("SELECT name, on_leave FROM app.agents WHERE topic = %s"
                            " ORDER BY on_leave, name", (topic,)).fetchall()
    if not agents:
        raise LookupError(f"no agent for {topic!r}")
    name, on_leave = agents[0]
    if on_leave:
        raise Retry(delay_s=3600)  # back when the agent is
    return Next("assigned", {"assignee": name})


@ticket.on("triaged", "assigned")
def notify(event: Event, ctx: Context) -> None:
    ctx.db.execute("INSERT INTO app.notifications (ticket_id, agent, message) VALUES (%s, %s, %s)",
                   (event.key, event.new_row["assignee"], event.new_row["subject"]))
