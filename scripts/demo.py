"""The main job on the local defaults: a real backup and restore through the Prefect flows.

1. the local control plane (localkube/up.sh) and the node agent, which runs containers for
   real (restic from Debian); 2. a Prefect server on 127.0.0.1:4200 (its UI shows the runs);
3. namespace ``demo`` with a PVC ``data`` holding some files, and the restic password Secret;
4. ``stashflow run stashflow-pvc logical-backup`` into a local BackupStorage, then
   ``stashflow run stashflow-pvc logical-backup-restore --snapshot latest`` into an empty PVC;
5. the restored files compared with the originals, the Snapshot shown; 6. everything stopped
   by pid (``KEEP=1`` leaves it running to look around). The stack is ``scripts/local_stack.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys

from local_stack import REPO, LocalStack, say, tree

NAMESPACE = "demo"
PREFECT_PORT = int(os.environ.get("STASHFLOW_DEMO_PREFECT_PORT", "4200"))


def main() -> int:
    try:
        with LocalStack(REPO / "run" / "demo", PREFECT_PORT) as stack:
            data, restored = stack.prepare(NAMESPACE)
            common = stack.run_args(NAMESPACE)
            stack.stashflow("run", "stashflow-pvc", "logical-backup", "--target", "PersistentVolumeClaim/data",
                            "--storage", "local", "--directory", "demo/data", "--encryption-secret", "restic-password",
                            *common)
            stack.stashflow("run", "stashflow-pvc", "logical-backup-restore", "--target", "PersistentVolumeClaim/restored",
                            "--snapshot", "latest", "--repository", "data", *common)
            same = tree(data) == tree(restored)
            say(f"restored files {'are byte-identical to' if same else 'DIFFER from'} the originals "
                f"({len(tree(data))} files)")
            stack.stashflow("snapshots", "--namespace", NAMESPACE, "--kubeconfig", stack.kubeconfig)
            return 0 if same else 1
    except subprocess.CalledProcessError as exc:
        say(f"failed: {' '.join(exc.cmd[:4])} ... exited {exc.returncode} (its error is above)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
