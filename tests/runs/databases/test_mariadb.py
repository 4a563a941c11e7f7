"""MariaDB end to end: a real server (Debian's mariadb-server) with data that hurts, backed up through
``stashflow-mariadb:logical-backup`` (mariadb-dump → stashflow-executor → restic, run for real by the
node agent), destroyed, restored from ``latest`` and compared; and the ways a dump fails."""

from __future__ import annotations

import pytest

from ..observe import snapshot
from .conftest import DB_PASSWORD, Flows
from .servers import MariaDB, free_port

ADDON = "stashflow-mariadb"
TARGET = "MariaDB.kubedb.com/maria"

FILL = r"""
CREATE DATABASE shop CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE DATABASE `Ünï-db` CHARACTER SET utf8mb4;
CREATE TABLE shop.orders (id BIGINT PRIMARY KEY, customer VARCHAR(100) NOT NULL, amount DECIMAL(12,2),
                          note TEXT, payload VARBINARY(64), created DATETIME(6), KEY (customer)) ENGINE=InnoDB;
USE shop;
INSERT INTO shop.orders
SELECT seq, CONCAT('customer ', seq % 997), seq * 1.25,
       IF(seq % 7 = 0, 'line1\nline2\ttab ''single'' "double" \\ back', CONCAT('ÄÖÜ ß — 日本語 🐬 ', seq)),
       UNHEX(CONCAT(MD5(seq), '00FF00')), TIMESTAMP('2024-01-01') + INTERVAL seq MINUTE
FROM seq_1_to_100000;
CREATE TABLE `Ünï-db`.`weird ``name`` table` (k VARCHAR(50) PRIMARY KEY, v JSON, b LONGBLOB, e ENUM('a', 'b'));
INSERT INTO `Ünï-db`.`weird ``name`` table` VALUES
  ('ключ', '{"a": [1, 2, {"b": "ü\\"q"}], "n": null}', REPEAT(UNHEX('DEADBEEF00'), 200000), 'a'),
  ('$HOME; rm -rf /', '{}', '', NULL),
  ('nul', NULL, UNHEX('00000000'), 'b');
CREATE VIEW shop.big_orders AS SELECT id, amount FROM shop.orders WHERE amount > 1000;
CREATE TABLE shop.audit (n INT);
INSERT INTO shop.audit VALUES (0);
CREATE TRIGGER shop.count_orders AFTER INSERT ON shop.orders FOR EACH ROW UPDATE shop.audit SET n = n + 1;
CREATE FUNCTION shop.twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
CREATE USER app@'%' IDENTIFIED BY 'app ''pw'' ü';
CREATE ROLE reader;
GRANT SELECT ON shop.* TO reader;
GRANT reader TO app@'%';
GRANT SELECT (k, v) ON `Ünï-db`.`weird ``name`` table` TO app@'%';
"""


def content(server: MariaDB) -> dict[str, str]:
    """Per table its row count and checksum; views, triggers, routines; users, roles and grants."""
    seen: dict[str, str] = {}
    tables = server.sql("SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
                        "AND table_schema NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') "
                        "ORDER BY 1, 2")
    for row in tables.splitlines():
        schema, table = row.split("\t")
        name = f"`{schema.replace('`', '``')}`.`{table.replace('`', '``')}`"
        count = server.sql(f"SELECT COUNT(*) FROM {name}").strip()
        seen[row] = f'{count} rows, checksum {server.sql(f"CHECKSUM TABLE {name} EXTENDED").split(chr(9))[-1].strip()}'
    seen["views"] = server.sql("SELECT table_schema, table_name, view_definition FROM information_schema.views "
                               "WHERE table_schema NOT IN ('mysql', 'sys') ORDER BY 1, 2")
    seen["triggers"] = server.sql("SELECT trigger_schema, trigger_name, action_statement FROM information_schema.triggers "
                                  "WHERE trigger_schema NOT IN ('mysql', 'sys') ORDER BY 1, 2")
    seen["routines"] = server.sql("SELECT shop.twice(21)")
    seen["users"] = server.sql("SELECT user, host, is_role FROM mysql.user WHERE user IN ('app', 'reader') ORDER BY 1, 2")
    seen["grants"] = server.sql("SHOW GRANTS FOR app@'%'") + server.sql("SHOW GRANTS FOR reader")
    seen["schemas"] = server.sql("SELECT schema_name, default_character_set_name FROM information_schema.schemata "
                                 "ORDER BY 1")
    return seen


@pytest.fixture
def filled(mariadb: MariaDB) -> MariaDB:
    mariadb.recreate()
    mariadb.sql(FILL)
    return mariadb


def test_backup_destroy_restore_latest_gives_equal_content(flows: Flows, filled: MariaDB) -> None:
    flows.secret("maria-auth", {"username": "admin", "password": DB_PASSWORD})
    before = content(filled)
    assert before["shop\torders"].startswith("100000 rows")
    assert "reader" in before["grants"] and "`k`, `v`" in before["grants"], before["grants"]

    backup = flows.backup(ADDON, TARGET, host="127.0.0.1", port=str(filled.port), user="admin",
                          authSecret="maria-auth")
    assert backup.is_completed(), backup.message
    snap = snapshot(flows.cluster, flows.namespace, backup.result()["snapshot"])
    assert snap["status"]["phase"] == "Succeeded", snap["status"]
    (only,) = flows.restic_snapshots()
    assert only["paths"] == ["/dumpfile.sql"]

    filled.recreate()
    assert "shop" not in filled.sql("SHOW DATABASES")
    restore = flows.restore(ADDON, TARGET, repository="maria", host="127.0.0.1", port=str(filled.port),
                            user="admin", authSecret="maria-auth")
    assert restore.is_completed(), restore.message
    assert content(filled) == before


def test_wrong_password_fails_with_the_servers_words(flows: Flows, mariadb: MariaDB) -> None:
    flows.secret("wrong", {"password": "not the password"})
    state = flows.backup(ADDON, TARGET, host="127.0.0.1", port=str(mariadb.port), user="admin", authSecret="wrong",
                         session="maria-1", history_limit=0)
    flows.fails_with(state, "Access denied for user 'admin'@'localhost' (using password: YES)")


def test_missing_database_fails(flows: Flows, mariadb: MariaDB) -> None:
    flows.secret("maria-auth", {"password": DB_PASSWORD})
    state = flows.backup(ADDON, TARGET, host="127.0.0.1", port=str(mariadb.port), user="admin",
                         authSecret="maria-auth", databases="no_such_db", history_limit=0)
    flows.fails_with(state, "Unknown database 'no_such_db'")


def test_server_down_fails(flows: Flows, mariadb: MariaDB) -> None:
    flows.secret("maria-auth", {"password": DB_PASSWORD})
    state = flows.backup(ADDON, TARGET, host="127.0.0.1", port=str(free_port()), user="admin",
                         authSecret="maria-auth", history_limit=0)
    flows.fails_with(state, "Can't connect to server on '127.0.0.1'")
