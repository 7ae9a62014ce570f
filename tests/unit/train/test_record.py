"""The run record a checkpoint holds: one typed object whose dict form is the checkpoint's `run` entry, round trip
exact, and older checkpoints' entries (without later fields) still load."""
from __future__ import annotations

import json

from megababel.train.record import RunIdentity, RunRecord

# the `run` entry of a checkpoint written before the run record was a type (keys in the order that code wrote them;
# the loader state and RNG cut down): it must load, and write back the same
OLD_RUN = json.loads("""{"step": 8, "tokens": 512, "flops": 1.5e9, "train_seconds": 3.25, "vocab": 2000,
  "loader": {"epoch": 0, "position": 16}, "record": {"schedule": {"model": {"hidden_size": 64}}, "seq_len": 32,
  "global_batch": 2, "seed": 0, "precision": "fp32", "gradient_clipping": 1.0, "tokenizer_sha256": "ab",
  "ranking_sha256": "cd"}, "history": [{"generation": 0, "step": 0}], "data": "/data", "schedule_source": "s.json",
  "rng": {"torch": [1, 2]}, "validation_loss": null, "validation_bpb": null}""")


def test_an_old_checkpoints_run_entry_round_trips():
    record = RunRecord.from_dict(OLD_RUN)
    assert record.step == 8 and record.record.global_batch == 2 and record.record.precision == "fp32"
    assert record.imported_from is None
    assert record.to_dict() == OLD_RUN and list(record.to_dict()) == list(OLD_RUN)


def test_missing_fields_take_defaults_and_an_identity_that_lacks_a_key_differs():
    oldest = {k: v for k, v in OLD_RUN.items() if k not in ("train_seconds", "record")}
    record = RunRecord.from_dict(oldest)
    assert record.train_seconds == 0.0
    assert record.record == RunIdentity() and record.record != RunRecord.from_dict(OLD_RUN).record


def test_an_imported_models_entry_keeps_its_origin():
    imported = dict(step=0, tokens=0, flops=0, imported_from="/hf/model")
    record = RunRecord.from_dict(imported)
    assert record.imported_from == "/hf/model" and record.to_dict()["imported_from"] == "/hf/model"
    assert RunRecord.from_dict(record.to_dict()) == record
