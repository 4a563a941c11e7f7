#!/usr/bin/env bash
# Stop what up.sh (and `python -m localkube.nodeagent --pidfile`) started: by the pids recorded
# in the run dir, never by name. All get SIGTERM at once; whatever is still alive after $GRACE
# seconds (default 3: kube-apiserver stops listening at once on SIGTERM but then waits for its
# open watches to drain) gets SIGKILL.
#   ONLY="kube-apiserver" down.sh   stop only those components (space-separated)
#   PURGE=1 down.sh                 also delete the run dir (etcd data, PKI, kubeconfig)
set -euo pipefail
LK_NAME=down
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
grace="${GRACE:-3}"
names="${ONLY:-node-agent kube-controller-manager kube-apiserver etcd}"
declare -A pids=()
for n in $names; do
  f="$KUBE_RUN/pids/$n.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    pids[$n]=$pid
  fi
  rm -f "$f"
done
for _ in $(seq 1 $((grace * 10))); do
  alive=0
  for n in "${!pids[@]}"; do kill -0 "${pids[$n]}" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break
  sleep 0.1
done
for n in "${!pids[@]}"; do
  pid=${pids[$n]}
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    say "killed $n (pid $pid) after ${grace} s"
  else
    say "stopped $n (pid $pid)"
  fi
done
if [ "${PURGE:-0}" = 1 ]; then rm -rf "${KUBE_RUN:?}"; say "purged $KUBE_RUN"; fi
