#!/usr/bin/env bash
# One real cosmos-rl SFT run per tiny architecture on a GPU machine, through the `train` stage
# (backend cosmos-rl), then `infer` on its exported model. cosmos-rl lives in its own environment
# (/tmp/site: transformers 4.57.6 and the rest of benchmarks/env/cosmos_rl_wheels.txt, from .whl/cosmos/,
# installed by benchmarks/env/cosmos_rl_env.sh). Writes logs and metrics to $OUT. .whl/project/ holds
# the wheels of benchmarks/env/device_project_wheels.txt (each list says how to fetch its wheels).
# Usage (device machine, repository root, data/dataset and .whl/ present):
#   benchmarks/cosmos_rl_sft/cosmos_rl_sft.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/cosmos_rl_sft/results}
mkdir -p "$OUT"
source benchmarks/env/cosmos_rl_env.sh
[ -n "$COSMOS_RL" ] || { echo "$COSMOS_RL_MISSING"; exit 1; }
python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/proj .whl/project/*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
for model in tiny-qwen2_5_vl tiny-qwen3_vl; do
  train=/tmp/train-$model
  PYTHONPATH=src:/tmp/proj timeout 300 python3 stages/train.py --dataset data/dataset --output "$train" \
    --metrics "$OUT/$model-train.json" --live "/tmp/live-$model" --backend cosmos-rl \
    --cosmos-rl-executable /tmp/bin/cosmos-rl --model "$model" --max-steps 40 --save-every 20 --lr 0.0005 \
    > "$OUT/$model-stage.log" 2>&1
  echo "$model train exit $?"
  cp -r "/tmp/live-$model/plots/metrics/train" "$OUT/$model-curves" 2>/dev/null
  cp "$train/cosmos-rl/cosmos-rl.log" "$OUT/$model-cosmos-rl.log" 2>/dev/null
  cp "$train/cosmos-rl/run.toml" "$OUT/$model-run.toml" 2>/dev/null
  PYTHONPATH=src:/tmp/proj timeout 200 python3 stages/infer.py --dataset data/dataset --train "$train" \
    --output "/tmp/pred-$model" --metrics "$OUT/$model-infer.json" --checkpoints all --zero-shot false \
    > "$OUT/$model-infer.log" 2>&1
  echo "$model infer exit $?"
done
