#!/usr/bin/env bash
# Regenerates assets/test.webm: 20 s of 640x360 VP8 test pattern + Opus tone,
# live-style WebM with keyframe-aligned ~1 s clusters (settings from PRODUCT.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-assets/test.webm}
ffmpeg -hide_banner -loglevel error -y \
  -f lavfi -i "testsrc2=size=640x360:rate=30" \
  -f lavfi -i "sine=frequency=440:sample_rate=48000" \
  -t 20 \
  -c:v libvpx -b:v 1032k -g 30 -deadline realtime -cpu-used 16 \
  -c:a libopus -b:a 128k \
  -f webm -live 1 -cluster_size_limit 5000000 -cluster_time_limit 1100 \
  "$out"
ls -l "$out"
