"""The manifest executor's pure parts: its YAML form (read back by itself and by PyYAML, the
oracle), kubedump's selectors, and the fields a backup leaves out. The API side runs against the
real control plane in tests/runs/objects/test_manifests.py."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import yaml

from stashflow.executor import manifests, yamlform
from stashflow.executor.manifests import Resource, Selection, SelectionError

HOSTILE = [None, True, False, 0, -3, 1.25, "", "a", "yes", "No", "-", "- a", "a: b", "#x", "x #y", " lead", "trail ",
           "日本 🐘", "12", "0123", "1e3", "~", "null", "'q'", '"dq"', "a\nb\n", "{}", "[]", "&a", "*b", "!t", "|", ">",
           "%", "@", "`", "a:", "-1", ".5", "2024-01-01", "\x00\x1b\u2028", "tab\there", "back\\slash"]


def _random(rng: random.Random, depth: int = 0) -> object:
    pick = rng.random()
    if depth > 3 or pick < 0.4:
        return rng.choice(HOSTILE)
    if pick < 0.7:
        return {str(rng.choice(HOSTILE)) + str(i): _random(rng, depth + 1) for i in range(rng.randint(0, 4))}
    return [_random(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def test_the_yaml_form_reads_back_the_same_by_itself_and_by_pyyaml() -> None:
    rng = random.Random(11)
    for _ in range(2000):
        obj = {"root": _random(rng), "list": [_random(rng), [_random(rng)]]}
        text = yamlform.dump(obj)
        assert yamlform.load(text) == obj, text
        assert yaml.safe_load(text) == obj, text


def test_yaml_the_reader_does_not_take_is_refused_with_its_line() -> None:
    with pytest.raises(yamlform.FormError, match="line 2: .* JSON string"):
        yamlform.load("a: 1\nb: 'single'\n")
    with pytest.raises(yamlform.FormError, match="line 2: the key 'a' appears twice"):
        yamlform.load("a: 1\na: 2\n")
    assert yamlform.load('{"kind": "ConfigMap"}') == {"kind": "ConfigMap"}


DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment", True)
SECRETS = Resource("", "v1", "secrets", "Secret", True)
EVENTS = Resource("", "v1", "events", "Event", True)
ROLES = Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False)


def test_kubedumps_selectors() -> None:
    sel = Selection.parse(namespaces="", default_namespace="demo", exclude_resources="secrets",
                          and_labels="app:web,tier=front", or_labels="")
    assert sel.namespaces == ("demo",) and sel.namespace_selected("demo") and not sel.namespace_selected("other")
    assert sel.resource_selected(DEPLOYMENTS) and not sel.resource_selected(SECRETS)
    assert not sel.resource_selected(EVENTS)  # the cluster's own, unless named
    assert Selection.parse(namespaces="*", default_namespace="x", resources="events").resource_selected(EVENTS)
    assert sel.labels_selected({"app": "web", "tier": "front", "x": "y"}) and not sel.labels_selected({"app": "web"})
    ored = Selection.parse(namespaces="*", default_namespace="x", exclude_namespaces="kube-system",
                           or_labels="app:a,app:b")
    assert ored.labels_selected({"app": "b"}) and not ored.labels_selected({"app": "c"})
    assert ored.namespace_selected("anything") and not ored.namespace_selected("kube-system")
    for word in ("deployments", "deployments.apps", "Deployment", "deployment"):
        assert DEPLOYMENTS.named_by(word), word
    assert not DEPLOYMENTS.named_by("deployments.extensions")
    namespaces = Resource("", "v1", "namespaces", "Namespace", False)
    only_maps = Selection.parse(namespaces="demo", default_namespace="x", resources="configmaps", and_labels="app:web")
    assert only_maps.object_selected(namespaces, {"metadata": {"name": "demo"}})  # its objects need it
    assert not only_maps.object_selected(namespaces, {"metadata": {"name": "other"}})
    assert not only_maps.object_selected(SECRETS, {"metadata": {"name": "s", "namespace": "demo",
                                                                "labels": {"app": "web"}}})
    cluster = Selection.parse(namespaces="", default_namespace="x", cluster_resources="true")
    assert cluster.object_selected(ROLES, {"metadata": {"name": "r"}})
    assert not Selection.parse(namespaces="", default_namespace="x").object_selected(ROLES, {"metadata": {"name": "r"}})
    with pytest.raises(SelectionError, match='"app" is not key:value'):
        Selection.parse(namespaces="", default_namespace="x", and_labels="app")
    with pytest.raises(SelectionError, match="not true or false"):
        Selection.parse(namespaces="", default_namespace="x", cluster_resources="yes please")


def test_a_backup_leaves_out_what_the_server_sets() -> None:
    service = {"metadata": {"name": "web", "namespace": "d", "uid": "u", "resourceVersion": "1", "managedFields": [],
                            "creationTimestamp": "t", "generation": 2, "annotations": {"deployment.kubernetes.io/revision": "3"}},
               "spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "ports": [{"port": 80}]},
               "status": {"loadBalancer": {}}}
    out = manifests.clean(service, Resource("", "v1", "services", "Service", True))
    assert out == {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "d"},
                   "spec": {"ports": [{"port": 80}]}}
    assert manifests.changed_paths({"data": {"a": "1", "b": "2"}}, {"data": {"a": "1", "b": "3", "c": "x"}}) == \
        ["data.b", "data.c"]


def test_a_bad_selector_is_one_line_and_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "termination-log"
    done = subprocess.run([sys.executable, "-m", "stashflow.executor", "manifest-backup", "--namespace=demo",
                           f"--termination-log={log}", "--and-label-selectors=app"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert log.read_text() == 'stashflow-executor: ANDedLabelSelectors: "app" is not key:value (e.g. app:web,tier:db)'
