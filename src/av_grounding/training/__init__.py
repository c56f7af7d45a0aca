"""Supervised fine-tuning: batches with assistant-only labels, the hf backend, the cosmos-rl backend."""
