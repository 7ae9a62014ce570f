"""Tensor parallelism: shard metadata, layout checks, and real multi-process runs (gloo, CPU) through growth.

The multi-process runs use gradient clipping at 0.01, so clipping acts at every step: the clipped gradient norm
must then count sharded parameters across TP ranks and replicated ones (norm gains) once, or the runs diverge.
Small steps also keep Adam from amplifying rounding differences in parameters whose gradients are still ~0 (new
layers), which otherwise makes any two summation orders (2-rank data parallel too) drift apart by ~1e-2 in weights
after a few steps."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megababel.config import ConfigError, LlamaConfig
from megababel.parallel import free_port
from megababel.parallel.tensor_parallel import TPSplit, check_tensor_parallel, split_dim

from helpers import TWO_GROWTHS, tiny_config
from megababel.parallel.local_ranks import run_local_ranks

from helpers import HELPERS, ROOT
WORKER = HELPERS / "tp_worker.py"

# a q_proj-like weight grown twice: 4 heads of 2 rows -> 8 heads (hidden 3 -> 5), then hidden 5 -> 7
GROWN = (((0, 0), (8, 3), 0), ((8, 0), (8, 5), 1), ((0, 3), (8, 2), 1), ((0, 5), (16, 2), 2))


def test_split_dim_follows_the_axes():
    assert split_dim(("q_heads", "hidden")) == 0
    assert split_dim(("hidden", "ffn")) == 1
    assert split_dim(("vocab", "hidden")) == 0
    assert split_dim(("hidden",)) is None


@pytest.mark.parametrize("size", [1, 2, 4])
def test_every_generation_is_spread_evenly_and_shards_merge_back(size):
    full = torch.randn(16, 7)
    splits = [TPSplit(0, r, size, (16, 7), GROWN, "q_heads", unit=2) for r in range(size)]
    positions = torch.cat([s.positions() for s in splits])
    assert sorted(positions.tolist()) == list(range(16))                 # each row on exactly one rank
    for s in splits:
        rows = s.positions()
        assert ((rows < 8).sum().item(), (rows >= 8).sum().item()) == (8 // size, 8 // size)   # both generations
        shard = s.take(full)
        assert shard.shape == s.local_shape == (16 // size, 7)
        # local blocks tile the shard and are the rank's piece of the global blocks
        assert sum(torch.Size(shape).numel() for _, shape, _ in s.local_layout()) == shard.numel()
        for i, ((go, gs, gen), (lo, ls, lgen)) in enumerate(zip(GROWN, s.local_layout())):
            assert gen == lgen
            global_block = full[go[0]:go[0] + gs[0], go[1]:go[1] + gs[1]]
            local_block = shard[lo[0]:lo[0] + ls[0], lo[1]:lo[1] + ls[1]]
            assert torch.equal(s.take_block(global_block, i), local_block)
    assert torch.equal(splits[0].merge([s.take(full) for s in splits]), full)


def test_a_segment_that_does_not_split_evenly_is_refused():
    TPSplit(0, 0, 4, (16, 7), GROWN, "q_heads", unit=2)      # 4 heads per segment over 4 ranks: fine
    with pytest.raises(ConfigError, match=r"\[0, 8\) \(4 heads\) cannot be split evenly over 8 tensor-parallel"):
        TPSplit(0, 0, 8, (16, 7), GROWN, "q_heads", unit=2)


def test_layout_checks_name_the_field_and_the_fix():
    base = LlamaConfig(hidden_size=64, head_dim=16, num_hidden_layers=2, vocab_size=96, multiple_of=32)
    check_tensor_parallel([base, base.replace(hidden_size=128, num_attention_heads=8, num_key_value_heads=8)], 2, 4)
    with pytest.raises(ConfigError, match="world size 3 is not divisible by --tp 2"):
        check_tensor_parallel([base], 2, 3)
    with pytest.raises(ConfigError, match="num_attention_heads=4 of the initial model is not divisible by --tp 8"):
        check_tensor_parallel([base], 8, 8)
    grown = base.replace(hidden_size=96, num_attention_heads=6, num_key_value_heads=6)
    with pytest.raises(ConfigError, match="num_attention_heads=6 of the model after growth 0 is not divisible by --tp 4"):
        check_tensor_parallel([base, grown], 4, 4)
    with pytest.raises(ConfigError, match="num_key_value_heads=1"):
        check_tensor_parallel([base.replace(num_key_value_heads=1)], 2, 2)
    with pytest.raises(ConfigError, match="vocab_size=97"):
        check_tensor_parallel([base.replace(vocab_size=97)], 2, 2)
    with pytest.raises(ConfigError, match="intermediate_size=171"):
        check_tensor_parallel([base.replace(intermediate_size=171, multiple_of=1)], 2, 2)
    with pytest.raises(ConfigError, match="query heads per key/value head"):
        check_tensor_parallel([base, base.replace(hidden_size=128, num_attention_heads=8, num_key_value_heads=2)], 2, 2)


def test_launcher_refuses_a_bad_layout_before_building_anything(tmp_path):
    env = dict(os.environ, DS_ACCELERATOR="cpu", MASTER_PORT=str(free_port()))
    bad_world = subprocess.run([sys.executable, str(ROOT / "launch/train.py"), "--tp", "2", "--out", str(tmp_path)],
                               env=env, capture_output=True, text=True, timeout=300)
    assert bad_world.returncode == 2 and "world size 1 is not divisible by --tp 2" in bad_world.stderr
    assert not any(tmp_path.iterdir())


def run_ranks(world: int, stage: int, tp: int, out: Path, *extra) -> dict:
    run_local_ranks(world, [WORKER, stage, tp, out, "--clip", "0.01", *extra])
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """single: 1 process; tp2: TP=2 (ZeRO-0, 2 processes); tp2_dp2: TP=2 x DP=2 under ZeRO-3 (4 processes), also
    with micro-batches of 1 accumulated twice and activation checkpointing (tp2_dp2_accumulated). The first two also
    checkpoint at step 6 (between the growths), and each resumes from the other's checkpoint."""
    tmp = tmp_path_factory.mktemp("tp")
    return dict(
        single=run_ranks(1, 0, 1, tmp / "single.pt", "--save-every", 6, "--checkpoints", tmp / "tp1"),
        tp2=run_ranks(2, 0, 2, tmp / "tp2.pt", "--save-every", 6, "--checkpoints", tmp / "tp2"),
        tp2_dp2=run_ranks(4, 3, 2, tmp / "tp2_dp2.pt"),
        tp2_dp2_accumulated=run_ranks(4, 3, 2, tmp / "tp2_dp2_acc.pt", "--micro", 1, "--activation-checkpointing"),
        tp1_from_tp2=run_ranks(1, 0, 1, tmp / "tp1_from_tp2.pt", "--resume", tmp / "tp2" / STEP_6),
        tp2_from_tp1=run_ranks(2, 3, 2, tmp / "tp2_from_tp1.pt", "--resume", tmp / "tp1" / STEP_6),
        checkpoints=(tmp / "tp1" / STEP_6, tmp / "tp2" / STEP_6))


STEP_6 = "checkpoints/step_00000006_gen1"      # between the two growths


def _scaled_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max().clamp(min=1e-30)).item()


def assert_same_state(reference, other, tolerance):
    """Unsharded weights and every block's Adam moments within `tolerance` of each tensor's scale."""
    values, moments, steps = reference
    values_2, moments_2, steps_2 = other
    assert values.keys() == values_2.keys() and moments.keys() == moments_2.keys() and steps == steps_2
    for path in values:
        assert values[path].shape == values_2[path].shape, path
        assert _scaled_diff(values[path], values_2[path]) <= tolerance, path
    for key in moments:
        for m, m_2 in zip(moments[key], moments_2[key]):
            assert _scaled_diff(m, m_2) <= tolerance, key


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tp2", "tp2_dp2", "tp2_dp2_accumulated"])
def test_tensor_parallel_reproduces_the_single_process_run(runs, name):
    single, parallel = runs["single"], runs[name]
    assert len(single["losses"]) == len(parallel["losses"]) == 12
    for step, a in single["losses"].items():
        assert abs(parallel["losses"][step] - a) <= 1e-4 * abs(a), (step, a, parallel["losses"][step])
    fixed_batch_comparable = name != "tp2_dp2_accumulated"      # its fixed batch is one micro-batch of 1
    for event, event_2 in zip(single["growth"], parallel["growth"] if fixed_batch_comparable else []):
        assert abs(event_2["before"] - event["before"]) <= 1e-5 * abs(event["before"])
        assert abs(event_2["after"] - event["after"]) <= 1e-5 * abs(event["after"])
    # merged from the shards: right after the first growth (4 steps in), the second (8 steps in), and at the end
    assert_same_state(state(single, 0), state(parallel, 0), tolerance=1e-4)
    assert_same_state(state(single, 1), state(parallel, 1), tolerance=1e-3)
    assert_same_state(single["final"], parallel["final"], tolerance=2e-2)


def state(record, growth: int):
    event = record["growth"][growth]
    return event["values"], event["moments"], event["steps"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tp1_from_tp2", "tp2_from_tp1"])
def test_a_checkpoint_resumes_under_another_tensor_parallel_degree(runs, name):
    single, resumed = runs["single"], runs[name]
    assert sorted(resumed["losses"]) == list(range(6, 12))
    for step, loss in resumed["losses"].items():
        assert abs(loss - single["losses"][step]) <= 1e-4 * abs(loss), (step, loss, single["losses"][step])
    assert_same_state(state(single, 1), state(resumed, 0), tolerance=1e-3)


@pytest.mark.slow
def test_checkpoints_hold_the_unsharded_model_whatever_the_layout(runs):
    from megababel.checkpoint.io import load_checkpoint
    tp1, tp2 = (load_checkpoint(path) for path in runs["checkpoints"])
    assert (tp1.meta["tensor_parallel"], tp2.meta["tensor_parallel"]) == (1, 2)
    assert tp1.state.layout == tp2.state.layout
    for path, value in tp1.state.values.items():
        assert value.shape == tp2.state.values[path].shape
        assert _scaled_diff(value, tp2.state.values[path]) <= 1e-3, path


def test_tensor_parallel_model_of_one_rank_equals_the_plain_model(monkeypatch):
    """The TP code path (vocab-parallel embedding and cross-entropy, copy/reduce functions) on a 1-rank group:
    same loss and gradients as the plain model, also with ignored targets (-100)."""
    from megababel.model.llama import Llama
    from megababel.engine import init_distributed
    from megababel.parallel.tensor_parallel import TensorParallel

    # set here, so that they are removed afterwards: subprocesses of later tests must not inherit this port
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)
    init_distributed()
    config = tiny_config()
    plain, sharded = Llama(config, seed=0), Llama(config, seed=0, tp=TensorParallel(1))
    assert type(sharded.lm_head).__name__ == "GrowableColumnParallelLinear"
    ids = torch.randint(0, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    targets = ids.roll(-1, dims=1)
    targets[0, :3] = -100
    (_, loss), (_, loss_tp) = plain(ids, targets), sharded(ids, targets)
    assert torch.allclose(loss, loss_tp, rtol=1e-6, atol=0)
    loss.backward()
    loss_tp.backward()
    for (name, p), (_, q) in zip(plain.named_parameters(), sharded.named_parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), name


@pytest.mark.slow
def test_launcher_with_tp2_trains_like_one_process_and_resumes_at_tp1(tmp_path):
    """The real launchers on the embedded corpus (width, FFN, depth and vocabulary growth): `deepspeed --num_gpus 2
    launch/train.py --tp 2` logs the same losses as `python launch/train.py`, and its checkpoint resumes at TP=1."""
    import csv

    common = ["--schedule", str(TWO_GROWTHS), "--steps", "30", "--micro-batch-size", "4", "--seq-len", "64",
              "--eval-every", "10"]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)

    def train(launcher: list, out: Path, *extra):
        done = subprocess.run(launcher + [str(ROOT / "launch/train.py"), *common, "--out", str(out), *extra],
                              env=dict(env, MASTER_PORT=str(free_port())), capture_output=True, text=True,
                              timeout=900, cwd=ROOT)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return {int(r["step"]): (float(r["loss"]), r["generation"]) for r in csv.DictReader(open(out / "log.csv"))}

    deepspeed = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", "2",
                 "--master_port", str(free_port())]
    single = train([sys.executable], tmp_path / "single")
    tp2 = train(deepspeed, tmp_path / "tp2", "--tp", "2", "--save-every", "15")
    checkpoint = tmp_path / "tp2/checkpoints/step_00000015_gen1"
    resumed = train([sys.executable], tmp_path / "resumed", "--resume", str(checkpoint))
    assert sorted(tp2) == list(range(30)) and {g for _, g in tp2.values()} == {"0", "1", "2"}
    for step, (loss, generation) in single.items():
        assert tp2[step][1] == generation and abs(tp2[step][0] - loss) <= 1e-4 * loss, (step, loss, tp2[step])
        if step >= 15:
            assert abs(resumed[step][0] - loss) <= 1e-4 * loss, (step, loss, resumed[step])
