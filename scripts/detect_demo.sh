#!/usr/bin/env bash
# `make detect-demo`: a BoTNet Mask R-CNN trained on a CPU. Makes the digits-on-photos COCO set (no download),
# trains the detector from random weights (a backbone pre-trained on mnist5k scored lower in the ablation), scores
# the val split with COCOeval and draws val predictions to PNGs. Everything goes to runs/detect-demo/ (removed
# first). Measured timings and AP: README "Detection demo"; the ablation behind these settings:
# benchmarks/results/detection_demo_ablation.md.
#
# Backbone: botnet26 (2 blocks per stage) at widths 16-32-64-128, 16-channel stem, MHSA in both c5 blocks;
# pyramid 64 channels. Anchors 8-128 px match the digits (boxes of 3-60 px; torchvision's 32-512 miss most).
set -euo pipefail

VENV=${VENV:-.venv}
BOTNET="$VENV/bin/botnet"
OUT=runs/detect-demo
THREADS=${THREADS:-1}  # one thread is fastest on a loaded 2-core machine
STEPS=${STEPS:-300}
rm -rf "$OUT"
start=$SECONDS
WIDTHS=(--backbone-arg "channels=(16,32,64,128)" --backbone-arg stem_width=16)

"$BOTNET" detect make-demo-data --out "$OUT/data" --train 600 --val 50 --threads "$THREADS"
made=$SECONDS

"$BOTNET" detect train --data "$OUT/data" --out "$OUT/detector" --model maskrcnn_botnet26_fpn --image-size 256 \
    "${WIDTHS[@]}" --fpn-channels 64 --anchor-sizes 8 16 32 64 128 \
    --detector-arg rpn_pre_nms_top_n_train=600 --detector-arg rpn_post_nms_top_n_train=300 \
    --detector-arg rpn_pre_nms_top_n_test=300 --detector-arg rpn_post_nms_top_n_test=100 \
    --detector-arg box_batch_size_per_image=128 --detector-arg box_detections_per_img=20 \
    --hflip 0 --max-steps "$STEPS" --batch-size 2 --lr 0.02 --warmup-steps 100 --threads "$THREADS"
trained=$SECONDS

"$BOTNET" detect eval --checkpoint "$OUT/detector" --data "$OUT/data" --split val --threads "$THREADS"
"$BOTNET" detect predict --checkpoint "$OUT/detector" "$OUT"/data/val/00000{1..8}.png --out "$OUT/predictions" \
    --threads "$THREADS"
echo "data $((made - start)) s, detector $((trained - made)) s," \
    "total $((SECONDS - start)) s; drawn val predictions: $OUT/predictions/"
