"""Benchmark entry point: our jobs against plain Keras / pyarrow baselines on this machine.

    python jobs/benchmark.py [--quick] [--output benchmark-results]

Same as `nnfund-spark benchmark`. It starts its own local Spark sessions and processes (one
contender at a time, except the pairs that are meant to run at once: the machine-ceiling pair
and the side-by-side input pair), so run it as a plain script rather than under spark-submit.
"""
import sys

from nnfund_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
