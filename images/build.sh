#!/usr/bin/env bash
# Build the images of stashflow's own Functions (images/<name>/Containerfile, versions pinned in
# images/versions.txt) with the first container builder found: docker, podman or buildah; and the
# stashflow image itself (images/stashflow: this checkout's wheel), which the in-cluster worker runs.
#
#   bash images/build.sh                 # every image and tag
#   bash images/build.sh postgres-executor
#   REGISTRY=registry.example/stashflow PUSH=1 bash images/build.sh
#
# Exits 3, saying so, when no builder is usable (this development machine has none: there the
# node agent runs the Functions' commands with Debian's tools instead).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
registry="${REGISTRY:-ghcr.io/stashflow}"
say() { printf '[images] %s\n' "$*" >&2; }

builder=""
for candidate in docker podman buildah; do
  if command -v "$candidate" >/dev/null 2>&1; then
    case "$candidate" in
      docker) docker info >/dev/null 2>&1 && builder=docker ;;
      podman) podman info >/dev/null 2>&1 && builder=podman ;;
      buildah) buildah version >/dev/null 2>&1 && builder=buildah ;;
    esac
    [ -n "$builder" ] && break
    say "$candidate is installed but not usable here (no daemon or no permissions)"
  fi
done
if [ -z "$builder" ]; then
  say "no usable container builder (docker, podman or buildah): cannot build the images here."
  say "install one of them, or build images/*/Containerfile elsewhere (context: a folder with the Containerfile and"
  say "the executor from: python3 executor/bundle.py DIR/stashflow-executor)."
  exit 3
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
python3 "$here/../executor/bundle.py" "$context/stashflow-executor" >/dev/null
built=0
while read -r name tag base restic; do
  case "$name" in ''|'#'*) continue ;; esac
  if [ "$#" -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
  image="$registry/$name:$tag"
  cp "$here/$name/Containerfile" "$context/Containerfile"
  if [ "$name" = stashflow ] && ! ls "$context"/stashflow-*.whl >/dev/null 2>&1; then
    python3 -m pip wheel --quiet --no-deps --wheel-dir "$context" "$here/.."  # this checkout's stashflow
  fi
  say "$builder: $image (base $base, restic $restic)"
  if [ "$builder" = buildah ]; then
    buildah bud --build-arg "BASE_VERSION=$base" --build-arg "RESTIC_VERSION=$restic" -t "$image" -f "$context/Containerfile" "$context"
  else
    "$builder" build --build-arg "BASE_VERSION=$base" --build-arg "RESTIC_VERSION=$restic" -t "$image" -f "$context/Containerfile" "$context"
  fi
  if [ "${PUSH:-0}" = 1 ]; then "$builder" push "$image"; fi
  built=$((built + 1))
done < "$here/versions.txt"
say "built $built image(s)"
