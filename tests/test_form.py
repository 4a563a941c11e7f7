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
    # one declared type: a BackupStorage object, never "text or object" nor a "None" toggle
    assert storage == {"allOf": [{"$ref": "#/definitions/Storage"}], "description": storage["description"]}
    limits = _resolve(schema, schema["properties"]["limits"])
    assert limits["properties"]["history_limit"]["minimum"] == 0
    logs = _resolve(schema, limits["properties"]["logs"])
    assert logs["enum"] == ["tail", "follow"] and limits["properties"]["logs"]["default"] == "tail"
    # a restore is watched, and a dry run's plan is its log: its form opens with follow
    restore = form("stashflow_pvc__logical_backup_restore")
    assert restore["properties"]["limits"]["default"]["logs"] == "follow"
    assert schema["properties"]["limits"]["default"]["logs"] == "tail"


def test_every_builtin_flow_has_a_form_with_target_first() -> None:
    for name, flow in flows().items():
        schema = flow.parameters.model_dump()
        assert ordered(schema)[:2] == ["target", "namespace"], name
        restore = "snapshot" in schema["properties"]
        assert ("schedule" in schema["properties"]) is not restore, name
        assert ("retention" in schema["properties"]) is not restore, name


def _nulls(node: object, path: str = "") -> list[str]:
    """Every place in a schema where a field is "X or null" or defaults to null."""
    found: list[str] = []
    if isinstance(node, dict):
        if any(o == {"type": "null"} for o in node.get("anyOf", [])):
            found.append(path)
        if "default" in node and node["default"] is None:
            found.append(f"{path} (default null)")
        for key, value in node.items():
            found += _nulls(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _nulls(value, f"{path}[{i}]")
    return found


def test_no_field_toggles_between_its_type_and_none() -> None:
    """Prefect's form draws ``X | None`` as a "str / None" toggle and sends a null default back,
    which its own validator then refuses: every optional field is a plain box of one type."""
    for name, flow in flows().items():
        assert _nulls(flow.parameters.model_dump()) == [], name


def _defaults(schema: dict) -> dict:
    return {k: p["default"] for k, p in schema["properties"].items() if "default" in p}


@pytest.mark.parametrize("name", ["stashflow_pvc__logical_backup", "stashflow_pvc__logical_backup_restore",
                                  "stashflow_postgres__logical_backup"])
def test_prefects_own_validator_accepts_what_the_form_starts_with(name: str) -> None:
    """The values the form opens with (its defaults and a target) pass Prefect's validator as the UI
    calls it (no preprocessing) and as the server calls it when it creates a run (preprocessed);
    a cleared optional box (null from the API) is accepted by the server, and a wrong type is not."""
    from prefect.utilities.schema_tools.validation import validate

    schema = flows()[name].parameters.model_dump_for_openapi()
    values = {**_defaults(schema), **{name: "given" for name in schema["required"]}}
    assert validate(values, schema, preprocess=False) == []
    assert validate(values, schema, preprocess=True) == []
    cleared = {**values, "cluster": {"kubeconfig": None}, "repository": {"encryption_secret": None}}
    assert validate(cleared, schema, preprocess=True) == []
    assert validate({**values, "limits": {"history_limit": "two"}}, schema, preprocess=True) != []


def test_a_cleared_optional_box_means_not_given() -> None:
    from stashflow.flows.parameters import RunParameters

    run = RunParameters.model_validate({"target": "PersistentVolumeClaim/data",
                                        "cluster": {"kubeconfig": "", "context": ""},
                                        "repository": {"name": "", "encryption_secret": ""}})
    assert run.cluster.kubeconfig is None and run.cluster.context is None
    assert run.repository.name is None and run.repository.encryption_secret is None


def test_a_session_deployments_parameters_pass_prefects_deployment_check() -> None:
    """Prefect checks a deployment's parameters against the flow's schema without its null fixes
    (``validate_values_conform_to_schema``): a plan's session parameters carry no null."""
    import json
    from pathlib import Path

    from prefect._internal.schemas.validators import validate_values_conform_to_schema

    from stashflow.addons.catalog import BUILTIN_CATALOG, Catalog
    from stashflow.deployments.plans import plan_deployments
    from stashflow.flows.session_flows import backup_session

    example = Path(__file__).resolve().parents[1] / "deployments" / "examples"
    specs = plan_deployments(Catalog().add_paths([BUILTIN_CATALOG, str(example)]).check())
    schema = backup_session.parameters.model_dump_for_openapi()
    for spec in specs:
        validate_values_conform_to_schema(spec.parameters, schema, ignore_required=True)
        assert "null" not in json.dumps(spec.parameters), spec.name


def test_logs_follow_by_kind_unless_set() -> None:
    from stashflow.flows.parameters import Limits

    assert not Limits().follows("backup") and Limits().follows("restore")
    assert not Limits.model_validate({"logs": "tail"}).follows("restore")
    assert Limits.model_validate({"logs": "follow"}).follows("backup")


def test_session_forms_open_with_target_and_namespace() -> None:
    from stashflow.flows.restore_sessions import restore_session
    from stashflow.flows.session_flows import backup_session

    for flow in (backup_session, restore_session):
        schema = flow.parameters.model_dump()
        assert ordered(schema)[:2] == ["target", "namespace"], flow.name
