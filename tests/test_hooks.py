"""Hooks planned (addons/hooks.py): parameters, what cannot run, execution policy, status."""

from __future__ import annotations

import pytest

from stashflow.addons.errors import InputError
from stashflow.addons.hooks import HookPlan, hook_status, plan_hook, should_run
from stashflow.addons.model.addon import Function
from stashflow.addons.model.core import HookInfo
from stashflow.addons.model.hook import HookTemplate


def template(action: dict | None, executor: dict | None = None, params: list | None = None) -> HookTemplate:
    return HookTemplate.model_validate({
        "apiVersion": "core.kubestash.com/v1alpha1", "kind": "HookTemplate", "metadata": {"name": "t"},
        "spec": {**({"action": action} if action else {}), "executor": executor or {"type": "Pod", "pod": {"selector": "app=db"}},
                 **({"params": params} if params else {})}})


def info(**fields: object) -> HookInfo:
    return HookInfo.model_validate({"name": "h", "hookTemplate": {"name": "t"}, **fields})


def test_parameters_fill_the_action_as_data() -> None:
    t = template({"exec": {"command": ["psql", "-c", "${SQL}", "${MODE:=ro}"]}, "containerName": "db"},
                 params=[{"name": "SQL", "required": True}, {"name": "MODE", "default": "rw"}])
    plan = plan_hook(info(params={"SQL": "select '$(HOME)'; $x"}, maxRetry=2, timeout="1m30s"), t, "preBackup",
                     "demo")
    assert plan.action == {"command": ["psql", "-c", "select '$(HOME)'; $x", "rw"]}
    assert (plan.kind, plan.container, plan.selector, plan.tries, plan.timeout) == ("exec", "db", "app=db", 3, 90.0)
    assert plan.title == "preBackup:h"


@pytest.mark.parametrize("action, executor, code, says", [
    ({"exec": {"command": ["true"]}}, {"type": "Function", "function": {"name": "f"}}, "unknown-function",
     'Function "f" is not in the catalog'),
    ({"exec": {"command": ["true"]}}, {"type": "Operator"}, "unsupported", "needs the Pod executor"),
    ({"httpGet": {"port": 80, "path": "/"}}, {"type": "Operator"}, "missing-field", "needs action.httpGet.host"),
    ({"httpPost": {"host": "h", "port": 443, "body": '{{ .Status.Phase }}'}}, {"type": "Operator"}, "unsupported",
     "Go templates"),
    ({"httpGet": {"port": 80}, "tcpSocket": {"port": 80}}, None, "invalid-value", "exactly one action"),
    ({"exec": {"command": ["${NOPE}"]}}, None, "unresolved-variable", "${NOPE}"),
])
def test_what_cannot_run_is_refused_when_planned(action: dict, executor: dict | None, code: str, says: str) -> None:
    with pytest.raises(InputError) as err:
        plan_hook(info(), template(action, executor), "preBackup", "demo")
    assert err.value.code == code and says in err.value.message


def test_the_function_executor_is_the_functions_container_as_a_job() -> None:
    """KubeStash's Function executor: the Function's image and args, ``${}`` filled from the hook's
    parameters (values kept byte-equal through Kubernetes' own ``$(VAR)`` expansion), the executor's
    env, volumes and mounts."""
    function = Function.model_validate({
        "apiVersion": "addons.kubestash.com/v1alpha1", "kind": "Function", "metadata": {"name": "notify"},
        "spec": {"image": "example.org/notify:${TAG:=1}", "args": ["--text=${TEXT}", "--to=$(TARGET)"],
                 "volumeMounts": [{"name": "cfg", "mountPath": "/etc/notify"}]}})
    t = template(None, {"type": "Function", "function": {
        "name": "notify", "env": [{"name": "LEVEL", "value": "${LEVEL}"}],
        "volumes": [{"name": "cfg", "configMap": {"name": "notify-${LEVEL}"}}]}},
        params=[{"name": "TEXT", "required": True}, {"name": "LEVEL", "default": "info"}])
    plan = plan_hook(info(params={"TEXT": "done $(HOME) $$"}, timeout="2m"), t, "postBackup", "demo", function)
    assert (plan.executor, plan.kind, plan.timeout, plan.tries) == ("Function", "job", 120.0, 1)
    assert plan.pod_spec is not None
    (container,) = plan.pod_spec["containers"]
    assert container["image"] == "example.org/notify:1"
    assert container["args"] == ["--text=done $$(HOME) $$$$", "--to=$(TARGET)"]  # the value as data, $(VAR) of the Function kept
    assert container["env"] == [{"name": "LEVEL", "value": "info"}]
    assert container["volumeMounts"] == [{"name": "cfg", "mountPath": "/etc/notify"}]
    assert plan.pod_spec["volumes"] == [{"name": "cfg", "configMap": {"name": "notify-info"}}]
    assert plan.pod_spec["restartPolicy"] == "Never"


def test_a_required_parameter_without_value() -> None:
    t = template({"exec": {"command": ["true"]}}, params=[{"name": "SQL", "required": True}])
    with pytest.raises(InputError) as err:
        plan_hook(info(), t, "preBackup", "demo")
    assert err.value.code == "missing-required-parameter"


@pytest.mark.parametrize("phase, policy, succeeded, runs", [
    ("preBackup", "OnFailure", None, True),
    ("postBackup", "Always", False, True),
    ("postBackup", "OnSuccess", True, True),
    ("postBackup", "OnSuccess", False, False),
    ("postBackup", "OnFailure", False, True),
    ("postBackup", "OnFailure", True, False),
    ("postRestore", "OnFailure", False, True),
])
def test_execution_policy(phase: str, policy: str, succeeded: bool | None, runs: bool) -> None:
    plan = HookPlan(name="h", phase=phase, namespace="d", executor="Pod", kind="exec", action={},  # type: ignore[arg-type]
                    policy=policy)  # type: ignore[arg-type]
    assert should_run(plan, succeeded) is runs


def test_status_lists_hooks_by_phase() -> None:
    pre = HookPlan(name="freeze", phase="preBackup", namespace="d", executor="Pod", kind="exec", action={})
    post = HookPlan(name="thaw", phase="postBackup", namespace="d", executor="Pod", kind="exec", action={})
    assert hook_status([(pre, "Succeeded"), (post, "Failed")]) == {
        "preHooks": [{"name": "freeze", "phase": "Succeeded"}], "postHooks": [{"name": "thaw", "phase": "Failed"}]}


HOOKED_PLAN = """\
apiVersion: core.kubestash.com/v1alpha1
kind: HookTemplate
metadata: {name: freeze, namespace: demo}
spec:
  params: [{name: MODE, default: ro}]
  action:
    exec: {command: [sh, -c, "echo ${MODE}"]}
  executor: {type: Pod, pod: {selector: app=db}}
---
apiVersion: core.kubestash.com/v1alpha1
kind: HookTemplate
metadata: {name: notify, namespace: demo}
spec:
  action:
    httpPost: {host: hooks.example.com, port: 443, scheme: HTTPS, body: '{{ .Status.Phase }}'}
  executor: {type: Operator}
"""


def _plan_with_hooks(tmp_path, hooks: str):  # type: ignore[no-untyped-def]
    from pathlib import Path

    example = Path(__file__).parent.parent / "deployments" / "examples" / "pvc-backups.yaml"
    text = example.read_text().replace("    sessionHistoryLimit: 3\n", "    sessionHistoryLimit: 3\n" + hooks, 1)
    (tmp_path / "plan.yaml").write_text(text + "---\n" + HOOKED_PLAN)
    return tmp_path / "plan.yaml", text


def test_validate_checks_hooks_where_they_are_written(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.support import run_cli

    good, _ = _plan_with_hooks(tmp_path, "    hooks:\n      preBackup:\n      - name: freeze\n"
                                         "        hookTemplate: {name: freeze, namespace: demo}\n")
    assert run_cli("validate", str(good))[0] == 0
    bad, text = _plan_with_hooks(tmp_path, "    hooks:\n      postBackup:\n      - name: tell\n"
                                           "        hookTemplate: {name: notify, namespace: demo}\n"
                                           "      - name: gone\n        hookTemplate: {name: missing}\n")
    rc, out, err = run_cli("validate", str(bad))
    line = text.splitlines().index("      - name: tell") + 1
    assert rc == 1
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"{bad}:{line}: unsupported: ") and "Go templates" in lines[0]
    assert "spec.sessions[0].hooks.postBackup[0]" in lines[0]
    assert "unknown-object" in lines[1] and 'HookTemplate "demo/missing"' in lines[1]
