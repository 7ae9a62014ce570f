"""llama.cpp's `llama-perplexity` measure computed with transformers on the same Hugging Face export, to check that a
GGUF conversion of it (convert_hf_to_gguf.py) computes what the export does.

    # llama.cpp's sources (the llama-cpp-python sdist vendors them), the converter and llama-perplexity (~10 min)
    pip download --no-deps --no-binary :all: -d /tmp/llcpp llama-cpp-python && tar xzf /tmp/llcpp/*.tar.gz -C /tmp/llcpp
    cd /tmp/llcpp/llama_cpp_python-*/vendor/llama.cpp
    cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF && cmake --build build --target llama-perplexity -j 2
    PYTHONPATH=gguf-py python convert_hf_to_gguf.py EXPORT --outfile model.gguf --outtype f32
    ./build/bin/llama-perplexity -m model.gguf -f TEXT -c 128 -b 128          # "Final estimate: PPL = ..."
    python bench/llama_perplexity_ref.py EXPORT TEXT --ctx 128                 # the same number, from transformers

The measure: the text tokenized once with BOS, cut into windows of --ctx tokens whose first token is BOS, and the
mean negative log-likelihood of the second half of each window.
"""
from __future__ import annotations

import argparse
import math

import torch


def llama_perplexity(path: str, text: str, ctx: int) -> tuple[float, int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    nll, count = 0.0, 0
    for c in range(len(ids) // ctx):
        window = torch.tensor(ids[c * ctx:(c + 1) * ctx])
        window[0] = tokenizer.bos_token_id
        with torch.no_grad():
            logp = model(window[None]).logits[0].float().log_softmax(-1)
        targets = window[ctx // 2 + 1:]
        nll -= logp[ctx // 2:ctx - 1].gather(1, targets[:, None]).sum().item()
        count += len(targets)
    return math.exp(nll / count), len(ids)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export")
    p.add_argument("text")
    p.add_argument("--ctx", type=int, default=128)
    args = p.parse_args(argv)
    ppl, tokens = llama_perplexity(args.export, open(args.text).read(), args.ctx)
    print(f"{tokens} tokens, {tokens // args.ctx} windows of {args.ctx}: PPL = {ppl:.4f}")


if __name__ == "__main__":
    main()
