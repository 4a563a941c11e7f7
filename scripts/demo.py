"""The main job on the local defaults: a real backup and restore through the Prefect flows.

1. the local control plane (localkube/up.sh) and the node agent, which runs containers for
   real (restic from Debian); 2. a Prefect server on 127.0.0.1:4200 (its UI shows the runs);
3. namespace ``demo`` with a PVC ``data`` holding some files, and the restic password Secret;
4. ``stashflow run stashflow-pvc logical-backup`` into a local BackupStorage, then
   ``stashflow run stashflow-pvc logical-backup-restore --snapshot latest`` into an empty PVC;
5. the restored files compared with the originals, the Snapshot shown;
6. a real PostgreSQL (Debian's ``postgresql``, a fresh cluster on a port of its own, ``scripts/pg_server.py``)
   filled, backed up by ``stashflow run stashflow-postgres logical-backup`` (pg_dumpall streamed into
   restic by stashflow-executor), its database dropped, restored from ``latest``, and the content
   compared (row counts and a checksum per table);
7. everything stopped by pid (``KEEP=1`` leaves it running to look around). The stack is
   ``scripts/local_stack.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys

from local_stack import REPO, LocalStack, say, tree
from pg_server import PostgresServer

NAMESPACE = "demo"
PREFECT_PORT = int(os.environ.get("STASHFLOW_DEMO_PREFECT_PORT", "4200"))


def main() -> int:
    try:
        with LocalStack(REPO / "run" / "demo", PREFECT_PORT) as stack:
            data, restored = stack.prepare(NAMESPACE)
            common = stack.run_args(NAMESPACE)
            stack.stashflow("run", "stashflow-pvc", "logical-backup", "--target", "PersistentVolumeClaim/data",
                            "--storage", "local", "--directory", "demo/data", "--encryption-secret", "restic-password",
                            *common)
            stack.stashflow("run", "stashflow-pvc", "logical-backup-restore", "--target", "PersistentVolumeClaim/restored",
                            "--snapshot", "latest", "--repository", "data", *common)
            same = tree(data) == tree(restored)
            say(f"restored files {'are byte-identical to' if same else 'DIFFER from'} the originals "
                f"({len(tree(data))} files)")
            same_db = postgres(stack, common)
            stack.stashflow("snapshots", "--namespace", NAMESPACE, "--kubeconfig", stack.kubeconfig)
            return 0 if same and same_db else 1
    except subprocess.CalledProcessError as exc:
        say(f"failed: {' '.join(exc.cmd[:4])} ... exited {exc.returncode} (its error is above)")
        return 1


FILL = """
CREATE ROLE shop_owner LOGIN PASSWORD 'owner pw';
CREATE DATABASE shop OWNER shop_owner;
\\connect shop
CREATE TABLE orders (id bigint PRIMARY KEY, customer text, amount numeric(12,2), payload bytea);
INSERT INTO orders SELECT g, 'customer ' || (g % 97) || ' ü 日本', g * 1.25, decode(md5(g::text), 'hex')
FROM generate_series(1, 20000) g;
CREATE TABLE notes (k text PRIMARY KEY, v jsonb);
INSERT INTO notes VALUES ('quote''s', '{"a": [1, "ü"]}'), ('$HOME', '{}');
ALTER TABLE orders OWNER TO shop_owner;
"""
CONTENT = """SELECT 'orders', count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM orders t
UNION ALL SELECT 'notes', count(*), md5(string_agg(t::text, ',' ORDER BY k)) FROM notes t"""


def postgres(stack: LocalStack, common: list[str]) -> bool:
    """A real PostgreSQL backed up and restored through the flows; True when the content is equal."""
    import secrets

    from stashflow.executor.bundle import build

    build("/usr/local/bin/stashflow-executor")  # the node agent runs the Function's command here, as the image would
    password = secrets.token_urlsafe(18)
    with PostgresServer(stack.run_dir / "postgres", password) as pg:
        say(f"PostgreSQL {pg.major} on 127.0.0.1:{pg.port} (pid {pg.proc.pid})")
        pg.psql(FILL)
        before = pg.psql(CONTENT, "shop")
        stack.secret(NAMESPACE, "pg-auth", {"password": password})
        db = ["--target", "Postgres.kubedb.com/pg", "--param", "host=127.0.0.1", "--param", f"port={pg.port}",
              "--param", "authSecret=pg-auth", "--var", f"DB_VERSION={pg.major}"]
        stack.stashflow("run", "stashflow-postgres", "logical-backup", *db, "--storage", "local", "--directory",
                        "demo/pg", "--encryption-secret", "restic-password", *common)
        pg.psql("DROP DATABASE shop; DROP ROLE shop_owner;")
        say("dropped the database shop and its owner")
        stack.stashflow("run", "stashflow-postgres", "logical-backup-restore", *db, "--snapshot", "latest",
                        "--repository", "pg", *common)
        after = pg.psql(CONTENT, "shop")
        same = after == before
        say(f"restored database {'is equal to' if same else 'DIFFERS from'} the original: "
            + "; ".join(" ".join(line.split("|")[:2]) + " rows" for line in before.splitlines()))
        return same


if __name__ == "__main__":
    sys.exit(main())
