"""`stashflow deploy` against a real `prefect server`: create, update, prune, pause, prefect.yaml."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import yaml

from .conftest import REPO
from .plans import session, write_plan

STASHFLOW = str(REPO / ".venv" / "bin" / "stashflow")
PREFECT = str(REPO / ".venv" / "bin" / "prefect")


def deployments_of(tag: str) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    async def go():  # type: ignore[no-untyped-def]
        async with get_client() as c:
            found = await c.read_deployments(deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[tag])))
            return {f"{(await c.read_flow(d.flow_id)).name}/{d.name}": d for d in found}
    return asyncio.run(go())


def test_deploy_creates_updates_and_prunes(prefect_server, tmp_path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", "shop", [
        session("nightly", "CRON_TZ=Europe/Berlin 0 2 * * *", params={"message": "it's \"quoted\""}, max_retry=2,
                delay="5m", timeout="1h", history=3),
        session("hourly", "15 * * * *", suspend=True),
    ], name="db-backup", retention={"successfulSnapshots": {"daily": 7}})
    done = subprocess.run([STASHFLOW, "deploy", str(plan)], env=prefect_server, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    found = deployments_of("plan:shop.db-backup")
    assert sorted(found) == ["backup-session/shop-db-backup-hourly", "backup-session/shop-db-backup-nightly"]
    nightly, hourly = found["backup-session/shop-db-backup-nightly"], found["backup-session/shop-db-backup-hourly"]
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "Europe/Berlin")
    assert not nightly.paused and hourly.paused
    p = nightly.parameters
    assert p["target"] == "PersistentVolumeClaim/data" and p["namespace"] == "shop"
    assert (p["configuration"], p["session"], p["addon"]) == ("db-backup", "nightly", "scripted")
    assert p["tasks"] == [{"name": "backup", "params": {"message": "it's \"quoted\""}, "variables": {},
                           "addon_volumes": []}]
    assert p["schedule"]["max_retry"] == 2 and p["schedule"]["retry_delay"] == "5m"
    assert p["limits"] == {"timeout": "1h", "history_limit": 3}
    (repo,) = p["repositories"]
    assert repo["retention"] == {"successfulSnapshots": {"daily": 7}} and repo["name"] == "data-nightly"
    assert repo["storage"]["spec"]["storage"]["provider"] == "local"
    assert {"stashflow", "plan:shop.db-backup", "addon:scripted", "task:backup", "session:nightly",
            "target:shop/pvc/data"} <= set(nightly.tags)
    # the flow's form: the session's groups with their descriptions
    assert nightly.parameter_openapi_schema["properties"]["tasks"]["description"].startswith("Its tasks")

    changed = write_plan(tmp_path / "plan.yaml", "shop", [session("nightly", "0 3 * * *")], name="db-backup")
    done = subprocess.run([STASHFLOW, "deploy", str(changed)], env=prefect_server, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pruned backup-session/shop-db-backup-hourly" in done.stdout
    found = deployments_of("plan:shop.db-backup")
    assert list(found) == ["backup-session/shop-db-backup-nightly"]
    (schedule,) = found["backup-session/shop-db-backup-nightly"].schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 3 * * *", "UTC")


def test_the_server_keeps_its_state_in_the_database_asked_for(prefect_server, prefect_database, tmp_path) -> None:
    """On the PostgreSQL run, the deployments are rows of that PostgreSQL (not a stray SQLite file)."""
    plan = write_plan(tmp_path / "plan.yaml", "db", [session("nightly")], name="where")
    assert subprocess.run([STASHFLOW, "deploy", str(plan)], env=prefect_server, timeout=120).returncode == 0
    url = prefect_database.get("PREFECT_API_DATABASE_CONNECTION_URL")
    if url is None:
        assert (Path(prefect_server["PREFECT_HOME"]) / "prefect.db").exists()
        return
    import asyncio

    import asyncpg

    async def names() -> list[str]:
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            return [r["name"] for r in await connection.fetch("select name from deployment")]
        finally:
            await connection.close()
    assert "db-where-nightly" in asyncio.run(names())


def test_a_paused_plan_gives_paused_deployments(prefect_server, tmp_path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", "ops", [session("a"), session("b")], name="paused-plan", paused=True)
    assert subprocess.run([STASHFLOW, "deploy", str(plan)], env=prefect_server, timeout=120).returncode == 0
    assert all(d.paused for d in deployments_of("plan:ops.paused-plan").values())


def test_a_plan_naming_a_missing_storage_is_an_error_with_its_line(prefect_server, tmp_path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", "ops", [session("a")], name="broken")
    docs = list(yaml.safe_load_all(plan.read_text()))
    plan.write_text(yaml.safe_dump(docs[0], sort_keys=False))  # without the BackupStorage
    done = subprocess.run([STASHFLOW, "deploy", str(plan)], env=prefect_server, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert f"{plan}:" in done.stderr and "unknown-object" in done.stderr and "BackupStorage" in done.stderr
    assert deployments_of("plan:ops.broken") == {}


def test_prefect_deploy_accepts_the_written_prefect_yaml(prefect_server, tmp_path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", "web", [session("nightly"), session("weekly", "0 4 * * 0")],
                      name="site")
    out = tmp_path / "prefect.yaml"
    assert subprocess.run([STASHFLOW, "deploy", str(plan), "--write", str(out), "--work-pool", "stashflow"],
                          env=prefect_server, timeout=120).returncode == 0
    subprocess.run([PREFECT, "--no-prompt", "work-pool", "create", "stashflow", "--type", "process"],
                   env=prefect_server, capture_output=True, timeout=120)
    done = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(out)], env=prefect_server,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = deployments_of("plan:web.site")
    assert sorted(found) == ["backup-session/web-site-nightly", "backup-session/web-site-weekly"]
    assert found["backup-session/web-site-weekly"].work_pool_name == "stashflow"


def test_the_repositorys_prefect_yaml_is_what_its_example_plan_gives(tmp_path) -> None:
    """prefect.yaml at the top of the repo is generated from deployments/examples/pvc-backups.yaml."""
    out = tmp_path / "prefect.yaml"
    env = {**__import__("os").environ, "STASHFLOW_CATALOG": str(REPO / "addons" / "catalog")}
    subprocess.run([STASHFLOW, "deploy", str(REPO / "deployments" / "examples" / "pvc-backups.yaml"), "--write",
                    str(out), "--work-pool", "stashflow"], env=env, check=True, timeout=120)
    assert yaml.safe_load(out.read_text()) == yaml.safe_load((REPO / "prefect.yaml").read_text())


def test_deploy_creates_the_work_pool_it_names_and_refuses_an_unreachable_api(prefect_server, tmp_path) -> None:
    from prefect.client.orchestration import get_client

    plan = write_plan(tmp_path / "plan.yaml", "pools", [session("nightly", "0 2 * * *")], name="p")
    done = subprocess.run([STASHFLOW, "deploy", str(plan), "--work-pool", "fresh-pool"], env=prefect_server,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "created work pool fresh-pool (type process)" in done.stdout
    assert "Traceback" not in done.stderr

    async def pool():  # type: ignore[no-untyped-def]
        async with get_client() as c:
            return await c.read_work_pool("fresh-pool")
    assert asyncio.run(pool()).type == "process"
    again = subprocess.run([STASHFLOW, "deploy", str(plan), "--work-pool", "fresh-pool"], env=prefect_server,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "created work pool" not in again.stdout

    down = subprocess.run([STASHFLOW, "deploy", str(plan), "--work-pool", "fresh-pool"],
                          env={**prefect_server, "PREFECT_API_URL": "http://127.0.0.1:9/api"}, capture_output=True,
                          text=True, timeout=120)
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert "prefect-unavailable" in down.stderr and len(down.stderr.strip().splitlines()) == 1
