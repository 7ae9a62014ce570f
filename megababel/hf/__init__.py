"""Hugging Face: the state-dict adapter to LlamaForCausalLM, export and import of checkpoints, the Hub, and the
evaluator of exported models. Imports config, model, data and checkpoint; never the engine."""
