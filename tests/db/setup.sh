#!/usr/bin/env bash
# Installs the database servers the health-check tests run against: Debian's MariaDB and
# PostgreSQL, unpatched. Idempotent: installed servers are kept. Nothing is started here and
# no service is left enabled: each test starts its own server on loopback, on a free port,
# with a throwaway data directory, and stops it (tests/common/db.rs, used by tests/t62_dister_services.rs).
# Usage: tests/db/setup.sh   (as root, or with sudo)
set -euo pipefail
need=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
# One apt at a time: the database and browser setups may run at once (parallel tests).
exec 9>"${TMPDIR:-/tmp}/dister-apt.lock"
flock 9
export DEBIAN_FRONTEND=noninteractive
# The packages' own services must not start (they would take the fixed ports 3306 and 5432):
# policy-rc.d answering 101 tells invoke-rc.d to leave them stopped.
restore=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
    restore=1
fi
cleanup() { [ -z "$restore" ] || "${sudo[@]}" rm -f /usr/sbin/policy-rc.d; }
trap cleanup EXIT
if ! "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
