"""Hooks (KubeStash's ``preBackup``/``postBackup``, ``preRestore``/``postRestore``), planned.

A hook is a ``HookInfo`` in a plan or RestoreSession naming a ``HookTemplate``. Planning joins
the two into a ``HookPlan``: the action with the hook's parameters substituted (``${NAME}``, the
template's ``params`` defaults under the hook's ``params``), who runs it, how often it may be tried
and for how long. What stashflow cannot run is refused here with ``unsupported``, so that
``validate`` says it before any run: Go templates (``{{ }}``) in an action, and ``exec`` without
Pods to run it in. The ``Function`` executor runs the named Function as a Job (its image and
arguments with the hook's parameters, the executor's env, volumes and mounts), as KubeStash does;
the Job's end is the hook's result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from .durations import deadline_seconds
from .errors import InputError
from .model.addon import Function
from .model.core import HookInfo
from .model.hook import HookTemplate
from .resolve import as_value
from .template import MissingValue, TemplateSyntaxError, map_strings, substitute

Phase = Literal["preBackup", "postBackup", "preRestore", "postRestore"]
ActionKind = Literal["exec", "httpGet", "httpPost", "tcpSocket", "job"]
PRE_PHASES = ("preBackup", "preRestore")


@dataclass(frozen=True)
class HookPlan:
    """One hook, ready to run: everything the Prefect task needs, no catalog."""

    name: str
    phase: Phase
    namespace: str  # where the Pods are looked for (and a Function hook's Job is made)
    executor: Literal["Pod", "Operator", "Function"]
    kind: ActionKind
    action: dict[str, Any]  # the action's own fields (camelCase), parameters substituted
    container: str | None = None
    selector: str = ""
    owner: dict[str, Any] | None = None
    on_all: bool = False  # ExecuteOnAll
    tries: int = 1  # 1 + maxRetry
    timeout: float | None = None  # seconds per try
    policy: Literal["Always", "OnSuccess", "OnFailure"] = "Always"
    pod_spec: dict[str, Any] | None = None  # the Function executor: the Job's Pod spec (kind "job")

    @property
    def title(self) -> str:
        return f"{self.phase}:{self.name}"


def should_run(plan: HookPlan, succeeded: bool | None) -> bool:
    """Pre hooks always run; a post hook by its ``executionPolicy`` and how the work ended."""
    if plan.phase in PRE_PHASES or plan.policy == "Always":
        return True
    return succeeded is True if plan.policy == "OnSuccess" else succeeded is False


def _error(message: str, info: HookInfo, code: str = "unsupported", hint: str | None = None) -> InputError:
    return InputError(message, code=code, obj=f'hook "{info.name}"', hint=hint)


def plan_hook(info: HookInfo, template: HookTemplate, phase: Phase, namespace: str,
              function: Function | None = None) -> HookPlan:
    """Join a hook and its template (and, for the Function executor, that Function); raise
    ``InputError`` (coded) for what cannot run."""
    spec = template.spec
    executor = spec.executor
    action = spec.action
    if executor is not None and executor.type == "Function":
        return _function_hook(info, template, phase, namespace, function)
    if executor is None or action is None:
        raise _error(f'HookTemplate "{template.name}" has no {"executor" if executor is None else "action"}', info,
                     code="missing-field", hint="a HookTemplate needs spec.action and spec.executor")
    kinds = [k for k, v in (("exec", action.exec), ("httpGet", action.http_get), ("httpPost", action.http_post),
                            ("tcpSocket", action.tcp_socket)) if v is not None]
    if len(kinds) != 1:
        raise _error(f'HookTemplate "{template.name}" needs exactly one action, it has '
                     f"{', '.join(kinds) or 'none'}", info, code="invalid-value",
                     hint="one of exec, httpGet, httpPost, tcpSocket")
    kind: ActionKind = kinds[0]  # type: ignore[assignment]
    raw = action.dump()[kind]
    if executor.type == "Operator" and kind == "exec":
        raise _error("an exec action needs the Pod executor: stashflow's flow has no container to run it in",
                     info, hint="set executor.type: Pod with a pod.selector")
    if executor.type == "Operator" and kind != "exec" and not raw.get("host"):
        raise _error(f"an Operator {kind} hook needs action.{kind}.host", info, code="missing-field",
                     hint="the Pod executor uses the Pod's IP; the Operator executor has no Pod to take it from")
    if executor.type == "Pod" and (executor.pod is None or not executor.pod.selector.strip()):
        raise _error("a Pod hook executor needs pod.selector", info, code="missing-field",
                     hint='a label selector such as "app=my-db"')
    filled = map_strings(raw, _filler(info, _inputs(info, template)))
    pod = executor.pod
    return HookPlan(
        name=info.name, phase=phase, namespace=namespace, executor=executor.type, kind=kind, action=filled,
        container=action.container_name, selector=pod.selector if pod else "", owner=pod.owner if pod else None,
        on_all=bool(pod and pod.strategy == "ExecuteOnAll"), tries=1 + (info.max_retry or 0),
        timeout=float(deadline_seconds(info.timeout)) if info.timeout is not None else None,
        policy=info.execution_policy or "Always")


def _inputs(info: HookInfo, template: HookTemplate) -> dict[str, str]:
    """The hook's parameters: the template's defaults under the hook's own ``params``."""
    params = template.spec.params or []
    inputs = {p.name: p.default for p in params if p.default is not None}
    inputs.update({k: as_value(v).value for k, v in (info.params or {}).items()})
    missing = [p.name for p in params if p.required and p.name not in inputs]
    if missing:
        raise _error(f"required hook parameter {', '.join(missing)} has no value", info,
                     code="missing-required-parameter", hint="set it in the hook's params")
    return inputs


def _filler(info: HookInfo, inputs: dict[str, str], *, kube: bool = False) -> Callable[[tuple, str], str]:
    """``${PARAM}`` substitution of one string of the hook (``kube``: a container field, escaped for
    Kubernetes' own ``$(VAR)`` expansion so the program receives the value byte for byte)."""
    def fill(path: tuple, text: str) -> str:
        if "{{" in text:
            raise _error("Go templates ({{ ... }}) in a hook are not supported", info,
                         hint="use ${PARAM} parameters; stashflow substitutes those")
        try:
            return substitute(text, inputs, kube=kube)
        except MissingValue as exc:
            raise _error(f"${{{exc.args[0]}}} in the hook has no value", info,
                         code="unresolved-variable", hint="declare it in the HookTemplate's params or set it "
                                                          "in the hook's params") from None
        except TemplateSyntaxError as exc:
            raise _error(str(exc), info, code="invalid-template") from None
    return fill


def _function_hook(info: HookInfo, template: HookTemplate, phase: Phase, namespace: str,
                   function: Function | None) -> HookPlan:
    """The Function executor: the Function's container as a Job's only container, its ``${}`` filled
    from the hook's parameters, with the executor's env, volumes and mounts."""
    executor = template.spec.executor
    assert executor is not None
    ref = executor.function
    if ref is None or not ref.name:
        raise _error("a Function hook executor needs function.name", info, code="missing-field",
                     hint="the name of a Function in the catalog, whose image runs as the hook's Job")
    if function is None or function.name != ref.name:
        raise _error(f'the hook\'s Function "{ref.name}" is not in the catalog', info, code="unknown-function",
                     hint="add the Function to the catalog the plan is deployed with")
    if not function.spec.image:
        raise _error(f'Function "{function.name}" has no image', info, code="missing-field",
                     hint="set spec.image of the Function")
    inputs = _inputs(info, template)
    kube_fill = _filler(info, inputs, kube=True)
    container: dict[str, Any] = {"name": "hook", "image": map_strings(function.spec.image, _filler(info, inputs))}
    for key, value in (("command", function.spec.command), ("args", function.spec.args)):
        if value:
            container[key] = map_strings(list(value), kube_fill)
    if function.spec.working_dir:
        container["workingDir"] = function.spec.working_dir
    if ref.env:
        container["env"] = map_strings([dict(e) for e in ref.env], kube_fill)
    mounts = [*(m.dump() for m in function.spec.volume_mounts or []), *(dict(m) for m in ref.volume_mounts or [])]
    if mounts:
        container["volumeMounts"] = mounts
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if ref.volumes:
        pod_spec["volumes"] = map_strings([dict(v) for v in ref.volumes], _filler(info, inputs))
    return HookPlan(
        name=info.name, phase=phase, namespace=namespace, executor="Function", kind="job", action={},
        tries=1 + (info.max_retry or 0),
        timeout=float(deadline_seconds(info.timeout)) if info.timeout is not None else None,
        policy=info.execution_policy or "Always", pod_spec=pod_spec)


def hook_status(results: list[tuple[HookPlan, str]]) -> dict[str, list[dict[str, str]]]:
    """BackupSession/RestoreSession ``status.hooks``: ``{preHooks, postHooks: [{name, phase}]}``."""
    out: dict[str, list[dict[str, str]]] = {}
    for plan, phase in results:
        key = "preHooks" if plan.phase in PRE_PHASES else "postHooks"
        out.setdefault(key, []).append({"name": plan.name, "phase": phase})
    return out
