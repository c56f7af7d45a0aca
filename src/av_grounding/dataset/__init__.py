"""Training sets from curated frames: answers, prompts, split, Cosmos-RL and Qwen-VL layouts, token budgets."""
