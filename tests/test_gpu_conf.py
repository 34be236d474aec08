"""The shipped GPU settings: the discovery script's output format and the config they live in."""
import json
import os
import subprocess
from pathlib import Path

from nnfund_spark.config import load_config
from nnfund_spark.training.worker import select_gpu

REPO = Path(__file__).resolve().parents[1]


def test_discovery_script_prints_spark_resource_json(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n3\\n'\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    out = subprocess.run(["bash", str(REPO / "scripts/gpu_discovery.sh")], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {"name": "gpu", "addresses": ["0", "1", "2", "3"]}


def test_discovery_script_fails_loudly_on_nvidia_smi_trouble(tmp_path):
    """nvidia-smi prints its errors on stdout: the script shows them and exits non-zero, and
    never turns stray digits into GPU addresses."""
    fake = tmp_path / "nvidia-smi"
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    cases = {"echo 'No devices were found'; exit 6": "nvidia-smi failed: No devices were found",
             "echo 'NVIDIA-SMI 535.183'": "unexpected nvidia-smi output",
             "true": "nvidia-smi lists no GPU"}
    for body, message in cases.items():
        fake.write_text(f"#!/bin/sh\n{body}\n")
        fake.chmod(0o755)
        proc = subprocess.run(["bash", str(REPO / "scripts/gpu_discovery.sh")], env=env,
                              capture_output=True, text=True)
        assert proc.returncode != 0 and proc.stdout == "", body
        assert message in proc.stderr, body


def test_discovery_script_fails_clearly_without_a_driver(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))
    proc = subprocess.run(["/bin/bash", str(REPO / "scripts/gpu_discovery.sh")], env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "nvidia-smi not found" in proc.stderr


def test_gpu_cluster_conf_asks_one_gpu_per_rank():
    config = load_config(REPO / "conf/gpu_cluster.yaml")
    assert config.spark.conf["spark.task.resource.gpu.amount"] == 1
    assert config.train.num_proc == 0 and config.train.mixed_precision


def test_rank_prefers_spark_assignment_over_local_rank():
    assert select_gpu(0, ["3"]) == (3, "spark")
    assert select_gpu(1, []) == (1, "local_rank")
