"""--compile: compiled decoder layers train like eager ones through two growths (one of them vocabulary) and a
resume, under ZeRO-0 and ZeRO-3, and the compile time of each generation is recorded.

Tolerance: fp32, relative 2e-5 per loss over 24 steps. Inductor fuses RMSNorm, RoPE and SwiGLU and keeps their
intermediates in fp32 registers, so losses differ from eager by rounding, which training then carries along."""
from __future__ import annotations

from test_trainer import fit

TOLERANCE = 2e-5


def test_compiled_layers_train_like_eager_through_growth_and_resume(distributed_env, tmp_path):
    """Eager at ZeRO-0; compiled at ZeRO-0 through both growths; compiled at ZeRO-3, resumed from the compiled run's
    checkpoint after the first growth (a checkpoint holds the unsharded model, so it resumes at any ZeRO stage)."""
    eager = fit(tmp_path / "eager")
    compiled = fit(tmp_path / "compiled", compile=True, save_every=8)
    resumed = fit(tmp_path / "resumed", zero_stage=3, compile=True,
                  resume=tmp_path / "compiled/checkpoints/step_00000008_gen1")
    assert sorted(compiled.losses) == list(range(24)) and sorted(resumed.losses) == list(range(8, 24))
    for step, loss in eager.losses.items():
        assert abs(compiled.losses[step] - loss) <= TOLERANCE * loss, (step, loss, compiled.losses[step])
        if step >= 8:
            assert abs(resumed.losses[step] - loss) <= TOLERANCE * loss, (step, loss, resumed.losses[step])
    history = compiled.history
    assert [entry["generation"] for entry in history] == [0, 1, 2]
    assert all(entry["compile_seconds"] > 0 for entry in history), history     # every generation compiled
    assert resumed.history[1]["compile_seconds"] > compiled.history[1]["compile_seconds"]   # + after the resume
