"""Data: the GPT-2 tokenizer, corpus preparation (corpus -> .bin) and deterministic batches."""
