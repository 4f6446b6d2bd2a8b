#!/usr/bin/env bash
# Two processes x 4 CPU devices on one machine: exercises jax.distributed, per-process data slices and
# global-array assembly without a cluster. Usage: bash launch/local_two_process.sh [extra flags]
set -euo pipefail
export JAX_PLATFORMS=cpu JAX_COORDINATOR_ADDRESS=127.0.0.1:${PORT:-12355} JAX_NUM_PROCESSES=2
export XLA_FLAGS=--xla_force_host_platform_device_count=4
WORKDIR=${WORKDIR:-runs/two_process}
for i in 0 1; do
  JAX_PROCESS_ID=$i python -m jaxmatch.main --config configs/transformatcher_spair.py:smoke \
    --workdir "$WORKDIR" "$@" &
done
wait
