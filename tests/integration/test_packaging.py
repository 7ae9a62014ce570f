"""Packaging: setup.cfg's package list and pins, the DeepSpeed compatibility check, and (slow) a non-editable install
whose entry points train, export and evaluate from outside the checkout, with the DeepSpeed config templates as
package data."""
from __future__ import annotations

import configparser
import json
import math
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from megababel.engine import deepspeed_compat, deepspeed_config
from megababel.parallel import free_port

from helpers import ROOT


def setup_cfg_options() -> configparser.SectionProxy:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser["options"]


def listed(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def test_setup_cfg_lists_every_subpackage():
    """setup.cfg lists packages by hand (for the ds_configs mapping): a new subpackage must be added there."""
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "megababel").rglob("__init__.py")}
    assert set(listed(setup_cfg_options()["packages"])) == on_disk | {"megababel.ds_configs"}


def test_deepspeed_pin_is_the_tested_range():
    requirements = [r.replace(" ", "") for r in listed(setup_cfg_options()["install_requires"])]
    assert "deepspeed" + deepspeed_compat.TESTED_DEEPSPEED in requirements


def test_installed_deepspeed_passes_the_check():
    import deepspeed
    assert deepspeed_compat.check_deepspeed() == deepspeed.__version__
    assert deepspeed_compat.missing_deepspeed_internals() == ([], [])


def test_version_outside_the_tested_range(monkeypatch):
    monkeypatch.delenv(deepspeed_compat.ALLOW_UNTESTED_ENV, raising=False)
    expected = r"deepspeed 0\.20\.1 is installed.*>=0\.19\.8,<0\.20"
    with pytest.raises(deepspeed_compat.DeepSpeedCompatibilityError, match=expected):
        deepspeed_compat.check_deepspeed_version("0.20.1")
    monkeypatch.setenv(deepspeed_compat.ALLOW_UNTESTED_ENV, "1")
    with pytest.warns(UserWarning, match="0.20.1"):
        deepspeed_compat.check_deepspeed_version("0.20.1")
    deepspeed_compat.check_deepspeed_version("0.19.9+abc123")     # a local build inside the range


def test_missing_internals_are_named(monkeypatch):
    """Renamed or removed internals (a class method, an attribute assigned in __init__, a module attribute, the
    lru_cache) each appear in the one error, with the installed version and the tested range."""
    from deepspeed.runtime.zero import parameter_offload
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    monkeypatch.delenv(deepspeed_compat.ALLOW_UNTESTED_ENV, raising=False)
    monkeypatch.delattr(DeepSpeedZeroOptimizer, "_lazy_init_hp_params_optimizer_state")
    monkeypatch.delattr(parameter_offload, "FWD_MODULE_STACK")
    monkeypatch.setattr(deepspeed_compat, "params_to_release_cache", lambda: None)
    real_source = deepspeed_compat._source
    monkeypatch.setattr(deepspeed_compat, "_source",
                        lambda obj: real_source(obj).replace("sub_group_to_group_id", "sub_group_to_group"))
    import deepspeed
    with pytest.raises(deepspeed_compat.DeepSpeedCompatibilityError) as error:
        deepspeed_compat.check_deepspeed.__wrapped__()      # past the per-process cache
    message = str(error.value)
    for expected in (f"deepspeed {deepspeed.__version__}",
                     "DeepSpeedZeroOptimizer._lazy_init_hp_params_optimizer_state",
                     "DeepSpeedZeroOptimizer_Stage3.sub_group_to_group_id", "FWD_MODULE_STACK",
                     "__params_to_release", deepspeed_compat.TESTED_DEEPSPEED):
        assert expected in message
    assert "BF16_Optimizer" not in message      # still has its method: only what is missing is named


def test_ds_config_found_in_the_checkout_or_a_clear_error(monkeypatch, tmp_path):
    assert deepspeed_config.load_ds_config(3, 2, 1, 1, bf16=False)["zero_optimization"]["stage"] == 3
    monkeypatch.setattr(deepspeed_config, "CHECKOUT_DS_CONFIGS", tmp_path / "ds_configs")
    monkeypatch.setattr(deepspeed_config.resources, "files", lambda package: tmp_path / package)
    with pytest.raises(FileNotFoundError, match=r"zero1\.json.*--ds-config PATH"):
        deepspeed_config.load_ds_config(1, 2, 1, 1, bf16=False)
    explicit = tmp_path / "mine.json"
    explicit.write_text(json.dumps({"gradient_clipping": 1.0, "zero_optimization": {"stage": 1}}))
    assert deepspeed_config.load_ds_config(1, 2, 1, 1, bf16=False, path=str(explicit))["train_batch_size"] == 2


# two steps without growth, so that the test depends on the installed package, not on the growth schedule presets
TINY_SCHEDULE = dict(model=dict(hidden_size=64, head_dim=16, num_hidden_layers=2, multiple_of=32, vocab_size=1000),
                     training=dict(steps=2, warmup_steps=0))
TRAIN_FLAGS = ["--schedule", "schedule.json", "--micro-batch-size", 2, "--seq-len", 32, "--eval-every", 1]

# `python -m megababel.train`, then which megababel it imported and where the ZeRO-0 template came from
RUN_MODULE_AND_REPORT = """
import json, runpy, sys
sys.argv = ["megababel.train"] + sys.argv[1:]
try:
    runpy.run_module("megababel.train", run_name="__main__", alter_sys=True)
finally:
    from megababel.engine.deepspeed_config import ds_config_path
    report = dict(megababel=sys.modules["megababel"].__file__, ds_config=str(ds_config_path(0)))
    print("INSTALLED " + json.dumps(report))
"""
# the `deepspeed` launcher's own entry (the fresh venv reaches deepspeed through a .pth, without its scripts)
DEEPSPEED_LAUNCHER = "import sys; from deepspeed.launcher.runner import main; sys.exit(main())"


def run_checked(command: list, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], check=False, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, \
        f"{command} exited with {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def console_scripts() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return [line.split("=")[0].strip()
            for line in listed(parser["options.entry_points"]["console_scripts"])]


@pytest.mark.slow
def test_non_editable_install_runs_every_entry_point_outside_the_checkout(tmp_path):
    """Install a copy of the project (pip, non-editable) into a fresh virtualenv that sees this environment's
    site-packages for the dependencies only (no torch/deepspeed download). From a directory outside the checkout:
    every console script answers --help; `megababel-train`, `python -m megababel.train` and `deepspeed --module
    megababel.train` each train; `megababel-export` exports the checkpoint and `megababel-eval` evaluates the export
    and the checkpoint alike."""
    # no PYTHONPATH (the checkout must not leak in), no rank variables of an earlier in-process test (its port is
    # still held by that process group)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MEGABABEL_CACHE=str(tmp_path / "cache"),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    # a copy, so that setuptools' build/ folder (which can carry stale modules into a wheel) stays out of the checkout
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "runs", "__pycache__", ".*_cache"))

    venv = tmp_path / "venv"
    run_checked([sys.executable, "-m", "venv", "--without-pip", venv])
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    site_packages = Path(run_checked([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     env=env).stdout.strip())
    # a .pth line adds a directory to sys.path without running the .pth files in it, so this environment's
    # editable-install hook for megababel stays inactive in the fresh one (checked just below)
    (site_packages / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    found = run_checked([python, "-c", "import importlib.util; print(importlib.util.find_spec('megababel'))"],
                        env=env, cwd=tmp_path).stdout.strip()
    assert found == "None", f"megababel is importable in the fresh venv before installing it: {found}"

    # --ignore-installed: pip sees this environment's megababel through the .pth and must not touch it
    run_checked([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                 "--ignore-installed", source], env=env, cwd=tmp_path, timeout=300)

    work = tmp_path / "work"              # outside the checkout: nothing here but the schedule and a text
    work.mkdir()
    for name in console_scripts():
        done = run_checked([bin_dir / name, "--help"], env=env, cwd=work, timeout=120)
        assert done.stdout.startswith(f"usage: {name}"), done.stdout[:300]

    (work / "schedule.json").write_text(json.dumps(TINY_SCHEDULE))
    run_checked([bin_dir / "megababel-train", *TRAIN_FLAGS, "--save-every", 2, "--out", work / "a"],
                env=env, cwd=work, timeout=600)
    assert len((work / "a" / "log.csv").read_text().splitlines()) == 3        # header + 2 steps
    done = run_checked([python, "-c", RUN_MODULE_AND_REPORT, *TRAIN_FLAGS, "--out", work / "b"],
                       env=env, cwd=work, timeout=600)
    reports = [line for line in done.stdout.splitlines() if line.startswith("INSTALLED ")]
    assert reports, f"the run did not report which megababel it imported:\n{done.stdout[-3000:]}"
    installed = json.loads(reports[-1][len("INSTALLED "):])
    assert Path(installed["megababel"]).is_relative_to(site_packages), installed
    assert Path(installed["ds_config"]) == site_packages / "megababel" / "ds_configs" / "zero0.json", installed
    # the same run, so the same losses, whichever way it was started
    assert (work / "b" / "log.csv").read_text().split("\n")[1].split(",")[3] == \
        (work / "a" / "log.csv").read_text().split("\n")[1].split(",")[3]
    run_checked([python, "-c", DEEPSPEED_LAUNCHER, "--num_gpus", 1, "--master_port", free_port(), "--module",
                 "megababel.train", *TRAIN_FLAGS, "--zero-stage", 3, "--out", work / "c"],
                env=env, cwd=work, timeout=600)
    assert len((work / "c" / "log.csv").read_text().splitlines()) == 3

    run_checked([bin_dir / "megababel-export", work / "a" / "checkpoints", work / "hf"], env=env, cwd=work,
                timeout=300)
    assert (work / "hf" / "config.json").is_file() and list((work / "hf").glob("*.safetensors"))
    text = work / "text.txt"
    text.write_text("\n\n".join(f"Paragraph {i}: the model reads a few words and predicts the next one." for i in
                                 range(20)) + "\n")
    results = {}
    for model in (work / "hf", work / "a" / "checkpoints"):
        run_checked([bin_dir / "megababel-eval", model, text, "--seq-len", 32, "--json", work / "r.json"],
                    env=env, cwd=work, timeout=300)
        results[model.name] = json.loads((work / "r.json").read_text())["bits_per_byte"]
    assert all(math.isfinite(v) and v > 0 for v in results.values()), results
    assert results["hf"] == pytest.approx(results["checkpoints"], rel=1e-4), results
