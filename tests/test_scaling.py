"""The ring all-reduce cost model behind docs/SCALING.md."""
import pytest

from nnfund_spark.benchmark.scaling import (MNIST_CNN, RESNET20, allreduce_seconds, efficiency,
                                            main)


def test_model_costs_match_the_zoo():
    from nnfund_spark.models import build_model

    assert build_model("mnist_cnn", (28, 28, 1), 10).count_params() == MNIST_CNN.parameters
    assert build_model("resnet", (32, 32, 3), 10, depth=20).count_params() == RESNET20.parameters
    assert MNIST_CNN.gradient_bytes() == 4 * MNIST_CNN.parameters
    assert MNIST_CNN.gradient_bytes(fp16=True) == 2 * MNIST_CNN.parameters


def test_ring_allreduce_cost():
    assert allreduce_seconds(4e6, 1, 10, 0.8, 50e-6) == 0.0
    # 2 ranks over 10 Gbit at 80 %: each sends half and receives half twice = S bytes at 1 GB/s,
    # in 2 messages.
    assert allreduce_seconds(4e6, 2, 10, 0.8, 50e-6) == pytest.approx(4e-3 + 2 * 50e-6)
    # The bandwidth term approaches 2 S / B as ranks grow; latency grows linearly.
    many = allreduce_seconds(4e6, 64, 10, 0.8, 0.0)
    assert many == pytest.approx(2 * 63 / 64 * 4e-3)
    times = [allreduce_seconds(4e6, n, 25, 0.8, 25e-6) for n in (2, 4, 8, 16, 32, 64)]
    assert times == sorted(times)
    with pytest.raises(ValueError):
        allreduce_seconds(4e6, 0, 10, 0.8, 0)


def test_efficiency_bounds():
    assert efficiency(0.01, 0.0) == (1.0, 1.0)
    no_overlap, overlap = efficiency(0.01, 0.01)
    assert no_overlap == pytest.approx(0.5) and overlap == pytest.approx(1.0)
    assert efficiency(0.01, 0.02) == (pytest.approx(1 / 3), pytest.approx(0.5))
    with pytest.raises(ValueError, match="utilization"):
        RESNET20.compute_seconds(128, 0)


def test_tables_print(capsys):
    assert main(["--batch", "64"]) == 0
    text = capsys.readouterr().out
    assert text.count("| 64 |") == 2 and "ResNet-20" in text and "at batch 64 per GPU" in text


def test_bad_arguments_are_usage_errors(capsys):
    for argv, message in ((["--utilization", "0"], "--utilization must be in (0, 1], got 0.0"),
                          (["--batch", "0"], "--batch must be >= 1, got 0")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
