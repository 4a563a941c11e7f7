"""What a restore needs before it starts (addons/restore_source.py); tests/runs/test_restore_preconditions.py
runs the same cases through `stashflow restore` on the real control plane."""

from __future__ import annotations

from typing import Any

from stashflow.addons.restore_source import ANN_STORAGE_OBJECT, RestoreSource, source_problem


def snap(phase: str = "Succeeded", labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
         components: bool = True) -> dict[str, Any]:
    return {"metadata": {"name": "s-1", "labels": labels or {}, "annotations": annotations or {}},
            "spec": {"repository": "repo"},
            "status": {"phase": phase, **({"components": {"dump": {"phase": phase}}} if components else {})}}


def source(snapshot: dict[str, Any] | None, repository: dict[str, Any] | None = None, given: str = "s-1",
           **kw: Any) -> RestoreSource:
    return RestoreSource(namespace="demo", snapshot_name=given, repository_name="repo", snapshot=snapshot,
                         repository=repository, **kw)


def code(src: RestoreSource, kubestash: bool = False) -> str | None:
    problem = source_problem(src, kubestash)
    return problem.code if problem else None


def test_the_snapshot_must_exist_be_succeeded_and_have_components() -> None:
    assert code(source(None)) == "snapshot-not-found"
    assert code(source(snap("Failed"), {})) == "snapshot-not-found"
    assert code(source(snap(components=False), {})) == "snapshot-not-found"
    assert code(source(snap(), {})) is None


def test_latest_of_a_repository_that_is_nowhere_is_repository_not_found() -> None:
    assert code(source(None, None, "latest")) == "repository-not-found"
    assert code(source(None, None, "latest", repository_has_snapshots=True)) == "snapshot-not-found"  # none Succeeded
    assert code(source(None, {}, "latest")) == "snapshot-not-found"


def test_the_repository_object_is_needed_unless_the_snapshot_knows_where_its_data_is() -> None:
    assert code(source(snap())) == "repository-not-found"  # KubeStash made it: only its Repository says where
    assert code(source(snap(labels={"app.kubernetes.io/managed-by": "stashflow"}))) is None
    assert code(source(snap(annotations={ANN_STORAGE_OBJECT: "{}"}))) is None
    # a KubeStash executor walks Snapshot → Repository whatever the Snapshot records
    assert code(source(snap(annotations={ANN_STORAGE_OBJECT: "{}"})), kubestash=True) == "repository-not-found"
