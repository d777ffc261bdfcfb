"""Corpora: building from sources (moe_experts.sources), cleaning, deduplication, splits, tokenizer."""
