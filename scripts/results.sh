#!/usr/bin/env bash
# Regenerate docs/results.md: bring the six write-up pipelines up to date (extraction once
# per image, then every head), then `featurecache report` over all of them. From scratch
# about 45 minutes on a 2-core CPU, most of it CIFAR-10's 60,000 images and its heads;
# afterwards `refresh` computes only new or changed images and retrains only heads whose
# inputs changed, so a rerun takes seconds.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
PIPELINES=$(printf "pipelines/%s.toml " catvnoncat fingers clothing clothing_sleeves cub50 cifar10)
# shellcheck disable=SC2086
featurecache refresh $PIPELINES
# shellcheck disable=SC2086
featurecache report $PIPELINES --report docs/results
