"""spark-submit entry point: run a sweep (one parent MLflow run, a child run per trial).

    spark-submit --master local[2] jobs/sweep.py -c conf/experiments/optimizers.yaml
"""
import sys

from nnfund_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
