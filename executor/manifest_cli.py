"""``stashflow-executor manifest-backup|manifest-restore``: Kubernetes objects into restic and back.

manifest-backup:  the selected objects (``manifests.Selection``) → YAML files under SCRATCH/manifest
                  → ``restic backup --json SCRATCH/manifest``; the files are removed afterwards.
manifest-restore: ``restic restore SNAPSHOT`` → the objects, applied (server-side apply) in
                  dependency order; ``--dry-run=true`` applies with ``dryRun=All`` and says what
                  would be created or changed, and changes nothing.

The API is reached as the Pod's ServiceAccount (``kubeapi``). A backup that selects nothing fails:
it would restore nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from . import manifests, report
from .kubeapi import Api, ApiError, Connection
from .manifests import Resource, Saved, Selection, SelectionError
from .yamlform import FormError

PROG = "stashflow-executor"


def add_parsers(sub: Any) -> None:
    for mode in ("manifest-backup", "manifest-restore"):
        p = sub.add_parser(mode)
        p.add_argument("--component", default=os.environ.get("COMPONENT_NAME") or "manifest")
        p.add_argument("--namespace", required=True, help="the run's namespace: what IncludeNamespaces defaults to")
        p.add_argument("--scratch-dir", default="/kubestash-tmp", help="where the files are written (emptyDir)")
        p.add_argument("--cache-dir", help="restic's cache directory")
        p.add_argument("--enable-cache", default="true")
        p.add_argument("--termination-log")
        p.add_argument("--include-namespaces", default="", help="comma separated; * for all")
        p.add_argument("--exclude-namespaces", default="")
        p.add_argument("--include-resources", default="", help="comma separated: deployments, deployments.apps, Secret")
        p.add_argument("--exclude-resources", default="")
        p.add_argument("--and-label-selectors", default="", help="key:value,... all must match")
        p.add_argument("--or-label-selectors", default="", help="key:value,... one must match")
        p.add_argument("--include-cluster-resources", default="false")
        p.add_argument("--api-server", help="the API's URL (default: in the Pod, from KUBERNETES_SERVICE_HOST)")
        p.add_argument("--token-file", help="a bearer token file (default: the Pod's ServiceAccount token)")
        p.add_argument("--ca-file", help="the CA of the API server (default: the ServiceAccount's ca.crt)")
        if mode == "manifest-backup":
            p.add_argument("--tag", action="append", default=[])
            p.add_argument("--restic-host", help="host name recorded in the restic snapshot")
        else:
            p.add_argument("--snapshot", default="latest")
            p.add_argument("--override-resources", default="false",
                           help="true: objects that exist are changed to the backup's; false: left as they are")
            p.add_argument("--dry-run", default="false", help="true: apply with dryRun=All and report; change nothing")
            p.add_argument("--restore-pvs", default="false", help="true: PersistentVolumes are restored too")
            p.add_argument("--storage-class-mappings", default="", help="old=new,... for PVCs and PVs")


def _flag(value: str, name: str) -> bool:
    text = (value or "false").strip().lower()
    if text not in ("true", "false"):
        raise SelectionError(f'{name}: "{value}" is not true or false')
    return text == "true"


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _fail(opts: argparse.Namespace, message: str) -> int:
    print(message, file=sys.stderr, flush=True)
    report.write_termination_message(message, opts.termination_log)
    return 1


def _api(opts: argparse.Namespace) -> Api:
    if opts.api_server or opts.token_file:
        if not (opts.api_server and opts.token_file):
            raise SelectionError("--api-server and --token-file go together")
        return Api(Connection.from_files(opts.api_server, opts.token_file, opts.ca_file))
    conn = Connection.in_cluster()
    if opts.ca_file:
        conn = Connection(conn.server, conn.token, opts.ca_file)
    return Api(conn)


def _selection(opts: argparse.Namespace, default_namespaces: str) -> Selection:
    return Selection.parse(namespaces=opts.include_namespaces, default_namespace=default_namespaces,
                           exclude_namespaces=opts.exclude_namespaces, resources=opts.include_resources,
                           exclude_resources=opts.exclude_resources, and_labels=opts.and_label_selectors,
                           or_labels=opts.or_label_selectors, cluster_resources=opts.include_cluster_resources)


def _cache_args(opts: argparse.Namespace) -> list[str]:
    if str(opts.enable_cache).strip().lower() in ("false", "0", "no"):
        return ["--no-cache"]
    return [f"--cache-dir={opts.cache_dir}"] if opts.cache_dir else []


def _restic(argv: list[str]) -> tuple[int, list[str], list[str]]:
    """Run restic; its stderr is logged as it comes; returns (code, stdout lines, stderr lines)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    err_lines = [line for line in err.splitlines() if line.strip()]
    for line in err_lines:
        print(line, file=sys.stderr)
    return proc.returncode, out.splitlines(), err_lines


def main(opts: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        if opts.mode == "manifest-backup":
            return backup(opts, started)
        return restore(opts, started)
    except SelectionError as exc:
        _fail(opts, f"{PROG}: {exc}")
        return 2
    except ApiError as exc:
        return _fail(opts, f"{PROG}: {opts.mode}: {exc}")


# ------------------------------------------------------------------------------------- backup


def backup(opts: argparse.Namespace, started: float) -> int:
    from .cli import error_line

    sel = _selection(opts, opts.namespace)
    api = _api(opts)
    dest = os.path.join(opts.scratch_dir, "manifest")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest, mode=0o700)
    try:
        done = manifests.dump(api, sel, dest, _say)
        for why, n in sorted(done.left_out.items()):
            _say(f"left out {n}: {why}")
        if done.total == 0:
            why = (f"; {len(done.forbidden)} type(s) may not be listed by this ServiceAccount "
                   f"({', '.join(done.forbidden[:5])}): give it get/list (stashflow install --manifests)"
                   if done.forbidden else "; check the selectors")
            return _fail(opts, f"{PROG}: manifest-backup: no object matched the selection "
                               f"(namespaces {','.join(sel.namespaces)}): nothing to back up{why}")
        _say(f"{done.total} objects written: " + ", ".join(f"{k} {v}" for k, v in sorted(done.counts.items())))
        argv = ["restic", "backup", "--json", *_cache_args(opts),
                *[f"--tag={t}" for t in opts.tag if t and not t.endswith("=")],
                *([f"--host={opts.restic_host}"] if opts.restic_host else []), dest]
        code, out, err = _restic(argv)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    summary: dict[str, Any] = {}
    for line in out:
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("message_type") == "summary":
                summary = data
    if code != 0:
        return _fail(opts, report.failure_message(f"restic exited with code {code}", error_line(err)))
    if not summary.get("snapshot_id"):
        return _fail(opts, f"{PROG}: restic reported no snapshot: its --json summary is missing")
    component = report.backup_component(summary, host_path=dest, seconds=time.monotonic() - started)
    _say(f"restic snapshot {summary['snapshot_id'][:8]} holds {done.total} objects in {dest}")
    report.write_termination_message(report.components_message(opts.component, component), opts.termination_log)
    return 0


# ------------------------------------------------------------------------------------- restore


class _Restorer:
    """Applies saved objects one by one and counts what happened to each."""

    def __init__(self, api: Api, *, override: bool, dry_run: bool) -> None:
        self.api, self.override, self.dry_run = api, override, dry_run
        self.counts: dict[str, int] = {}
        self.failures: list[str] = []
        self.new_namespaces: set[str] = set()  # dry run: namespaces that would be created

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def _get(self, res: Resource, saved: Saved) -> dict[str, Any] | None:
        try:
            return self.api.get(res.path(saved.namespace, saved.name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    def apply(self, res: Resource, saved: Saved) -> None:
        would = "would " if self.dry_run else ""
        if saved.namespace and saved.namespace in self.new_namespaces:
            self.count("created")
            _say(f"{would}create {saved.describe()} (in a namespace that would be created)")
            return
        current = self._get(res, saved)
        if current is not None and (current.get("metadata") or {}).get("deletionTimestamp"):
            raise ApiError(409, "Terminating", f"{saved.describe()} is being deleted: wait until it is gone, "
                                               "then restore again")
        if current is not None and not self.override:
            paths = manifests.changed_paths(manifests.clean(current, res), saved.obj)
            self.count("kept")
            _say(f"kept {saved.describe()}: it exists" + (f" and differs in {', '.join(paths[:8])}"
                                                           f"{' ...' if len(paths) > 8 else ''}" if paths else "")
                 + " (OverrideResources=false)")
            return
        result = self.api.apply(res.path(saved.namespace, saved.name), saved.obj, manager=manifests.MANAGER,
                                force=True, dry_run=self.dry_run)
        if current is None:
            self.count("created")
            if self.dry_run and res.qualified == "namespaces":
                self.new_namespaces.add(saved.name)
            _say(f"{'would create' if self.dry_run else 'created'} {saved.describe()}")
            return
        paths = manifests.changed_paths(manifests.clean(current, res), manifests.clean(result, res))
        if not paths:
            self.count("unchanged")
            _say(f"unchanged {saved.describe()}")
            return
        self.count("updated")
        _say(f"{'would update' if self.dry_run else 'updated'} {saved.describe()}: "
             f"{', '.join(paths[:8])}{' ...' if len(paths) > 8 else ''}")


def _map_storage_class(obj: dict[str, Any], mapping: dict[str, str]) -> None:
    spec = obj.get("spec")
    if isinstance(spec, dict) and spec.get("storageClassName") in mapping:
        spec["storageClassName"] = mapping[spec["storageClassName"]]


def restore(opts: argparse.Namespace, started: float) -> int:
    from .cli import error_line

    sel = _selection(opts, manifests.ALL)
    override, dry_run = _flag(opts.override_resources, "OverrideResources"), _flag(opts.dry_run, "dryRun")
    restore_pvs = _flag(opts.restore_pvs, "RestorePVs")
    mapping = {}
    for word in manifests._words(opts.storage_class_mappings):
        old, sep, new = word.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise SelectionError(f'StorageClassMappings: "{word}" is not old=new')
        mapping[old.strip()] = new.strip()
    api = _api(opts)
    target = os.path.join(opts.scratch_dir, "manifest-restore")
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target, mode=0o700)
    try:
        code, _, err = _restic(["restic", "restore", *_cache_args(opts), opts.snapshot, f"--target={target}"])
        if code != 0:
            return _fail(opts, report.failure_message(f"restic exited with code {code}", error_line(err)))
        try:
            saved = list(manifests.read_tree(target))
        except FormError as exc:
            return _fail(opts, f"{PROG}: manifest-restore: a file of the backup cannot be read: {exc}")
    finally:
        shutil.rmtree(target, ignore_errors=True)
    known = manifests.resources_by_kind(manifests.discover(api))
    plan: list[tuple[Resource, Saved]] = []
    restorer = _Restorer(api, override=override, dry_run=dry_run)
    for item in saved:
        res = manifests.find_resource(api, known, str(item.obj.get("apiVersion", "")), str(item.obj.get("kind", "")))
        if res is None:
            restorer.failures.append(f"{item.describe()}: the cluster does not serve {item.obj.get('apiVersion')} "
                                     f"{item.obj.get('kind')} (install its CRD first)")
            continue
        if not sel.object_selected(res, item.obj) and not (res.qualified == "namespaces" and sel.all_namespaces):
            continue
        owner = manifests.controlled_by(item.obj)
        if owner:
            restorer.count("skipped")
            _say(f"skipped {item.describe()}: {owner} controls it and makes it again")
            continue
        if res.qualified == "persistentvolumes" and not restore_pvs:
            restorer.count("skipped")
            _say(f"skipped {item.describe()}: RestorePVs=false")
            continue
        if res.qualified in ("persistentvolumeclaims", "persistentvolumes"):
            _map_storage_class(item.obj, mapping)
        plan.append((res, item))
    plan.sort(key=lambda p: p[0].rank())
    for res, item in plan:
        try:
            restorer.apply(res, item)
        except ApiError as exc:
            restorer.count("failed")
            restorer.failures.append(f"{item.describe()}: {exc}")
            _say(f"failed {item.describe()}: {exc}")
    summary = ", ".join(f"{k} {v}" for k, v in sorted(restorer.counts.items())) or "nothing"
    _say(f"{'dry run: ' if dry_run else ''}{len(saved)} objects in the backup: {summary}")
    if restorer.failures:
        first = restorer.failures[0]
        return _fail(opts, f"{PROG}: manifest-restore: {len(restorer.failures)} of {len(plan)} objects failed: {first}")
    seconds = time.monotonic() - started
    component = {"phase": "Succeeded", "driver": "Restic", "duration": report.go_duration(seconds),
                 "resticStats": [{"id": opts.snapshot, "hostPath": os.path.join(opts.scratch_dir, "manifest")}]}
    report.write_termination_message(report.components_message(opts.component, component), opts.termination_log)
    return 0
