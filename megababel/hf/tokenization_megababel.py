"""The tokenizer class a megababel vocabulary-stage export ships for `trust_remote_code=True` (copied next to its
tokenizer.model; imports only transformers, so the export needs no megababel).

Encoding needs no remote code: transformers' own SentencePieceBackend, which the export's tokenizer_config.json names,
runs SentencePiece itself and so encodes the stage exactly. Its decoding does not: it joins piece strings, so byte-
fallback pieces come out as "<0x0A>" and the text's outer spaces are stripped. This class decodes with SentencePiece's
own decoder instead, so that decode(encode(text)) == text as for the model's training data:

    AutoTokenizer.from_pretrained(path)                          # exact encoding (lm-eval's likelihoods, perplexity)
    AutoTokenizer.from_pretrained(path, trust_remote_code=True)  # exact encoding and decoding (generation)
"""
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend


class MegababelStageTokenizer(SentencePieceBackend):
    def _decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        special = set(self.all_special_ids)
        text, run = [], []
        for token_id in ids:
            if token_id in special:
                text.append(self.sp_model.decode(run))
                run = []
                if not skip_special_tokens:
                    text.append(self.convert_ids_to_tokens(token_id))
            else:
                run.append(token_id)
        text.append(self.sp_model.decode(run))
        return "".join(text)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._decode(self.convert_tokens_to_ids(tokens))
