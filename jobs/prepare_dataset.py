"""spark-submit entry point: prepare a raw image source into Petastorm splits.

    spark-submit jobs/prepare_dataset.py -c conf/mnist.yaml [--set data.limit=1000] [--overwrite]
"""
import sys

from nnfund_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
