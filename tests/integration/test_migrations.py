from typing import Any

from orchestrator import schema
from tests.support import database


def tables(dsn: str) -> set[str]:
    import psycopg
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
            " WHERE table_schema IN ('orchestrator', 'public')").fetchall()
    return {r[0] for r in rows}


def test_upgrade_downgrade_upgrade(admin_dsn: str) -> None:
    name = database.unique_name("orch_mig")
    dsn = database.create_database(admin_dsn, name)
    try:
        assert schema.current_revision(dsn) is None
        schema.upgrade(dsn)
        assert schema.current_revision(dsn) == schema.head_revision()
        assert {"orchestrator.events", "orchestrator.workflows", "public.orders"} <= tables(dsn)
        schema.downgrade(dsn, "base")
        assert schema.current_revision(dsn) is None
        assert not {t for t in tables(dsn) if t.startswith("orchestrator.")}
        assert "public.orders" not in tables(dsn)
        schema.upgrade(dsn)
        assert schema.current_revision(dsn) == schema.head_revision()
    finally:
        database.drop_database(admin_dsn, name)


def test_migrate_twice_is_a_no_op(dsn: str, settings: Any, registry: Any) -> None:
    from orchestrator.app import Orchestrator
    with Orchestrator(settings, registry) as orch:
        assert orch.migrate() == ["food_order", "jobs", "tickets"]
        assert orch.migrate() == ["food_order", "jobs", "tickets"]
