"""A local PostgreSQL for the main job: Debian's ``postgresql``, a fresh cluster in the run dir, on a
127.0.0.1 port of its own, started and stopped by pid (``with PostgresServer(dir) as pg:``).

The same idea as the tests' servers (tests/runs/databases/servers.py), kept here so the script does
not depend on tests/."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localkube.helpers import apt_install  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """initdb (scram-sha-256 password auth over TCP), ``postgres`` as the system user, stopped by pid."""

    def __init__(self, root: Path, password: str) -> None:
        apt_install("postgresql")
        self.bin = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
        self.root, self.password, self.port = root, password, free_port()
        self.data, self.socket_dir, self.log = root / "data", root / "sock", root / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def major(self) -> str:
        return self.bin.parent.name

    def __enter__(self) -> PostgresServer:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.root.chmod(0o755)
        for d in (self.data, self.socket_dir):
            d.mkdir()
            shutil.chown(d, "postgres", "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                        "--locale=C.UTF-8", "--auth=scram-sha-256", f"--pwfile={pwfile}"], user="postgres",
                       group="postgres", cwd=self.root, check=True, capture_output=True)
        pwfile.unlink()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.socket_dir}"],
                user="postgres", group="postgres", stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        end = time.monotonic() + 60
        while subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]).returncode:
            if self.proc.poll() is not None or time.monotonic() > end:
                self.__exit__(None, None, None)
                raise SystemExit(f"PostgreSQL did not start on 127.0.0.1:{self.port} (log: {self.log})")
            time.sleep(0.2)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Stop the server by its pid (SIGINT: a fast shutdown; SIGKILL if it does not go), remove its files."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if os.environ.get("KEEP") != "1":
            shutil.rmtree(self.root, ignore_errors=True)

    def psql(self, sql: str, db: str = "postgres") -> str:
        done = subprocess.run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
                               "-U", "postgres", "-d", db, "-f", "-"], input=sql, capture_output=True, text=True,
                              env={**os.environ, "PGPASSWORD": self.password})
        if done.returncode != 0:
            raise SystemExit(f"psql failed on {db}: {done.stderr.strip()}")
        return done.stdout
