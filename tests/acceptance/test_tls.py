"""TLS through the DSN against a real PostgreSQL with ssl=on and a certificate of the test's own.

The embedded wheel's server is built without SSL, so the Debian packages' server is used (the
test skips where it is absent; .ci/run installs it). Its pg_hba accepts TCP clients only over
TLS, so a demo that completes there used TLS for every connection, LISTEN included.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from psycopg import conninfo

from orchestrator import db
from tests.acceptance.test_cli import assert_one_line_error, cli
from tests.support import servers
from tests.support.database import private_dir
from tests.support.processes import dispatcher, finish, wait_for


@pytest.fixture(scope="module")
def tls() -> Iterator[dict[str, str]]:
    """DSNs for the server: ``good`` (verify-full against its CA) and variations."""
    bin_dir = servers.debian_postgres_bin()
    with private_dir("tls") as workdir:
        yield from tls_server(bin_dir, workdir)


def tls_server(bin_dir: Path, workdir: Path) -> Iterator[dict[str, str]]:
    """A server with ssl=on and a certificate of its own CA, all in ``workdir``."""
    ca, other_ca = trustme.CA(), trustme.CA()
    cert = ca.issue_cert("localhost")
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    other_ca.cert_pem.write_to_path(str(workdir / "other-ca.pem"))
    files = {"server.crt": b"".join(blob.bytes() for blob in cert.cert_chain_pems),
             "server.key": cert.private_key_pem.bytes()}
    settings = {"ssl": "on", "ssl_cert_file": "'server.crt'", "ssl_key_file": "'server.key'"}
    with servers.postgres(bin_dir, workdir / "pg", hba=["hostssl all all 127.0.0.1/32 trust"],
                          settings=settings, files=files) as server:
        server.sql("CREATE DATABASE shop")
        good = conninfo.make_conninfo(
            host="localhost", hostaddr="127.0.0.1", port=server.port, user="postgres",
            dbname="shop", sslmode="verify-full", sslrootcert=str(workdir / "ca.pem"))
        yield {
            "good": good,
            "other_ca": conninfo.make_conninfo(good, sslrootcert=str(workdir / "other-ca.pem")),
            "other_host": conninfo.make_conninfo(good, host="db.wrong.example"),
            "plain": conninfo.make_conninfo(good, sslmode="disable"),
        }


def test_the_demo_runs_over_verified_tls(tls: dict[str, str]) -> None:
    done = cli("demo", "--orders", "20", "--json", "--dsn", tls["good"])
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    with db.connect(tls["good"]) as conn:
        states = dict(conn.execute("SELECT status, count(*) FROM orders GROUP BY 1").fetchall())
    assert summary["all_terminal"] is True and summary["final_states"] == states
    assert sum(states.values()) == 20 and set(states) <= {"delivered", "rejected", "failed"}


def test_every_connection_of_a_dispatcher_uses_tls(tls: dict[str, str]) -> None:
    proc = dispatcher(tls["good"], until_idle=False, handlers="orchestrator.demo.handlers")
    sessions = ("SELECT a.application_name, s.ssl FROM pg_stat_activity a"
                " JOIN pg_stat_ssl s USING (pid) WHERE a.backend_type = 'client backend'"
                " AND a.pid <> pg_backend_pid() AND a.datname = 'shop' ORDER BY 1")
    try:
        with db.connect(tls["good"]) as conn:
            conn.autocommit = True
            wait_for(lambda: proc.poll() is not None or db.LISTEN_APPLICATION_NAME in {
                name for name, _ in conn.execute(sessions).fetchall()},
                what="the dispatcher's LISTEN connection")
            seen = conn.execute(sessions).fetchall()
    finally:
        proc.send_signal(signal.SIGTERM)
        finish(proc)
    assert len(seen) >= 2, seen  # the LISTEN connection and the pool's
    assert all(ssl for _, ssl in seen), seen


def test_a_plain_connection_is_refused(tls: dict[str, str]) -> None:
    assert_one_line_error(cli("migrate", "--dsn", tls["plain"]), "no pg_hba.conf entry",
                          "no encryption")


def test_a_certificate_from_another_ca_is_refused(tls: dict[str, str]) -> None:
    assert_one_line_error(cli("migrate", "--dsn", tls["other_ca"]), "certificate verify failed")


def test_a_certificate_for_another_host_name_is_refused(tls: dict[str, str]) -> None:
    assert_one_line_error(cli("migrate", "--dsn", tls["other_host"]),
                          'server certificate for "localhost" does not match host name '
                          '"db.wrong.example"')

