"""The command line rejects bad input with a message and a non-zero exit, before touching Spark."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, "-m", "nnfund_spark.cli", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_unknown_key_exits_2_and_names_it():
    proc = run("train", "--set", "train.epohcs=3")
    assert proc.returncode == 2
    assert "unknown config key 'train.epohcs'" in proc.stderr


def test_print_config_shows_resolved_values():
    proc = run("train", "-c", "conf/mnist.yaml", "--set", "train.epochs=3", "--print-config")
    assert proc.returncode == 0, proc.stderr
    resolved = json.loads(proc.stdout)
    assert resolved["train"]["epochs"] == 3
    assert resolved["tracking"]["experiment"] == "mnist_cnn"


def test_missing_raw_data_fails_cleanly(tmp_path):
    out = tmp_path / "out"
    proc = run("prepare", "--master", "local[1]", "--set", f"data.raw_dir={tmp_path / 'nothing'}",
               "--set", f"data.output_dir={out}")
    assert proc.returncode == 1
    assert "raw data directory not found" in proc.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging directory left behind
