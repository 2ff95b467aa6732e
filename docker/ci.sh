#!/usr/bin/env bash
# Docker for the Compose scenario (§5.2) in CI: start an engine, make the python:3.11-slim base
# image available, build the project image. Run from the repository root: bash docker/ci.sh
#
# Never fails the CI run: where no engine can be started or an image cannot be built, it says why
# and returns 0; the Compose test then skips (no engine) or fails with the build's own error.
# Settings: PYTHON (host interpreter for `pip download`, default python3),
#           DOCKER_ENGINE_SCRIPT (default ../shared/docker/ci_engine.sh),
#           OPENSQT_IMAGE (default opensqt-grpc:local), BASE_IMAGE (default python:3.11-slim).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
ENGINE_SCRIPT=${DOCKER_ENGINE_SCRIPT:-../shared/docker/ci_engine.sh}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
COMPOSE_FILE=docker-compose.grpc.yml
WHEELS=docker/wheels

log() { printf '[docker/ci %s] %s\n' "$(date +%T)" "$*"; }
step_start() { STEP_T0=$(date +%s.%N); log "$1"; }
step_end() { log "$1 ($(awk -v a="$STEP_T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f s", b-a}'))"; }
give_up() { log "SKIP: $*; the Compose test will skip or fail with the reason"; exit 0; }

# 1. the engine
step_start "engine: starting"
if [ -f "$ENGINE_SCRIPT" ]; then
  if ! bash "$ENGINE_SCRIPT"; then
    give_up "$ENGINE_SCRIPT failed (see its output above)"
  fi
elif ! docker info >/dev/null 2>&1; then
  give_up "no Docker engine reachable and no $ENGINE_SCRIPT to start one"
fi
docker info >/dev/null 2>&1 || give_up "Docker engine not reachable after start: $(docker info 2>&1 | tail -1)"
command -v docker-compose >/dev/null || give_up "docker-compose (Compose v1) is not installed"
step_end "engine: ready"

# 2. the base image: the real one when a registry is reachable, else a local stand-in
step_start "base image $BASE_IMAGE"
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  step_end "base image $BASE_IMAGE: present"
elif timeout 120 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
  step_end "base image $BASE_IMAGE: pulled"
else
  log "no registry reachable: building a local stand-in for $BASE_IMAGE from localdebian:12"
  docker build -q --pull=false -t "$BASE_IMAGE" - <docker/base-image.Dockerfile >/dev/null \
    || give_up "could not build the stand-in base image"
  step_end "base image $BASE_IMAGE: stand-in built"
fi

# 3. wheels for an offline build (the host's pip reaches its package sources; the build may not)
step_start "wheels: pip download into $WHEELS"
rm -f "$WHEELS"/*.whl
ARCH=$(uname -m)  # the image runs on this engine's architecture: CPython 3.11, glibc 2.36 (Debian 12)
PIP_LOG=$(mktemp /tmp/opensqt-pip-download.XXXXXX.log)
if "$PYTHON" docker/runtime_requirements.py pyproject.toml >"$WHEELS/runtime.txt" 2>"$PIP_LOG" \
  && "$PYTHON" -m pip download --quiet --disable-pip-version-check --dest "$WHEELS" \
    --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
    $(for minor in $(seq 17 36); do printf -- '--platform manylinux_2_%s_%s ' "$minor" "$ARCH"; done) \
    -c requirements.lock -r "$WHEELS/runtime.txt" "setuptools>=68" >>"$PIP_LOG" 2>&1; then
  step_end "wheels: $(ls "$WHEELS"/*.whl | wc -l) downloaded"
else
  tail -n 15 "$PIP_LOG"
  rm -f "$WHEELS"/*.whl
  step_end "wheels: download failed (output above); the image build will use the package index"
fi
rm -f "$WHEELS/runtime.txt" "$PIP_LOG"

# 4. the project image (the one service with a build section builds it for all three)
step_start "image: docker-compose build"
BUILD_LOG=$(mktemp /tmp/opensqt-image-build.XXXXXX.log)
if docker-compose -f "$COMPOSE_FILE" build exchange_connector >"$BUILD_LOG" 2>&1; then
  step_end "image: $(docker image inspect -f '{{.RepoTags}} {{.Size}} bytes' "${OPENSQT_IMAGE:-opensqt-grpc:local}")"
else
  tail -n 40 "$BUILD_LOG"
  step_end "image: build FAILED (output above; the Compose test will fail with it too)"
fi
rm -f "$BUILD_LOG"
exit 0
