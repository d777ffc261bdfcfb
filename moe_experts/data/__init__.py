"""Corpora: sources, cleaning, deduplication, splits, tokenizer."""
