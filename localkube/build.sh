#!/usr/bin/env bash
# Build kube-apiserver and kube-controller-manager v1.20.2 from Debian bookworm's
# `kubernetes` source package with Debian's Go, and put them in the cache
# ($STASHFLOW_KUBE_CACHE/bin). Offline apart from Debian's archive; ~4-5 min on 2 cores.
#
# Why the extra steps: the tarball lacks the generated openapi file (make gen_openapi makes it);
# vendored reflect2 1.0.1 / json-iterator 1.1.10 crash the apiserver under Go >= 1.18 (we swap in
# Debian's 1.0.2 / 1.1.12); and 1.20 builds only in GOPATH mode, as upstream did.
#
# Idempotent: does nothing when the cache already holds binaries for this recipe.
# FORCE=1 rebuilds. A lock serialises concurrent builds into the same cache.
set -euo pipefail
LK_NAME=build
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KEY="kubernetes $KUBE_VERSION recipe $BUILD_RECIPE"
cached() { [ -x "$KUBE_BIN/kube-apiserver" ] && [ -x "$KUBE_BIN/kube-controller-manager" ] \
  && [ "$(cat "$KUBE_BIN/.key" 2>/dev/null)" = "$KEY" ]; }

if [ "${FORCE:-0}" != 1 ] && cached; then
  say "binaries cached in $KUBE_BIN"
  exit 0
fi

step "waiting for the build lock"
mkdir -p "$KUBE_CACHE" "$KUBE_BUILD/logs"
exec 9>"$KUBE_CACHE/.build.lock"
flock 9
if [ "${FORCE:-0}" != 1 ] && cached; then say "binaries built meanwhile by another run: $KUBE_BIN"; exit 0; fi
say "building $KUBE_VERSION into $KUBE_BIN (source and caches in $KUBE_BUILD; logs in $KUBE_BUILD/logs)"

step "installing build dependencies (apt)"
apt_install golang-go rsync make dpkg-dev ca-certificates \
  golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev
command -v go >/dev/null || die "go not found after installing golang-go"
say "using $(go version)"

step "fetching the Debian source package (apt-get source kubernetes)"
cd "$KUBE_BUILD"
SRC="$(ls -d "$KUBE_BUILD"/kubernetes-1.20*/ 2>/dev/null | head -1 || true)"
if [ -z "$SRC" ]; then
  if ! apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes'; then
    # deb-src for the mirror apt already uses, same suites as the deb lines.
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '$1=="deb" && / bookworm /{for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
    mirror="${mirror:-http://deb.debian.org/debian}"
    say "adding deb-src for $mirror (bookworm, bookworm-updates)"
    printf 'Types: deb-src\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$mirror" > /etc/apt/sources.list.d/stashflow-kube-src.sources
    apt-get update -qq
    apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes' \
      || die "apt has no source package 'kubernetes' even after adding deb-src"
  fi
  apt-get source -qq kubernetes > logs/apt-source.log 2>&1 || { tail -20 logs/apt-source.log >&2; false; }
  SRC="$(ls -d "$KUBE_BUILD"/kubernetes-1.20*/ | head -1)"
fi
SRC="${SRC%/}"
say "source tree: $SRC"

step "generating pkg/generated/openapi (make gen_openapi)"
if [ ! -s "$SRC/pkg/generated/openapi/zz_generated.openapi.go" ]; then
  rm -f "$SRC/_output/local/bin/linux/amd64/openapi-gen"   # an empty leftover from a failed run breaks make
  (cd "$SRC" && GOPROXY=off GOTOOLCHAIN=local GOFLAGS= make gen_openapi) > logs/gen_openapi.log 2>&1 \
    || { tail -20 logs/gen_openapi.log >&2; false; }
fi

step "swapping vendored reflect2/json-iterator for Debian's Go>=1.18-safe versions"
G=/usr/share/gocode/src/github.com
for d in modern-go/reflect2 json-iterator/go; do
  [ -d "$G/$d" ] || die "$G/$d missing"
  rm -rf "${SRC:?}/vendor/github.com/$d"; mkdir -p "$SRC/vendor/github.com/$d"
  (cd "$G/$d" && find . -type f \( -name '*.go' -o -name '*.s' -o -name LICENSE -o -name go.mod \) ! -name '*_test.go' \
     ! -path './*_tests/*' ! -path './skip_tests/*' ! -path './benchmarks/*' ! -path './test/*' ! -path './tests/*' \
     -exec cp --parents {} "$SRC/vendor/github.com/$d/" \;)
done

export GO111MODULE=off GOPATH="$KUBE_BUILD/gopath" GOFLAGS= GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0
export GOCACHE="$KUBE_BUILD/gocache"
mkdir -p "$GOPATH/src/k8s.io" "$KUBE_BUILD/out"
ln -sfn "$SRC" "$GOPATH/src/k8s.io/kubernetes"
LDF="-s -w -buildid="
for p in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  LDF="$LDF -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=20 -X $p.gitTreeState=clean -X $p.buildDate=2021-01-13T00:00:00Z"
done
cd "$GOPATH/src/k8s.io/kubernetes"
for c in kube-apiserver kube-controller-manager; do
  step "compiling $c (GOPATH mode; log: $KUBE_BUILD/logs/build-$c.log)"
  go build -tags selinux,notest -ldflags "$LDF" -o "$KUBE_BUILD/out/$c" "k8s.io/kubernetes/cmd/$c" \
    > "$KUBE_BUILD/logs/build-$c.log" 2>&1 || { tail -30 "$KUBE_BUILD/logs/build-$c.log" >&2; false; }
done

step "installing binaries into the cache"
mkdir -p "$KUBE_BIN"
for c in kube-apiserver kube-controller-manager; do
  cp "$KUBE_BUILD/out/$c" "$KUBE_BIN/.$c.tmp" && mv -f "$KUBE_BIN/.$c.tmp" "$KUBE_BIN/$c"
done
"$KUBE_BIN/kube-apiserver" --version | grep -q "$KUBE_VERSION" || die "built kube-apiserver does not report $KUBE_VERSION"
echo "$KEY" > "$KUBE_BIN/.key"
say "built: $(ls -s --block-size=M "$KUBE_BIN" | tr '\n' ' ')"
