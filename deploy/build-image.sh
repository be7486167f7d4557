#!/usr/bin/env bash
# Builds the container image from the repository root: deploy/build-image.sh [IMAGE[:TAG]]
# Needs a Docker (or compatible: podman, buildah, nerdctl) engine; none runs on the development machines,
# where Tests/EndToEnd/test_deploy.py checks the Dockerfile's runtime packages against `ldd` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-ghcr.io/waypoint-proxy/waypoint:0.1.0}
engine=${CONTAINER_ENGINE:-docker}
"$engine" build -f deploy/Dockerfile -t "$image" .
echo "built $image; push it and set it in deploy/base/deployment.yaml (or an overlay's images: entry)"
