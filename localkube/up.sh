#!/usr/bin/env bash
# Bring up the test cluster on 127.0.0.1: etcd, kube-apiserver and kube-controller-manager
# v1.20.2 (no scheduler, no kubelet: the node agent plays those; see localkube/nodeagent.py).
#
#   localkube/up.sh           build if not cached (~5 min once), start, wait until the controllers work
#   localkube/down.sh         stop what up.sh started, by pid (PURGE=1 also deletes the run dir)
#   KUBECONFIG=run/kube/kubeconfig
#
# Idempotent: a component whose recorded pid is alive is left alone, so running it twice is
# fine, and after `down.sh ONLY=kube-apiserver` it restarts just the apiserver.
# FRESH=1 empties etcd's data first when etcd is not running (a clean cluster; PKI is kept).
# Paths and ports: see lib.sh (STASHFLOW_KUBE_* variables).
set -euo pipefail
LK_NAME=up
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "checking binaries"
bash "$LOCALKUBE_DIR/build.sh"
step "installing runtime packages (apt)"
apt_install etcd-server openssl curl ca-certificates
ETCD_BIN="$(command -v etcd || echo /usr/bin/etcd)"
[ -x "$ETCD_BIN" ] || die "etcd not found after installing etcd-server"

mkdir -p "$KUBE_RUN"/{pids,logs,etcd,kcm-certs}
step "PKI"
bash "$LOCALKUBE_DIR/pki.sh"
P="$KUBE_RUN/pki"

kubeconfig() { # file client-cert-name
  cat > "$1.tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: localkube
  cluster:
    server: https://127.0.0.1:${API_PORT}
    certificate-authority: $P/ca.crt
users:
- name: $2
  user:
    client-certificate: $P/$2.crt
    client-key: $P/$2.key
contexts:
- name: localkube
  context: {cluster: localkube, user: $2, namespace: default}
current-context: localkube
KC
  mv -f "$1.tmp" "$1"
}
kubeconfig "$KUBE_RUN/kubeconfig" admin
kubeconfig "$KUBE_RUN/kcm.kubeconfig" kcm

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
start() { # name port... -- cmd...: start detached (own session), record the pid
  local name=$1; shift
  local ports=()
  while [ "$1" != -- ]; do ports+=("$1"); shift; done; shift
  if pid_alive "$KUBE_RUN/pids/$name.pid"; then
    say "$name already running (pid $(cat "$KUBE_RUN/pids/$name.pid"))"; return 0
  fi
  local p
  for p in "${ports[@]}"; do
    port_busy "$p" && die "cannot start $name: 127.0.0.1:$p is in use by another process ($(ss -ltnpH "sport = :$p" 2>/dev/null | awk '{print $NF}')). Stop it, or set STASHFLOW_KUBE_*_PORT (see localkube/lib.sh)"
  done
  _LK_STEP="starting $name"
  setsid "$@" > "$KUBE_RUN/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$KUBE_RUN/pids/$name.pid"
  say "started $name (pid $!, log $KUBE_RUN/logs/$name.log)"
}
wait_for() { # name timeout-seconds cmd...: poll until cmd succeeds; fail naming the component
  local name=$1 to=$2 i; shift 2
  _LK_STEP="waiting for $name"
  for ((i = 0; i < to * 10; i++)); do
    "$@" >/dev/null 2>&1 && { say "$name ready"; return 0; }
    if [ -f "$KUBE_RUN/pids/$name.pid" ] && ! pid_alive "$KUBE_RUN/pids/$name.pid"; then
      tail -25 "$KUBE_RUN/logs/$name.log" >&2 || true
      die "$name exited during start (log: $KUBE_RUN/logs/$name.log)"
    fi
    sleep 0.1
  done
  tail -25 "$KUBE_RUN/logs/$name.log" >&2 || true
  die "$name not ready after ${to}s (log: $KUBE_RUN/logs/$name.log)"
}
CURL=(curl -sf --cacert "$P/ca.crt" --cert "$P/admin.crt" --key "$P/admin.key")
T_START=$(date +%s.%N)

if [ "${FRESH:-0}" = 1 ] && ! pid_alive "$KUBE_RUN/pids/etcd.pid"; then
  step "FRESH=1: emptying etcd data"
  rm -rf "${KUBE_RUN:?}/etcd"; mkdir -p "$KUBE_RUN/etcd"
fi
start etcd "$ETCD_PORT" "$ETCD_PEER_PORT" -- "$ETCD_BIN" --name localkube --data-dir "$KUBE_RUN/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "localkube=http://127.0.0.1:$ETCD_PEER_PORT" \
  --quota-backend-bytes=1073741824 --unsafe-no-fsync=true --log-level=warn
wait_for etcd 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"

# --kubelet-*: the apiserver verifies the node agent's cert and shows its own client cert, as
# with a real kubelet; the agent reports only an InternalIP address.
start kube-apiserver "$API_PORT" -- "$KUBE_BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" --insecure-port=0 \
  --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
  --client-ca-file="$P/ca.crt" --token-auth-file="$P/tokens.csv" \
  --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --api-audiences=https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range=10.0.0.0/24 \
  --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,DefaultTolerationSeconds,ResourceQuota,StorageObjectInUseProtection,PersistentVolumeClaimResize,Priority,MutatingAdmissionWebhook,ValidatingAdmissionWebhook \
  --kubelet-client-certificate="$P/apiserver-kubelet-client.crt" --kubelet-client-key="$P/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$P/ca.crt" --kubelet-preferred-address-types=InternalIP \
  --endpoint-reconciler-type=none --feature-gates="$FEATURE_GATES" \
  --allow-privileged=true --profiling=false --v=1
wait_for kube-apiserver 120 "${CURL[@]}" "https://127.0.0.1:$API_PORT/readyz"

start kube-controller-manager "$KCM_PORT" -- "$KUBE_BIN/kube-controller-manager" \
  --kubeconfig="$KUBE_RUN/kcm.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --port=0 --cert-dir="$KUBE_RUN/kcm-certs" \
  --leader-elect=false --use-service-account-credentials=true \
  --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
  --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
  --feature-gates="$FEATURE_GATES" --profiling=false --v=1
wait_for kube-controller-manager 60 curl -skf "https://127.0.0.1:$KCM_PORT/healthz"
# The controllers really work once the serviceaccount controller has made default/default.
_LK_STEP="waiting for the controllers (default ServiceAccount)"
wait_for "controllers (default/default ServiceAccount)" 60 \
  "${CURL[@]}" "https://127.0.0.1:$API_PORT/api/v1/namespaces/default/serviceaccounts/default"
say "control plane ready in $(awk -v a="$(date +%s.%N)" -v b="$T_START" 'BEGIN{printf "%.1f", a-b}')s: https://127.0.0.1:$API_PORT"
echo "KUBECONFIG=$KUBE_RUN/kubeconfig"
