#!/usr/bin/env bash
# Issue #13's remaining GPU measurements, after benchmarks/scale_gpus.sh on the same machine (it
# leaves the data and a trained small model in $WORK; the 3B-shape model folder is built if absent):
#   train step per optimisation on the small and base built-in models (batch 32, with profiles),
#   Liger alone and torch.compile alone on the 3B and 4B shapes (packed attention, no checkpointing),
#   `infer`'s generation at batch 1 against batched on the trained small model and the 3B shape,
#   with the dynamic and the static KV cache (compiled and eager), a profile of 32 decoding steps
#   per batch size; for the small model also with expandable allocator segments and in fp32.
# Usage, from the repository root on a GPU machine:  OUT=/tmp/out WORK=/tmp/scale benchmarks/throughput_gpu.sh
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
  step python3 benchmarks/train_throughput.py --shape "$shape" --batch-size 32 --steps 8 --profile \
    --out "$OUT/train-$shape.json"
done
part isolate && for shape in 3b 4b; do
  step python3 benchmarks/train_throughput.py --shape "$shape" --steps 6 \
    --variants baseline,packed_no_ckpt,packed_no_ckpt_compiled,packed_liger_no_ckpt --out "$OUT/isolate-$shape.json"
done
SMALL=("$WORK/one-gpu-b32/model" --dataset "$WORK/data/dataset" --frames 64)
part infer && step python3 benchmarks/infer_throughput.py --model "${SMALL[@]}" --batch-sizes 1,8,32,64 \
  --decodings dynamic,static-eager,static --profile --out "$OUT/infer-small.json"
part infer && step env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 benchmarks/infer_throughput.py \
  --model "${SMALL[@]}" --batch-sizes 1,64 --out "$OUT/infer-small-expandable.json"
part infer && step python3 benchmarks/infer_throughput.py --model "${SMALL[@]}" --batch-sizes 1,64 --dtype float32 \
  --out "$OUT/infer-small-fp32.json"
part infer && { [ -f "$WORK/m3b/config.json" ] || step python3 benchmarks/shape_model.py 3b "$WORK/m3b"; } &&
  step python3 benchmarks/infer_throughput.py --model "$WORK/m3b" --dataset "$WORK/data/dataset" \
  --frames 16 --batch-sizes 1,16 --max-new-tokens 64 --decodings dynamic,static --profile --out "$OUT/infer-3b.json"
echo "throughput done, exit $status"
exit "$status"
