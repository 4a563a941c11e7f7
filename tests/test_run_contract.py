"""The typed run contract (stashflow.flows.parameters): one set of models that the CLI, RestoreSession
files, plans and the Prefect form all build; a bad value fails where it was given, before anything
is created."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from stashflow.addons.catalog import load
from stashflow.deployments.plans import plan_deployments
from stashflow.flows.parameters import Limits, RunParameters, SchedulePolicy, Storage
from support import REPO, run_cli

STORAGE = {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage", "metadata": {"name": "local"},
           "spec": {"storage": {"provider": "local", "local": {"mountPath": "/r", "hostPath": {"path": "/srv/r"}}}}}


def test_run_refuses_an_unknown_parameter_before_prefect_is_reached() -> None:
    rc, out, err = run_cli("run", "stashflow-pvc", "logical-backup", "--target", "pvc/data", "-n", "demo",
                           "--param", "pathz=/srv")
    assert rc == 1 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("<command line>:9: unknown-parameter: ") and '(did you mean "paths"?)' in line


@pytest.mark.parametrize("bad", [{"missed_runs": "lates"}, {"max_retry": -1}, {"retry_delay": "soon"},
                                 {"surprise": True}])
def test_schedule_policy_refuses_what_would_behave_otherwise(bad: dict) -> None:
    with pytest.raises(ValidationError):
        SchedulePolicy(**bad)


def test_limits_and_storage_are_checked_where_they_are_built() -> None:
    with pytest.raises(ValidationError):
        Limits(timeout="forever")
    with pytest.raises(ValidationError):
        Limits(history_limit=-1)
    with pytest.raises(ValidationError):
        Storage(name="s", spec={"storage": {"provider": "local", "local": "not an object"}})


def test_parameters_round_trip_through_the_flow_form() -> None:
    run = RunParameters(target="PersistentVolumeClaim/data", namespace="demo", task_params={"paths": "/x"},
                        repository={"name": "data", "storage": {"name": "local", "spec": STORAGE["spec"]},
                                    "encryption_secret": "pw"},
                        limits={"timeout": "1h"}, schedule={"max_retry": 2}, advanced={"attempt": 2})
    backup = run.to_flow("backup")
    assert list(backup)[:3] == ["target", "namespace", "paths"]
    assert backup["schedule"] == {"max_retry": 2} and backup["limits"] == {"timeout": "1h"}
    again = RunParameters.from_flow(backup, {"paths"})
    assert again == run
    restore = run.to_flow("restore")
    assert "schedule" not in restore and "retention" not in restore


def test_each_task_of_a_session_deploys_with_its_own_addon_volumes(tmp_path: Path) -> None:
    """plan_deployments once reused one task's addonVolumes for the next task of the session."""
    plan = {
        "apiVersion": "core.kubestash.com/v1alpha1", "kind": "BackupConfiguration",
        "metadata": {"name": "two", "namespace": "demo"},
        "spec": {"target": {"kind": "PersistentVolumeClaim", "name": "data"},
                 "backends": [{"name": "b", "storageRef": {"name": "local"}}],
                 "sessions": [{"name": "s", "scheduler": {"schedule": "0 2 * * *"},
                               "repositories": [{"name": "r", "backend": "b", "encryptionSecret": {"name": "pw"}}],
                               "addon": {"name": "stashflow-pvc", "tasks": [
                                   {"name": "logical-backup", "addonVolumes": [
                                       {"name": "kubestash-tmp-volume", "source": {"emptyDir": {"medium": "Memory"}}}]},
                                   {"name": "logical-backup"}]}}]}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump_all([plan, {**STORAGE, "metadata": {"name": "local", "namespace": "demo"}}]))
    catalog = load([REPO / "addons" / "catalog", path])
    (deployment,) = plan_deployments(catalog, work_pool=None)  # one session, one deployment
    first, second = deployment.parameters["tasks"]
    assert first["addon_volumes"][0]["name"] == "kubestash-tmp-volume"
    assert second["addon_volumes"] == []


def test_a_failures_diagnosis_says_what_retry_follows() -> None:
    from stashflow.flows.policies import retry_note

    assert retry_note(1, 2, "30s", deployed=True) == "attempt 2 of 3 follows in 30s"
    assert retry_note(2, 2, None, deployed=True) == "attempt 3 of 3 follows now"
    assert retry_note(3, 2, "30s", deployed=True) == "none: this was attempt 3 of 3 (retryConfig.maxRetry 2)"
    assert retry_note(1, 5, "30s", deployed=False).startswith("none (a run by hand is not retried")
