"""spark-submit entry point: train a Keras model with Horovod on Spark, tracked in MLflow.

    spark-submit --master local[2] jobs/train.py -c conf/mnist.yaml [--set train.epochs=2]
"""
import sys

from nnfund_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
