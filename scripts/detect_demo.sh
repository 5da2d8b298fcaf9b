#!/usr/bin/env bash
# `make detect-demo`: a BoTNet Mask R-CNN trained on a CPU in about 10 minutes. Makes the digits-on-photos COCO set
# (no download), trains the detector from random weights, scores the val split with COCOeval and draws val
# predictions to PNGs. Everything goes to runs/detect-demo/ (removed first). Measured timings and AP: README
# "Detection demo"; the ablation behind these settings: benchmarks/results/detection_demo_ablation.md.
#
# Data: 160x160 images with digits of 0.25-0.5 of the side (40-80 px), matched by anchors of 10-160 px.
# Backbone: botnet26 (2 blocks per stage) at widths 16-32-64-128, 16-channel stem, MHSA in both c5 blocks;
# pyramid 64 channels. Heads narrowed (box 256, mask 64 instead of 1024 / 256) and fewer RPN / RoI samples: the
# heads, not the backbone, are most of a CPU training step. AdamW, as R-CNNs trained from scratch converge much
# faster with it than with SGD in a few hundred steps.
set -euo pipefail

VENV=${VENV:-.venv}
BOTNET="$VENV/bin/botnet"
OUT=runs/detect-demo
THREADS=${THREADS:-1}  # one thread is fastest on a loaded 2-core machine
STEPS=${STEPS:-680}
SEED=${SEED:-0}  # of the data and the training run
rm -rf "$OUT"
start=$SECONDS

"$BOTNET" detect make-demo-data --out "$OUT/data" --train 1000 --val 100 --size 160 160 --digit-size 0.25 0.5 \
    --seed "$SEED" --threads "$THREADS"
made=$SECONDS

# --val-split '': no validation during training (one pass per 250-step epoch would cost time); scored below
"$BOTNET" detect train --data "$OUT/data" --val-split '' --out "$OUT/detector" --model maskrcnn_botnet26_fpn \
    --image-size 160 --backbone-arg "channels=(16,32,64,128)" --backbone-arg stem_width=16 --fpn-channels 64 \
    --box-head-dim 256 --mask-head-dim 64 --anchor-sizes 10 20 40 80 160 \
    --detector-arg rpn_pre_nms_top_n_train=300 --detector-arg rpn_post_nms_top_n_train=150 \
    --detector-arg rpn_pre_nms_top_n_test=300 --detector-arg rpn_post_nms_top_n_test=100 \
    --detector-arg rpn_batch_size_per_image=64 --detector-arg box_batch_size_per_image=64 \
    --detector-arg box_detections_per_img=20 \
    --hflip 0 --max-steps "$STEPS" --batch-size 4 --opt adamw --lr 1e-3 --weight-decay 0.05 --warmup-steps 100 \
    --seed "$SEED" --threads "$THREADS"
trained=$SECONDS

"$BOTNET" detect eval --checkpoint "$OUT/detector" --data "$OUT/data" --split val --batch-size 4 --threads "$THREADS"
"$BOTNET" detect predict --checkpoint "$OUT/detector" "$OUT"/data/val/00000{1..8}.png --out "$OUT/predictions" \
    --threads "$THREADS"
echo "data $((made - start)) s, detector $((trained - made)) s," \
    "total $((SECONDS - start)) s; drawn val predictions: $OUT/predictions/"
