#!/usr/bin/env bash
# Spark GPU discovery script: prints the node's GPU indices as Spark's resource JSON, e.g.
#   {"name": "gpu", "addresses": ["0","1"]}
# Point spark.{executor,worker}.resource.gpu.discoveryScript at it (see conf/gpu_cluster.yaml).
set -euo pipefail
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_discovery.sh: nvidia-smi not found; is this a GPU node with the NVIDIA driver?" >&2
  exit 1
fi
addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed 's/[^0-9]//g' \
            | awk 'NF {printf "%s\"%s\"", sep, $0; sep=","}')
echo "{\"name\": \"gpu\", \"addresses\": [${addresses}]}"
