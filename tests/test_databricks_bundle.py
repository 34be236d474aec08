"""The Databricks Asset Bundle and the Databricks defaults, checked without a workspace: every
job loads into the databricks-sdk settings classes with no unknown key, every task runs a real
console script and subcommand with a conf file that exists and --set keys that exist."""
import fnmatch
import importlib.metadata
import re
from pathlib import Path

import pytest
import yaml

from nnfund_spark.config import ConfigError, load_config
from nnfund_spark.databricks import (databricks_defaults, databricks_tracking, detect_user,
                                     experiment_path, is_databricks, spark_uri,
                                     unshared_locations)

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "conf" / "databricks"
SUBCOMMANDS = ("prepare", "train", "sweep", "predict")
USER = "tester@example.com"
_REF = re.compile(r"\$\{([^}]+)\}")


def _load_bundle() -> dict:
    root = yaml.safe_load((BUNDLE / "databricks.yml").read_text())
    resources: dict = {}
    for pattern in root.get("include", []):
        files = sorted(BUNDLE.glob(pattern))
        assert files, f"include pattern {pattern} matches nothing"
        for path in files:
            for kind, items in yaml.safe_load(path.read_text())["resources"].items():
                clash = set(resources.get(kind, {})) & set(items)
                assert not clash, f"{path.name} redefines {kind} {clash}"
                resources.setdefault(kind, {}).update(items)
    root["resources"] = resources
    return root


def _resolver(bundle: dict, target: str):
    """${...} substitution as the Databricks CLI does it: var.* from defaults + target overrides,
    plus the bundle/workspace values the CLI provides (with a fake user)."""
    variables = {name: spec["default"] for name, spec in bundle["variables"].items()}
    variables.update(bundle["targets"][target].get("variables", {}))
    builtins = {"bundle.name": bundle["bundle"]["name"], "bundle.target": target,
                "workspace.current_user.userName": USER,
                "workspace.file_path": f"/Workspace/Users/{USER}/.bundle/nnfund_spark/{target}/files"}

    def lookup(name: str):
        if name.startswith("var."):
            assert name[4:] in variables, f"undefined bundle variable ${{{name}}}"
            return resolve(variables[name[4:]])
        assert name in builtins, f"reference ${{{name}}} is not one this test knows"
        return builtins[name]

    def resolve(value):
        if isinstance(value, dict):
            return {key: resolve(item) for key, item in value.items()}
        if isinstance(value, list):
            return [resolve(item) for item in value]
        if not isinstance(value, str):
            return value
        whole = _REF.fullmatch(value)
        if whole:  # a lone reference keeps the variable's type (e.g. num_workers stays an int)
            return lookup(whole.group(1))
        return _REF.sub(lambda m: str(lookup(m.group(1))), value)

    return resolve, builtins


def _unknown_keys(original, parsed, where="job") -> list[str]:
    """Keys that did not survive from_dict/as_dict: misspelt or not part of the Jobs API."""
    if isinstance(original, dict):
        lost = []
        for key, value in original.items():
            if not isinstance(parsed, dict) or key not in parsed:
                lost.append(f"{where}.{key}")
            else:
                lost += _unknown_keys(value, parsed[key], f"{where}.{key}")
        return lost
    if isinstance(original, list):
        return [k for i, (o, p) in enumerate(zip(original, parsed))
                for k in _unknown_keys(o, p, f"{where}[{i}]")]
    return []


def _jobs(target: str):
    bundle = _load_bundle()
    resolve, builtins = _resolver(bundle, target)
    return resolve(bundle["resources"]["jobs"]), builtins


def _console_scripts() -> dict[str, str]:
    setup_text = (REPO / "setup.py").read_text()
    declared = dict(re.findall(r'"([\w.-]+)\s*=\s*(nnfund_spark[\w.:]+)"', setup_text))
    installed = {ep.name: ep.value for ep in
                 importlib.metadata.distribution("nnfund_spark").entry_points
                 if ep.group == "console_scripts"}
    assert declared == installed, "setup.py and the installed package disagree; reinstall -e ."
    return declared


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_every_job_loads_into_the_sdk_without_unknown_keys(target):
    from databricks.sdk.service.jobs import JobSettings

    jobs, _ = _jobs(target)
    assert jobs, "the bundle defines no job"
    for name, job in jobs.items():
        settings = JobSettings.from_dict(job)
        assert _unknown_keys(job, settings.as_dict(), name) == []
        keys = [task.task_key for task in settings.tasks]
        assert keys[:3] == ["prepare", "train", "sweep"], keys
        assert len(set(keys)) == len(keys)
        clusters = {c.job_cluster_key: c.new_cluster for c in settings.job_clusters}
        for task in settings.tasks:
            assert all(dep.task_key in keys for dep in task.depends_on or []), task.task_key
            cluster = clusters[task.job_cluster_key]
            assert cluster.spark_version == "14.3.x-gpu-ml-scala2.12"
            assert cluster.spark_conf["spark.task.resource.gpu.amount"] == "1"
            assert "spark.executor.resource.gpu.amount" in cluster.spark_conf
            # The wheel comes from <repo>/dist (relative to the resources/ file that names it).
            (library,) = task.libraries
            assert (BUNDLE / "resources" / library.whl).resolve().parent == REPO / "dist"


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_every_task_runs_a_real_subcommand_conf_file_and_keys(target):
    from nnfund_spark.cli import _parser

    scripts = _console_scripts()
    subcommands_now = set(_parser()._subparsers._group_actions[0].choices)
    jobs, builtins = _jobs(target)
    files_root = builtins["workspace.file_path"] + "/"
    for job in jobs.values():
        for task in job["tasks"]:
            wheel = task["python_wheel_task"]
            assert wheel["package_name"] == "nnfund_spark"
            # cli:main today; a sys.exit wrapper (cli:run) is fine too.
            assert scripts.get(wheel["entry_point"], "").startswith("nnfund_spark.cli:"), wheel
            params = wheel["parameters"]
            assert params[0] in SUBCOMMANDS, f"{task['task_key']}: {params[0]}"
            assert params.count("-c") == 1
            conf = params[params.index("-c") + 1]
            assert conf.startswith(files_root), conf  # synced from the repository
            local_conf = REPO / conf[len(files_root):]
            assert local_conf.is_file() and (REPO / "conf") in local_conf.parents, conf
            overrides = [params[i + 1] for i, p in enumerate(params) if p == "--set"]
            for override in overrides:
                try:
                    if params[0] == "sweep":  # -c is a sweep file; every trial is validated
                        from nnfund_spark.experiments.sweep import load_sweep
                        load_sweep(local_conf, [override])
                    else:
                        load_config(local_conf, [override])
                except ConfigError as exc:
                    pytest.fail(f"{task['task_key']}: --set {override}: {exc}")
            assert not any("${" in p for p in params), params
            if params[0] in subcommands_now:  # once the lead has wired it: the CLI accepts it
                _parser().parse_args(params)


def test_sync_uploads_the_repository_conf_dir():
    bundle = _load_bundle()
    synced = [(BUNDLE / p).resolve() for p in bundle["sync"]["paths"]]
    assert REPO / "conf" in synced
    assert bundle["targets"]["dev"]["mode"] == "development"
    assert bundle["targets"]["prod"]["mode"] == "production"
    assert any(fnmatch.fnmatch("resources/nnfund_spark_job.yml", p) for p in bundle["include"])


CLUSTER_TAGS = ('[{"key":"Vendor","value":"Databricks"},{"key":"Creator","value":"ada@example.com"},'
                '{"key":"ClusterName","value":"job-1-run-2"}]')
CONF = {"spark.databricks.clusterUsageTags.clusterAllTags": CLUSTER_TAGS}
ON_DATABRICKS = {"DATABRICKS_RUNTIME_VERSION": "14.3"}


def test_databricks_detection_and_defaults():
    assert not is_databricks({}) and not is_databricks({"DATABRICKS_RUNTIME_VERSION": " "})
    assert databricks_defaults({}, CONF) is None
    defaults = databricks_defaults(ON_DATABRICKS, CONF)
    assert defaults.runtime_version == "14.3" and defaults.user == "ada@example.com"
    assert defaults.tracking_uri == "databricks"
    assert defaults.experiment == "/Users/ada@example.com/nnfund_spark"
    # Unknown user: a folder that always exists.
    assert databricks_defaults(ON_DATABRICKS, {}).experiment == "/Shared/nnfund_spark"
    # An explicit user beats the cluster tag.
    assert detect_user({**ON_DATABRICKS, "NNFUND_DATABRICKS_USER": "bo@x.org"}, CONF) == "bo@x.org"
    with pytest.raises(ValueError, match="clusterAllTags is not a JSON list"):
        detect_user(ON_DATABRICKS, {"spark.databricks.clusterUsageTags.clusterAllTags": "{oops"})


def test_experiment_paths():
    assert experiment_path("mnist_cnn", "ada@example.com") == "/Users/ada@example.com/mnist_cnn"
    assert experiment_path("/Shared/team/mnist", "ada@example.com") == "/Shared/team/mnist"
    for bad in ("", "team/mnist"):
        with pytest.raises(ValueError):
            experiment_path(bad, "ada@example.com")


def test_tracking_config_on_and_off_databricks():
    tracking = load_config(None, ["tracking.experiment=mnist_cnn"]).tracking
    assert databricks_tracking(tracking, {}, CONF) is tracking
    on = databricks_tracking(tracking, ON_DATABRICKS, CONF)
    assert (on.tracking_uri, on.experiment) == ("databricks", "/Users/ada@example.com/mnist_cnn")
    env = {**ON_DATABRICKS, "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    assert databricks_tracking(tracking, env, CONF).tracking_uri == "http://mlflow:5000"


def test_spark_uris():
    assert spark_uri("s3a://bucket/x", ON_DATABRICKS) == "s3a://bucket/x"
    assert spark_uri("dbfs:/tmp/x", {}) == "dbfs:/tmp/x"
    assert spark_uri("/Volumes/main/s/v/preds", ON_DATABRICKS) == "dbfs:/Volumes/main/s/v/preds"
    assert spark_uri("/dbfs/tmp/preds", ON_DATABRICKS) == "dbfs:/tmp/preds"
    assert spark_uri("/Volumes/main/s/v/preds", {}) == "file:///Volumes/main/s/v/preds"
    assert spark_uri("out/preds", {}) == "file://" + str(Path.cwd() / "out" / "preds")
    # not percent-encoded: Hadoop's Path would take "%20" literally
    assert spark_uri("/data/my preds", {}) == "file:///data/my preds"


def test_locations_the_nodes_of_a_databricks_cluster_share():
    paths = {"a": "/Volumes/c/s/v/ds", "b": "/dbfs/tmp/ckpt", "c": "dbfs:/tmp/x",
             "d": "s3://bucket/x", "e": "file:///dbfs/x", "i": None, "j": "",
             "k": "data/ds", "l": "/local_disk0/tmp", "m": "file:///tmp/x", "o": "/Volumes",
             "p": "~/ds", "q": "file:///Volumes%20x/y", "r": "file:///Volumes/c/s/v/my%20ds"}
    # a tracking store in a file is refused wherever it is: SQLite cannot live on the mounts
    tracking = {"t1": "databricks", "t2": "databricks://profile", "t3": "http://mlflow:5000",
                "t4": "sqlite:////dbfs/m.db", "t5": "sqlite:///mlflow.db", "t6": "/Volumes/c/mlruns",
                "t7": None}
    cluster = "spark://10.0.0.1:7077"
    assert unshared_locations(paths, ON_DATABRICKS, cluster, tracking) == [
        "k=data/ds", "l=/local_disk0/tmp", "m=file:///tmp/x", "o=/Volumes", "p=~/ds",
        "q=file:///Volumes%20x/y", "t4=sqlite:////dbfs/m.db", "t5=sqlite:///mlflow.db",
        "t6=/Volumes/c/mlruns"]
    # off Databricks (NFS may be shared: not ours to judge) and on a single-node cluster
    assert unshared_locations(paths, {}, cluster, tracking) == []
    assert unshared_locations(paths, ON_DATABRICKS, "local[*, 4]", tracking) == []


def test_predict_refuses_an_output_over_its_dataset_on_databricks_volumes(tmp_path):
    """/Volumes/... on the command line becomes dbfs:/Volumes/... for Spark; the overlap check
    must map it back to the same volume, not to /dbfs/Volumes/..."""
    from nnfund_spark.data.storage import resolve
    from nnfund_spark.inference.predict import _refuse_output_over_dataset

    assert resolve("dbfs:/Volumes/c/s/v/ds").path == "/Volumes/c/s/v/ds"
    assert resolve("dbfs:/tmp/ds").path == "/dbfs/tmp/ds"
    root = resolve("/Volumes/c/s/v/petastorm/mnist")
    output = spark_uri("/Volumes/c/s/v/petastorm/mnist/test", ON_DATABRICKS)
    with pytest.raises(ValueError, match="overlaps the dataset /Volumes/c/s/v/petastorm/mnist"):
        _refuse_output_over_dataset(output, root)
    _refuse_output_over_dataset(spark_uri("/Volumes/c/s/v/preds", ON_DATABRICKS), root)
