"""Metrics, the evaluation runner and the report writers."""
