"""Which program the node agent runs for a container that has an image but no ``command``.

No image can be pulled here, so a container runs a program of this machine. When the container
names its ``command`` that is run as written; when it gives only ``args`` (as KubeStash's Functions
do: the image's ENTRYPOINT would take them) the agent looks the image's repository up below, without
tag or digest, and runs ``prefix + args``. An image not in the table runs ``args`` alone, as before.

``IMAGE_PROGRAMS`` is the table: repository → argv prefix. To put another executor there, add a line
(or, without editing, point ``STASHFLOW_NODE_AGENT_IMAGES`` at a JSON file ``{"repo": ["argv", ...]}``,
whose entries win). ``{python}`` in a prefix is the agent's own interpreter and ``{repo}`` this
checkout's root, so the table works from any clone.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_KS_EXECUTOR = ["{python}", "{repo}/tests/kubestash_executor/executor.py"]

#: image repository (no tag, no digest) → argv prefix; ``args`` follow
IMAGE_PROGRAMS: dict[str, list[str]] = {
    "ghcr.io/kubestash/pvc": [*_KS_EXECUTOR, "pvc"],
    "ghcr.io/kubestash/workload": [*_KS_EXECUTOR, "workload"],
    "ghcr.io/kubestash/manifest": [*_KS_EXECUTOR, "manifest"],
    "ghcr.io/kubestash/kubedump": [*_KS_EXECUTOR, "manifest"],
    "ghcr.io/kubedb/postgres-restic-plugin": [*_KS_EXECUTOR, "postgres"],
    "ghcr.io/kubedb/kubedb-manifest-plugin": [*_KS_EXECUTOR, "kubedbmanifest"],
    # stashflow in the cluster (addons/incluster.py): each image's ENTRYPOINT, played from this checkout.
    # stashflow's image has no ENTRYPOINT: its args run, with stashflow and prefect on PATH (the worker's
    # `stashflow worker`, a Kubernetes pool's `prefect flow-run execute`)
    "ghcr.io/stashflow/stashflow": ["env", "PATH={repo}/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    # Prefect's image: its entrypoint runs the args with Prefect on PATH
    "prefecthq/prefect": ["env", "PATH={repo}/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    # the official postgres image's docker-entrypoint.sh: initdb into $PGDATA once, then postgres (Debian's)
    "postgres": ["{python}", "{repo}/localkube/entrypoints/postgres.py"],
}


def repository_of(image: str) -> str:
    """``ghcr.io/kubedb/postgres-restic-plugin:v0.30.0-rc.0_16.4`` → ``ghcr.io/kubedb/postgres-restic-plugin``."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:  # a tag, not a registry port
        name = name[:colon]
    return name


def table() -> dict[str, list[str]]:
    out = dict(IMAGE_PROGRAMS)
    extra = os.environ.get("STASHFLOW_NODE_AGENT_IMAGES")
    if extra:
        out.update(json.loads(Path(extra).read_text()))
    return out


def program_for(image: str | None) -> list[str] | None:
    """The argv prefix for ``image``, or None when the table does not know it."""
    if not image:
        return None
    prefix = table().get(repository_of(image))
    if prefix is None:
        return None
    return [p.replace("{python}", sys.executable).replace("{repo}", str(REPO_ROOT)) for p in prefix]
