#!/usr/bin/env bash
# The benchmark's peers and its own extras: nfstream and psutil from PyPI (the `bench` extra), ndpiReader
# from Debian's libndpi-bin. Run once as root before `python benchmarks/throughput.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
DEBIAN_FRONTEND=noninteractive apt-get install -y -q libndpi-bin
python3 -m pip install --quiet -e '.[bench]'
ndpiReader -h 2>&1 | head -n 2 || true
