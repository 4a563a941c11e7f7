"""Why a Job failed, in stable categories with the reason, the last log lines and a hint.

Works on the API's JSON (dicts) of the Job and its Pods, so it is tested on real objects
from the test cluster and on recorded ones alike. The category becomes the error code
``job-<category>``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Iterable

IMAGE_PULL_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable"}
CONFIG_REASONS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}


class Category(StrEnum):
    """Why a Job failed. Stable: each value is also the error code ``job-<value>``."""

    EXIT_CODE = "exit-code"
    OOM_KILLED = "oom-killed"
    IMAGE_PULL = "image-pull"
    UNSCHEDULABLE = "unschedulable"
    DEADLINE_EXCEEDED = "deadline-exceeded"
    EVICTED = "evicted"
    CONFIG_ERROR = "config-error"
    FAILED = "failed"


HINTS = {
    Category.EXIT_CODE: "read the container's last log lines (below, and in the run's logs): the Function reported "
                        "the failure",
    Category.OOM_KILLED: "raise the memory limit: addon.containerRuntimeSettings.resources.limits.memory in the plan",
    Category.IMAGE_PULL: "check the image name and tag, and imagePullSecrets in addon.jobTemplate.spec for private "
                         "registries",
    Category.UNSCHEDULABLE: "no node fits the Pod: check resources requests, nodeSelector, tolerations and PVC "
                            "binding",
    Category.DEADLINE_EXCEEDED: "the Job ran past its deadline: raise backupTimeout (or --timeout) or back up less "
                                "at once",
    Category.EVICTED: "the node ran short of a resource and evicted the Pod; set requests so it is scheduled where "
                      "it fits",
    Category.CONFIG_ERROR: "a Secret, ConfigMap or volume the container needs is missing; create it or fix the "
                           "reference",
    Category.FAILED: "inspect the Job's events: kubectl describe job",
}


@dataclass(frozen=True)
class Diagnosis:
    """One failure, classified: what the run reports, the artifact shows and the error code names."""

    category: Category
    reason: str
    message: str = ""
    container: str | None = None
    exit_code: int | None = None
    log_tail: tuple[str, ...] = ()

    @property
    def code(self) -> str:
        return f"job-{self.category.value}"

    @property
    def hint(self) -> str:
        return HINTS[self.category]

    def summary(self) -> str:
        """One line: category, reason, container, exit code, message."""
        parts = [f"{self.category.value}: {self.reason}"]
        if self.container:
            parts.append(f"container {self.container}")
        if self.exit_code is not None:
            parts.append(f"exit code {self.exit_code}")
        text = ", ".join(parts)
        message = self.message.strip().splitlines()[-1] if self.message.strip() else ""
        return f"{text}: {message}" if message else text

    def markdown(self, title: str, facts: Iterable[tuple[str, str]] = ()) -> str:
        """The failure artifact: the code and the reason first, then the run's facts (Job, Snapshot,
        attempt, what happens next), what to do, and the last log lines."""
        lines = [f"# {self.code}: {title}", "", f"**{self.reason}**" + (f": {self.message.strip().splitlines()[-1]}"
                                                                         if self.message.strip() else ""), ""]
        lines += [f"- {name}: {value}" for name, value in facts]
        if self.container:
            lines.append(f"- container: `{self.container}`")
        if self.exit_code is not None:
            lines.append(f"- exit code: `{self.exit_code}`")
        if self.message and len(self.message.strip().splitlines()) > 1:
            lines.append(f"- message: {self.message.strip()[:2000]}")
        lines += ["", f"**What to do:** {self.hint}", ""]
        if self.log_tail:
            lines += ["## Last log lines", "", "```", *self.log_tail, "```"]
        return "\n".join(lines)


def _conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return (obj.get("status") or {}).get("conditions") or []


def job_phase(job: dict[str, Any]) -> str | None:
    """``Complete``, ``Failed`` or None while the Job runs (newer condition names included)."""
    for condition in _conditions(job):
        if condition.get("status") != "True":
            continue
        if condition.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "Complete"
        if condition.get("type") in ("Failed", "FailureTarget"):
            return "Failed"
    return None


def job_failure_condition(job: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in _conditions(job) if c.get("type") in ("Failed", "FailureTarget")
                 and c.get("status") == "True"), None)


def pod_problem(pod: dict[str, Any]) -> Diagnosis | None:
    """A Pod that cannot progress (or has failed), classified; None if it looks healthy."""
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted":
        return Diagnosis(Category.EVICTED, "Evicted", status.get("message") or "")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" \
                and condition.get("reason") == "Unschedulable":
            return Diagnosis(Category.UNSCHEDULABLE, "Unschedulable", condition.get("message") or "")
    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    for cs in statuses:
        state = cs.get("state") or {}
        waiting, terminated = state.get("waiting") or {}, state.get("terminated") or {}
        if waiting.get("reason") in IMAGE_PULL_REASONS:
            return Diagnosis(Category.IMAGE_PULL, waiting["reason"], waiting.get("message") or "", cs.get("name"))
        if waiting.get("reason") in CONFIG_REASONS:
            return Diagnosis(Category.CONFIG_ERROR, waiting["reason"], waiting.get("message") or "", cs.get("name"))
        if terminated.get("reason") == "OOMKilled":
            return Diagnosis(Category.OOM_KILLED, "OOMKilled", terminated.get("message") or "", cs.get("name"),
                             terminated.get("exitCode"))
        if terminated and terminated.get("exitCode", 0) != 0:
            return Diagnosis(Category.EXIT_CODE, terminated.get("reason") or "Error", terminated.get("message") or "",
                             cs.get("name"), terminated.get("exitCode"))
    if status.get("phase") == "Failed":
        return Diagnosis(Category.FAILED, status.get("reason") or "PodFailed", status.get("message") or "")
    return None


def diagnose(job: dict[str, Any] | None, pods: Iterable[dict[str, Any]], log_tails: dict[str, list[str]] | None = None,
             ) -> Diagnosis:
    """The failure of a Job: its deadline first, then the newest Pod's problem, then the Job's own reason."""
    condition = job_failure_condition(job) if job else None
    ordered = sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "", reverse=True)
    found: Diagnosis | None = None
    if condition and condition.get("reason") == "DeadlineExceeded":
        found = Diagnosis(Category.DEADLINE_EXCEEDED, "DeadlineExceeded", condition.get("message") or "")
    else:
        for pod in ordered:
            found = pod_problem(pod)
            if found:
                break
    if found is None:
        reason = (condition or {}).get("reason") or "Unknown"
        found = Diagnosis(Category.FAILED, reason, (condition or {}).get("message") or "")
    if log_tails:
        pod_names = [(p.get("metadata") or {}).get("name") for p in ordered]
        for key, tail in log_tails.items():
            pod_name, _, container = key.partition("/")
            if (found.container is None or container == found.container) and (not pod_names or pod_name == pod_names[0]):
                found = dataclasses.replace(found, log_tail=tuple(tail)[-20:])
                break
    return found
