"""Redis end to end: a real server (Debian's redis-server) with data that hurts, its RDB streamed
through ``stashflow-redis:logical-backup`` (redis-cli --rdb - → stashflow-executor → restic, run for
real by the node agent); the server destroyed; the RDB restored into a PVC by
``stashflow-redis:logical-backup-restore``; a server started on that PVC holds the same data."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

from kubernetes_asyncio import client

from localkube.helpers import create_pvc, pvc_host_path

from ..observe import api, eventually, flow_run_artifacts, nothing_left, snapshot, snapshots
from .conftest import DB_PASSWORD, Flows
from .servers import Redis, free_port, resp

ADDON = "stashflow-redis"
TARGET = "Redis.kubedb.com/cache"


def fill(server: Redis) -> None:
    commands = [resp("SELECT", "0")]
    commands += [resp("SET", f"key:{i}", f"value {i} ü") for i in range(100_000)]
    blob = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(40_000))  # 1.25 MB, binary
    commands += [
        resp("SET", b"bin:\x00\xff\r\n", blob),
        resp("SET", "ключ 🔑", "значение"),
        resp("SET", "$HOME; rm -rf /", "'quoted' \"double\" \\"),
        resp("HSET", "hash:ünï", *[x for i in range(1000) for x in (f"field {i}", f"v{i}")]),
        resp("RPUSH", "list", *[f"item {i}" for i in range(500)], "", "\x00"),
        resp("SADD", "set", *[f"member {i}" for i in range(300)]),
        resp("ZADD", "zset", *[x for i in range(300) for x in (str(i * 1.5), f"z{i}")]),
        resp("XADD", "stream", "1-1", "event", "created", "who", "ü"),
        resp("XADD", "stream", "2-1", "event", "deleted"),
        resp("SET", "expiring", "soon", "PXAT", "4102444800000"),  # 2100-01-01: compared exactly
        resp("SELECT", "3"),
        *[resp("SET", f"other:{i}", f"db three {i}") for i in range(1000)],
    ]
    server.pipe(b"".join(commands))


def content(server: Redis) -> dict[str, str]:
    """Keys per database, the server's digest of the whole dataset (values, types and expiry), and a
    few values read back."""
    keyspace = [line.split(",avg_ttl")[0] for line in server.cli("INFO", "keyspace").splitlines() if line.startswith("db")]
    return {"keyspace": "\n".join(keyspace), "digest": server.cli("DEBUG", "DIGEST"),
            "unicode": server.cli("GET", "ключ 🔑"), "expiry": server.cli("PEXPIRETIME", "expiring"),
            "db3": server.cli("GET", "other:999", db=3)}


def test_rdb_backup_destroy_restore_into_a_pvc_gives_equal_data(flows: Flows, redis: Redis) -> None:
    flows.secret("redis-auth", {"password": DB_PASSWORD})
    redis.start()
    fill(redis)
    before = content(redis)
    assert "db0:keys=100009,expires=1" in before["keyspace"] and "db3:keys=1000" in before["keyspace"]

    backup = flows.backup(ADDON, TARGET, host="127.0.0.1", port=str(redis.port), authSecret="redis-auth")
    assert backup.is_completed(), backup.message
    snap = snapshot(flows.cluster, flows.namespace, backup.result()["snapshot"])
    assert snap["status"]["phase"] == "Succeeded", snap["status"]
    (only,) = flows.restic_snapshots()
    assert only["paths"] == ["/dump.rdb"]

    redis.stop()  # destroyed: the server and its data directory are gone
    shutil.rmtree(redis.dir)

    async def new_volume(c: client.ApiClient):  # type: ignore[no-untyped-def]
        await create_pvc(c, flows.namespace, "redis-data")
        return await pvc_host_path(c, flows.namespace, "redis-data")
    data_dir = api(flows.cluster, new_volume)
    restore = flows.restore(ADDON, "PersistentVolumeClaim/redis-data", repository="cache")
    assert restore.is_completed(), restore.message
    assert sorted(p.name for p in data_dir.iterdir()) == ["dump.rdb"]  # no partial file left
    redis.start(data_dir)
    try:
        assert content(redis) == before
    finally:
        redis.stop()


def test_wrong_password_and_server_down_fail_with_redis_clis_words(flows: Flows, redis: Redis) -> None:
    flows.secret("wrong", {"password": "not the password"})
    redis.start()
    try:
        cases = [("wrong", redis.port, "AUTH failed: WRONGPASS invalid username-password pair"),
                 ("wrong", free_port(), "Connection refused")]
        for n, (secret, port, line) in enumerate(cases):
            state = flows.backup(ADDON, TARGET, host="127.0.0.1", port=str(port), authSecret=secret,
                                 session=f"cache-{n}", history_limit=0)
            assert state.is_failed()
            assert "job-exit-code" in state.message and line in state.message, state.message
            failed = [s for s in snapshots(flows.cluster, flows.namespace)
                      if s["metadata"]["name"] == f"cache-cache-{n}"]
            assert failed[0]["status"]["phase"] == "Failed"
            assert line in failed[0]["status"]["components"]["dump"]["error"]
            assert flows.restic_snapshots() == []
            eventually(lambda: nothing_left(flows.cluster, flows.namespace), timeout=60)
    finally:
        redis.stop()


def test_disk_full_during_restore_fails_with_restics_words_and_leaves_no_partial_file(flows: Flows,
                                                                                      redis: Redis) -> None:
    """The restore's target filesystem fills: the PVC's directory on the host is a real 1 MiB tmpfs
    (mounted there by the test, root on this machine), the RDB is ~4 MB. restic's write into the
    executor's partial file fails with ENOSPC; the run fails with restic's own line, the partial file
    is gone, and the Snapshot restored from stays Succeeded (a restore records no Snapshot of its own)."""
    flows.secret("redis-auth", {"password": DB_PASSWORD})
    redis.start()
    try:
        fill(redis)
        backup = flows.backup(ADDON, TARGET, host="127.0.0.1", port=str(redis.port), authSecret="redis-auth",
                              history_limit=0)
    finally:
        redis.stop()
    assert backup.is_completed(), backup.message

    async def new_volume(c: client.ApiClient):  # type: ignore[no-untyped-def]
        await create_pvc(c, flows.namespace, "small")
        return await pvc_host_path(c, flows.namespace, "small")
    data_dir = api(flows.cluster, new_volume)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "stashflow-disk-full-test", str(data_dir)],
                   check=True)
    try:
        restore = flows.restore(ADDON, "PersistentVolumeClaim/small", repository="cache", history_limit=0)
        line = "cannot dump file: Write: write /dev/stdout: no space left on device"
        assert restore.is_failed()
        error = str(restore.result(raise_on_failure=False))
        assert restore.message.startswith("job-exit-code: ") and line in error, (restore.message, error)
        assert "restic exited with code" in error
        artifacts = flow_run_artifacts(restore.state_details.flow_run_id)
        assert any(a.type == "markdown" and line in a.data for a in artifacts)
        assert list(data_dir.iterdir()) == []  # no partial dump.rdb on the full filesystem
        source = snapshot(flows.cluster, flows.namespace, backup.result()["snapshot"])
        assert source["status"]["phase"] == "Succeeded"
        eventually(lambda: nothing_left(flows.cluster, flows.namespace), timeout=60)
    finally:
        subprocess.run(["umount", str(data_dir)], check=True)
