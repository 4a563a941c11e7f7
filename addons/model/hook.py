"""``HookTemplate`` (core.kubestash.com/v1alpha1): what a hook does and who does it (REFERENCE.md §2.5).

A plan's or RestoreSession's ``hooks`` name a template (``HookInfo``); the template holds the action
(``exec``, ``httpGet``, ``httpPost``, ``tcpSocket``, as a Kubernetes probe handler) and the executor
(``Pod``: matched Pods do it; ``Operator``: stashflow's flow does it; ``Function``: a Job)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .addon import ParameterDefinition
from .base import KubeDict, KubeObject, Model
from .core import CORE_API


class HTTPHeader(Model):
    name: str
    value: str


class HTTPGetAction(Model):
    path: str | None = None
    port: int | str
    host: str | None = None
    scheme: Literal["HTTP", "HTTPS"] | None = None
    http_headers: list[HTTPHeader] | None = None


class FormEntry(Model):
    key: str
    values: list[str] | None = None


class HTTPPostAction(HTTPGetAction):
    body: str | None = None
    form: list[FormEntry] | None = None


class TCPSocketAction(Model):
    port: int | str
    host: str | None = None


class ExecAction(Model):
    command: list[str] | None = None


class HookAction(Model):
    """prober.Handler: exactly one action, and the container it concerns (Pod executor)."""

    exec: ExecAction | None = None
    http_get: HTTPGetAction | None = None
    http_post: HTTPPostAction | None = None
    tcp_socket: TCPSocketAction | None = None
    container_name: str | None = None


class FunctionHookExecutor(Model):
    name: str
    env: list[KubeDict] | None = None
    volume_mounts: list[KubeDict] | None = None
    volumes: list[KubeDict] | None = None


class PodHookExecutor(Model):
    selector: str
    owner: KubeDict | None = None
    strategy: Literal["ExecuteOnOne", "ExecuteOnAll"] | None = None


class HookExecutor(Model):
    type: Literal["Function", "Pod", "Operator"]
    function: FunctionHookExecutor | None = None
    pod: PodHookExecutor | None = None


class HookTemplateSpec(Model):
    usage_policy: KubeDict | None = None
    params: list[ParameterDefinition] | None = None
    action: HookAction | None = None
    executor: HookExecutor | None = None


class HookTemplate(KubeObject):
    API_VERSION: ClassVar[str] = CORE_API
    KIND: ClassVar[str] = "HookTemplate"

    spec: HookTemplateSpec = Field(default_factory=HookTemplateSpec)
