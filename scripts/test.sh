#!/usr/bin/env bash
# The test suite on a fresh clone: install, type-check the package (mypy, configured in
# pyproject.toml), then run every test (slow ones included).
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"` for the quick set.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
python -m mypy
python -m pytest "$@"
