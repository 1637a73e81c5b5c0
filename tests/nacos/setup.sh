#!/usr/bin/env bash
# Creates the virtual environment the Nacos client suite runs in (tests/nacos/suite.py), with
# the real, unpatched PyPI client at a pinned version. Idempotent: a ready environment is kept.
# Usage: tests/nacos/setup.sh [VENV_DIR]   (default: target/nacos-venv)
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-target/nacos-venv}"
PIN="nacos-sdk-python==2.0.11"
if "$VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("nacos-sdk-python") != "2.0.11")' 2>/dev/null; then
    exit 0
fi
rm -rf "$VENV"
python3 -m venv "$VENV"
# The v1 client (nacos.NacosClient) needs only the standard library; its v2 extras are not used.
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps "$PIN"
"$VENV/bin/python" -c 'import nacos; nacos.NacosClient'
