#!/usr/bin/env bash
# Spark GPU discovery script: prints the node's GPU indices as Spark's resource JSON, e.g.
#   {"name": "gpu", "addresses": ["0","1"]}
# Point spark.{executor,worker}.resource.gpu.discoveryScript at it (see conf/gpu_cluster.yaml).
set -euo pipefail
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_discovery.sh: nvidia-smi not found; is this a GPU node with the NVIDIA driver?" >&2
  exit 1
fi
# nvidia-smi reports its errors ("No devices were found", driver mismatch) on stdout: keep
# its output, and refuse anything that is not one GPU index per line.
if ! output=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>&1); then
  echo "gpu_discovery.sh: nvidia-smi failed: ${output}" >&2
  exit 1
fi
addresses=""
while IFS= read -r line; do
  line=${line//[[:space:]]/}
  [[ -z "$line" ]] && continue
  if [[ ! "$line" =~ ^[0-9]+$ ]]; then
    echo "gpu_discovery.sh: unexpected nvidia-smi output (expected one GPU index per line): ${output}" >&2
    exit 1
  fi
  addresses+="${addresses:+,}\"${line}\""
done <<< "$output"
if [[ -z "$addresses" ]]; then
  echo "gpu_discovery.sh: nvidia-smi lists no GPU on this node" >&2
  exit 1
fi
echo "{\"name\": \"gpu\", \"addresses\": [${addresses}]}"
