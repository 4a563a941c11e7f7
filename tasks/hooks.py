"""Running a hook: the Prefect task ``hook`` and the four actions (REFERENCE.md §2.5).

The Pod executor picks the Running Pods that match the template's selector (and owner), one or
all (``strategy``); ``exec`` runs the command in the Pod's container through the API (the
kubelet's exec, as ``kubectl exec``), ``httpGet``/``httpPost``/``tcpSocket`` go to the Pod's IP
unless the action names a host. The Operator executor is this flow: it calls the host itself. The
Function executor is a Job of the Function's container, made in the namespace and removed after.
Success is what KubeStash counts: exit code 0 (of the command, or of the Job), HTTP status 200–399,
an open port. A hook is tried
``1 + maxRetry`` times, each within its ``timeout``; it fails with a code and the output's tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.stream import WsApiClient
from prefect import get_run_logger, task

from stashflow.addons.errors import NotFound, RunError
from stashflow.addons.hooks import HookPlan
from stashflow.addons.names import label_value, valid_name
from stashflow.addons.render import MANAGED_BY

from .kube import Kube, current, to_dict
from .wait import JobWaiter

STEP: dict[str, Any] = dict(persist_result=False)
OUTPUT_TAIL = 2000  # characters of a failed hook's output kept in its error


@dataclass(frozen=True)
class HookOutcome:
    """How one hook ended, where it ran, and what it printed (for the session's status and logs)."""

    title: str
    phase: str  # Succeeded | Failed
    where: tuple[str, ...]
    output: str = ""
    code: str | None = None
    error: str | None = None


class HookFailed(RunError):
    default_code = "hook-failed"


# -- the actions ------------------------------------------------------------------------------------

async def exec_in(kube: Kube, namespace: str, pod: str, container: str | None, command: list[str]
                  ) -> tuple[int, str]:
    """``command`` in ``pod``'s container through the API's exec (WebSocket, v4.channel.k8s.io):
    (exit code, stdout and stderr as they came)."""
    ws_api = WsApiClient(kube.api.configuration)
    try:
        core = client.CoreV1Api(ws_api)
        kwargs: dict[str, Any] = {"container": container} if container else {}
        output: list[str] = []
        code = -1
        # The stub says str and command: str; through WsApiClient it returns the WebSocket, and a list
        # command is sent as one query parameter per word.
        async with await core.connect_get_namespaced_pod_exec(  # type: ignore[attr-defined]
                pod, namespace, command=command,  # type: ignore[arg-type]
                stdout=True, stderr=True, stdin=False, tty=False, _preload_content=False, **kwargs) as ws:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.BINARY or not message.data:
                    continue
                channel, data = message.data[0], message.data[1:]
                if channel in (1, 2):
                    output.append(data.decode(errors="replace"))
                elif channel == 3:
                    code = WsApiClient.parse_error_data(data)
        return code, "".join(output)
    finally:
        await ws_api.close()


async def http_call(kind: str, action: dict[str, Any], host: str, port: int) -> tuple[int, str]:
    """An HTTP GET or POST as the probe handler describes it: (status, the body's start)."""
    scheme = (action.get("scheme") or "HTTP").lower()
    path = action.get("path") or "/"
    url = f"{scheme}://{host}:{port}{path if path.startswith('/') else '/' + path}"
    headers = {h["name"]: h["value"] for h in action.get("httpHeaders") or []}
    data: Any = None
    if kind == "httpPost":
        if action.get("form"):
            data = aiohttp.FormData([(f["key"], v) for f in action["form"] for v in f.get("values") or [""]])
        elif action.get("body") is not None:
            data = action["body"].encode()
    async with aiohttp.ClientSession() as session:
        async with session.request("POST" if kind == "httpPost" else "GET", url, headers=headers, data=data,
                                   allow_redirects=False) as response:
            return response.status, (await response.content.read(OUTPUT_TAIL)).decode(errors="replace")


async def tcp_open(host: str, port: int) -> None:
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    await writer.wait_closed()


# -- the executor -----------------------------------------------------------------------------------

def _owned_by(pod: dict[str, Any], owner: dict[str, Any] | None) -> bool:
    if not owner:
        return True
    for ref in pod["metadata"].get("ownerReferences") or []:
        if all(ref.get(k) == owner[k] for k in ("apiVersion", "kind", "name", "uid") if owner.get(k)):
            return True
    return False


async def select_pods(kube: Kube, plan: HookPlan) -> list[dict[str, Any]]:
    """The Running Pods the hook runs on: all of them (ExecuteOnAll) or the first by name."""
    listed = to_dict(kube, await kube.call(f"list Pods {plan.selector!r}", kube.core.list_namespaced_pod,
                                           plan.namespace, label_selector=plan.selector.replace(" ", "")))
    running = sorted((p for p in listed["items"] if (p.get("status") or {}).get("phase") == "Running"
                      and not p["metadata"].get("deletionTimestamp") and _owned_by(p, plan.owner)),
                     key=lambda p: p["metadata"]["name"])
    if not running:
        raise HookFailed(f"hook {plan.title}: no Running Pod in {plan.namespace} matches {plan.selector!r}",
                         code="hook-no-pod", hint="check the HookTemplate's pod.selector (kubectl get pods -l ...) "
                                                  "and that the Pod is Running")
    return running if plan.on_all else running[:1]


def _port(pod: dict[str, Any] | None, container: str | None, port: int | str) -> int:
    """A numeric port, or a named one looked up in the Pod's container (``containerName``)."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for c in (pod or {}).get("spec", {}).get("containers") or []:
        if container is None or c["name"] == container:
            for p in c.get("ports") or []:
                if p.get("name") == port:
                    return int(p["containerPort"])
    raise HookFailed(f"port {port!r} is not a named port of container {container or '(first)'}",
                     hint="name the port in the container's ports, or give the number")


async def run_function_job(kube: Kube, plan: HookPlan) -> tuple[bool, str]:
    """The Function executor: one Job of the hook's Pod spec, waited for and removed (with its Pod)
    whatever the end, even when the try is cancelled at its timeout."""
    assert plan.pod_spec is not None
    name = valid_name("hook", plan.name, secrets.token_hex(3))
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY, "stashflow.io/role": "hook",
              "stashflow.io/hook": label_value(plan.name), "stashflow.io/hook-phase": plan.phase}
    spec: dict[str, Any] = {"backoffLimit": 0, "template": {"metadata": {"labels": labels}, "spec": plan.pod_spec}}
    if plan.timeout:
        spec["activeDeadlineSeconds"] = max(1, math.ceil(plan.timeout))
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": plan.namespace,
                                                                "labels": labels}, "spec": spec}
    await kube.call(f"create Job {plan.namespace}/{name}", kube.batch.create_namespaced_job, plan.namespace, job)
    try:
        outcome = await JobWaiter(kube, plan.namespace, name, timeout=(plan.timeout or 3600.0) + 30,
                                  stuck_after=60.0, follow_logs=False).wait()
    finally:
        with contextlib.suppress(NotFound):
            await asyncio.shield(kube.call(f"delete Job {plan.namespace}/{name}", kube.batch.delete_namespaced_job,
                                           name, plan.namespace, propagation_policy="Foreground"))
    said = "\n".join(outcome.logs()[-20:])
    if outcome.succeeded:
        return True, said or f"Job {name} completed"
    why = outcome.diagnosis.summary() if outcome.diagnosis else f"the Job ended {outcome.phase}"
    return False, f"Job {name}: {why}" + (f"\n{said}" if said else "")


async def _once(kube: Kube, plan: HookPlan, pod: dict[str, Any] | None) -> tuple[bool, str]:
    """One try of the action on one Pod (or on the named host, or as a Job): (succeeded, what it said)."""
    if plan.kind == "job":
        return await run_function_job(kube, plan)
    action = plan.action
    if plan.kind == "exec":
        assert pod is not None
        code, output = await exec_in(kube, plan.namespace, pod["metadata"]["name"], plan.container,
                                     list(action.get("command") or []))
        return code == 0, output if code == 0 else f"exit code {code}: {output}"
    host = action.get("host") or (pod or {}).get("status", {}).get("podIP") or ""
    port = _port(pod, plan.container, action["port"])
    if plan.kind == "tcpSocket":
        try:
            await tcp_open(host, port)
        except OSError as exc:
            return False, f"{host}:{port} is not open: {exc.strerror or exc}"
        return True, f"{host}:{port} is open"
    try:
        status, body = await http_call(plan.kind, action, host, port)
    except aiohttp.ClientError as exc:
        return False, f"{host}:{port}: {exc}"
    return 200 <= status < 400, f"HTTP {status}: {body}"


@task(name="hook", task_run_name="{plan.phase}:{plan.name}", **STEP)
async def run_hook(plan: HookPlan) -> HookOutcome:
    """The Prefect task of one hook: its own task run, named ``preBackup:NAME``, its own logs."""
    return await execute_hook(current(), plan, get_run_logger())


async def execute_hook(kube: Kube, plan: HookPlan, logger: Any) -> HookOutcome:
    """Run one hook to its end: Succeeded, or ``HookFailed`` with the code and the output's tail."""
    pods: list[dict[str, Any] | None] = list(await select_pods(kube, plan)) if plan.executor == "Pod" else [None]
    where = tuple(p["metadata"]["name"] for p in pods if p) or \
        (str(plan.action.get("host") or f"a Job in {plan.namespace}"),)
    last = ""
    for attempt in range(1, plan.tries + 1):
        failed: list[str] = []
        for pod in pods:
            name = pod["metadata"]["name"] if pod else plan.action.get("host") or "job"
            try:
                ok, said = await asyncio.wait_for(_once(kube, plan, pod), plan.timeout)
            except asyncio.TimeoutError:
                ok, said = False, f"no answer within {plan.timeout:g}s"
            for line in said.splitlines()[-20:]:
                logger.info("%s %s | %s", plan.title, name, line)
            if not ok:
                failed.append(f"{name}: {said}")
        if not failed:
            return HookOutcome(plan.title, "Succeeded", where, output=last)
        last = "; ".join(failed)[-OUTPUT_TAIL:]
        if attempt < plan.tries:
            logger.warning("hook %s failed (try %d of %d): %s", plan.title, attempt, plan.tries, last)
    timed_out = "no answer within" in last
    raise HookFailed(f"hook {plan.title} failed after {plan.tries} tr{'y' if plan.tries == 1 else 'ies'}: {last}",
                     code="hook-timeout" if timed_out else "hook-failed",
                     hint="see the hook's log lines; a pre hook that fails skips the backup or restore")
