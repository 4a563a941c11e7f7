"""What a run leaves in the Prefect UI's Artifacts, for a platform engineer reading it.

Every artifact has a stable key, so the UI keeps one history per key:

- ``components-<ns>-<kind>-<name>``: this run's Snapshot components (a table);
- ``last-backup-<ns>-<kind>-<name>``: the target's last successful backup, read from the cluster's
  newest Succeeded Snapshot, and the last attempt when that one failed;
- ``failure-<ns>-<kind>-<name>``: why the last failed run failed (flows/engine.py);
- ``restore-<ns>-<kind>-<name>``: what a restore restored, and from which Snapshot;
- ``stashflow-fleet``: one table across every target: last success and its age, size, integrity, the
  last attempt's state and code, the next scheduled run. Each run rewrites its own row.

The row and text builders are pure (tested on plain data); ``publish_*`` write them.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone
from typing import Any, Mapping

from stashflow.flows.naming import short_target

FLEET_KEY = "stashflow-fleet"
log = logging.getLogger("stashflow.artifacts")


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")[:100]


def target_key(kind: str, namespace: str, target_kind: str, name: str) -> str:
    return artifact_key(kind, namespace, target_kind, name)


def yes_no(value: Any) -> str:
    """``true``/``false`` as Kubernetes spells them; ``not reported`` for None."""
    return "not reported" if value is None else ("true" if value else "false")


def component_rows(components: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, component in components.items():
        stats = (component.get("resticStats") or [{}])[0]
        stats = stats.get("summary", stats)
        rows.append({"component": name, "phase": component.get("phase", ""), "size": component.get("size", ""),
                     "duration": component.get("duration", ""), "integrity": yes_no(component.get("integrity")),
                     "restic snapshot": stats.get("id", ""), "uploaded": stats.get("uploaded", ""),
                     "error": component.get("error", "")})
    return rows


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def age(then: datetime | None, now: datetime) -> str:
    """``3h 12m`` style, for "how old is my last good backup"."""
    if then is None:
        return ""
    seconds = max(int((now - then).total_seconds()), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"


def last_backup_markdown(target: str, namespace: str, snapshot: Mapping[str, Any] | None,
                         attempt: Mapping[str, str] | None, now: datetime) -> str:
    """The target's last successful backup (a Succeeded Snapshot), and the last attempt if it failed."""
    lines = [f"# Last successful backup of {target} in {namespace}", ""]
    if attempt and attempt.get("state") != "Completed":
        lines += [f"> **The last attempt failed**: {attempt.get('code', '')} at {attempt.get('time', '')} "
                  f"(Snapshot `{attempt.get('snapshot', '-')}`); the backup below is older.", ""]
    if snapshot is None:
        return "\n".join(lines + ["No successful backup yet."])
    status, spec, meta = snapshot.get("status") or {}, snapshot.get("spec") or {}, snapshot.get("metadata") or {}
    taken = parse_time(status.get("snapshotTime"))
    annotations = meta.get("annotations") or {}
    lines += [
        f"- Snapshot: `{meta.get('name', '')}`",
        f"- taken: {status.get('snapshotTime', '')} ({age(taken, now)} ago)",
        f"- repository: `{spec.get('repository', '')}`, storage `{annotations.get('stashflow.io/storage', '-')}`"
        + (f", directory `{annotations['stashflow.io/directory']}`" if annotations.get("stashflow.io/directory") else ""),
        f"- size: {status.get('size') or 'not reported'}",
        f"- integrity: {yes_no(status.get('integrity'))}",
        f"- duration: {status.get('duration') or _max_duration(status) or 'not reported'}",
        "",
        "| component | restic snapshot | size | uploaded | integrity |",
        "|---|---|---|---|---|",
        *[f"| {r['component']} | `{r['restic snapshot']}` | {r['size']} | {r['uploaded']} | {r['integrity']} |"
          for r in component_rows(status.get("components") or {})],
    ]
    return "\n".join(lines)


def _max_duration(status: Mapping[str, Any]) -> str:
    durations = [c.get("duration") for c in (status.get("components") or {}).values() if c and c.get("duration")]
    return durations[0] if len(durations) == 1 else ""


def fleet_row(*, namespace: str, target: str, task: str, state: str, code: str, when: datetime,
              last_success: Mapping[str, Any] | None, next_run: datetime | None) -> dict[str, str]:
    status = (last_success or {}).get("status") or {}
    taken = parse_time(status.get("snapshotTime"))
    # what needs attention first (the last attempt and its code), then the last good backup
    return {
        "target": short_target(namespace, target), "task": task, "last attempt": state, "code": code or "-",
        "attempted": when.strftime("%Y-%m-%d %H:%M"),
        "last success": (status.get("snapshotTime") or "").replace("T", " ")[:16] if last_success else "never",
        "age then": age(taken, when) if taken else "",
        "size": status.get("size", ""), "integrity": yes_no(status.get("integrity")) if last_success else "",
        "next run": next_run.strftime("%Y-%m-%d %H:%M") if next_run else "not scheduled",
    }


def merge_fleet(rows: list[dict[str, str]], row: dict[str, str]) -> list[dict[str, str]]:
    """The fleet table with ``row`` in place of its target and task's old row, sorted by target."""
    kept = [r for r in rows if (r.get("target"), r.get("task")) != (row["target"], row["task"])]
    return sorted([*kept, row], key=lambda r: (r.get("target", ""), r.get("task", "")))


async def read_fleet() -> list[dict[str, str]]:
    """The newest version of the fleet table (empty when there is none, or it cannot be read)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[FLEET_KEY])),
                                            sort=ArtifactSort.CREATED_DESC, limit=1)
    if not found:
        return []
    data = found[0].data
    try:
        rows = json.loads(data) if isinstance(data, str) else data
    except ValueError:
        return []
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


async def next_scheduled_run() -> datetime | None:
    """When this run's deployment runs next (None for an ad-hoc run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.runtime import deployment

    deployment_id = deployment.id
    if not deployment_id:
        return None
    async with get_client() as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.SCHEDULED]))),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
    return runs[0].expected_start_time if runs else None


async def publish_fleet(row: dict[str, str]) -> None:
    from prefect.artifacts import acreate_table_artifact

    try:
        rows = merge_fleet(await read_fleet(), row)
    except Exception as exc:  # noqa: BLE001 - the overview must never fail a backup
        log.warning("fleet overview not updated: %s", exc)
        return
    await acreate_table_artifact(key=FLEET_KEY, table=rows,
                                 description="every target stashflow backs up: last success, last attempt, next run")


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
