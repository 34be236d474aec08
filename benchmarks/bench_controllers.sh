#!/usr/bin/env bash
# Gloo against MPI for the 2-rank scaling row, by hand (Horovod must be built with MPI, as
# `make setup` does: see the README, "Controllers: MPI or Gloo"). Alternates four jobs for ROUNDS rounds on a prepared
# 30,000-image MNIST dataset, each rank bound to one core with one TensorFlow thread:
#   solo    1 rank (no Horovod)
#   mpi     2 ranks, train.controller=mpi
#   gloo    2 ranks, train.controller=gloo
#   mpi8    2 ranks, MPI, one allreduce per 8 batches
#   poll    2 ranks, MPI, HOROVOD_IDLE_WAIT=0 (stock Horovod's 1 ms polling; the others run
#           with the launcher's default, idle wait with a 0.25 ms hold: README "Horovod's
#           idle wait")
#   hold1   2 ranks, MPI, idle wait with HOROVOD_IDLE_WAIT_HOLD=1 (the patch's own default:
#           a woken thread waits one whole cycle for the rest of the step's gradients)
# and prints rank 0's images/s for each epoch (the first pays for tracing).
#
#   .venv/bin/nnfund-spark prepare -c conf/mnist.yaml --set data.limit=30000 \
#       --set data.validation_fraction=0 --set data.output_dir=/tmp/mnist30k
#   DATASET=/tmp/mnist30k bash benchmarks/bench_controllers.sh
#   DATASET=/tmp/mnist30k JOBS="solo poll hold1 mpi" bash benchmarks/bench_controllers.sh  # a subset
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${DATASET:?set DATASET to a prepared MNIST dataset}
ROUNDS=${ROUNDS:-2}
ALL_JOBS="solo mpi gloo mpi8 poll hold1"
JOBS=${JOBS:-$ALL_JOBS}
PY=${PY:-.venv/bin/python}
for job in $JOBS; do
  [[ " $ALL_JOBS " == *" $job "* ]] \
    || { echo "unknown job '$job' in JOBS (accepted: $ALL_JOBS)" >&2; exit 2; }
done
LOGS=$(mktemp -d)
run() {
  local name=$1; shift
  env TF_CPP_MIN_LOG_LEVEL=2 ${RUN_ENV:-} "$PY" -m nnfund_spark.cli train -c mnist_fast --master 'local[2]' \
    --set data.output_dir="$DATASET" --set train.epochs=5 --set train.intra_op_threads=1 \
    --set train.cores_per_rank=1 --set tracking.tracking_uri="sqlite:///$LOGS/mlflow.db" \
    --set tracking.log_model=false --set tracking.log_artifacts=false "$@" \
    > "$LOGS/$name.log" 2>&1 || { echo "$name failed: see $LOGS/$name.log" >&2; exit 1; }
  echo "$name: $(grep -E 'epoch [0-9]+:' "$LOGS/$name.log" | grep -oE '[0-9]+ img/s' | tr '\n' ' ')"
}
for round in $(seq "$ROUNDS"); do
  for job in $JOBS; do
    case $job in
      solo) run "solo_$round" --set train.num_proc=1 ;;
      mpi) run "mpi_$round" --set train.num_proc=2 --set train.controller=mpi ;;
      gloo) run "gloo_$round" --set train.num_proc=2 --set train.controller=gloo ;;
      mpi8) run "mpi8_$round" --set train.num_proc=2 --set train.controller=mpi \
              --set train.backward_passes_per_step=8 ;;
      poll) RUN_ENV=HOROVOD_IDLE_WAIT=0 run "poll_$round" --set train.num_proc=2 \
              --set train.controller=mpi ;;
      hold1) RUN_ENV=HOROVOD_IDLE_WAIT_HOLD=1 run "hold1_$round" --set train.num_proc=2 \
              --set train.controller=mpi ;;
    esac
  done
done
