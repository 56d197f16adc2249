#!/usr/bin/env bash
# The local demo (README's main job) on a fresh machine: builds the release
# binaries, then runs `miostream-lab demo` — a supervisor, a broadcaster on
# the bundled WebM (looped) and N receivers over real WebRTC on loopback,
# progress while it runs and a QoS table at the end. Options pass through:
#
#   scripts/demo.sh [--receivers N] [--topology list|tree|mesh] [--duration SECS]
#                   [--integrity sign|hmac] [--input FILE.webm] [--keep DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== building (release)" >&2
cargo build --release --locked -q --bins
exec target/release/miostream-lab demo "$@"
