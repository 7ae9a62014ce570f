"""bench/same_log.py: the documented check that a refactor leaves the main job's log.csv bit-identical."""
from __future__ import annotations

import subprocess
import sys

from helpers import ROOT

HEADER = "step,tokens,flops,loss,train_bpb,generation,vocab,parameters,tokens_per_s,lr\n"


def same_log(tmp_path, before: str, after: str) -> subprocess.CompletedProcess:
    (tmp_path / "a.csv").write_text(HEADER + before)
    (tmp_path / "b.csv").write_text(HEADER + after)
    return subprocess.run([sys.executable, str(ROOT / "bench" / "same_log.py"), str(tmp_path / "a.csv"),
                           str(tmp_path / "b.csv")], capture_output=True, text=True, timeout=60)


def test_only_the_wall_clock_may_differ(tmp_path):
    row = "0,1024,1.6e9,7.602976,3.64043,0,2000,360000,{},0.0001\n"
    done = same_log(tmp_path, row.format(9000) * 2, row.format(12000) * 2)
    assert done.returncode == 0 and "identical: 2 rows" in done.stdout
    changed = row.format(9000).replace("7.602976", "7.602977")
    done = same_log(tmp_path, row.format(9000) * 2, row.format(9000) + changed)
    assert done.returncode == 1 and "row 1 (step 0) differs in loss" in done.stdout, done.stdout
    done = same_log(tmp_path, row.format(9000) * 2, row.format(9000))
    assert done.returncode == 1 and "2 rows before, 1 after" in done.stdout
