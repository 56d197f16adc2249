#!/usr/bin/env bash
# The local demo on a fresh machine: builds MioStream, starts a supervisor in
# a temporary directory with generated keys, authorizes a broadcaster and
# receivers, and exercises what this build carries end to end (TLS,
# authentication, stream manager), then stops everything.
#
# The full media demo (`miostream-lab demo`: broadcaster on the bundled WebM,
# receivers over WebRTC, QoS table) replaces this script when the data plane
# lands.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p miostream-supervisor -p miostream-receiver -p miostream-broadcaster --bins --examples
bin=target/release
work=$(mktemp -d)
sup_pid=
cleanup() {
  [ -n "$sup_pid" ] && kill -TERM "$sup_pid" 2>/dev/null && wait "$sup_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "== supervisor init"
"$bin/miostream-supervisor" init --dir "$work/sup" --listen 127.0.0.1:0
"$bin/miostream-broadcaster" keygen --out "$work/broadcaster"
"$bin/miostream-supervisor" authorize --dir "$work/sup" "$work/broadcaster/peer.pub" --role broadcaster
for i in 1 2 3; do
  "$bin/miostream-receiver" keygen --out "$work/receiver$i" >/dev/null
  "$bin/miostream-supervisor" authorize --dir "$work/sup" "$work/receiver$i/peer.pub" --role receiver
done

echo "== supervisor run"
"$bin/miostream-supervisor" run --dir "$work/sup" > "$work/sup.out" 2> "$work/sup.log" &
sup_pid=$!
for _ in $(seq 100); do
  grep -q '^listening on' "$work/sup.out" 2>/dev/null && break
  sleep 0.1
done
url=$(sed -n 's/^listening on //p' "$work/sup.out")
echo "supervisor at $url"

echo "== an authorized receiver lists streams"
"$bin/miostream-receiver" list --supervisor "$url" --identity "$work/receiver1" --trust "$work/sup/trust"

echo "== an unauthorized key is refused"
"$bin/miostream-receiver" keygen --out "$work/stranger" >/dev/null
if "$bin/miostream-receiver" list --supervisor "$url" --identity "$work/stranger" --trust "$work/sup/trust"; then
  echo "unexpected: stranger accepted"; exit 1
fi

echo "== load: 500 authenticated peers"
"$bin/examples/loadgen" --peers 500 --concurrency 32 --idle-secs 1
