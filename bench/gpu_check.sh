#!/usr/bin/env bash
# Every GPU check in one run, for a machine with one CUDA GPU and no network (the results go to $OUT).
#
#   Prepare here (DeepSpeed is an sdist: build its wheel once; the tinystories speed data is preprocessed once):
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#         pydantic pydantic_core annotated-types typing-inspection hjson "sentencepiece>=0.2.3"
#     DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl
#     mkdir -p .gpu_cache && cp -r ~/.cache/megababel/bench-tinystories-8000-16000-24000-32000 .gpu_cache/
#   Run there:   OUT=/some/dir bash bench/gpu_check.sh       (.whl and .gpu_cache travel with the tree)
#
# 1. tests/integration/test_gpu.py: a two-growth run on the GPU (ZeRO-0/3 x fp32/bf16) against the CPU, and its
#    resume.
# 2. bench/gpu_speed.py (issue 33): tokens/s, MFU and peak memory (the fused loss) at 125M / 350M / 1B, eager and
#    --compile, next to transformers' LlamaForCausalLM, each in its own process; then 125M compiled at micro batches
#    16-64 (the largest that fits); then the seed plan's generations, compiled.
# 3. bench/seed_growth.py: the seed plan's last growth, 488M -> 1.05B, trained, grown, checkpointed, resumed and
#    exported on one GPU (ZeRO-3, bf16, micro batch 4 x 2048).
# Each part has its own time limit, so one that hangs leaves the others their time. PARTS="1 3" runs some of them.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
log() { echo "== $(date +%T) $*" | tee -a "$OUT/log.txt"; }
if [ -z "${SKIP_WHEELS:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MEGABABEL_CACHE=$PWD/.gpu_cache DS_ACCELERATOR=${DS_ACCELERATOR:-cuda}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/log.txt"
python3 -c "import torch, deepspeed, transformers; print(torch.__version__, deepspeed.__version__, transformers.__version__)" \
    2>&1 | tail -1 | tee -a "$OUT/log.txt"

part() { [[ " ${PARTS:-2 1} " == *" $1 "* ]]; }     # part 3 (issue 15's growth on a GPU) ran during issue 16
part 1 && log "1. tests/integration/test_gpu.py" && timeout "${TEST_SECONDS:-150}" python3 -m pytest tests/integration/test_gpu.py -v -rA -p no:cacheprovider ${TEST_ARGS--n 4} \
    2>&1 | tee "$OUT/test_gpu.log" | tail -25 | tee -a "$OUT/log.txt"

speed() {   # speed NAME ARGS...: one bench/gpu_speed.py run into $OUT/NAME
    mkdir -p "$OUT/$1" && timeout "${SPEED_SECONDS:-240}" python3 bench/gpu_speed.py --steps 6 --out "$OUT/$1" "${@:2}" \
        ${SPEED_ARGS:-} 2>&1 | tee "$OUT/$1.log" | grep -E '^[{|]' | tee -a "$OUT/log.txt"
}
part 2 && log "2a. bench/gpu_speed.py: sizes x eager/compile/transformers" && speed speed_sizes --sizes 125M 1B 350M
part 2 && log "2b. 125M compiled, larger micro batches" && speed speed_micro --sizes 125M \
    --variants megababel+compile --micro-batch-sizes 16 32 64
part 2 && log "2c. the seed plan's generations, compiled" && speed speed_seed --sizes seed-g0 seed-g1 seed-g2 seed-g3 \
    --variants megababel+compile

part 3 && log "3. bench/seed_growth.py, 488M -> 1.05B on one GPU" && timeout "${GROWTH_SECONDS:-200}" python3 bench/seed_growth.py --ranks 1 --micro 4 --seq 2048 --label _gpu \
    --out /tmp/seed_growth ${GROWTH_ARGS:-} 2>&1 | tee "$OUT/seed_growth.log" | grep -E "step|\.\.\.|loss|Error" \
    | tail -40 | tee -a "$OUT/log.txt"
cp bench/results/seed_growth_g*_gpu.json "$OUT/" 2>/dev/null
log "done"
