"""A workload's data volumes, per Pod where the data differs: what a workload backup mounts.

KubeStash's workload-addon copies the target Pod's volumes into its executor (``targetVolumes``).
Here the Job mounts them itself: a StatefulSet's claim templates give each Pod its own PVC
(``<template>-<statefulset>-<ordinal>``), so each Pod is its own entry; a Deployment's or
DaemonSet's Pods share their volumes, so the workload is one entry. Only volumes that hold data
are mounted (PVCs, hostPath); ConfigMaps, Secrets, emptyDirs and projections are not data to back
up. Pure: the tasks layer reads the workload, this turns it into volumes.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

WORKLOAD_KINDS = ("StatefulSet", "Deployment", "DaemonSet")
ROOT = "/stashflow-workload"
#: A Function annotation: its Job mounts the target workload's data volumes (``pod_volumes``).
ANNOTATION = "stashflow.io/target-volumes"
ENV = "STASHFLOW_WORKLOAD_PODS"


@dataclass(frozen=True)
class Mount:
    """One data volume of a Pod: where its containers mount it, and the volume source."""

    mount_path: str
    source: dict[str, Any]


@dataclass(frozen=True)
class PodVolumes:
    """The data volumes of one Pod (or of all a workload's Pods, when they share them)."""

    pod: str
    mounts: tuple[Mount, ...]

    @property
    def root(self) -> str:
        return posixpath.join(ROOT, self.pod)


def pod_volumes(kind: str, workload: dict[str, Any]) -> list[PodVolumes]:
    """The data volumes of each Pod of ``workload`` (a StatefulSet, Deployment or DaemonSet as JSON)."""
    name = workload["metadata"]["name"]
    spec = workload.get("spec") or {}
    pod_spec = (spec.get("template") or {}).get("spec") or {}
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    templates = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates") or []} if kind == "StatefulSet" else set()
    mounted: dict[str, str] = {}  # volume → mount path (the first container that mounts it)
    for container in [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]:
        for m in container.get("volumeMounts") or []:
            if not m.get("subPath"):
                mounted.setdefault(m["name"], m["mountPath"])

    def mounts(ordinal: int | None) -> tuple[Mount, ...]:
        out = []
        for volume, path in sorted(mounted.items(), key=lambda kv: kv[1]):
            if volume in templates and ordinal is not None:
                out.append(Mount(path, {"persistentVolumeClaim": {"claimName": f"{volume}-{name}-{ordinal}"}}))
            elif volume in volumes:
                source = {k: v for k, v in volumes[volume].items() if k != "name"}
                if "persistentVolumeClaim" in source or "hostPath" in source:
                    out.append(Mount(path, source))
        return tuple(out)

    if templates:
        replicas = spec.get("replicas", 1)
        return [PodVolumes(f"{name}-{i}", mounts(i)) for i in range(int(replicas))]
    return [PodVolumes(name, mounts(None))]


def job_volumes(pods: list[PodVolumes], *, read_only: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """The Job's volumes and mounts for ``pods`` (each Pod's data under ``/stashflow-workload/<pod>``
    at its containers' paths), and the description the executor reads (``STASHFLOW_WORKLOAD_PODS``)."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    described = []
    for i, pod in enumerate(pods):
        for j, mount in enumerate(pod.mounts):
            vname = f"stashflow-workload-{i}-{j}"
            source = json.loads(json.dumps(mount.source))
            if read_only and "persistentVolumeClaim" in source:
                source["persistentVolumeClaim"]["readOnly"] = True
            volumes.append({"name": vname, **source})
            mounts.append({"name": vname, "mountPath": pod.root + mount.mount_path.rstrip("/"), "readOnly": read_only})
        described.append({"pod": pod.pod, "root": pod.root, "mounts": [m.mount_path for m in pod.mounts]})
    return volumes, mounts, json.dumps(described, separators=(",", ":"))
