"""Ordinary failures of ``stashflow run`` on the real control plane: one coded line, no traceback.

Before issue 8's fix a run into a missing namespace printed 4 Prefect tracebacks in 124 lines,
and SIGTERM a TerminationSignal traceback. The trace is still there with ``-v``.
"""

from __future__ import annotations

import re
import subprocess

from localkube.nodeagent import never_ends

from .conftest import REPO
from .observe import eventually, nothing_left, sigterm_once_a_job_exists

STASHFLOW = str(REPO / ".venv" / "bin" / "stashflow")
CODED = re.compile(r"^(?:<command line>:[1-9][0-9]*: )?([a-z][a-z-]*): ")


def _run_args(kube_cluster, namespace: str, *extra: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [STASHFLOW, "run", "scripted", "backup", "--namespace", namespace, "--target", "pvc/data",
            "--kubeconfig", str(kube_cluster.kubeconfig), *extra]


def test_a_missing_namespace_is_one_coded_line(kube_cluster, prefect_env) -> None:
    proc = subprocess.run(_run_args(kube_cluster, "no-such-namespace"), env=prefect_env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert CODED.match(last) and "no-such-namespace" in last, last
    assert [line for line in proc.stderr.splitlines() if CODED.match(line)] == [last]
    verbose = subprocess.run(_run_args(kube_cluster, "no-such-namespace", "-v"), env=prefect_env,
                             capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 1 and "Traceback (most recent call last)" in verbose.stderr


def test_sigterm_is_one_interrupted_line_and_leaves_nothing(kube_cluster, namespace, node_agent, prefect_env) -> None:
    node_agent.script({"stashflow.io/session": "data-t"}, never_ends())
    proc = subprocess.Popen(_run_args(kube_cluster, namespace, "--var", "backupSession=data-t"), env=prefect_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = sigterm_once_a_job_exists(proc, kube_cluster, namespace)
    assert "Traceback" not in out + err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("<command line>:1: interrupted: stopped by SIGTERM"), err[-2000:]
    assert proc.returncode == 143
    eventually(lambda: nothing_left(kube_cluster, namespace), timeout=120)
