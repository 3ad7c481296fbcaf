"""Related data declarations: their shape, their parameters, and their place in a workflow's
stored definition (reading them is tests/integration/test_rich_events.py's)."""

from __future__ import annotations

import pytest

from orchestrator import Related, Workflow
from orchestrator.errors import DefinitionError
from orchestrator.install import difference

TOTALS = Related.query("SELECT sum(qty) AS qty FROM items WHERE order_id = %(id)s "
                       "AND region = %(region)s AND again = %(id)s;")


def orders(**related: Related) -> Workflow:
    return Workflow("orders", table="shop.orders", states=["new", "done"], initial="new",
                    terminal=["done"], transitions=[("finish", "new", "done")],
                    related=related)


def test_each_kind_reads_its_columns_of_the_row() -> None:
    row = {"id": 5, "customer_id": 9, "region": "eu", "ref": "A-1"}
    assert Related.children("items", "order_id").params("id", row) == {"value": 5}
    assert Related.children("items", "order_ref", key="ref").params("id", row) == {"value": "A-1"}
    assert Related.parent("customers", "customer_id").params("id", row) == {"value": 9}
    assert TOTALS.params("id", row) == {"id": 5, "region": "eu"}
    assert TOTALS.sql.endswith("%(id)s")  # the trailing semicolon goes


def test_a_missing_value_is_none_and_a_table_defaults_to_public() -> None:
    assert Related.parent("customers", "customer_id").params("id", {}) == {"value": None}
    assert Related.parent("customers", "c").schema_table == ("public", "customers")
    assert Related.parent("crm.customers", "c").schema_table == ("crm", "customers")


def test_the_declarations_are_part_of_the_definition_and_come_back_from_it() -> None:
    wf = orders(items=Related.children("items", "order_id"), totals=TOTALS,
                customer=Related.parent("crm.customers", "customer_id", key="ref"))
    again = Workflow.from_definition(wf.definition())
    assert again.related == wf.related
    assert again.definition() == wf.definition()


def test_a_workflow_without_related_data_keeps_the_definition_older_builds_stored() -> None:
    assert "related" not in orders().definition()
    assert orders().related == {}


@pytest.mark.parametrize("related,message", [
    ({"x": "items"}, "related 'x': give Related.children(), .parent() or .query()"),
    ({"x": Related("sibling", table="t")}, "related 'x': give Related.children()"),
    ({"1st": TOTALS}, "related '1st': a name is letters, digits and _"),
    ({"x": Related.query("  ;")}, "related 'x': the query is empty"),
    ({"x": Related.query("SELECT 1 WHERE a LIKE 'b%'")}, "write a literal % as %%"),
    ({"x": Related.query("SELECT %s")}, "placeholders are %(column)s"),
    ({"x": Related.children("", "order_id")}, "related 'x': table '' is not a PostgreSQL name"),
    ({"x": Related.parent("t", "c" * 64)}, "column 'ccc"),
])
def test_a_bad_declaration_fails_when_the_workflow_is_built(
        related: dict[str, Related], message: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        orders(**related)
    assert str(caught.value).startswith("workflow 'orders': ")
    assert message in str(caught.value)


def test_a_dispatcher_with_other_related_data_is_told_so() -> None:
    installed = orders(totals=TOTALS).definition()
    assert difference(installed, orders().definition()) == (
        "the related data declared in the database differs from this dispatcher's")
    assert difference(installed, orders(totals=TOTALS).definition()) is None
