#!/usr/bin/env bash
# Test predictions and a validated submission from trained weights; no network needed.
set -euo pipefail
config=${1:-configs/exp001.yaml}
medalist infer -c "$config"
medalist submission -c "$config"
