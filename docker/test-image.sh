#!/usr/bin/env bash
# make test-image: the project's image built with docker/Dockerfile, pushed to a registry on
# loopback, removed, pulled back by digest, and run by Docker (tests/test_image.py). Installs and
# starts what it needs when missing: Debian's Docker daemon and registry, and, where the
# Dockerfile's base cannot be pulled (no Docker Hub), a base with the same Debian release and
# Python minor version built from Debian's packages (docker/debian-base.sh). The wheels come from
# this machine's own package sources (pip download), so the image gets the torch wheel pip picks
# here: the CPU build where it lies on disk, instead of PyPI's CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS=0
step() { echo "== ${SECONDS}s: $*"; }
sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
registry=127.0.0.1:5000
state=${TMPDIR:-/tmp}/influence-test-image  # the daemon's and the registry's logs and storage
mkdir -p "$state"

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]}"
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if ! docker info >/dev/null 2>&1; then
    step "starting the Docker daemon (log: $state/dockerd.log)"
    $sudo sh -c "nohup dockerd >'$state/dockerd.log' 2>&1 &"
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "error: the Docker daemon did not start; see $state/dockerd.log" >&2; exit 1; }
fi

if ! python3 -c "import urllib.request; urllib.request.urlopen('http://$registry/v2/', timeout=2)" 2>/dev/null; then
    step "starting a registry on $registry (log: $state/registry.log)"
    cat >"$state/registry.yml" <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: $state/registry
  delete:
    enabled: true
http:
  addr: $registry
YAML
    nohup docker-registry serve "$state/registry.yml" >"$state/registry.log" 2>&1 &
    for _ in $(seq 30); do
        python3 -c "import urllib.request; urllib.request.urlopen('http://$registry/v2/', timeout=2)" 2>/dev/null && break
        sleep 1
    done
fi

named=$(sed -n 's/^ARG PYTHON_IMAGE=//p' docker/Dockerfile)
build_flags=(--build-arg PIP_FLAGS=--no-index)
if docker image inspect "$named" >/dev/null 2>&1 || timeout 60 docker pull -q "$named" >/dev/null 2>&1; then
    step "base image: $named"
else
    base=influence-base:bookworm-python3.11
    step "base image: $base, from Debian's packages ($named cannot be pulled)"
    docker/debian-base.sh "$base"
    build_flags+=(--build-arg "PYTHON_IMAGE=$base")
fi

step "wheels into docker/wheels/ (pip download from this machine's package sources)"
.venv/bin/pip download --quiet --disable-pip-version-check -r requirements.txt -d docker/wheels
.venv/bin/pip download --quiet --disable-pip-version-check --no-deps \
    "$(sed -n 's/.*--no-deps \(kronfluence==[^ ]*\).*/\1/p' docker/Dockerfile | head -n 1)" -d docker/wheels

step "make build"
make --no-print-directory build REGISTRY="$registry" DOCKER_BUILD_FLAGS="${build_flags[*]}"
ref=$(make --no-print-directory -s -f Makefile print-image-ref REGISTRY="$registry")
step "make push $ref"
make --no-print-directory push REGISTRY="$registry"
digest=$(docker image inspect --format '{{index .RepoDigests 0}}' "$ref")
# Every reference to the image goes (an earlier identical build may have tagged it too), so the
# pull below must fetch it from the registry.
docker image rm --force "$(docker image inspect --format '{{.Id}}' "$ref")" >/dev/null
docker image inspect "$digest" >/dev/null 2>&1 && { echo "error: $digest is still here after docker image rm" >&2; exit 1; }
step "pulling $digest back from the registry"
docker pull -q "$digest" >/dev/null
docker image ls --format '{{.Repository}}@{{.Digest}} {{.Size}}' | grep -F "$digest" || true

step "tests/test_image.py"
IMAGE_UNDER_TEST=$digest .venv/bin/python -m pytest -m image tests/test_image.py -v -p no:cacheprovider
step "done"
