#!/usr/bin/env bash
# The test suite on a fresh clone: install, type-check the package (mypy, configured in
# pyproject.toml), then run every test (slow ones included), one pytest-xdist worker per
# core (at most 4), a test file per worker at a time (--dist loadfile: a module's
# fixtures are made once). Many tests wait on real processes they start, so two workers
# on two cores take 23 minutes where one took 40 (measured 2026-12-04).
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"` for the quick set.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
# The audit page is opened in Debian's Chromium (tests/audit/test_page.py); without it
# that test skips and says how to install it.
if ! command -v chromium > /dev/null && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
        > .venv/apt-chromium.log 2>&1 || echo "test: chromium did not install (.venv/apt-chromium.log)" >&2
fi
python -m mypy
python -m pytest -n auto --maxprocesses 4 --dist loadfile "$@"
