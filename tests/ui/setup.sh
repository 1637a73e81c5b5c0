#!/usr/bin/env bash
# Installs what the console's browser test needs: Debian's Chromium (package chromium), and
# playwright-core, the driver alone (it downloads no browser), from the npm registry into
# target/ui-node. Idempotent: what is installed is kept.
# Usage: tests/ui/setup.sh [DIR]   (default: target/ui-node; Chromium needs root or sudo)
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR="${1:-target/ui-node}"
PIN=1.64.1
if [ ! -x /usr/bin/chromium ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
    # One apt at a time: the database and browser setups may run at once (parallel tests).
    exec 9>"${TMPDIR:-/tmp}/dister-apt.lock"
    flock 9
    export DEBIAN_FRONTEND=noninteractive
    if ! "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium >/dev/null; then
        "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
        "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium >/dev/null
    fi
fi
if [ "$(node -p "try { require('$(realpath -m "$DIR")/node_modules/playwright-core/package.json').version } catch (e) { '' }")" != "$PIN" ]; then
    mkdir -p "$DIR"
    npm install --silent --no-audit --no-fund --prefix "$DIR" "playwright-core@$PIN" >/dev/null
fi
