"""Real database servers from Debian's packages, for the tests: 127.0.0.1, a free port, a tmp data
dir, started and stopped by pid. The clients the tests read data back with are Debian's too."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, TypeVar

from localkube.helpers import apt_install


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll until ``check()`` is true (a server becoming ready), else fail saying ``what``."""
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def stop_pid(proc: subprocess.Popen, signum: int, timeout: float = 30.0) -> None:
    """Stop one server process by its pid: ``signum`` first, SIGKILL if it does not go."""
    if proc.poll() is not None:
        return
    proc.send_signal(signum)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Server:
    """What the three servers share: a process started by the test, its data under ``root``, stopped by
    pid with ``STOP_SIGNAL`` (SIGKILL if it does not go) and removed with its files by ``close``."""

    STOP_SIGNAL = signal.SIGTERM
    root: Path
    proc: subprocess.Popen | None

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc, self.STOP_SIGNAL)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class Postgres(Server):
    """A PostgreSQL cluster (initdb) run by the ``postgres`` system user; password auth over TCP."""

    SUPERUSER = "postgres"
    STOP_SIGNAL = signal.SIGINT  # "fast" shutdown

    def __init__(self, password: str) -> None:
        apt_install("postgresql")
        self.bin = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
        self.password = password
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="stashflow-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log = self.root / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def version(self) -> str:
        return self.bin.parent.name

    def _as_postgres(self, argv: list[str], **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
        return subprocess.run(argv, user="postgres", group="postgres", check=True, capture_output=True, text=True,
                              cwd=self.root, **kw)

    def init(self) -> None:
        """A fresh, empty cluster (the old one's data gone)."""
        shutil.rmtree(self.data, ignore_errors=True)
        for d in (self.data, self.socket_dir):
            d.mkdir(exist_ok=True)
            shutil.chown(d, "postgres", "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        self._as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-U", self.SUPERUSER, "-E", "UTF8",
                           "--locale=C.UTF-8", "--auth=scram-sha-256", f"--pwfile={pwfile}"])
        pwfile.unlink()

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.socket_dir}",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                user="postgres", group="postgres", stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        wait_for(self.ready, 60, f"PostgreSQL on 127.0.0.1:{self.port} (log: {self.log})")

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        return subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
                              ).returncode == 0

    def recreate(self) -> None:
        """Destroy everything: stop, delete the data directory, initdb, start."""
        self.stop()
        self.init()
        self.start()

    def psql(self, sql: str, db: str = "postgres", user: str | None = None) -> str:
        """Run SQL (ON_ERROR_STOP) with Debian's psql; unaligned, tuples-only output."""
        done = subprocess.run(
            ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", user or self.SUPERUSER, "-d", db, "-f", "-"],
            input=sql, capture_output=True, text=True, env={**os.environ, "PGPASSWORD": self.password})
        if done.returncode != 0:
            raise RuntimeError(f"psql failed on {db}: {done.stderr.strip()}")
        return done.stdout


class MariaDB(Server):
    """A MariaDB server (mariadb-install-db) that drops to the ``mysql`` user itself; an ``admin``
    account with a password for TCP, as the Functions connect."""

    ADMIN = "admin"

    def __init__(self, password: str) -> None:
        apt_install("mariadb-server", "mariadb-client")
        self.password = password
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="stashflow-mariadb-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.socket = self.root / "mysqld.sock"
        self.log = self.root / "server.log"
        self.proc: subprocess.Popen | None = None

    def init(self) -> None:
        """A fresh, empty server directory (the old one's data gone)."""
        shutil.rmtree(self.data, ignore_errors=True)
        self.data.mkdir()
        shutil.chown(self.data, "mysql", "mysql")
        shutil.chown(self.root, "mysql", "mysql")
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.data}", "--user=mysql",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True)
        self._fresh = True

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["mariadbd", "--no-defaults", f"--datadir={self.data}", "--user=mysql", f"--port={self.port}",
                 "--bind-address=127.0.0.1", f"--socket={self.socket}", f"--pid-file={self.root / 'pid'}",
                 "--innodb-flush-log-at-trx-commit=0", "--innodb-buffer-pool-size=128M",
                 "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        wait_for(self.ready, 60, f"MariaDB on 127.0.0.1:{self.port} (log: {self.log})")
        if self._fresh:  # root by socket only; the admin the tests and Functions use, over TCP
            quoted = "'" + self.password.replace("\\", "\\\\").replace("'", "\\'") + "'"
            subprocess.run(["mariadb", "--no-defaults", f"--socket={self.socket}", "-uroot"], check=True,
                           capture_output=True, text=True,
                           input=f"CREATE USER {self.ADMIN}@'%' IDENTIFIED BY {quoted};\n"
                                 f"GRANT ALL PRIVILEGES ON *.* TO {self.ADMIN}@'%' WITH GRANT OPTION;\n"
                                 # as root has it: restoring the dumped users grants PROXY to root
                                 f"GRANT PROXY ON ''@'%' TO {self.ADMIN}@'%' WITH GRANT OPTION;\n")
            self._fresh = False

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"MariaDB exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        return subprocess.run(["mariadb-admin", "--no-defaults", f"--socket={self.socket}", "-uroot", "ping"],
                              capture_output=True).returncode == 0

    def recreate(self) -> None:
        self.stop()
        self.init()
        self.start()

    def sql(self, text: str, db: str | None = None) -> str:
        """Run SQL as the admin over TCP; tab-separated rows, no column names."""
        done = subprocess.run(["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(self.port), "-u", self.ADMIN,
                               "--batch", "--skip-column-names", "--default-character-set=utf8mb4", *([db] if db else [])],
                              input=text, capture_output=True, text=True, env={**os.environ, "MYSQL_PWD": self.password})
        if done.returncode != 0:
            raise RuntimeError(f"mariadb failed: {done.stderr.strip()}")
        return done.stdout


def resp(*args: str | bytes) -> bytes:
    """One command in Redis' wire protocol (for ``redis-cli --pipe``)."""
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out += [f"${len(data)}\r\n".encode(), data, b"\r\n"]
    return b"".join(out)


class Redis(Server):
    """A Redis server with a password (from its config file, not argv) and no saving of its own;
    ``start(dir)`` serves the data directory given (where a restore put dump.rdb)."""

    def __init__(self, password: str) -> None:
        apt_install("redis-server", "redis-tools")
        self.password = password
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="stashflow-redis-"))
        self.dir = self.root / "data"
        self.log = self.root / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, data_dir: Path | None = None) -> None:
        self.dir = data_dir or self.root / "data"
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.root / "redis.conf"
        quoted = '"' + self.password.replace("\\", "\\\\").replace('"', '\\"') + '"'
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\nsave \"\"\nappendonly no\n"
                        f"requirepass {quoted}\nenable-debug-command yes\nlogfile {self.log}\n")
        conf.chmod(0o600)
        self.proc = subprocess.Popen(["redis-server", str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(self.ready, 60, f"Redis on 127.0.0.1:{self.port} (log: {self.log})")

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"Redis exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        done = subprocess.run(["redis-cli", "-p", str(self.port), "--no-auth-warning", "ping"], capture_output=True,
                              text=True, env={**os.environ, "REDISCLI_AUTH": self.password})
        return done.stdout.strip() == "PONG"

    def cli(self, *args: str, db: int = 0) -> str:
        done = subprocess.run(["redis-cli", "-p", str(self.port), "-n", str(db), "--no-auth-warning", *args],
                              capture_output=True, text=True, env={**os.environ, "REDISCLI_AUTH": self.password})
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli {args[0]} failed: {done.stderr.strip()}")
        return done.stdout

    def pipe(self, commands: bytes) -> None:
        done = subprocess.run(["redis-cli", "-p", str(self.port), "--no-auth-warning", "--pipe"], input=commands,
                              capture_output=True, env={**os.environ, "REDISCLI_AUTH": self.password})
        if done.returncode != 0 or b"errors: 0" not in done.stdout:
            raise RuntimeError(f"redis-cli --pipe failed: {done.stdout[-500:]!r} {done.stderr[-500:]!r}")


S = TypeVar("S", Postgres, MariaDB)


def serving(server: S) -> Iterator[S]:
    """Initialise and start ``server`` for a fixture's scope; stop it by pid and remove its files after
    (``yield from serving(Postgres(...))``)."""
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.close()
