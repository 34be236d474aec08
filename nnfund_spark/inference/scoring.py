"""Executor side of batch inference: decode the stored images and score them with the model.

Everything here runs inside Spark's Python workers. It receives plain values (a settings dict)
and imports numpy/cv2/MLflow lazily, so the driver never pays for it and nothing from the driver
has to be pickled except the settings.
"""
from __future__ import annotations

import io
import sys
from typing import Iterator

# One loaded model per Python worker. Spark reuses workers across tasks (spark.python.worker.reuse
# is on by default), so every task after the first on a worker skips the multi-second load.
# Keyed by the model's local path, which is unique per predict call; an older model is dropped.
_MODEL_CACHE: dict = {}


def decode_images(blobs, codec: str, image_shape, indices=None):
    """Stored image cells -> uint8 array (N, H, W, C), exactly what Petastorm's codecs return.

    codec "png": Petastorm's CompressedImageCodec bytes. Grayscale is stored 2-D and OpenCV
    returns colour as BGR (Petastorm writes RGB converted to BGR), so convert back to RGB.
    codec "ndarray": Petastorm's NdarrayCodec bytes, i.e. the output of numpy.save.
    """
    import numpy as np

    shape = tuple(int(v) for v in image_shape)
    out = np.empty((len(blobs), *shape), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        where = f"example index {indices[i]}" if indices is not None else f"row {i}"
        if codec == "png":
            import cv2

            image = cv2.imdecode(np.frombuffer(blob, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise ValueError(f"{where}: image bytes are not a decodable PNG")
            if image.ndim == 3 and image.shape[2] == 3:
                image = image[..., ::-1]
        elif codec == "ndarray":
            image = np.load(io.BytesIO(blob), allow_pickle=False)
        else:
            raise ValueError(f"image codec '{codec}' is not one of png, ndarray")
        if image.dtype != np.uint8 or image.size != out[i].size:
            raise ValueError(f"{where}: decoded image {image.dtype}{list(image.shape)} does not "
                             f"fit the manifest's image_shape {list(shape)} (uint8)")
        out[i] = image.reshape(shape)
    return out


def _load_model(local_path: str):
    import mlflow.pyfunc

    model = _MODEL_CACHE.get(local_path)
    if model is None:
        _MODEL_CACHE.clear()
        from nnfund_spark.tracking.mlflow_utils import quiet_model_loading

        with quiet_model_loading():
            model = mlflow.pyfunc.load_model(local_path)
        _MODEL_CACHE[local_path] = model
        if "keras" in sys.modules:
            # MLflow's Keras wrapper calls predict() with Keras' default progress bar: one line
            # per batch in every executor log. This worker only scores, so silence it.
            import keras

            keras.utils.disable_interactive_logging()
    return model


def _model_path(settings: dict) -> str:
    """The model directory on this node, unpacked by Spark from the driver's addArchive."""
    from pyspark import SparkFiles

    return SparkFiles.get(settings["model_archive"])


def score_batches(batches: Iterator, settings: dict) -> Iterator:
    """mapInPandas body: pandas batches of (index, image[, label]) -> prediction rows.

    The model predicts `batch_size` images at a time so memory stays bounded whatever Arrow's
    batch size is; images go in as raw 0..255 float32 (the models rescale internally).
    """
    import numpy as np
    import pandas as pd

    model = _load_model(_model_path(settings))
    batch_size = settings["batch_size"]
    num_classes = settings["num_classes"]
    for frame in batches:
        for start in range(0, len(frame), batch_size):
            chunk = frame.iloc[start:start + batch_size]
            index = chunk["index"].to_numpy(np.int64)
            images = decode_images(chunk["image"].tolist(), settings["codec"],
                                   settings["image_shape"], index)
            probs = np.asarray(model.predict(images.astype(np.float32)), dtype=np.float32)
            if probs.shape != (len(chunk), num_classes):
                raise ValueError(f"model {settings['model_uri']} returned shape "
                                 f"{list(probs.shape)} for {len(chunk)} images; expected "
                                 f"[{len(chunk)}, {num_classes}] (one probability per class of "
                                 f"the dataset)")
            out = pd.DataFrame({"index": index})
            if settings["has_label"]:
                out["label"] = chunk["label"].to_numpy(np.int32)
            out["prediction"] = probs.argmax(axis=1).astype(np.int32)
            out["probabilities"] = list(probs)
            out["model_uri"] = settings["model_uri"]
            yield out


def output_schema(has_label: bool):
    from pyspark.sql.types import (ArrayType, FloatType, IntegerType, LongType, StringType,
                                   StructField, StructType)

    fields = [StructField("index", LongType(), False)]
    if has_label:
        fields.append(StructField("label", IntegerType(), False))
    fields += [StructField("prediction", IntegerType(), False),
               StructField("probabilities", ArrayType(FloatType(), False), False),
               StructField("model_uri", StringType(), False)]
    return StructType(fields)
