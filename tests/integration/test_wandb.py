"""--wandb: a real offline W&B run (WANDB_MODE=offline) logs what log.csv logs, LR per generation, validation and the
growth events, and a resume into the same OUT continues the same W&B run id. The run's .wandb file is read back
record by record (its block format is LevelDB's log format; each record a wandb.proto Record)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, TWO_GROWTHS

wandb_internal_pb2 = pytest.importorskip("wandb.proto.wandb_internal_pb2")
BLOCK, HEADER = 32768, 7


def wandb_records(path: Path) -> list:
    """Every Record of a .wandb file: a 7-byte file header (':W&B', magic, version), then 32 KiB blocks of
    chunks (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, offset = [], b"", HEADER
    while offset + HEADER <= len(data):
        left = BLOCK - offset % BLOCK
        if left < HEADER:                    # the block's tail is padding
            offset += left
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + HEADER])
        chunk = data[offset + HEADER:offset + HEADER + length]
        offset += HEADER + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def history(records, key: str = "train/loss") -> dict:
    """{train/step: {key: value}} of the history records, at the steps that logged `key` (validation logs at the
    steps done, as TensorBoard's: 12 after the last step 11)."""
    rows = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in record.history.item}
            if "train/step" in row:
                rows.setdefault(row["train/step"], {}).update(row)
    return {step: row for step, row in rows.items() if key is None or key in row}


def train(out: Path, *flags):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), "--schedule", str(TWO_GROWTHS),
                           "--steps", "12", "--seq-len", "32", "--micro-batch-size", "2", "--eval-every", "4",
                           "--save-every", "6", "--wandb", "megababel-test", "--wandb-run-name", "grow",
                           "--out", str(out), *flags], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.slow
def test_an_offline_run_logs_the_csv_lr_per_generation_growths_and_resumes_the_same_id(tmp_path):
    out = tmp_path / "run"
    train(out)
    (first,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(first)
    rows, everything = history(records), history(records, None)
    logged = {int(r["step"]): r for r in csv.DictReader(open(out / "log.csv"))}
    assert sorted(rows) == sorted(logged) == list(range(12))
    for step, row in logged.items():
        assert rows[step]["train/loss"] == pytest.approx(float(row["loss"]), abs=1e-6)
        assert rows[step]["train/generation"] == int(row["generation"]) and rows[step]["train/vocab"] == int(row["vocab"])
    assert {k for k in rows[11] if k.startswith("lr/")} == {"lr/generation_0", "lr/generation_1", "lr/generation_2"}
    assert rows[3]["growth/generation"] == 1 and rows[6]["growth/generation"] == 2          # growths at 1/4 and 1/2
    assert "growth/loss_before" in rows[3] and any(k.startswith("growths") for k in rows[6])   # the table
    assert sorted(s for s, row in everything.items() if "validation/bits_per_byte" in row) == [0, 4, 8, 12]
    config = {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "run"
              for item in r.run.config.update}
    assert config["schedule"]["growths"][0]["at_step"] == 3 and config["seq_len"] == 32
    run_id = (out / "wandb_run_id").read_text().strip()
    assert first.name == f"run-{run_id}.wandb"

    shutil.rmtree(out / "checkpoints" / "step_00000012_gen2")        # as if the run had been stopped after step 6
    (out / "checkpoints" / "latest").write_text("step_00000006_gen1\n")
    train(out, "--resume", "auto")                                      # into the same OUT
    resumed = [p for p in (out / "wandb").glob("offline-run-*/run-*.wandb") if p != first]
    assert [p.name for p in resumed] == [first.name]                             # the same W&B run id
    assert sorted(history(wandb_records(resumed[0]))) == list(range(6, 12))


def test_wandb_is_only_imported_when_asked_for():
    code = ("import sys; sys.argv = ['train']; import runpy; "
            "m = runpy.run_path('launch/train.py', run_name='not_main'); "
            "import megababel.train.cli; megababel.train.cli.parse_args([]); "
            "import megababel.train.trainer; print('wandb' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "False", done.stderr[-2000:]
