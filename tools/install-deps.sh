#!/bin/sh
# Installs the Debian packages ballast builds and tests with (run as root, or via sudo).
set -e
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PACKAGES="build-essential cmake pkg-config libopenblas-openmp-dev libdnnl-dev libyaml-dev zlib1g-dev
ocl-icd-opencl-dev opencl-c-headers libpng-dev libjpeg-dev python3-torch python3-torchvision python3-numpy dataset-fashion-mnist libopenmpi-dev openmpi-bin"
missing=""
for p in $PACKAGES; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
