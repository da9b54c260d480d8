#!/usr/bin/env bash
# System packages for the compose test (tests/deploy/test_deploy_compose.py): podman with
# runc (crun cannot start containers on these machines) and catatonit (for `init: true`),
# Debian's docker-compose 1.29 *without* its recommended docker.io engine, and mmdebstrap
# to build the base image from Debian's archive. Idempotent; needs root or sudo.
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
missing=""
for p in podman runc catatonit docker-compose mmdebstrap; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
