"""Data: the embedded default corpus, readers for txt/jsonl/parquet, token shards and the packing loader."""
