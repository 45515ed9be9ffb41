#!/usr/bin/env bash
# Build a minimal Debian bookworm + Python 3.11 base image WITHOUT pulling from a registry.
#
# Why: on machines that cannot reach Docker Hub (air-gapped HPC login nodes, CI sandboxes)
# `FROM python:3.11-slim` cannot be pulled.  debootstrap fetches .deb packages from an
# ordinary Debian mirror instead, and `podman import` / `docker import` turns the root
# filesystem into an image that the Dockerfile then uses through `--build-arg BASE=...`.
#
# Usage: docker/make-offline-base.sh [IMAGE_TAG]      (run as root; needs debootstrap)
#   IMAGE_TAG   default: localhost/synflow-base:bookworm-py3.11
# Env:   ENGINE=podman|docker (default: podman if installed), MIRROR=http://deb.debian.org/debian
set -euo pipefail

tag="${1:-localhost/synflow-base:bookworm-py3.11}"
mirror="${MIRROR:-http://deb.debian.org/debian}"
engine="${ENGINE:-$(command -v podman >/dev/null 2>&1 && echo podman || echo docker)}"

if [[ $(id -u) -ne 0 ]]; then
    echo "error: debootstrap needs root (it creates device nodes and chroots)" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "error: apt-get install debootstrap" >&2; exit 1; }

rootfs="$(mktemp -d /var/tmp/synflow-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

# minbase = essential + apt only.  python3-venv brings ensurepip (so `python3 -m venv` gets
# pip without touching PyPI for pip itself); ca-certificates lets pip verify PyPI.
# No compilers: every synflow dependency ships manylinux wheels for CPython 3.11.
debootstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror"

# Trim what an image never needs: apt lists, caches, docs, man pages, locales (~60 MB).
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
       "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/tmp/*
# `python` (not only `python3`) as in the official python images.
ln -sf python3 "$rootfs"/usr/bin/python

# Import as an image; --change sets the same defaults the official python image has.
tar --numeric-owner -C "$rootfs" -c . | "$engine" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$tag"
"$engine" run --rm "$tag" python3 -c 'import sys, venv, ensurepip; print(sys.version)'
echo "base image ready: $tag"
