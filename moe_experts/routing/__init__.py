"""Routing: embedder, vector index, document router, token-level MoE."""
