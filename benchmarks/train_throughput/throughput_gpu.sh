#!/usr/bin/env bash
# Issue #13's GPU measurements after benchmarks/scale_gpus/scale_gpus.sh on the same machine (it leaves the
# data and a trained small model in $WORK; the 3B-shape model folder is built if absent). Parts:
#   train    train step per optimisation on the small and base built-in models (batch 32, profiles)
#   isolate  Liger alone and torch.compile alone on the 3B and 4B shapes (packed, no checkpointing)
#   infer    `infer`'s generation at batch 1 against batched (benchmarks/infer_throughput/results/infer_throughput.md):
#            the trained small model with the dynamic and the static KV cache, the static cache
#            at batch 1/8/32/64 in bf16 and at 1/64 in fp32, the 3B shape (random weights)
#   profile  the dynamic cache's decoding profiled per batch size (answers up to 512 tokens)
# Usage, from the repository root on a GPU machine (the infer results came from a model trained by
#   OUT=/tmp/scale-out STEPS=600 CLIPS=12 RUNS=one-gpu-b32 benchmarks/scale_gpus/scale_gpus.sh):
#   OUT=/tmp/out WORK=/tmp/scale benchmarks/train_throughput/throughput_gpu.sh
# PARTS (default "train isolate infer") picks the groups above.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=$(realpath -m "${OUT:-/tmp/throughput}")
WORK=$(realpath -m "${WORK:-/tmp/scale}")
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
[ -d /tmp/proj ] && export PYTHONPATH=$PYTHONPATH:/tmp/proj
PARTS=${PARTS:-train isolate infer}
mkdir -p "$OUT"
status=0
step() { echo "== $*"; "$@" && return 0; status=1; echo "failed: $*"; return 1; }
export CUDA_VISIBLE_DEVICES=0
part() { [[ " $PARTS " == *" $1 "* ]]; }
part train && for shape in small-qwen2_5_vl base-qwen2_5_vl; do
  step python3 benchmarks/train_throughput/train_throughput.py --shape "$shape" --batch-size 32 --steps 8 --profile \
    --out "$OUT/train-$shape.json"
done
part isolate && for shape in 3b 4b; do
  step python3 benchmarks/train_throughput/train_throughput.py --shape "$shape" --steps 6 \
    --variants baseline,packed_no_ckpt,packed_no_ckpt_compiled,packed_liger_no_ckpt --out "$OUT/isolate-$shape.json"
done
generation() { step python3 benchmarks/infer_throughput/infer_throughput.py "$@"; }
SMALL=(--model "$WORK/one-gpu-b32/model" --dataset "$WORK/data/dataset")
part infer && generation "${SMALL[@]}" --frames 32 --batch-sizes 1,32 --max-new-tokens 320 --decodings dynamic,static \
  --out "$OUT/small_caches.json"
part infer && generation "${SMALL[@]}" --frames 64 --batch-sizes 1,8,32,64 --max-new-tokens 320 --decodings static \
  --out "$OUT/small.json"
part infer && generation "${SMALL[@]}" --frames 64 --batch-sizes 1,64 --max-new-tokens 320 --decodings static \
  --dtype float32 --out "$OUT/small_fp32.json"
part infer && { [ -f "$WORK/m3b/config.json" ] || step python3 benchmarks/tools/shape_model.py 3b "$WORK/m3b"; } &&
  generation --model "$WORK/m3b" --dataset "$WORK/data/dataset" --frames 16 --batch-sizes 1,16 --max-new-tokens 64 \
  --decodings static,dynamic --out "$OUT/3b.json"
part profile && generation "${SMALL[@]}" --frames 64 --batch-sizes 1,8,32,64 --decodings dynamic --profile \
  --out "$OUT/small_dynamic_profile.json"
echo "throughput done, exit $status"
exit "$status"
