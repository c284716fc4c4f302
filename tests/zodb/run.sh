#!/usr/bin/env bash
# Runs ZODB's storage conformance mixins through a stock ZEO ClientStorage against a
# fresh server cluster per test (see README.md beside this file).
#
#   tests/zodb/run.sh [-k PATTERN]... [--timeout S] [--faults-only | --no-faults]
#                     [TestCaseClass[.testMethod]]...
#
# The conformance suite (test_storage.py), then the fault tests (faults.py, readonly.py;
# the partition tests need root and are skipped without it).
#
#   STANDBY_ZEO_BACKEND=standby|stock   standby (default): 3 standby-server processes
#                                       stock: one stock runzeo (validates the harness)
#   STANDBY_BIN            directory of standby-server and standby
#                          (default ${CARGO_TARGET_DIR:-target}/debug, from the repo root)
#   STANDBY_ZODB_VENV      the venv scripts/setup-zodb makes (run here if incomplete)
#   STANDBY_ZODB_TIMEOUT   bound on the whole run in seconds (default 3000)
#   STANDBY_ZODB_TEST_TIMEOUT  bound on one test in seconds (default 180)
#
# The last line of the output is `N passed, N failed, N skipped`; the exit status is
# non-zero if any test failed or errored.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VENV=${STANDBY_ZODB_VENV:-$HOME/.cache/standby/zodb-venv}
export STANDBY_ZODB_VENV=$VENV

# Idempotent and quick when the venv is complete.
"$ROOT/scripts/setup-zodb" >&2

if [ "${STANDBY_ZEO_BACKEND:-standby}" = standby ]; then
	bin=${STANDBY_BIN:-${CARGO_TARGET_DIR:-target}/debug}
	case $bin in /*) ;; *) bin=$ROOT/$bin ;; esac
	export STANDBY_BIN=$bin
fi

# shellcheck disable=SC1091
source "$VENV/bin/activate"
cd "$HERE"
# -k 30: the runner's own SIGTERM handling stops the servers; SIGKILL after 30 s more
# (the servers then die with it: they run under setpriv --pdeathsig KILL).
exec timeout -k 30 "${STANDBY_ZODB_TIMEOUT:-3000}" python -u run.py "$@"
