"""stashflow's own Snapshot CRD, for clusters without KubeStash.

Same group, version, kind, names, scope, status subresource and printer columns as
KubeStash's ``snapshots.storage.kubestash.com``, and a schema of the same shape, so that
Snapshots written here read the same with KubeStash installed later. It is labelled
``app.kubernetes.io/managed-by: stashflow``; a KubeStash CRD already there is left alone.
"""

from __future__ import annotations

from typing import Any

GROUP, VERSION, PLURAL, KIND = "storage.kubestash.com", "v1alpha1", "snapshots", "Snapshot"
CRD_NAME = f"{PLURAL}.{GROUP}"

_STR: dict[str, Any] = {"type": "string"}
_REF = {"type": "object", "properties": {"apiGroup": _STR, "kind": _STR, "name": _STR, "namespace": _STR},
        "required": ["name"]}
_PHASE = {"type": "string", "enum": ["Pending", "Running", "Succeeded", "Failed"]}
_CONDITION = {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
              "properties": {"type": _STR, "status": _STR, "reason": _STR, "message": _STR,
                             "lastTransitionTime": {"type": "string", "format": "date-time"}},
              "required": ["type", "status"]}
_COMPONENT = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,  # driver-specific stats (resticStats, walGStats, ...)
    "properties": {"path": _STR, "phase": _PHASE, "size": _STR, "duration": _STR, "integrity": {"type": "boolean"},
                   "error": _STR, "driver": _STR,
                   "resticStats": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}},
}


def snapshot_crd() -> dict[str, Any]:
    """The CustomResourceDefinition (apiextensions.k8s.io/v1) as plain data."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/managed-by": "stashflow"}},
        "spec": {
            "group": GROUP,
            "names": {"kind": KIND, "listKind": "SnapshotList", "plural": PLURAL, "singular": "snapshot",
                      "categories": ["kubestash", "storage", "appscode", "all"]},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"jsonPath": ".spec.repository", "name": "Repository", "type": "string"},
                    {"jsonPath": ".spec.session", "name": "Session", "type": "string"},
                    {"jsonPath": ".status.snapshotTime", "name": "Snapshot-Time", "type": "string"},
                    {"jsonPath": ".spec.deletionPolicy", "name": "Deletion-Policy", "type": "string"},
                    {"jsonPath": ".status.phase", "name": "Phase", "type": "string"},
                    {"jsonPath": ".metadata.creationTimestamp", "name": "Age", "type": "date"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "apiVersion": _STR, "kind": _STR, "metadata": {"type": "object"},
                        "spec": {"type": "object", "properties": {
                            "snapshotID": _STR,
                            "type": {"type": "string", "enum": ["FullBackup", "IncrementalBackup"]},
                            "repository": _STR, "session": _STR, "backupSession": _STR, "version": _STR,
                            "appRef": _REF,
                            "deletionPolicy": {"type": "string", "enum": ["Delete", "WipeOut"], "default": "Delete"},
                            "paused": {"type": "boolean"},
                        }},
                        "status": {"type": "object", "properties": {
                            "phase": _PHASE,
                            "verificationStatus": {"type": "string", "enum": ["Verified", "NotVerified", "VerificationFailed"]},
                            "verificationSession": _STR,
                            "snapshotTime": {"type": "string", "format": "date-time"},
                            "lastUpdateTime": {"type": "string", "format": "date-time"},
                            "size": _STR,
                            "integrity": {"type": "boolean"},
                            "totalComponents": {"type": "integer", "format": "int32"},
                            "conditions": {"type": "array", "items": _CONDITION},
                            "components": {"type": "object", "additionalProperties": _COMPONENT},
                        }},
                    },
                }},
            }],
        },
    }
