"""Answering requests: route, generate with one expert or a mixture of experts, explain."""
