"""The artifacts' text and rows, as pure functions on plain Snapshot data."""

from __future__ import annotations

from datetime import datetime, timezone

from stashflow.flows.artifacts import age, artifact_key, component_rows, fleet_row, last_backup_markdown, \
    merge_fleet, yes_no

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
SNAPSHOT = {
    "metadata": {"name": "data-data-1", "annotations": {"stashflow.io/storage": "local",
                                                        "stashflow.io/directory": "demo/data"}},
    "spec": {"repository": "data"},
    "status": {"phase": "Succeeded", "snapshotTime": "2026-11-28T09:30:00Z", "size": "1.234 MiB",
               "integrity": True, "components": {"dump": {
                   "phase": "Succeeded", "size": "1.234 MiB", "integrity": True, "duration": "2.1s",
                   "resticStats": [{"summary": {"id": "33363809", "uploaded": "600 KiB"}}]}}},
}


def test_keys_and_spellings() -> None:
    assert artifact_key("last-backup", "demo", "PersistentVolumeClaim", "Data_1") == \
        "last-backup-demo-persistentvolumeclaim-data-1"
    assert (yes_no(True), yes_no(False), yes_no(None)) == ("true", "false", "not reported")
    assert (age(datetime(2026, 11, 28, 9, 30, tzinfo=timezone.utc), NOW), age(None, NOW)) == ("2h 30m", "")
    assert age(datetime(2026, 11, 25, 11, 0, tzinfo=timezone.utc), NOW) == "3d 1h"


def test_components_table_reads_both_restic_stats_forms() -> None:
    (row,) = component_rows(SNAPSHOT["status"]["components"])
    assert row["restic snapshot"] == "33363809" and row["uploaded"] == "600 KiB" and row["integrity"] == "true"
    (flat,) = component_rows({"dump": {"phase": "Failed", "resticStats": [{"id": "abc"}], "error": "boom"}})
    assert (flat["restic snapshot"], flat["integrity"], flat["error"]) == ("abc", "not reported", "boom")


def test_last_backup_names_the_snapshot_time_and_a_later_failure() -> None:
    text = last_backup_markdown("PersistentVolumeClaim/data", "demo", SNAPSHOT, {"state": "Completed"}, NOW)
    assert "- taken: 2026-11-28T09:30:00Z (2h 30m ago)" in text
    assert "storage `local`, directory `demo/data`" in text and "- integrity: true" in text
    assert "failed" not in text
    failed = last_backup_markdown("PersistentVolumeClaim/data", "demo", SNAPSHOT,
                                  {"state": "Failed", "code": "repository-corrupt", "time": "2026-11-28T11:00:00Z",
                                   "snapshot": "data-data-2"}, NOW)
    assert "**The last attempt failed**: repository-corrupt" in failed and "`data-data-2`" in failed
    assert "No successful backup yet." in last_backup_markdown("x", "demo", None, None, NOW)


def test_fleet_rows_replace_their_own_target_only() -> None:
    row = fleet_row(namespace="demo", target="PersistentVolumeClaim/data", task="stashflow-pvc/logical-backup",
                    state="Failed", code="job-exit-code", when=NOW, last_success=SNAPSHOT, next_run=None)
    assert row["age then"] == "2h 30m" and row["code"] == "job-exit-code" and row["next run"] == "not scheduled"
    assert row["target"] == "demo/pvc/data" and list(row)[:4] == ["target", "task", "last attempt", "code"]
    other = {"target": "demo/pvc/aaa", "task": "stashflow-pvc/logical-backup"}
    old = {**row, "code": "old"}
    merged = merge_fleet([old, other], row)
    assert merged == [other, row]
    never = fleet_row(namespace="demo", target="x/y", task="t", state="Failed", code="c", when=NOW,
                      last_success=None, next_run=NOW)
    assert never["last success"] == "never" and never["next run"] == "2026-11-28 12:00"
