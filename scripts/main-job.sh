#!/usr/bin/env bash
# The main job on a fresh clone: install, then run pipelines/catvnoncat.toml (MobileNetV2 with
# ImageNet weights on the real cat vs non-cat images), its audit, then its report. Extra arguments go to
# `featurecache run`.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
featurecache run pipelines/catvnoncat.toml "$@"
featurecache audit pipelines/catvnoncat.toml    # -> runs/catvnoncat/catvnoncat/<group>/audit/audit.html
featurecache report pipelines/catvnoncat.toml   # -> runs/catvnoncat/report.md and .html
featurecache info
