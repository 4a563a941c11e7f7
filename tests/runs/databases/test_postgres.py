"""PostgreSQL end to end: a real server (Debian's postgresql) filled with data that hurts, backed up
through the ``stashflow-postgres:logical-backup`` flow (pg_dumpall → stashflow-executor → restic,
run for real by the node agent), destroyed, restored from ``latest`` and compared; and the ways a
dump fails, each a Failed run with the tool's own error line and nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from ..observe import flow_run_artifacts, flow_run_logs, jobs, snapshot
from .conftest import DB_PASSWORD, RESTIC_PASSWORD, Flows
from .servers import Postgres, free_port

ADDON = "stashflow-postgres"
TARGET = "Postgres.kubedb.com/pg"

FILL = {
    "postgres": r"""
CREATE ROLE app_owner LOGIN PASSWORD 'owner ''pw'' ü';
CREATE ROLE reader NOLOGIN;
CREATE ROLE "Ünïcode Rôle" NOLOGIN IN ROLE reader;
CREATE DATABASE "shop-ü" OWNER app_owner;
CREATE DATABASE analytics;
""",
    "shop-ü": r"""
CREATE SCHEMA sales AUTHORIZATION app_owner;
CREATE SCHEMA "Weird Schema";
CREATE TABLE sales.orders (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2),
                           note text, payload bytea, created timestamptz);
INSERT INTO sales.orders
SELECT g, 'customer ' || (g % 997), g * 1.25,
       CASE WHEN g % 7 = 0 THEN E'line1\nline2\ttab ''single'' "double" \\ back'
            ELSE 'ÄÖÜ ß — 日本語 🐘 ' || g END,
       decode(md5(g::text), 'hex') || '\x00ff00'::bytea,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute'
FROM generate_series(1, 100000) g;
CREATE INDEX ON sales.orders (customer);
CREATE TABLE "Weird Schema"."Mixed Case ""q"" x" (k text PRIMARY KEY, v jsonb, arr int[], empty text);
INSERT INTO "Weird Schema"."Mixed Case ""q"" x" VALUES
  ('ключ', '{"a": [1, 2, {"b": "ü\"q"}], "n": null}', '{1,2,3}', ''),
  (E'tab\there', '"just a string"', '{}', NULL),
  ('$HOME; rm -rf /', '{}', NULL, E'\\.');
CREATE SEQUENCE sales.invoice_no START 42;
SELECT nextval('sales.invoice_no'), nextval('sales.invoice_no');
CREATE VIEW sales.big_orders AS SELECT id, amount FROM sales.orders WHERE amount > 1000;
GRANT USAGE ON SCHEMA sales TO reader;
GRANT SELECT ON sales.orders, sales.big_orders TO reader;
GRANT SELECT (k, v) ON "Weird Schema"."Mixed Case ""q"" x" TO "Ünïcode Rôle";
SELECT lo_from_bytea(424242, decode(repeat('deadbeef', 50000), 'hex'));
SELECT lo_from_bytea(0, convert_to(repeat('large object ü ', 1000), 'UTF8'));
""",
    "analytics": r"""
CREATE TABLE public.events (id serial PRIMARY KEY, body text, at timestamptz DEFAULT now());
INSERT INTO public.events (body) SELECT 'event ' || g FROM generate_series(1, 1000) g;
CREATE FUNCTION public.twice(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x * 2';
""",
}

TABLES = """SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
            WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"""


def content(server: Postgres) -> dict[str, object]:
    """Everything compared after the restore: per table a checksum of its rows and their count, the
    large objects, sequences, roles and memberships, databases and owners, privileges."""
    seen: dict[str, object] = {
        "roles": server.psql("SELECT rolname, rolcanlogin, rolsuper, rolinherit FROM pg_roles "
                             "WHERE rolname !~ '^pg_' ORDER BY 1"),
        "members": server.psql("SELECT r.rolname, m.rolname FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid "
                               "JOIN pg_roles m ON m.oid = a.member WHERE r.rolname !~ '^pg_' ORDER BY 1, 2"),
        "databases": server.psql("SELECT datname, pg_get_userbyid(datdba), pg_encoding_to_char(encoding) "
                                 "FROM pg_database WHERE NOT datistemplate ORDER BY 1"),
    }
    for db in ("shop-ü", "analytics"):
        for table in server.psql(TABLES, db).splitlines():
            seen[f"{db}/{table}"] = server.psql(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {table} t", db)
        seen[f"{db}/large objects"] = server.psql(
            "SELECT oid, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY oid", db)
        seen[f"{db}/privileges"] = server.psql(
            "SELECT n.nspname, c.relname, c.relkind, c.relacl::text FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', "
            "'pg_toast') ORDER BY 1, 2", db)
        seen[f"{db}/column privileges"] = server.psql(
            "SELECT attrelid::regclass::text, attname, attacl::text FROM pg_attribute WHERE attacl IS NOT NULL "
            "ORDER BY 1, 2", db)
        seen[f"{db}/schemas"] = server.psql("SELECT nspname, pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace "
                                            "WHERE nspname !~ '^pg_' ORDER BY 1", db)
    seen["shop-ü/sales.invoice_no"] = server.psql("SELECT last_value FROM sales.invoice_no", "shop-ü")
    seen["analytics/twice"] = server.psql("SELECT public.twice(21)", "analytics")
    return seen


@pytest.fixture
def filled(postgres: Postgres) -> Postgres:
    postgres.recreate()
    for db, sql in FILL.items():
        postgres.psql(sql, db)
    return postgres


def test_backup_destroy_restore_latest_gives_equal_content(flows: Flows, filled: Postgres) -> None:
    flows.secret("pg-auth", {"username": "postgres", "password": DB_PASSWORD})
    before = content(filled)
    assert before["shop-ü/sales.orders"].startswith("100000|")  # type: ignore[union-attr]

    backup = flows.backup(ADDON, TARGET, host="127.0.0.1", port=str(filled.port), authSecret="pg-auth",
                          db_version=filled.version)
    assert backup.is_completed(), backup.message
    snap = snapshot(flows.cluster, flows.namespace, backup.result()["snapshot"])
    assert snap["status"]["phase"] == "Succeeded", snap["status"]
    component = snap["status"]["components"]["dump"]
    (stats,) = component["resticStats"]
    stats = stats.get("summary", stats)  # KubeStash's CRD holds the nested form
    (only,) = flows.restic_snapshots()
    assert only["id"].startswith(stats["id"]) and only["paths"] == ["/dumpfile.sql"]
    assert stats["hostPath"] == "/dumpfile.sql" and stats["size"].endswith("MiB")
    # stashflow verified the repository after the backup (restic check + stats)
    assert component["integrity"] is True and snap["status"]["size"] == component["size"]

    filled.recreate()  # destroyed: a new, empty cluster on the same port
    assert "shop-ü" not in filled.psql("SELECT datname FROM pg_database")
    restore = flows.restore(ADDON, TARGET, repository="pg", host="127.0.0.1", port=str(filled.port),
                            authSecret="pg-auth", db_version=filled.version)
    assert restore.is_completed(), restore.message
    assert content(filled) == before

    # the passwords went by Secret reference and file only: not in the Jobs, logs or artifacts
    for job in jobs(flows.cluster, flows.namespace):
        text = json.dumps(job.to_dict(), default=str)
        assert DB_PASSWORD not in text and RESTIC_PASSWORD not in text
    for state in (backup, restore):
        flow_run_id = state.state_details.flow_run_id
        logs = flow_run_logs(flow_run_id)
        assert not any(DB_PASSWORD in line or RESTIC_PASSWORD in line for line in logs)
        assert not any(DB_PASSWORD in str(a.data) for a in flow_run_artifacts(flow_run_id))
    assert any("stashflow-executor: restored /dumpfile.sql" in line
               for line in flow_run_logs(restore.state_details.flow_run_id))


def _fails_with(flows: Flows, state, line: str) -> None:  # type: ignore[no-untyped-def]
    """``Flows.fails_with``, and the diagnosis artifact carries the tool's line too."""
    flows.fails_with(state, line)
    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    assert any(a.type == "markdown" and line in a.data for a in artifacts)


def test_wrong_password_fails_with_the_servers_words(flows: Flows, postgres: Postgres) -> None:
    flows.secret("pg-auth", {"password": "not the password"})
    state = flows.backup(ADDON, TARGET, host="127.0.0.1", port=str(postgres.port), authSecret="pg-auth",
                         history_limit=0)
    _fails_with(flows, state, 'password authentication failed for user "postgres"')


def test_server_down_fails_with_connection_refused(flows: Flows, postgres: Postgres) -> None:
    flows.secret("pg-auth", {"password": DB_PASSWORD})
    state = flows.backup(ADDON, TARGET, host="127.0.0.1", port=str(free_port()), authSecret="pg-auth",
                         history_limit=0)
    _fails_with(flows, state, "Connection refused")


def test_missing_database_fails_with_pg_dumps_words(flows: Flows, postgres: Postgres) -> None:
    flows.secret("pg-auth", {"password": DB_PASSWORD})
    state = flows.backup(ADDON, TARGET, host="127.0.0.1", port=str(postgres.port), authSecret="pg-auth",
                         backupCmd="pg_dump", args="--dbname=no_such_db", history_limit=0)
    _fails_with(flows, state, 'database "no_such_db" does not exist')


def test_a_dump_that_dies_mid_stream_fails_and_records_nothing(flows: Flows, filled: Postgres) -> None:
    """pg_dumpall has streamed the roles and the first databases into restic when the pg_dump of the
    last database is killed (its server backend terminated, as when the server goes away). No shell
    and no fake: the blocker is a real lock, the kill a real pg_terminate_backend."""
    flows.secret("pg-auth", {"password": DB_PASSWORD})
    filled.psql("CREATE DATABASE zz_last; ", "postgres")
    filled.psql("CREATE TABLE blocker (x int); INSERT INTO blocker VALUES (1);", "zz_last")
    lock = subprocess.Popen(
        ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(filled.port), "-U", "postgres", "-d", "zz_last"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PGPASSWORD": DB_PASSWORD})
    assert lock.stdin is not None
    lock.stdin.write("BEGIN; LOCK TABLE blocker IN ACCESS EXCLUSIVE MODE;\n")
    lock.stdin.flush()
    killed: list[str] = []

    def kill_the_waiting_dump() -> None:
        """The pg_dump of zz_last waits on the lock; everything before it is already in the pipe."""
        end = time.monotonic() + 120
        while time.monotonic() < end and not killed:
            out = filled.psql("SELECT pid FROM pg_stat_activity WHERE datname = 'zz_last' "
                              "AND application_name = 'pg_dump' AND wait_event_type = 'Lock'")
            if out.strip():
                killed.append(filled.psql(f"SELECT pg_terminate_backend({out.split()[0]})"))
            else:
                time.sleep(0.1)

    killer = threading.Thread(target=kill_the_waiting_dump)
    killer.start()
    try:
        state = flows.backup(ADDON, TARGET, host="127.0.0.1", port=str(filled.port), authSecret="pg-auth",
                             history_limit=0)
    finally:
        killer.join()
        lock.stdin.close()
        lock.wait(timeout=30)
    assert killed == ["t\n"]
    _fails_with(flows, state, 'pg_dumpall: error: pg_dump failed on database "zz_last", exiting')
    logs = flow_run_logs(state.state_details.flow_run_id)
    assert any("terminating connection due to administrator command" in line for line in logs)
