"""Datasets on an object store: prepare writes to s3a://, train reads its shards from there,
against a local S3 server (moto) that stands in for AWS. Spark's own Hadoop has no S3 connector
here (no hadoop-aws jar without Maven), so predict's refusal with the fix is what is checked."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnfund_spark.data.manifest import MANIFEST, read_manifest
from nnfund_spark.data.storage import StorageError, commit, local_path, resolve, staging_for
from tests.test_spark_submit import free_port

BIN = Path(sys.executable).parent
BUCKET = "nnfund-test"


@pytest.fixture(scope="module")
def s3_env():
    """A local S3 endpoint with one bucket; yields the AWS_* variables that point clients at
    it (they are also set in this process while the module runs)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir(BUCKET)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_locations_resolve_or_are_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = resolve("ds/mnist")
    assert local.is_local and local.path == str(tmp_path.resolve() / "ds" / "mnist")
    assert resolve(local.uri).path == local.path  # file:// round trip
    spaced = resolve("with space/ds").child("a b")
    assert "%20" in spaced.uri and resolve(spaced.uri).path == spaced.path
    assert spaced.parent.path == str(tmp_path.resolve() / "with space" / "ds")
    assert resolve("dbfs:/tmp/ds").path == "/dbfs/tmp/ds"
    remote = resolve("s3a://bucket/datasets/mnist/")
    assert (remote.is_local, remote.path, remote.uri) == (False, "bucket/datasets/mnist",
                                                          "s3a://bucket/datasets/mnist")
    assert remote.child("train").uri == "s3a://bucket/datasets/mnist/train"
    assert staging_for(remote).uri.startswith("s3a://bucket/datasets/.mnist.tmp-")
    assert remote.overlaps(resolve("s3a://bucket/datasets"))
    assert remote.overlaps(remote.child("test", "preds"))
    assert not remote.overlaps(resolve("s3a://bucket/datasets/mnist2"))
    assert not remote.overlaps(local)
    with pytest.raises(StorageError, match="'s3a://bucket' is a bucket root"):
        resolve("s3a://bucket")
    with pytest.raises(StorageError, match=r"'nosuch://x/y': unknown scheme nosuch://"):
        resolve("nosuch://x/y")
    with pytest.raises(StorageError, match=r"'s3a://bucket/ck' must be a local path"):
        local_path("s3a://bucket/ck")


def test_hdfs_without_hadoop_on_the_node_says_what_it_needs(monkeypatch):
    # No Hadoop installation (hence no libhdfs) on these machines.
    monkeypatch.delenv("HADOOP_HOME", raising=False)
    with pytest.raises(StorageError, match=r"'hdfs://namenode:8020/data/mnist': hdfs:// goes "
                                           r"through pyarrow's libhdfs.*HADOOP_HOME"):
        resolve("hdfs://namenode:8020/data/mnist")


def _stage(location, files: dict):
    for name, text in files.items():
        location.child(*name.split("/")).write_text(text)


def _watch_copies(monkeypatch, fs, fail_at: int = 0) -> list:
    """Record the targets of fs.copy (s3fs binds its sync methods per instance, so the instance
    is patched); with fail_at=n the n-th copy raises instead, like a dropped connection."""
    original, copied = fs.copy, []

    def copy(source, target, **kwargs):
        copied.append(target)
        if len(copied) == fail_at:
            raise OSError("connection reset")
        return original(source, target, **kwargs)

    monkeypatch.setattr(fs, "copy", copy)
    return copied


def test_commit_on_an_object_store_replaces_the_old_dataset_manifest_last(s3_env, monkeypatch):
    final = resolve(f"s3a://{BUCKET}/commit/ds")
    _stage(final, {MANIFEST: '{"schema_version": 1, "old": true}', "train/old.parquet": "o"})
    staging = staging_for(final)
    _stage(staging, {MANIFEST: '{"schema_version": 1, "new": true}', "train/a.parquet": "a",
                     "test/b.parquet": "b"})
    copied = _watch_copies(monkeypatch, final.fs)
    commit(staging, final, last=MANIFEST)
    names = [target.rsplit("/", 1)[-1] for target in copied]
    assert names[-1] == MANIFEST and sorted(names) == sorted([MANIFEST, "a.parquet",
                                                              "b.parquet"])
    assert json.loads(final.child(MANIFEST).read_text())["new"]
    assert sorted(f.name for f in final.child("train").files()) == ["a.parquet"]
    assert not staging.exists()


def test_an_interrupted_commit_leaves_no_valid_dataset(s3_env, monkeypatch):
    final = resolve(f"s3a://{BUCKET}/interrupted/ds")
    _stage(final, {MANIFEST: '{"schema_version": 1}', "train/old.parquet": "o"})
    staging = staging_for(final)
    _stage(staging, {MANIFEST: '{"schema_version": 1}', "train/a.parquet": "a",
                     "train/b.parquet": "b"})
    _watch_copies(monkeypatch, final.fs, fail_at=2)
    with pytest.raises(OSError, match="connection reset"):
        commit(staging, final, last=MANIFEST)
    with pytest.raises(FileNotFoundError, match="no manifest.json in s3a://.*did that run finish"):
        read_manifest(final)


def _cli(workdir, env, *args, timeout=600):
    run_env = dict(os.environ, **env, PYSPARK_PYTHON=sys.executable)
    run_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([str(BIN / "nnfund-spark"), *args, "--master", "local[2]"],
                          cwd=workdir, env=run_env, capture_output=True, text=True,
                          timeout=timeout)


def test_prepare_and_train_on_s3a_and_predict_names_the_missing_connector(s3_env, tmp_path,
                                                                          mnist_raw_dir):
    import s3fs
    from mlflow.tracking import MlflowClient

    uri = f"s3a://{BUCKET}/datasets/mnist"
    prepare = ("prepare", "-c", "mnist", "--set", f"data.raw_dir={mnist_raw_dir}",
               "--set", f"data.output_dir={uri}", "--set", "data.limit=1500")
    proc = _cli(tmp_path, s3_env, *prepare)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    keys = fs.find(BUCKET + "/datasets")
    assert not [k for k in keys if ".tmp-" in k], keys  # the staging prefix is gone
    manifest = json.loads(fs.cat(f"{BUCKET}/datasets/mnist/{MANIFEST}"))
    assert manifest["splits"]["test"]["count"] == 1500
    assert len([k for k in keys if k.startswith(f"{BUCKET}/datasets/mnist/train/part-")]) == \
        manifest["splits"]["train"]["files"]
    assert not list(tmp_path.glob("data*")), "nothing may be written locally"

    proc = _cli(tmp_path, s3_env, *prepare)  # the dataset is in the way
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"output already exists: {uri}" in proc.stderr

    proc = _cli(tmp_path, s3_env, "train", "-c", "mnist", "--set", f"data.output_dir={uri}",
                "--set", "train.epochs=1", "--set", "train.batch_size=32",
                "--set", "tracking.log_artifacts=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy:" in proc.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("mnist_cnn").experiment_id])
    assert run.data.params["world_size"] == "2"
    assert run.data.metrics["test_accuracy"] > 0.5  # 1 epoch of 1,350 images
    dataset = run.inputs.dataset_inputs[0].dataset
    assert json.loads(dataset.source) == {"path": uri}
    # No credential reaches MLflow.
    logged = json.dumps([run.data.params, run.data.tags])
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in logged

    out = tmp_path / "preds"
    proc = _cli(tmp_path, s3_env, "predict", "--model-uri", run.info.run_id,
                "--dataset-dir", uri, "--output-dir", str(out))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert (f"Spark cannot open '{uri}/test'" in proc.stderr
            and "hadoop-aws" in proc.stderr), proc.stderr[-2000:]
    assert not out.exists()
