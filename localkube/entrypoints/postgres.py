"""The official ``postgres`` image's entrypoint (docker-entrypoint.sh), played with Debian's PostgreSQL.

The node agent runs this for a container of image ``postgres:*`` that gives no ``command``
(localkube/images.py). Like the image: as root, make ``$PGDATA`` (default
/var/lib/postgresql/data) and the socket directory the ``postgres`` user's; if ``$PGDATA`` holds no
cluster yet, ``initdb`` one whose superuser is ``$POSTGRES_USER`` (default postgres) with
``$POSTGRES_PASSWORD`` (required), password (scram-sha-256) logins from any host and
``listen_addresses = '*'``, and create ``$POSTGRES_DB`` (default the user's name); then drop to the
``postgres`` user and exec ``postgres`` with the container's args. The server is Debian's (its
newest major version here), not the image's: the data directory format is Debian's version's.
``$PGPORT`` is the port, as for the image's server.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

USER = "postgres"


def _bin() -> Path:
    return max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))


def _as_postgres() -> None:
    account = pwd.getpwnam(USER)
    os.initgroups(USER, account.pw_gid)
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    os.environ["HOME"] = account.pw_dir
    # the change of user cleared the parent-death signal of the node agent's `unshare --kill-child`
    # (gosu in the image does the same; a kubelet's runtime kills by cgroup instead): set it again
    if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def _init(data: Path, bindir: Path) -> None:
    password = os.environ.get("POSTGRES_PASSWORD")
    if not password:
        sys.exit("Error: Database is uninitialized and superuser password is not specified.\n"
                 "       You must specify POSTGRES_PASSWORD to a non-empty value for the superuser.")
    user = os.environ.get("POSTGRES_USER") or USER
    database = os.environ.get("POSTGRES_DB") or user
    with tempfile.NamedTemporaryFile("w", dir=data.parent, delete=False) as pwfile:
        pwfile.write(password + "\n")
    shutil.chown(pwfile.name, USER, USER)
    os.chmod(pwfile.name, 0o600)
    try:
        subprocess.run([str(bindir / "initdb"), "-D", str(data), "--username", user, f"--pwfile={pwfile.name}",
                        "-E", "UTF8", "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256"],
                       user=USER, group=USER, check=True, stdout=subprocess.DEVNULL)
    finally:
        os.unlink(pwfile.name)
    with open(data / "pg_hba.conf", "a") as hba:
        hba.write("host all all all scram-sha-256\n")
    with open(data / "postgresql.conf", "a") as conf:
        conf.write("listen_addresses = '*'\n")
    if database != "postgres":
        quoted = '"' + database.replace('"', '""') + '"'
        subprocess.run([str(bindir / "postgres"), "--single", "-j", "-D", str(data), "postgres"],
                       input=f"CREATE DATABASE {quoted};\n", text=True, user=USER, group=USER, check=True,
                       stdout=subprocess.DEVNULL)
    print(f"PostgreSQL init process complete; database {database!r} of user {user!r} ready for start up.", flush=True)


def main(args: list[str]) -> None:
    bindir = _bin()
    data = Path(os.environ.get("PGDATA") or "/var/lib/postgresql/data")
    data.mkdir(parents=True, exist_ok=True)
    shutil.chown(data, USER, USER)
    data.chmod(0o700)
    sockets = Path("/var/run/postgresql")
    sockets.mkdir(parents=True, exist_ok=True)
    shutil.chown(sockets, USER, USER)
    sockets.chmod(0o3777)
    if not (data / "PG_VERSION").exists():
        _init(data, bindir)
    if not args or args[0].startswith("-"):
        args = ["postgres", *args]
    if args[0] == "postgres":
        args = [str(bindir / "postgres"), "-D", str(data), *args[1:]]
    _as_postgres()
    os.execv(args[0], args)


if __name__ == "__main__":
    main(sys.argv[1:])
