"""The Prefect form of every built-in flow: what a person opens in the UI to run a task by hand.

Target and namespace first, then the Addon task's own parameters (with their usage and defaults),
then the run options in groups; only the groups that apply to the kind of task; no field whose
type is text or object at once."""

from __future__ import annotations

import pytest

from stashflow.flows.addon_flows import flows

BACKUP = ["target", "namespace", "paths", "host", "repository", "limits", "schedule", "retention", "cluster",
          "advanced"]
RESTORE = ["target", "namespace", "snapshot", "repository", "limits", "cluster", "advanced"]


def form(name: str) -> dict:
    return flows()[name].parameters.model_dump()


def ordered(schema: dict) -> list[str]:
    return sorted(schema["properties"], key=lambda p: schema["properties"][p]["position"])


@pytest.mark.parametrize("name, fields", [("stashflow_pvc__logical_backup", BACKUP),
                                          ("stashflow_pvc__logical_backup_restore", RESTORE)])
def test_the_form_order_and_its_fields(name: str, fields: list[str]) -> None:
    schema = form(name)
    assert ordered(schema) == fields
    assert schema["required"] == ["target"]


def test_task_parameters_carry_their_usage_and_default() -> None:
    props = form("stashflow_pvc__logical_backup")["properties"]
    assert props["paths"]["default"] == "/kubestash-data"
    assert props["paths"]["description"].startswith("The directory to back up")
    assert props["target"]["type"] == "string"


def _resolve(schema: dict, prop: dict) -> dict:
    ref = prop.get("$ref") or next((a["$ref"] for a in prop.get("allOf", []) if "$ref" in a), None)
    return schema["definitions"][ref.rsplit("/", 1)[-1]] if ref else prop


def test_groups_are_objects_with_typed_fields_and_choices() -> None:
    schema = form("stashflow_pvc__logical_backup")
    schedule = _resolve(schema, schema["properties"]["schedule"])
    assert schedule["properties"]["exclusive"]["default"] is True
    missed = _resolve(schema, schedule["properties"]["missed_runs"])
    assert missed["enum"] == ["latest", "all", "none"]
    repository = _resolve(schema, schema["properties"]["repository"])
    storage = repository["properties"]["storage"]
    # one declared type: a BackupStorage object (or none), never "text or object"
    kinds = {a.get("type") or ("object" if "$ref" in a else None) for a in storage.get("anyOf", [storage])}
    assert kinds <= {"object", "null"}
    limits = _resolve(schema, schema["properties"]["limits"])
    assert limits["properties"]["history_limit"]["minimum"] == 0


def test_every_builtin_flow_has_a_form_with_target_first() -> None:
    for name, flow in flows().items():
        schema = flow.parameters.model_dump()
        assert ordered(schema)[:2] == ["target", "namespace"], name
        restore = "snapshot" in schema["properties"]
        assert ("schedule" in schema["properties"]) is not restore, name
        assert ("retention" in schema["properties"]) is not restore, name
