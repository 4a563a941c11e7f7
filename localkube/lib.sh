# shellcheck shell=bash
# Shared settings and helpers for localkube's scripts (sourced, not run).
# Every path and port can be overridden from the environment, so that two clones
# (or a developer's cluster and CI's) can run side by side.

LOCALKUBE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$LOCALKUBE_DIR/.." && pwd)"
KUBE_VERSION=v1.20.2
# Bump when the build recipe changes in a way that changes the binaries: the cache key.
BUILD_RECIPE=1

# Built binaries live outside the work tree and are reused across clones.
KUBE_CACHE="${STASHFLOW_KUBE_CACHE:-${HOME:-/root}/.cache/stashflow/kube-$KUBE_VERSION}"
KUBE_BIN="$KUBE_CACHE/bin"
# Debian source tree, GOPATH and GOCACHE: outside the work tree too (about 1.7 GB).
KUBE_BUILD="${STASHFLOW_KUBE_BUILD:-${HOME:-/root}/.cache/stashflow/kube-build-$KUBE_VERSION}"
# Run state: etcd data, PKI, pids, logs, kubeconfig.
KUBE_RUN="${STASHFLOW_KUBE_RUN:-$REPO_ROOT/run/kube}"

ETCD_PORT="${STASHFLOW_KUBE_ETCD_PORT:-27379}"
ETCD_PEER_PORT="${STASHFLOW_KUBE_ETCD_PEER_PORT:-27380}"
API_PORT="${STASHFLOW_KUBE_API_PORT:-27443}"
KCM_PORT="${STASHFLOW_KUBE_KCM_PORT:-27257}"
# TTLAfterFinished is alpha in 1.20: without the gate ttlSecondsAfterFinished is silently dropped.
FEATURE_GATES="${STASHFLOW_KUBE_FEATURE_GATES:-TTLAfterFinished=true}"

export DEBIAN_FRONTEND=noninteractive

_LK_T0="${_LK_T0:-$(date +%s.%N)}"
export _LK_T0
_LK_STEP="starting"

say() { # message: progress line with elapsed seconds, on stderr
  printf '[localkube %s %6.1fs] %s\n' "${LK_NAME:-}" \
    "$(awk -v a="$(date +%s.%N)" -v b="$_LK_T0" 'BEGIN{print a-b}')" "$*" >&2
}
step() { _LK_STEP="$*"; say "$*"; }
die() { say "FAILED: $*"; exit 1; }
_lk_on_err() {
  local rc=$?
  say "FAILED (exit $rc) during step: $_LK_STEP"
  exit "$rc"
}
trap _lk_on_err ERR

apt_updated=0
apt_install() { # packages...: install the missing ones, idempotently
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "need root to apt-get install ${missing[*]}"
  # Another apt (a second test run, an unattended upgrade) may hold the lock: wait for it.
  local wait=(-o DPkg::Lock::Timeout=600)
  if [ $apt_updated = 0 ]; then apt-get "${wait[@]}" update -qq; apt_updated=1; fi
  say "apt-get install ${missing[*]}"
  apt-get "${wait[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pid_alive() { # pidfile
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}
