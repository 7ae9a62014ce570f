"""Peak memory and time of loading a 1B Hugging Face export, with and without `accelerate` installed.

    python bench/hf_load_memory.py                  # appends to results/hf_load_memory.json (~2 min, 2 GB of disk)
    pip uninstall -y accelerate && python bench/hf_load_memory.py && pip install accelerate    # the other half

A random LlamaForCausalLM of the 1B shape of bench/gpu_speed.py (hidden 2048, 18 layers, vocabulary 32000) is saved
in bf16, as `tools/convert_to_hf.py --dtype bf16` would, then loaded by `AutoModelForCausalLM.from_pretrained` in a
fresh process (what tools/eval.py and lm-eval do) in bf16 and in fp32; peak RSS is the process's maximum resident set.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "hf_load_memory.json"
MAKE = """
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.set_default_dtype(torch.bfloat16)
config = LlamaConfig(hidden_size=2048, intermediate_size=5504, num_hidden_layers=18, num_attention_heads=16,
                     num_key_value_heads=16, head_dim=128, vocab_size=32000, tie_word_embeddings=False)
LlamaForCausalLM(config).save_pretrained(sys.argv[1])
"""
LOAD = """
import json, resource, sys, time, torch
from transformers import AutoModelForCausalLM
start = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=getattr(torch, sys.argv[2]))
print(json.dumps(dict(dtype=sys.argv[2], seconds=round(time.perf_counter() - start, 1),
                      parameters=sum(p.numel() for p in model.parameters()),
                      weights_gb=round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30, 2),
                      peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))))
"""


def main():
    accelerate = importlib.util.find_spec("accelerate") is not None
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-c", MAKE, tmp], check=True, capture_output=True)
        for dtype in ("bfloat16", "float32"):
            done = subprocess.run([sys.executable, "-c", LOAD, tmp, dtype], check=True, capture_output=True, text=True)
            row = dict(json.loads(done.stdout.strip().splitlines()[-1]), accelerate=accelerate)
            print(json.dumps(row), flush=True)
            rows = [r for r in rows if (r["dtype"], r["accelerate"]) != (dtype, accelerate)] + [row]
    RESULTS.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
