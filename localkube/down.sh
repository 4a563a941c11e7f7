#!/usr/bin/env bash
# Stop what up.sh (and `python -m localkube.nodeagent --pidfile`) started: by the pids recorded
# in the run dir, never by name. SIGTERM, then SIGKILL after $GRACE seconds (default 3: kube-apiserver
# stops listening at once on SIGTERM but then waits for its open watches to drain).
#   ONLY="kube-apiserver" down.sh   stop only those components (space-separated)
#   PURGE=1 down.sh                 also delete the run dir (etcd data, PKI, kubeconfig)
set -euo pipefail
LK_NAME=down
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
grace="${GRACE:-3}"
names="${ONLY:-node-agent kube-controller-manager kube-apiserver etcd}"
for n in $names; do
  f="$KUBE_RUN/pids/$n.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((grace * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; say "killed $n (pid $pid) after ${grace} s"
    else say "stopped $n (pid $pid)"; fi
  fi
  rm -f "$f"
done
if [ "${PURGE:-0}" = 1 ]; then rm -rf "${KUBE_RUN:?}"; say "purged $KUBE_RUN"; fi
