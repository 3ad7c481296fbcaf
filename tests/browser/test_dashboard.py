"""The dashboard in a real headless Chromium, during a demo run, as an operator uses it."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

from tests.acceptance.test_cli import ROOT, cli
from tests.conftest import FAST
from tests.support.dashboard import running_dashboard

FOOD = 'section.workflow[data-workflow="food_order"]'


def count(page: Any, state: str) -> Any:
    return page.locator(f'{FOOD} g.state[data-state="{state}"] text.count')


def kpi(page: Any, name: str) -> Any:
    return page.locator(f'{FOOD} .kpi[data-kpi="{name}"] b')


def dispatcher(dsn: str) -> subprocess.Popen[str]:
    env = {f"ORCHESTRATOR_{k.upper()}": str(v) for k, v in FAST.items()} | {
        "ORCHESTRATOR_DSN": dsn}
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--log-level", "WARNING", "run", "--until-idle"],
        cwd=ROOT, env=os.environ | env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def test_an_operator_watches_a_demo_run_reads_a_timeline_and_redrives(
        dsn: str, sql: Any, page: Any) -> None:
    from playwright.sync_api import expect

    # Seed 8: 60 orders, four of them by the customer whose card expired; they die in charge.
    assert cli("seed", "--orders", "60", "--seed", "8", "--dsn", dsn).returncode == 0
    with running_dashboard(dsn) as base:
        elsewhere: list[str] = []
        page.on("request", lambda r: urlsplit(r.url).netloc != urlsplit(base).netloc
                and elsewhere.append(r.url))
        page.goto(base)
        expect(count(page, "placed")).to_have_text("60")
        expect(count(page, "delivered")).to_have_text("0")

        run = dispatcher(dsn)  # the demo runs while the page is open: counts move
        expect(count(page, "delivered")).not_to_have_text("0")
        out, _ = run.communicate(timeout=120)
        assert run.returncode == 0, out
        expect(count(page, "placed")).to_have_text("0")
        expect(count(page, "failed")).to_have_text("4")
        expect(kpi(page, "dead")).to_have_text("4")
        assert int(count(page, "delivered").text_content()) > 30

        # What failed, and why: the dead list, then one order's timeline.
        dead = page.locator("#dead-table tbody tr")
        expect(dead).to_have_count(4)
        expect(dead.first).to_contain_text("payment provider did not answer for card 'expired'")
        order = dead.first.locator("a.rowlink").inner_text()
        dead.first.locator("a.rowlink").click()
        expect(page.locator("#timeline-head")).to_contain_text(f"food_order {order}")
        expect(page.locator("#timeline-head")).to_contain_text("now failed")
        charge = page.locator("#timeline-table tbody tr", has_text="charge")
        expect(charge.locator("ul.errors li")).to_have_count(4)
        expect(charge).to_contain_text("#1")

        # Redrive this one: asked first; cancelling changes nothing.
        charge.locator("button.redrive").click()
        expect(page.locator("#confirm")).to_be_visible()
        expect(page.locator("#confirm")).to_contain_text(f"food_order row {order}")
        page.locator("#confirm button[value=cancel]").click()
        assert sql("SELECT count(*) FROM orchestrator.events WHERE status = 'dead'") == [(4,)]
        charge.locator("button.redrive").click()
        page.locator("#confirm button[value=ok]").click()
        expect(page.locator("#flash")).to_contain_text("Redriven: 1 event(s)")
        assert sql("SELECT status FROM orders WHERE id = %s", (int(order),)) == [("validated",)]
        expect(page.locator("#timeline-head")).to_contain_text("now validated")
        expect(kpi(page, "dead")).to_have_text("3")

        # Then the rest of charge's dead events in bulk, filtered by handler.
        page.locator(".tabs button[data-tab=dead]").click()
        expect(dead).to_have_count(3)
        page.locator("#dead-filters select[name=handler]").select_option(
            "orchestrator.demo.handlers.food_order.charge")
        page.locator("#redrive-matching").click()
        expect(page.locator("#confirm")).to_contain_text("Redrive 3 dead event(s) of handler "
                                                         "charge?")
        page.locator("#confirm button[value=ok]").click()
        expect(page.locator("#flash")).to_contain_text("Redriven: 3 event(s)")
        expect(kpi(page, "dead")).to_have_text("0")
        assert sql("SELECT count(*) FROM orchestrator.events WHERE status = 'dead'") == [(0,)]
        assert sql("SELECT count(*) FROM orders WHERE status = 'failed'") == [(0,)]

        # Search: any order's timeline from the box at the top.
        (delivered,) = sql("SELECT min(id) FROM orders WHERE status = 'delivered'")[0]
        page.locator("#find select[name=workflow]").select_option("food_order")
        page.locator("#find input[name=key]").fill(str(delivered))
        page.locator("#find button").click()
        expect(page.locator("#timeline-head")).to_contain_text("now delivered")
        expect(page.locator("#timeline-table")).to_contain_text("status: picked_up → delivered")
        assert elsewhere == [], f"the page fetched from elsewhere: {elsewhere}"
