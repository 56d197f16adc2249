#!/usr/bin/env bash
# The local demo (README's main job): a supervisor, a broadcaster on the
# bundled WebM (looped), N receivers over real WebRTC on loopback; each
# receiver writes the stream it played and a QoS summary; a QoS table ends it.
#
#   scripts/demo.sh [--receivers N] [--topology list|tree|mesh] [--duration SECS]
#                   [--integrity sign|hmac] [--input FILE.webm]
#
# Everything runs in a temporary directory and is stopped at the end, also on
# Ctrl-C. (miostream-lab demo will replace this script.)
set -euo pipefail
cd "$(dirname "$0")/.."

receivers=5 topology=tree duration=20 integrity=sign input=assets/test.webm
while [ $# -gt 0 ]; do
  case "$1" in
    --receivers) receivers=$2; shift 2 ;;
    --topology) topology=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --integrity) integrity=$2; shift 2 ;;
    --input) input=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -f "$input" ] || { echo "no such file: $input" >&2; exit 2; }

echo "== building (release)"
cargo build --release -q -p miostream-supervisor -p miostream-broadcaster -p miostream-receiver --bins
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== supervisor, broadcaster and $receivers receivers in $work"
"$bin/miostream-supervisor" init --dir "$work/sup" --listen 127.0.0.1:0 >/dev/null
"$bin/miostream-broadcaster" keygen --out "$work/b" >/dev/null
"$bin/miostream-supervisor" authorize --dir "$work/sup" "$work/b/peer.pub" --role broadcaster >/dev/null
for i in $(seq "$receivers"); do
  "$bin/miostream-receiver" keygen --out "$work/r$i" >/dev/null
  "$bin/miostream-supervisor" authorize --dir "$work/sup" "$work/r$i/peer.pub" --role receiver >/dev/null
done

RUST_LOG=warn "$bin/miostream-supervisor" run --dir "$work/sup" > "$work/sup.out" 2> "$work/sup.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening on' "$work/sup.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/sup.out")
[ -n "$url" ] || { echo "supervisor did not start:"; cat "$work/sup.log"; exit 1; }
echo "supervisor: $url"

common=(--supervisor "$url" --trust "$work/sup/trust")
RUST_LOG=warn "$bin/miostream-broadcaster" run "${common[@]}" --identity "$work/b" --stream demo \
  --topology "$topology" --integrity "$integrity" --input "$input" --loop 2> "$work/b.log" &
pids+=($!)
for _ in $(seq 100); do
  "$bin/miostream-receiver" list "${common[@]}" --identity "$work/r1" 2>/dev/null | grep -q '^demo' && break
  sleep 0.1
done
echo "broadcaster: streaming $input as 'demo' ($topology, $integrity)"

rpids=()
for i in $(seq "$receivers"); do
  RUST_LOG=warn "$bin/miostream-receiver" run "${common[@]}" --identity "$work/r$i" --stream demo \
    --duration "$duration" --out "$work/r$i.webm" --summary "$work/r$i.json" 2> "$work/r$i.log" &
  rpids+=($!)
  pids+=($!)
done
echo "receivers: $receivers joined, playing for ${duration}s"
# CPU (utime+stime, in clock ticks) and memory of the receiver processes.
usage() {
  local ticks=0 rss=0 n=0
  for p in "${rpids[@]}"; do
    [ -r "/proc/$p/stat" ] || continue
    set -- $(sed 's/.*) //' "/proc/$p/stat")
    ticks=$((ticks + ${12} + ${13}))
    rss=$((rss + $(awk '/VmRSS/ {print $2}' "/proc/$p/status")))
    n=$((n + 1))
  done
  echo "$ticks $rss $n"
}
hz=$(getconf CLK_TCK)
read -r t0 _ _ < <(usage)
for t in $(seq 5 5 "$duration"); do
  sleep 5
  read -r t1 rss n < <(usage)
  bytes=$(cat "$work"/r*.webm 2>/dev/null | wc -c)
  if [ "$n" -gt 0 ]; then
    echo "  t=${t}s: $n receivers running, $((bytes / 1024)) KiB played in total, CPU $(( (t1 - t0) * 100 / hz / 5 / n ))% of a core and $((rss / n / 1024)) MiB RSS per receiver"
  fi
  t0=$t1
done
failed=0
for p in "${rpids[@]}"; do wait "$p" || failed=$((failed + 1)); done

echo "== QoS per receiver"
python3 - "$work" "$receivers" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
cols = ["chunks_received", "chunks_verified", "chunks_rejected", "stalls", "stall_ms",
        "startup_ms", "goodput_bps", "latency_ms_p50", "latency_ms_p99", "parent_changes"]
head = ["receiver"] + cols
rows = []
for i in range(1, n + 1):
    try:
        s = json.load(open(f"{work}/r{i}.json"))
    except (OSError, ValueError):
        rows.append([f"r{i}"] + ["-"] * len(cols)); continue
    rows.append([f"r{i}"] + [s[c] if not isinstance(s[c], float) else round(s[c], 1) for c in cols])
ok = [r for r in rows if r[1] != "-"]
if ok:
    tot = ["all"]
    for j, c in enumerate(cols, 1):
        vals = [r[j] for r in ok]
        tot.append(round(sum(vals) / len(vals), 1) if c.startswith(("latency", "goodput", "startup")) else sum(vals))
    rows.append(tot)
w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
for r in [head] + rows:
    print("  ".join(str(x).rjust(k) for x, k in zip(r, w)))
PY
if command -v ffmpeg >/dev/null; then
  for i in $(seq "$receivers"); do
    if [ -s "$work/r$i.webm" ] && ffmpeg -v error -i "$work/r$i.webm" -f null - 2>"$work/r$i.decode"; then
      [ -s "$work/r$i.decode" ] && echo "r$i: output decodes with warnings: $(head -n 2 "$work/r$i.decode" | tr '\n' ' ')" || echo "r$i: output decodes cleanly ($(($(wc -c < "$work/r$i.webm") / 1024)) KiB)"
    else
      echo "r$i: output does not decode"; failed=$((failed + 1))
    fi
  done
fi
[ "$failed" -eq 0 ] || { echo "$failed receiver(s) failed; logs were in $work"; tail -n 5 "$work"/r*.log; exit 1; }
