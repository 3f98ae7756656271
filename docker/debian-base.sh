#!/usr/bin/env bash
# Builds a stand-in for the Dockerfile's base image (python:3.11-slim-bookworm) from Debian's own
# packages, for machines that cannot pull from Docker Hub: the same Debian release (bookworm) and
# Python minor version (3.11), as a root filesystem made by mmdebstrap and loaded by `docker import`.
# Usage: docker/debian-base.sh TAG   (does nothing when TAG is already an image here)
set -euo pipefail
tag=${1:?usage: docker/debian-base.sh TAG}
if docker image inspect "$tag" >/dev/null 2>&1; then
    exit 0
fi
command -v mmdebstrap >/dev/null || { echo "error: mmdebstrap is missing (as root: apt-get install mmdebstrap)" >&2; exit 2; }
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# python3-venv: `python -m venv` with pip; python-is-python3: `python`, as the official image has;
# ca-certificates: HTTPS from the stages (S3, the Hugging Face hub).
mmdebstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    --aptopt='APT::Install-Recommends "false"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm - "$mirror" \
    | docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$tag"
version=$(docker run --rm "$tag" python --version)
case "$version" in
    "Python 3.11."*) echo "built $tag from Debian bookworm: $version" ;;
    *) echo "error: $tag has $version, not Python 3.11 as python:3.11-slim-bookworm" >&2; exit 1 ;;
esac
