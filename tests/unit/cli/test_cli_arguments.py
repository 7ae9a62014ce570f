"""The console entry points (setup.cfg [options.entry_points], megababel/cli/): each is installed, answers --help,
and refuses a zero, negative or NaN value of a numeric flag (and model_size a --world its --tp does not divide) with
argparse's one-line error, exit status 2, never a traceback. Subprocesses of the installed scripts; nothing is built."""
from __future__ import annotations

import argparse
import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megababel.cli import arguments

from helpers import ROOT

# entry point -> the arguments a run needs besides the bad flag, and the numeric flag given a bad value
BAD_NUMBERS = {
    "megababel-eval": (["hf/a", "valid.txt"], "--seq-len"),
    "megababel-export-family": (["runs/a", "family/a"], "--max-docs"),
    "megababel-model-size": ([], "--world"),
    "megababel-plan": (["--final", "tiny", "--tokens-per-parameter", "1"], "--global-batch-tokens"),
    "megababel-preprocess": (["corpus.txt", "--out", "data/c", "--tokenizer", "tok.model"], "--stages"),
    "megababel-train-tokenizer": (["corpus.txt", "--out", "tok/t.model"], "--vocab-size"),
}
# tools without a numeric flag: a missing argument is refused the same way
MISSING_ARGUMENT = {"megababel-export": ["runs/a/checkpoints"], "megababel-import": ["hf/a"]}
OURS = [*BAD_NUMBERS, *MISSING_ARGUMENT]
# the launcher checks its run config (megababel/train/run_config.py) before anything is built, with the same one line
TRAIN_BAD = {
    ("--steps", "0"): "--steps must be an integer >= 1, got 0",
    ("--micro-batch-size", "-1"): "--micro-batch-size must be an integer >= 1, got -1",
    ("--seq-len", "nan"): "argument --seq-len: invalid int value: 'nan'",
    ("--gradient-clipping", "nan"): "--gradient-clipping must be a finite number >= 0, got nan",
    ("--schedule", "auto", "--final", "tiny", "--tokens-per-parameter", "nan"):
        "--tokens-per-parameter must be a finite number > 0, got nan",
    ("--schedule", "auto", "--final", "tiny", "--flops", "-1"): "--flops must be a finite number > 0, got -1",
    ("--tp", "3"): "world size 1 is not divisible by --tp 3",          # one process: a world --tp does not divide
}
SUCCESS = ("megababel-model-size", "--hidden-size", "512", "768", "--num-hidden-layers", "8")   # arithmetic only


def entry_points() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def script(name: str) -> Path:
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        pytest.fail(f"{path} is not installed: pip install -e {ROOT} --no-deps")
    return path


def command(name: str, *args: str) -> tuple[str, ...]:
    return (name, *args)


def commands() -> list[tuple[str, ...]]:
    """Every command line the tests below run (run together, a few at a time: each pays for importing torch)."""
    lines = [command(name, "--help") for name in [*OURS, "megababel-train"]]
    lines += [command("megababel-train", *args) for args in TRAIN_BAD]
    lines += [command(name, *args, flag, value) for name, (args, flag) in BAD_NUMBERS.items()
              for value in ("0", "-1", "nan")]
    lines += [command(name, *args) for name, args in MISSING_ARGUMENT.items()]
    return lines + [command("megababel-model-size", "--world", "6", "--tp", "4"), SUCCESS]


@pytest.fixture(scope="module")
def ran() -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    from concurrent.futures import ThreadPoolExecutor
    # not this process's rendezvous: an in-process launcher test before this one leaves its MASTER_PORT in the
    # environment while its process group still listens there (EADDRINUSE in the child)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")

    def one(line):
        return subprocess.run([str(script(line[0])), *line[1:]], env=env, capture_output=True, text=True,
                              timeout=300)
    lines = commands()
    with ThreadPoolExecutor(max(2, min(8, os.cpu_count() or 2))) as pool:
        return dict(zip(lines, pool.map(one, lines)))


def assert_one_line_error(done: subprocess.CompletedProcess, *needles: str):
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and done.stderr.strip().splitlines()[-1] == errors[0], done.stderr
    assert all(n in errors[0] for n in needles), errors[0]


def test_every_tool_has_an_entry_point_into_megababel_cli():
    points = entry_points()
    assert set(OURS) <= set(points)
    for name in OURS:
        module, function = points[name].split(":")
        assert module.startswith("megababel.cli.") and function == "main"
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file()


def test_training_runs_as_a_console_script():
    assert entry_points()["megababel-train"] == "megababel.train.cli:entry_point"


@pytest.mark.parametrize("name", [*OURS, "megababel-train"])
def test_help(ran, name):
    done = ran[command(name, "--help")]
    assert done.returncode == 0 and done.stdout.startswith(f"usage: {name}"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
@pytest.mark.parametrize("name", list(BAD_NUMBERS))
def test_a_bad_number_is_refused_in_one_line(ran, name, value):
    args, flag = BAD_NUMBERS[name]
    done = ran[command(name, *args, flag, value)]
    assert_one_line_error(done, f"{name}: error: argument {flag}", repr(value))


@pytest.mark.parametrize("args", list(TRAIN_BAD), ids=" ".join)
def test_the_launcher_refuses_a_bad_number_in_one_line(ran, args):
    assert_one_line_error(ran[command("megababel-train", *args)], "megababel-train: error:", TRAIN_BAD[args])


@pytest.mark.parametrize("name", list(MISSING_ARGUMENT))
def test_a_missing_argument_is_refused_in_one_line(ran, name):
    assert_one_line_error(ran[command(name, *MISSING_ARGUMENT[name])], f"{name}: error:", "required")


def test_model_size_refuses_a_world_its_tensor_parallelism_does_not_divide(ran):
    done = ran[command("megababel-model-size", "--world", "6", "--tp", "4")]
    assert_one_line_error(done, "--world 6 is not divisible by --tp 4")


def test_a_console_script_that_succeeds_exits_0_and_prints_no_return_value(ran):
    """A console script runs sys.exit(main()): main's returned rows must not become its exit status and stderr."""
    done = ran[SUCCESS]
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    assert len(done.stdout.splitlines()) == 3 and "config" not in done.stdout


@pytest.mark.parametrize("helper, good, bad", [
    (arguments.positive_int, {"1": 1, "2048": 2048}, ["0", "-1", "nan", "1.5", "inf", "x", ""]),
    (arguments.non_negative_int, {"0": 0, "7": 7}, ["-1", "nan", "2.0"]),
    (arguments.positive_float, {"1e21": 1e21, "0.5": 0.5}, ["0", "-1", "nan", "inf", "-inf", "x"]),
    (arguments.non_negative_float, {"0": 0.0, "3e-4": 3e-4}, ["-1e-9", "nan", "inf"]),
])
def test_argument_helpers(helper, good, bad):
    for text, value in good.items():
        assert helper(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text).replace(".", r"\.")):
            helper(text)


@pytest.mark.parametrize("module", ["megababel.cli.model_size", "megababel.cli.plan_growth",
                                    "megababel.cli.train_tokenizer", "megababel.cli.preprocess",
                                    "megababel.model.counters", "megababel.plan.schedule", "megababel.cli.evaluate",
                                    "megababel.cli.export_hf", "megababel.cli.import_hf",
                                    "megababel.cli.export_family", "megababel.train.cli"])
def test_light_tools_answer_without_importing_torch(module):
    """The package re-exports load on first use, and a schedule is checked by growth/events.py and data/sources.py
    alone: the planner, the arithmetic and the text tools must not pay torch's import (~2 s) for --help or an
    answer; the tools that need torch import it after parsing their command line."""
    done = subprocess.run([sys.executable, "-c", f"import sys, {module}; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


def test_the_evaluators_dtype_names_are_its_dtypes():
    from megababel.cli.evaluate import DTYPE_NAMES
    from megababel.hf.evaluate import DTYPES
    assert DTYPE_NAMES == tuple(DTYPES)
