"""A lock left by a process killed while DeepSpeed loaded its CPU op would hang every later start: it is removed
once old, and a fresh one (a build under way) is left alone."""
import os
import time

from megababel.engine import distributed


def test_an_old_build_lock_is_removed_and_a_fresh_one_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale = tmp_path / "deepspeed_shm_comm" / "lock"
    fresh = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir(parents=True)
        lock.touch()
    old = time.time() - distributed.STALE_LOCK_SECONDS - 60
    os.utime(stale, (old, old))
    assert distributed.remove_stale_build_lock() == [str(stale)]
    assert not stale.exists() and fresh.exists()
    assert "later starts would have waited on it forever" in capsys.readouterr().out
    os.utime(fresh, (old, old))                      # the same lock under torch's per-version folder
    assert distributed.remove_stale_build_lock() == [str(fresh)] and not fresh.exists()
    assert distributed.remove_stale_build_lock() == []                    # nothing left: nothing to say
