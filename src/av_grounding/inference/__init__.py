"""Inference: batched greedy generation with per-box scores, answer parsing."""
