#!/usr/bin/env bash
# The test suite as `make test` runs it. pytest's exit code 5 ("no tests collected")
# is a failure here, never a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest -p no:cacheprovider --durations=25 "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "fedcrm: pytest collected no tests — treated as a failure" >&2
  exit 1
fi
exit "$status"
