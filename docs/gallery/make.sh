#!/usr/bin/env bash
# Rebuild the README gallery with the embedded model (CPU, about 2 minutes on 2 cores).
# Run from the repository root: bash docs/gallery/make.sh
set -euo pipefail
[ -x .venv/bin/vcomp ] && PATH="$PWD/.venv/bin:$PATH"   # the README's virtual environment, if there is one
out=docs/gallery
media=../shared/media
common=(--seed 0 --quiet --no-preview)

# text to video: the same prompt grammar the embedded model was trained on
vcomp t2v "a red circle moving right on a blue background" "a yellow square moving down on a purple background" \
  "a white star moving left on a green background" "an orange triangle standing still on a black background" \
  --grid -o "$out/t2v.gif" "${common[@]}"

# content x motion: every prompt moves like every demo clip (H.264 motion vectors of the clip)
vcomp motion-transfer "$media/blackswan.mp4" "$media/motion_transfer.mp4" \
  -p "a white circle standing still on a blue background" -p "a red square standing still on a yellow background" \
  --grid -o "$out/motion-transfer.gif" "${common[@]}"

# a hand-drawn path (the paper's hand-crafted motion control)
vcomp t2v "a green circle moving right on a white background" "a purple square moving right on an orange background" \
  --path "0.15,0.8 0.5,0.3 0.85,0.8" --grid -o "$out/path.gif" "${common[@]}"
