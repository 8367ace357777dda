#!/usr/bin/env bash
# System packages the tests use: tshark (pyshark's independent oracle, `vpnid explain`), chromium and
# chromedriver (the report's browser test), tcpreplay and iproute2 (the live-capture test). Idempotent.
set -euo pipefail
need=()
command -v tshark >/dev/null 2>&1 || need+=(tshark)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v tcpreplay >/dev/null 2>&1 || need+=(tcpreplay)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# Another apt may hold the dpkg lock for a while on a fresh machine; wait for it rather than fail.
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
