"""The benchmark suite behind ``nnfund-spark benchmark`` (and ``jobs/benchmark.py``).

Everything runs in one invocation on this machine, one contender after another (only the
machine-ceiling pair and row 2's side-by-side pair run two at once), each in its own process
launched by the suite, so every time is taken the same way: from the moment the suite starts
the process. The prepare comparison is the exception: both writers run inside the suite,
Spark's session already up.

1. **Time to accuracy**: our whole job (``nnfund-spark train -c mnist_fast``: Spark start,
   Horovod launch, Petastorm read, training, sharded test evaluation after every epoch, stop at
   the target) against the plain single-process keras-io ``mnist_convnet`` recipe on the same
   images (``plain_keras time-to-accuracy``). Model and figure logging are off for our job
   (the baseline logs nothing); its per-epoch MLflow metrics stay on.
2. **Input pipeline**: images/s of one rank fed from Petastorm ÷ the same model fitted from
   in-memory arrays by plain Keras, both on one core with one thread. A rank reads its shard
   once and trains from memory, so the steady state should match; the one-off read is
   reported too, amortized over the run's epochs. Judged side by side: the two run at the
   same time, each confined to its own core (cores swapped every round), and each side's
   epochs are timed only while the other side is in its own steady epochs, so a machine
   that speeds up or slows down between contenders moves both sides alike. The same ratio
   from the one-after-another runs (rows 3 and 4 use those) is shown as well.
3. **Scaling**: images/s with 2 ranks ÷ 1 rank, one core and one thread per rank
   (``train.cpu_binding``). Unbound runs are shown as well: an unbound "1-thread" process
   spreads its Python, tf.data and Horovod threads onto the idle second core, so it is not
   one core's worth of work.
4. **Launcher overhead**: the 1-rank steady-state epoch ÷ the plain Keras epoch, and the fixed
   start-up seconds of each (launch → end of epoch 1, minus one steady epoch).
5. **Data preparation**: ``prepare`` on MNIST ÷ the single-process pyarrow writer
   (``prepare_baseline``), median of alternating runs.
6. **Fashion-MNIST**: prepare + train with the shipped ``fashion_mnist`` recipe, its test
   accuracy and time.

``--quick`` runs the same steps on a few thousand images with a lower accuracy target: a smoke
run (under 5 minutes on the 2-core reference machine) whose figures say nothing about the
targets, which the table then marks "n/a".
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from nnfund_spark.config import TrainConfig

log = logging.getLogger(__name__)

# The targets of the reference machine (2 cores, no GPU): (comparison, bound).
TARGETS = {
    "time_to_accuracy": ("<=", 0.8),
    "input_pipeline": (">=", 0.95),
    "scaling": (">=", 1.8),
    "scaling_accumulated": (">=", 1.8),
    "launcher_overhead": ("<=", 1.10),
    "prepare": ("<=", 3.0),
    "fashion_mnist": (">=", 0.93),
}


# The datasets the suite prepares in its work dir (and may remove afterwards).
# Names no other part of the project uses, so a --work-dir pointed at data/petastorm cannot
# overwrite or delete a user's prepared datasets.
MNIST_DIR, THROUGHPUT_DIR, FASHION_DIR = "bench-mnist", "bench-mnist-throughput", "bench-fashion"
DATASET_DIRS = (MNIST_DIR, THROUGHPUT_DIR, FASHION_DIR)


def remove_datasets(work_dir: Path) -> None:
    """Delete the suite's own prepared datasets from work_dir; nothing else there."""
    for name in DATASET_DIRS:
        if (work_dir / name).is_dir():
            shutil.rmtree(work_dir / name)


class BenchmarkError(RuntimeError):
    """A step of the benchmark failed; the message names the step and its log file."""


@dataclass
class BenchmarkPlan:
    """What one invocation runs. ``for_mode`` gives the full and the quick plan."""
    quick: bool = False
    # Raw IDX directories (the suite prepares its own datasets from them in work_dir).
    mnist_raw: str = "data/raw/mnist"
    fashion_raw: str = "data/raw/fashion_mnist"
    # Images per official split for the time-to-accuracy and prepare steps (0 = all).
    mnist_limit: int = 0
    target_accuracy: float = 0.99
    baseline_max_epochs: int = 15
    # Throughput steps: train images (validation split 0), epochs (the median of epochs 2.. is
    # the steady one), and rounds: every contender runs once per round, rounds one after
    # another, and each keeps its best round (the one least disturbed by the shared machine).
    throughput_limit: int = 30000
    throughput_epochs: int = 5
    throughput_rounds: int = 2
    throughput_batch_size: int = 64
    # Train steps per call of the compiled train function, ours and plain Keras' alike (so
    # the input pipeline is what differs between them): the launcher's default.
    steps_per_execution: int = TrainConfig.steps_per_execution
    # The second scaling pair: gradients summed over this many local batches per allreduce.
    accumulation_steps: int = 8
    # Side-by-side input pair: our job trains side_by_side_epochs epochs; plain Keras trains
    # side_by_side_plain_epochs, enough to still be running when our job (which starts Spark
    # and reads its shard first) ends its last epoch.
    side_by_side_epochs: int = 5
    side_by_side_plain_epochs: int = 12
    prepare_runs: int = 3
    fashion_limit: int = 0
    fashion_overrides: list = field(default_factory=list)
    master: str = "local[2]"

    @classmethod
    def for_mode(cls, quick: bool, **changes) -> "BenchmarkPlan":
        if quick:
            base = cls(quick=True, mnist_limit=6000, target_accuracy=0.93, baseline_max_epochs=6,
                       throughput_limit=4000, throughput_epochs=2, throughput_rounds=1,
                       # epochs of 4,000 images last under a second: enough of them that
                       # several of plain Keras' fall inside our steady ones
                       side_by_side_epochs=6, side_by_side_plain_epochs=60,
                       prepare_runs=1,
                       # One epoch of 4,000 images is ~30 steps a rank: too few for batch
                       # norm's moving averages (momentum 0.99) to leave their initial values,
                       # so the smoke run trains the recipe's network without it.
                       fashion_limit=4000,
                       fashion_overrides=["train.epochs=1", "train.normalization=none"])
        else:
            base = cls()
        for key, value in changes.items():
            setattr(base, key, value)
        return base


class Runner:
    """Launches the contenders as processes, each with its own log file in work_dir/logs."""

    def __init__(self, work_dir: Path, tracking_uri: str, experiment: str):
        self.work_dir = work_dir
        self.logs = work_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.env = dict(os.environ)
        self.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.env["PYSPARK_PYTHON"] = self.env.get("PYSPARK_PYTHON", sys.executable)
        # Our jobs get their tracking URI on the command line, nothing inherited.
        self.env.pop("MLFLOW_TRACKING_URI", None)
        # The children run in work_dir: make this very package importable there even when it
        # runs from a source checkout that is not installed.
        package_root = str(Path(__file__).resolve().parents[2])
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, self.env.get("PYTHONPATH")) if p)

    def spawn_together(self, commands: dict, cores: dict | None = None) -> dict:
        """Start every ``{name: args}`` process at once and wait for all of them;
        {name: (launch time, wall seconds)}. ``cores``: {name: [cpu, ...]} confines that
        process, and every process it starts, to those CPUs. A failure raises BenchmarkError
        with the tail of the failed process's log."""
        processes, outputs, timings = {}, [], {}
        cores = cores or {}
        try:
            for name, args in commands.items():
                log.info("benchmark: %s", name + (f" (cores {cores[name]})"
                                                  if name in cores else ""))
                outputs.append(open(self.logs / f"{name}.log", "w"))
                confine = (None if name not in cores else
                           (lambda cpus=set(cores[name]): os.sched_setaffinity(0, cpus)))
                processes[name] = (time.time(), subprocess.Popen(
                    [sys.executable, *args], stdout=outputs[-1], stderr=subprocess.STDOUT,
                    env=self.env, cwd=self.work_dir, preexec_fn=confine))
            for name, (launched, process) in processes.items():
                process.wait()
                timings[name] = (launched, time.time() - launched)
        finally:
            for name, (_, process) in processes.items():
                if process.poll() is None:  # interrupted: leave no contender running
                    process.kill()
            for output in outputs:
                output.close()
        for name, (_, process) in processes.items():
            if process.returncode != 0:
                log_path = self.logs / f"{name}.log"
                tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
                raise BenchmarkError(f"benchmark step '{name}' exited with "
                                     f"{process.returncode}; log {log_path}:\n" + "\n".join(tail))
        return timings

    def plain_keras(self, name: str, mode: str, options: list[str]) -> dict:
        return self.plain_keras_together({name: options}, mode)[name]

    def plain_keras_together(self, runs: dict, mode: str) -> dict:
        """plain_keras processes {name: options}, all started at once."""
        timings = self.spawn_together({
            name: self._plain_args(name, mode, options) for name, options in runs.items()})
        return {name: self._result(name, timings) for name in runs}

    def train(self, name: str, config: str, overrides: list[str], master: str) -> dict:
        timings = self.spawn_together({name: self._train_args(name, config, overrides, master)})
        return self._result(name, timings)

    def side_by_side(self, plain: tuple, ours: tuple, master: str) -> tuple[dict, dict]:
        """A plain_keras throughput run and one of our jobs at the same time, each confined
        to its own cores. ``plain``: (name, options, cores); ``ours``: (name, config,
        overrides, cores). Returns (plain result, our job's summary)."""
        (plain_name, options, plain_cores), (name, config, overrides, our_cores) = plain, ours
        timings = self.spawn_together(
            {plain_name: self._plain_args(plain_name, "throughput", options),
             name: self._train_args(name, config, overrides, master)},
            cores={plain_name: plain_cores, name: our_cores})
        return self._result(plain_name, timings), self._result(name, timings)

    def _plain_args(self, name: str, mode: str, options: list[str]) -> list[str]:
        return ["-m", "nnfund_spark.benchmark.plain_keras", mode,
                "--json", str(self.work_dir / f"{name}.json"), *options]

    def _train_args(self, name: str, config: str, overrides: list[str], master: str) -> list:
        overrides = [*overrides, f"tracking.tracking_uri={self.tracking_uri}",
                     f"tracking.experiment={self.experiment}", f"tracking.run_name={name}",
                     "tracking.log_model=false", "tracking.log_artifacts=false",
                     "train.verbose=2"]
        args = ["-m", "nnfund_spark.cli", "train", "-c", config, "--master", master,
                "--summary-json", str(self.work_dir / f"{name}.json")]
        for override in overrides:
            args += ["--set", override]
        return args

    def _result(self, name: str, timings: dict) -> dict:
        """What the process wrote to work_dir/<name>.json, with its launch time and wall."""
        launched, wall = timings[name]
        return {**json.loads((self.work_dir / f"{name}.json").read_text()),
                "launched": launched, "wall_seconds": wall}


def _steady(epoch_walls: list[float]) -> float:
    """The steady-state epoch: the median of epochs 2.. (the first pays for tracing and
    warm-up). A median, so one epoch slowed by something else on a shared machine does not
    decide a ratio."""
    if not epoch_walls:
        raise BenchmarkError("a throughput run needs >= 2 epochs to time a steady one")
    return statistics.median(epoch_walls)


def _job_epoch_walls(summary: dict) -> list[float]:
    """Wall seconds of epochs 2.. of a training job, from rank 0's elapsed clock: everything
    between two epoch ends counts (fit set-up, evaluation, logging), not just the fit loop."""
    elapsed = summary["history"]["elapsed_seconds"]
    return [b - a for a, b in zip(elapsed, elapsed[1:])]


def _check(name: str, value: Optional[float], quick: bool) -> str:
    if quick:
        return "n/a (quick)"
    if value is None:
        return "no"
    comparison, bound = TARGETS[name]
    return "yes" if (value <= bound if comparison == "<=" else value >= bound) else "no"


def _time_to_accuracy(runner: Runner, plan: BenchmarkPlan, mnist_dir: Path) -> dict:
    baseline = runner.plain_keras("baseline_time_to_accuracy", "time-to-accuracy", [
        "--raw-dir", plan.mnist_raw, "--limit", str(plan.mnist_limit),
        "--target", str(plan.target_accuracy), "--max-epochs", str(plan.baseline_max_epochs)])
    ours = runner.train("ours_time_to_accuracy", "mnist_fast", [
        f"data.output_dir={mnist_dir}", f"train.target_accuracy={plan.target_accuracy}",
        "train.target_split=test"], plan.master)
    return time_to_accuracy_figures(baseline, ours, plan.target_accuracy)


def time_to_accuracy_figures(baseline: dict, ours: dict, target: float) -> dict:
    """Both sides' seconds from their launch to the end of the epoch (and evaluation) that
    reached ``target``, and our ratio to the baseline."""
    base_seconds = (baseline["target_reached_at"] - baseline["launched"]
                    if baseline["target_reached_at"] else None)
    our_seconds = (ours["job_started"] + ours["time_to_target_seconds"] - ours["launched"]
                   if ours["time_to_target_seconds"] is not None else None)
    ratio, bound_only = None, False
    if our_seconds and base_seconds:
        ratio = our_seconds / base_seconds
    elif our_seconds:
        # The baseline never reached the target: its whole run is a lower bound of its time,
        # so our ratio is at most this.
        ratio, bound_only = our_seconds / baseline["wall_seconds"], True
    return {
        "target_accuracy": target,
        "ours": {"seconds": our_seconds, "epochs": ours["target_epoch"],
                 "test_accuracy": ours["test_accuracy"], "wall_seconds": ours["wall_seconds"],
                 "test_accuracy_per_epoch": ours["history"].get("test_accuracy"),
                 "recipe": "conf/mnist_fast.yaml", "run_id": ours["run_id"]},
        "baseline": {"seconds": base_seconds, "epochs": baseline["target_epoch"],
                     "test_accuracy": baseline["final_test_accuracy"],
                     "wall_seconds": baseline["wall_seconds"],
                     "test_accuracy_per_epoch": [e["test_accuracy"] for e in baseline["epochs"]],
                     "recipe": baseline["recipe"],
                     "train_seconds_per_epoch": [e["train_seconds"] for e in baseline["epochs"]]},
        "ratio": ratio, "ratio_is_upper_bound": bound_only,
    }


def _throughput(runner: Runner, plan: BenchmarkPlan, dataset: Path) -> dict:
    rounds = [_throughput_round(runner, plan, dataset, number)
              for number in range(1, plan.throughput_rounds + 1)]
    runs = {name: min((each["runs"][name] for each in rounds), key=_steady_of)
            for name in rounds[0]["runs"]}
    # The ceiling pair counts as one contender: its best round is the one with more images/s.
    pair = max((each["pair"] for each in rounds),
               key=lambda two: sum(_rate(run) for run in two))
    figures = throughput_figures(runs, plan.throughput_epochs, pair)
    figures["rounds"] = plan.throughput_rounds
    figures["input_pipeline"]["side_by_side"] = side_by_side_rounds(
        [each.get("side_by_side") for each in rounds], plan.side_by_side_epochs)
    # Each round's own 2-rank ÷ 1-rank ratio (the two ran minutes apart, in the same round):
    # the spread shows how much the shared machine moved the headline, which pairs each
    # contender's best round.
    figures["scaling"]["round_ratios"] = round_ratios(
        rounds, "ours_2_ranks_1_core_each", "ours_1_rank_1_core")
    if figures["scaling_accumulated"]:
        figures["scaling_accumulated"]["round_ratios"] = round_ratios(
            rounds, "ours_2_ranks_accumulate", "ours_1_rank_accumulate")
    return figures


def round_ratios(rounds: list, numerator: str, denominator: str) -> list:
    """images/s of ``numerator`` ÷ images/s of ``denominator``, round by round."""
    return [_rate(each["runs"][numerator]) / _rate(each["runs"][denominator]) for each in rounds]


def _rate(run: dict) -> float:
    """Steady-state images/s of one raw run (plain Keras or our job)."""
    return _run_images(run) / _steady_of(run)


def _steady_of(run: dict) -> float:
    """The steady epoch of one raw run (plain Keras or our job)."""
    return _steady(run["epoch_seconds"][1:] if "epoch_seconds" in run
                   else _job_epoch_walls(run))


def _throughput_round(runner: Runner, plan: BenchmarkPlan, dataset: Path, number: int) -> dict:
    epochs, batch = plan.throughput_epochs, plan.throughput_batch_size
    suffix = "" if number == 1 else f"_round{number}"
    model_options = {"dense_units": 128}  # the mnist_fast model
    plain_args = ["--raw-dir", plan.mnist_raw, "--limit", str(plan.throughput_limit),
                  "--validation-fraction", "0", "--model", "convnet",
                  "--model-options", json.dumps(model_options), "--batch-size", str(batch),
                  "--epochs", str(epochs), "--threads", "1",
                  "--steps-per-execution", str(plan.steps_per_execution)]
    job = [f"data.output_dir={dataset}", f"train.epochs={epochs}", f"train.batch_size={batch}",
           f"train.steps_per_execution={plan.steps_per_execution}",
           "train.intra_op_threads=1", "train.log_dead_relu=false"]
    cores = sorted(os.sched_getaffinity(0))
    first_core = str(cores[0])
    # The machine's own ceiling for 2 workers: two plain processes, one per core, at once.
    pair = (runner.plain_keras_together({
        f"plain_keras_core_{core}{suffix}": [*plain_args, "--cores", str(core)]
        for core in cores[:2]}, "throughput") if len(cores) >= 2 else {})
    bound = ["train.cpu_binding=true", "train.cores_per_rank=1"]
    # The same pair again with one allreduce per `accumulation_steps` batches instead of one
    # per batch (train.backward_passes_per_step): what scaling costs in synchronisation.
    accumulate = [*job, *bound, f"train.backward_passes_per_step={plan.accumulation_steps}"]
    contenders = {
        "plain_1_core": ("plain_keras_1_core", [*plain_args, "--cores", first_core]),
        "ours_1_rank_1_core": ("launcher_1_rank_1_core", [*job, "train.num_proc=1", *bound]),
        "ours_2_ranks_1_core_each": ("launcher_2_ranks_1_core_each",
                                     [*job, "train.num_proc=2", *bound]),
        "plain_1_thread_unbound": ("plain_keras_1_thread_unbound", plain_args),
        "ours_1_rank_unbound": ("launcher_1_rank_unbound",
                                [*job, "train.num_proc=1", "train.cpu_binding=false"]),
        "ours_1_rank_accumulate": ("launcher_1_rank_1_core_accumulate",
                                   [*accumulate, "train.num_proc=1"]),
        "ours_2_ranks_accumulate": ("launcher_2_ranks_1_core_each_accumulate",
                                    [*accumulate, "train.num_proc=2"]),
    }
    runs = {}
    for key, (name, args) in contenders.items():
        if key.startswith("plain"):
            runs[key] = runner.plain_keras(name + suffix, "throughput", args)
        else:
            runs[key] = runner.train(name + suffix, "mnist_fast", args, plan.master)
    together = None
    if len(cores) >= 2:
        # Row 2 side by side: plain Keras and our 1-rank job at once, one core each, the
        # cores swapped from one round to the next.
        ours_core, plain_core = ((cores[0], cores[1]) if number % 2 else (cores[1], cores[0]))
        plain_side = list(plain_args)
        plain_side[plain_side.index("--epochs") + 1] = str(plan.side_by_side_plain_epochs)
        plain_run, our_run = runner.side_by_side(
            (f"side_by_side_plain_keras{suffix}", plain_side, [plain_core]),
            (f"side_by_side_launcher_1_rank{suffix}", "mnist_fast",
             [*job, f"train.epochs={plan.side_by_side_epochs}", "train.num_proc=1", *bound],
             [ours_core]), plan.master)
        together = {"plain": plain_run, "ours": our_run,
                    "plain_core": plain_core, "ours_core": ours_core}
    return {"runs": runs, "pair": list(pair.values()), "side_by_side": together}


def _epoch_spans(run: dict) -> list[tuple[float, float]]:
    """(start, end) wall-clock times of epochs 2.. of one raw run (plain Keras or our job)."""
    if "epoch_seconds" in run:
        ends = list(run["epoch_ended_at"])
    else:
        ends = [run["job_started"] + elapsed for elapsed in run["history"]["elapsed_seconds"]]
    return list(zip(ends, ends[1:]))


def _run_images(run: dict) -> int:
    return (run["train_images"] if "epoch_seconds" in run
            else sum(r["train_shard_size"] for r in run["ranks"]))


def _read_seconds(run: dict) -> float:
    """The job's one-off shard read (its slowest rank's); plain Keras reads nothing."""
    return 0.0 if "epoch_seconds" in run else max(r["read_seconds"] for r in run["ranks"])


def _amortized_rate(images: int, steady: float, epochs: int, read: float) -> float:
    """images/s over ``epochs`` steady epochs with a one-off read charged to them."""
    return images * epochs / (steady * epochs + read)


def side_by_side_figures(plain: dict, ours: dict, epochs: int) -> dict:
    """Images/s of a plain Keras run and our job that ran at the same time on different cores.

    Each side counts only its epochs 2.. that began and ended while the other side was in its
    own epochs 2.. (so neither side's start-up or tracing overlaps the epochs compared), and
    takes their median. ``ratio`` is ours ÷ plain; ``ratio_with_read`` charges our one-off
    shard read to ``epochs`` epochs, as the one-after-another row does. Without at least one
    such epoch on each side the ratios are None."""
    plain_spans, our_spans = _epoch_spans(plain), _epoch_spans(ours)

    def during(spans, other):
        if not other:
            return []
        start, end = other[0][0], other[-1][1]
        return [stop - begin for begin, stop in spans if begin >= start and stop <= end]

    plain_walls, our_walls = during(plain_spans, our_spans), during(our_spans, plain_spans)
    figures = {"plain_epochs_compared": len(plain_walls), "our_epochs_compared": len(our_walls),
               "plain_images_per_second": None, "our_images_per_second": None,
               "ratio": None, "ratio_with_read": None}
    if not plain_walls or not our_walls:
        return figures
    plain_rate = _run_images(plain) / statistics.median(plain_walls)
    our_images, our_steady = _run_images(ours), statistics.median(our_walls)
    our_amortized = _amortized_rate(our_images, our_steady, epochs, _read_seconds(ours))
    figures.update(plain_images_per_second=plain_rate,
                   our_images_per_second=our_images / our_steady,
                   our_amortized_images_per_second=our_amortized,
                   ratio=our_images / our_steady / plain_rate,
                   ratio_with_read=our_amortized / plain_rate)
    return figures


def side_by_side_rounds(pairs: list, epochs: int) -> Optional[dict]:
    """Row 2 side by side over the rounds: each round's figures, and the ratios of the summed
    images/s of every round that compared epochs (a ratio of sums: a faster round weighs more
    than a slower one, each round's own ratio is listed beside it)."""
    pairs = [pair for pair in pairs if pair]
    if not pairs:
        return None
    rounds = [{**side_by_side_figures(pair["plain"], pair["ours"], epochs),
               "plain_core": pair["plain_core"], "ours_core": pair["ours_core"]}
              for pair in pairs]
    usable = [each for each in rounds if each["ratio"] is not None]
    if not usable:
        return {"rounds": rounds, "ratio": None, "ratio_with_read": None,
                "round_ratios": [], "plain_images_per_second": None,
                "our_images_per_second": None}
    plain_total = sum(each["plain_images_per_second"] for each in usable)
    return {"rounds": rounds,
            "plain_images_per_second": plain_total / len(usable),
            "our_images_per_second": sum(e["our_images_per_second"] for e in usable) / len(usable),
            "ratio": sum(e["our_images_per_second"] for e in usable) / plain_total,
            "ratio_with_read": sum(e["our_amortized_images_per_second"] for e in usable)
            / plain_total,
            "round_ratios": [e["ratio_with_read"] for e in usable]}


def throughput_figures(runs: dict, epochs: int, pair: list | None = None) -> dict:
    """Images/s, steady epoch, start-up and read seconds per run, and the three ratios.
    ``pair``: two plain runs that ran at once on two cores (the 2-worker hardware ceiling)."""
    figures = {}
    for name, run in runs.items():
        images, read, steady = _run_images(run), _read_seconds(run), _steady_of(run)
        first_epoch_end = (run["epoch_ended_at"][0] if "epoch_seconds" in run  # plain Keras
                           else run["job_started"] + run["history"]["elapsed_seconds"][0])
        figures[name] = {
            "images": images, "epochs": epochs, "steady_epoch_seconds": steady,
            "images_per_second": images / steady,
            # Launch → end of epoch 1, minus one steady epoch: start-up plus first-epoch tracing.
            "startup_seconds": first_epoch_end - run["launched"] - steady,
            "read_seconds": read, "wall_seconds": run["wall_seconds"],
            "amortized_images_per_second": _amortized_rate(images, steady, epochs, read),
        }
        if run.get("controller"):  # ours: which controller (train.controller) the ranks used
            figures[name]["controller"] = run["controller"]
        figures[name]["steps_per_execution"] = (run["ranks"][0].get("steps_per_execution")
                                                if run.get("ranks")
                                                else run.get("steps_per_execution"))
    plain, one, two = (figures["plain_1_core"], figures["ours_1_rank_1_core"],
                       figures["ours_2_ranks_1_core_each"])
    ceiling = together = None
    if pair:
        together = sum(_rate(run) for run in pair)
        ceiling = together / plain["images_per_second"]
    accumulated = None
    if "ours_2_ranks_accumulate" in figures:
        ratio = (figures["ours_2_ranks_accumulate"]["images_per_second"]
                 / figures["ours_1_rank_accumulate"]["images_per_second"])
        accumulated = {
            "ratio": ratio,
            "backward_passes_per_step": runs["ours_2_ranks_accumulate"]["ranks"][0].get(
                "backward_passes_per_step"),
            "efficiency_of_ceiling": ratio / ceiling if ceiling else None,
            # The accumulating pair against the every-step single rank.
            "ratio_to_every_step_rank": figures["ours_2_ranks_accumulate"]["images_per_second"]
            / one["images_per_second"]}
    return {
        "runs": figures,
        # Two plain 1-core processes at once ÷ one alone: what 2 workers can reach here at all.
        "hardware_ceiling": {"ratio": ceiling, "images_per_second": together},
        "input_pipeline": {"ratio": one["images_per_second"] / plain["images_per_second"],
                           "ratio_with_read": one["amortized_images_per_second"]
                           / plain["images_per_second"]},
        "scaling": {"ratio": two["images_per_second"] / one["images_per_second"],
                    "efficiency_of_ceiling": (two["images_per_second"] / one["images_per_second"]
                                              / ceiling) if ceiling else None,
                    "ratio_unbound": two["images_per_second"]
                    / figures["ours_1_rank_unbound"]["images_per_second"]},
        "scaling_accumulated": accumulated,
        "launcher_overhead": {"ratio": one["steady_epoch_seconds"] / plain["steady_epoch_seconds"],
                              "startup_seconds": one["startup_seconds"],
                              "baseline_startup_seconds": plain["startup_seconds"]},
    }


def _prepare(spark, plan: BenchmarkPlan, work_dir: Path) -> dict:
    from nnfund_spark.benchmark.prepare_baseline import pyarrow_prepare
    from nnfund_spark.config import DataConfig
    from nnfund_spark.data.prepare import prepare_dataset

    times = {"spark": [], "pyarrow": []}
    images = 0
    for number in range(plan.prepare_runs):
        out = work_dir / f"bench-prepare-pyarrow-{number}"
        if out.exists():
            shutil.rmtree(out)
        started = time.perf_counter()
        images = pyarrow_prepare(Path(plan.mnist_raw), out, limit=plan.mnist_limit)
        times["pyarrow"].append(time.perf_counter() - started)
        shutil.rmtree(out)
        # The last Spark run's output is the time-to-accuracy dataset.
        out = work_dir / (MNIST_DIR if number == plan.prepare_runs - 1
                          else f"bench-prepare-spark-{number}")
        started = time.perf_counter()
        manifest = prepare_dataset(spark, DataConfig(raw_dir=plan.mnist_raw, output_dir=str(out),
                                                     limit=plan.mnist_limit, overwrite=True))
        times["spark"].append(time.perf_counter() - started)
        written = sum(info["count"] for info in manifest["splits"].values())
        if written != images:
            raise BenchmarkError(f"prepare wrote {written} images, the pyarrow baseline {images}")
        if out.name != MNIST_DIR:
            shutil.rmtree(out)
    spark_seconds, pyarrow_seconds = statistics.median(times["spark"]), \
        statistics.median(times["pyarrow"])
    return {"images": images, "runs": plan.prepare_runs, "spark_seconds": spark_seconds,
            "pyarrow_seconds": pyarrow_seconds, "ratio": spark_seconds / pyarrow_seconds,
            "all_seconds": times}


def run_benchmark(plan: BenchmarkPlan, work_dir: Path, output_dir: Path, tracking_uri: str,
                  experiment: str = "nnfund_benchmark", log_summary: bool = True) -> dict:
    """Run every step of ``plan``; write benchmark.json and benchmark.md to output_dir and
    return the results. Datasets, logs and per-step JSON stay in work_dir."""
    from nnfund_spark.config import DataConfig, SparkConfig
    from nnfund_spark.data.prepare import prepare_dataset
    from nnfund_spark.data.storage import write_text_atomic
    from nnfund_spark.spark import build_session

    for raw in (plan.mnist_raw, plan.fashion_raw):
        if not Path(raw).is_dir():
            raise BenchmarkError(f"raw data directory {raw} not found; fetch it with "
                                 f"`make data` (scripts/get_data.sh mnist|fashion_mnist)")
    plan.mnist_raw, plan.fashion_raw = (str(Path(plan.mnist_raw).resolve()),
                                        str(Path(plan.fashion_raw).resolve()))
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_before = os.getloadavg()[0]
    results: dict = {"plan": asdict(plan), "machine": _machine()}

    spark = build_session(SparkConfig(app_name="nnfund_benchmark"), plan.master)
    try:
        results["prepare"] = _prepare(spark, plan, work_dir)
        throughput_dir = work_dir / THROUGHPUT_DIR
        prepare_dataset(spark, DataConfig(raw_dir=plan.mnist_raw, output_dir=str(throughput_dir),
                                          limit=plan.throughput_limit, validation_fraction=0.0,
                                          overwrite=True))
        fashion_dir = work_dir / FASHION_DIR
        fashion_started = time.perf_counter()
        prepare_dataset(spark, DataConfig(source="fashion_mnist", raw_dir=plan.fashion_raw,
                                          output_dir=str(fashion_dir), limit=plan.fashion_limit,
                                          overwrite=True))
        fashion_prepare_seconds = time.perf_counter() - fashion_started
    finally:
        spark.stop()  # the contenders below get the machine to themselves

    runner = Runner(work_dir, tracking_uri, experiment)
    results["time_to_accuracy"] = _time_to_accuracy(runner, plan, work_dir / MNIST_DIR)
    results.update(_throughput(runner, plan, throughput_dir))
    fashion = runner.train("fashion_mnist_default_recipe", "fashion_mnist",
                           [f"data.output_dir={fashion_dir}", *plan.fashion_overrides],
                           plan.master)
    results["fashion_mnist"] = {
        "test_accuracy": fashion["test_accuracy"], "epochs": len(fashion["history"]["loss"]),
        "train_seconds": fashion["wall_seconds"], "prepare_seconds": fashion_prepare_seconds,
        "recipe": "conf/fashion_mnist.yaml", "run_id": fashion["run_id"]}
    results["machine"]["load_average_before"] = load_before
    results["machine"]["load_average_after"] = os.getloadavg()[0]
    results["seconds"] = time.time() - started
    results["checks"] = {name: _check(name, _headline(results, name), plan.quick)
                         for name in TARGETS}

    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(results)
    write_text_atomic(output_dir / "benchmark.json", json.dumps(results, indent=2, default=str))
    write_text_atomic(output_dir / "benchmark.md", markdown)
    if log_summary:
        _log_to_mlflow(results, output_dir, tracking_uri, experiment)
    return results


def _headline(results: dict, name: str) -> Optional[float]:
    if name == "fashion_mnist":
        return results["fashion_mnist"]["test_accuracy"]
    if name == "scaling_accumulated" and results[name] is None:
        return None
    if name == "input_pipeline":
        # Steady-state epochs train from memory after the one-off shard read, so the read is
        # the only place Petastorm can cost anything: judge the ratio that includes it, side
        # by side when the machine had the two cores for it (and the pair gave a ratio).
        return (_side_by_side_or_none(results) or results[name])["ratio_with_read"]
    return results[name]["ratio"]


def _machine() -> dict:
    from nnfund_spark.tracking.mlflow_utils import git_commit, tensorflow_version

    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cores": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "python": platform.python_version(), "tensorflow": tensorflow_version(),
            "git_commit": git_commit(), "command": " ".join(sys.argv)}


def _fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "not reached"
    return f"{value:,.{digits}f}{suffix}"


def _side_by_side_or_none(results: dict) -> Optional[dict]:
    """Row 2's side-by-side figures when that pair gave a ratio; None when it did not run, or
    ran without steady epochs that overlap (then the one-after-another figures judge row 2)."""
    together = results["input_pipeline"].get("side_by_side")
    return together if together and together.get("ratio_with_read") is not None else None


def _per_round(figures: dict) -> str:
    """"; rounds: 1.62×, 1.70×" when there was more than one round, else nothing."""
    ratios = figures.get("round_ratios") or []
    if len(ratios) < 2:
        return ""
    return "; rounds: " + ", ".join(_fmt(ratio, 2, "×") for ratio in ratios)


def _input_rows(results: dict, target: str, met: str) -> list:
    """Row 2 (side by side when it ran) and row 2b (one after another)."""
    runs, pipeline = results["runs"], results["input_pipeline"]

    def ratios(figures):
        return (f"{_fmt(figures['ratio_with_read'], 2, '×')} with the shard read "
                f"({_fmt(figures['ratio'], 2, '×')} steady state)")

    one_after_another = (_fmt(runs["ours_1_rank_1_core"]["images_per_second"], 0),
                         _fmt(runs["plain_1_core"]["images_per_second"], 0), ratios(pipeline))
    together = _side_by_side_or_none(results)
    if not together:
        measured = ("" if not pipeline.get("side_by_side") else
                    "; the side-by-side pair had no overlapping steady epochs")
        return [("2", f"Input: Petastorm-fed rank ÷ in-memory arrays (img/s, 1 core{measured})",
                 *one_after_another, target, met)]
    return [("2", "Input: Petastorm-fed rank ÷ in-memory arrays, side by side: both at once, "
                  "1 core each, cores swapped every round (img/s)",
             _fmt(together["our_images_per_second"], 0),
             _fmt(together["plain_images_per_second"], 0),
             ratios(together) + _per_round(together), target, met),
            ("2b", "The same one after another, best round each (the runs of rows 3 and 4)",
             *one_after_another, "", "")]


def to_markdown(results: dict) -> str:
    """The results table: one row per measurement, ours vs the baseline, ratio and target."""
    checks = results["checks"]
    tta, runs = results["time_to_accuracy"], results["runs"]
    prep, fashion = results["prepare"], results["fashion_mnist"]
    overrides = results.get("plan", {}).get("fashion_overrides") or []
    target = f"{tta['target_accuracy']:.1%}"

    share = results["scaling"]["efficiency_of_ceiling"]
    accumulated = results.get("scaling_accumulated")
    # Ratio over ratio: each side's 2-worker speed-up over its own 1-worker run (a scaling
    # efficiency), so it can pass 100 % when our 1-rank job is the slower divisor.
    reach = f" (row 3's ratio is {share:.0%} of this one)" if share else ""

    def bound(name):
        comparison, value = TARGETS[name]
        return f"{'≤' if comparison == '<=' else '≥'} {value:g}"

    rows = [
        ("1", f"Time to {target} MNIST test accuracy, whole job (s)",
         f"{_fmt(tta['ours']['seconds'], 1)} ({tta['ours']['epochs'] or '-'} epochs)",
         f"{_fmt(tta['baseline']['seconds'], 1)} ({tta['baseline']['epochs'] or '-'} epochs)",
         ("≤ " if tta.get("ratio_is_upper_bound") else "") + _fmt(tta["ratio"], 2, "×"),
         f"{bound('time_to_accuracy')}×",
         checks["time_to_accuracy"]),
        *_input_rows(results, f"{bound('input_pipeline')}×", checks["input_pipeline"]),
        ("3", "Scaling: 2 ranks ÷ 1 rank, 1 core + 1 thread each (img/s"
              + (f"; {runs['ours_2_ranks_1_core_each']['controller']} controller)"
                 if runs["ours_2_ranks_1_core_each"].get("controller") else ")"),
         _fmt(runs["ours_2_ranks_1_core_each"]["images_per_second"], 0),
         _fmt(runs["ours_1_rank_1_core"]["images_per_second"], 0),
         _fmt(results["scaling"]["ratio"], 2, "×") + _per_round(results["scaling"]),
         f"{bound('scaling')}×", checks["scaling"]),
        ("3b", "Machine ceiling: 2 plain Keras processes, 1 core each, at once ÷ 1 alone "
               "(img/s)", _fmt(results["hardware_ceiling"]["images_per_second"], 0),
         _fmt(runs["plain_1_core"]["images_per_second"], 0),
         _fmt(results["hardware_ceiling"]["ratio"], 2, "×") + reach, "", ""),
        *([("3c", f"Scaling with gradient accumulation: one allreduce per "
                  f"{accumulated['backward_passes_per_step']} batches of 64 "
                  f"(train.backward_passes_per_step), 2 ranks ÷ 1 rank (img/s)",
            _fmt(runs["ours_2_ranks_accumulate"]["images_per_second"], 0),
            _fmt(runs["ours_1_rank_accumulate"]["images_per_second"], 0),
            _fmt(accumulated["ratio"], 2, "×")
            + (f" ({accumulated['efficiency_of_ceiling']:.0%} of row 3b's ratio)"
               if accumulated["efficiency_of_ceiling"] else "") + _per_round(accumulated),
            f"{bound('scaling_accumulated')}×", checks["scaling_accumulated"])]
          if accumulated else []),
        ("4", "Launcher overhead: 1-rank epoch ÷ plain Keras epoch (s)",
         _fmt(runs["ours_1_rank_1_core"]["steady_epoch_seconds"], 2),
         _fmt(runs["plain_1_core"]["steady_epoch_seconds"], 2),
         _fmt(results["launcher_overhead"]["ratio"], 2, "×"), f"{bound('launcher_overhead')}×",
         checks["launcher_overhead"]),
        ("4b", "Fixed start-up: launch → end of epoch 1, minus one epoch (s)",
         _fmt(results["launcher_overhead"]["startup_seconds"], 1),
         _fmt(results["launcher_overhead"]["baseline_startup_seconds"], 1), "", "", ""),
        ("5", f"Prepare MNIST, {prep['images']:,} images (s, median of {prep['runs']})",
         _fmt(prep["spark_seconds"], 2), _fmt(prep["pyarrow_seconds"], 2),
         _fmt(prep["ratio"], 2, "×"), f"{bound('prepare')}×", checks["prepare"]),
        ("6", f"Fashion-MNIST test accuracy, "
              f"{'shipped recipe' if not overrides else 'recipe with ' + ' '.join(overrides)}"
              f" ({fashion['epochs']} epochs, "
              f"{_fmt(fashion['train_seconds'], 0)} s)",
         _fmt(fashion["test_accuracy"], 4), "", "", bound("fashion_mnist"),
         checks["fashion_mnist"]),
        ("i", "Unbound for comparison: 1-thread process, no core binding (img/s)",
         _fmt(runs["ours_1_rank_unbound"]["images_per_second"], 0),
         _fmt(runs["plain_1_thread_unbound"]["images_per_second"], 0),
         f"2 ranks ÷ this: {_fmt(results['scaling']['ratio_unbound'], 2, '×')}", "", ""),
    ]
    machine = results["machine"]
    together = results["input_pipeline"].get("side_by_side")
    lines = [f"Measured {machine['date']} on {machine['cores']} cores "
             f"({'quick' if results['plan']['quick'] else 'full'} run, "
             f"{results['seconds']:.0f} s; load average {machine['load_average_before']:.2f} → "
             f"{machine['load_average_after']:.2f}; "
             f"{'rows 2b-4' if together else 'rows 2-4'}: median epoch of "
             f"{results['plan']['throughput_epochs'] - 1}, best of "
             f"{results['plan'].get('throughput_rounds', 1)} rounds per contender"
             + (f"; row 2: {len(together['rounds'])} side-by-side rounds, each side's median "
                f"epoch while the other was in its own steady epochs" if together else "")
             + ")", "",
             "| # | measurement | ours | baseline | ratio | target | met |",
             "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _numbers(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, inner in value.items():
            _numbers(f"{prefix}.{key}" if prefix else key, inner, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = float(value)
    return out


def _log_to_mlflow(results: dict, output_dir: Path, tracking_uri: str, experiment: str) -> None:
    import mlflow

    from nnfund_spark.tracking.mlflow_utils import ensure_experiment

    experiment_id = ensure_experiment(experiment, tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id,
                          run_name="benchmark-quick" if results["plan"]["quick"] else "benchmark"):
        mlflow.log_params({f"plan.{k}": v for k, v in results["plan"].items()
                           if not isinstance(v, list)})
        mlflow.set_tags({f"machine.{k}": v for k, v in results["machine"].items()
                         if v is not None and not isinstance(v, float)})
        mlflow.set_tags({f"target_met.{k}": v for k, v in results["checks"].items()})
        metrics = {key: value for key, value in _numbers("", {
            k: results[k] for k in ("time_to_accuracy", "input_pipeline", "scaling",
                                    "scaling_accumulated", "launcher_overhead", "prepare",
                                    "fashion_mnist") if results.get(k)}, {}).items()
            if "per_epoch" not in key}
        mlflow.log_metrics({key.replace(" ", "_"): value for key, value in metrics.items()})
        mlflow.log_artifact(str(output_dir / "benchmark.json"))
        mlflow.log_artifact(str(output_dir / "benchmark.md"))
