"""Diagnosis and result parsing as pure functions on plain Pod/Job JSON, the shapes the API returns
(as the kubelet and the job controller write them; the same cases run for real in tests/runs)."""

from __future__ import annotations

import dataclasses

import pytest

from stashflow.tasks.diagnose import Category, Diagnosis, diagnose, job_phase, pod_problem
from stashflow.tasks.results import aggregate, failed_status, from_termination_message, restic_summary


def pod(name: str = "job-x-abcde", *, phase: str = "Running", waiting: dict | None = None,
        terminated: dict | None = None, conditions: list | None = None, reason: str | None = None,
        message: str | None = None, created: str = "2026-11-28T10:00:00Z") -> dict:
    state = {"waiting": waiting} if waiting else {"terminated": terminated} if terminated else {"running": {}}
    status: dict = {"phase": phase, "containerStatuses": [{"name": "backup-0", "state": state}]}
    if conditions:
        status["conditions"] = conditions
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": status}


def job(condition: dict | None = None) -> dict:
    return {"metadata": {"name": "job-x"}, "status": {"conditions": [condition] if condition else []}}


FAILED_DEADLINE = {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                   "message": "Job was active longer than specified deadline"}


@pytest.mark.parametrize("the_pod, category, reason", [
    (pod(phase="Failed", terminated={"exitCode": 3, "reason": "Error", "message": "restic: repo locked"}),
     Category.EXIT_CODE, "Error"),
    (pod(phase="Failed", terminated={"exitCode": 137, "reason": "OOMKilled"}), Category.OOM_KILLED, "OOMKilled"),
    (pod(phase="Pending", waiting={"reason": "ImagePullBackOff", "message": "back-off pulling"}),
     Category.IMAGE_PULL, "ImagePullBackOff"),
    (pod(phase="Pending", waiting={"reason": "CreateContainerConfigError", "message": 'secret "pw" not found'}),
     Category.CONFIG_ERROR, "CreateContainerConfigError"),
    (pod(phase="Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                       "message": "0/1 nodes are available"}]), Category.UNSCHEDULABLE,
     "Unschedulable"),
    (pod(phase="Failed", reason="Evicted", message="The node was low on resource: memory."), Category.EVICTED,
     "Evicted"),
])
def test_each_pod_problem_has_its_category_and_code(the_pod: dict, category: Category, reason: str) -> None:
    found = pod_problem(the_pod)
    assert found is not None and found.category is category and found.reason == reason
    assert found.code == f"job-{category.value}" and found.hint


def test_a_healthy_pod_has_no_problem() -> None:
    assert pod_problem(pod()) is None
    assert pod_problem(pod(phase="Succeeded", terminated={"exitCode": 0, "reason": "Completed"})) is None


def test_the_deadline_wins_and_the_newest_pod_is_read() -> None:
    old = pod("a", phase="Failed", terminated={"exitCode": 1}, created="2026-11-28T10:00:00Z")
    new = pod("b", phase="Failed", terminated={"exitCode": 2, "message": "second"}, created="2026-11-28T10:01:00Z")
    assert diagnose(job(FAILED_DEADLINE), [old, new]).category is Category.DEADLINE_EXCEEDED
    found = diagnose(job({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}), [old, new],
                     {"b/backup-0": [f"line {i}" for i in range(30)], "a/backup-0": ["old"]})
    assert (found.exit_code, found.message) == (2, "second")
    assert found.log_tail == tuple(f"line {i}" for i in range(10, 30))  # the last 20 lines of the newest Pod
    unknown = diagnose(job(), [])
    assert unknown.category is Category.FAILED and unknown.reason == "Unknown"


def test_diagnosis_is_frozen_and_says_where_the_lines_are() -> None:
    found = Diagnosis(Category.EXIT_CODE, "Error", "first\nlast line", "backup-0", 3, ("a", "b"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.reason = "x"  # type: ignore[misc]
    assert found.summary() == "exit-code: Error, container backup-0, exit code 3: last line"
    text = found.markdown("scripted/backup failed for PersistentVolumeClaim/data in demo", [("Job", "`j`")])
    assert text.startswith("# job-exit-code: scripted/backup failed")
    assert "- Job: `j`" in text and "below" in text and "above" not in text
    assert text.index("**What to do:**") < text.index("## Last log lines")
    assert [c.value for c in Category] == ["exit-code", "oom-killed", "image-pull", "unschedulable",
                                           "deadline-exceeded", "evicted", "config-error", "failed"]


def test_job_phase() -> None:
    assert job_phase(job(FAILED_DEADLINE)) == "Failed"
    assert job_phase(job({"type": "Complete", "status": "True"})) == "Complete"
    assert job_phase(job()) is None


def test_result_channels() -> None:
    message = '{"components": {"dump": {"phase": "Succeeded", "size": "1.000 MiB", "integrity": true}}}'
    assert from_termination_message(message) == {"dump": {"phase": "Succeeded", "size": "1.000 MiB",
                                                          "integrity": True}}
    assert from_termination_message("not json") is None
    assert from_termination_message(None) is None
    lines = ['{"message_type":"status","percent_done":1}',
             '{"message_type":"summary","snapshot_id":"33363809","total_bytes_processed":200000}']
    assert restic_summary(lines)["snapshot_id"] == "33363809"
    assert restic_summary(["plain text"]) is None


def test_aggregate_follows_kubestash() -> None:
    ok = {"phase": "Succeeded", "size": "1.000 MiB", "integrity": True}
    assert aggregate({"dump": ok}) == {"phase": "Succeeded", "totalComponents": 1, "size": "1.000 MiB",
                                       "integrity": True}
    two = aggregate({"dump": ok, "manifest": {**ok, "integrity": False}})
    assert two["phase"] == "Succeeded" and two["size"] == "2.000 MiB" and two["integrity"] is False
    assert aggregate({"dump": ok, "manifest": {"phase": "Failed"}})["phase"] == "Failed"
    assert aggregate({"dump": {"phase": "Pending"}})["phase"] == "Pending"
    assert aggregate({"dump": ok, "manifest": {"phase": "Pending"}})["phase"] == "Running"


def test_failed_status_ends_every_component_and_keeps_conditions() -> None:
    before = {"phase": "Running", "components": {"dump": {"phase": "Running", "path": "p"}},
              "conditions": [{"type": "SnapshotMetadataUploaded", "status": "True"}]}
    after = failed_status(before, "the run was cancelled")
    assert after["phase"] == "Failed"
    assert after["components"] == {"dump": {"phase": "Failed", "path": "p", "error": "the run was cancelled"}}
    assert [c["type"] for c in after["conditions"]] == ["SnapshotMetadataUploaded", "BackupIncomplete"]
    assert after["conditions"][-1]["message"].endswith("the run was cancelled")
