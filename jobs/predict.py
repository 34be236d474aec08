"""spark-submit entry point: score a prepared split with a logged MLflow model, write the
predictions as Parquet and log accuracy + confusion matrix to MLflow.

    spark-submit --master local[2] jobs/predict.py -c conf/mnist.yaml \
        --model-uri runs:/<run_id>/model --output-dir out/predictions/mnist_test
"""
import sys

from nnfund_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
