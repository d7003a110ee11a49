#!/usr/bin/env bash
# The main job on a fresh clone: install, then run pipelines/catvnoncat.toml (MobileNetV2 with
# ImageNet weights on the real cat vs non-cat images), then its report. Extra arguments go to
# `featurecache run`.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
featurecache run pipelines/catvnoncat.toml "$@"
featurecache report pipelines/catvnoncat.toml   # -> runs/catvnoncat/report.md and .html
featurecache info
