#!/usr/bin/env bash
# HTTP/2 load run with h2load (Debian's nghttp2-client) against release builds:
#   benches/h2load.sh [REQUESTS] [CLIENTS] [STREAMS_PER_CLIENT]
# Rows: the backend direct (HTTP/1.1, the baseline), then handoff-proxy over
# plain HTTP/1.1, h2c (prior knowledge), TLS + h2 and TLS + HTTP/1.1. Every run
# is bounded by its request count; all traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-50000}" c="${2:-32}" m="${3:-8}"
command -v h2load >/dev/null || { echo "h2load is missing: apt-get install nghttp2-client" >&2; exit 1; }
target="${CARGO_TARGET_DIR:-target}/release"
[ -x "$target/handoff-proxy" ] && [ -x "$target/handoff-bench" ] ||
  cargo build --release -p handoff-proxy -p handoff-bench >&2
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=app.test \
  -addext subjectAltName=DNS:app.test -keyout "$tmp/app.key" -out "$tmp/app.crt" 2>/dev/null

ready() { # FILE PREFIX: waits for a ready line, prints the value after PREFIX
  for _ in $(seq 1 300); do
    v=$(grep -o "$2[^ ]*" "$1" 2>/dev/null | head -1 | cut -d= -f2) && [ -n "$v" ] && { echo "$v"; return; }
    sleep 0.1
  done
  echo "no ready line in $1" >&2; exit 1
}
# The backend exits when its stdin closes: hold a FIFO open for it.
mkfifo "$tmp/stdin"
exec 3<>"$tmp/stdin"
"$target/handoff-bench" backend --port 0 --threads 1 >"$tmp/backend.out" <"$tmp/stdin" & pids+=($!)
backend=$(ready "$tmp/backend.out" "addr=")
"$target/handoff-proxy" --http 127.0.0.1:0 --https 127.0.0.1:0 --admin off --log warn \
  --control "$tmp/control.sock" --state "$tmp/state.json" --backend "$backend" \
  --tls-cert "$tmp/app.crt" --tls-key "$tmp/app.key" >"$tmp/proxy.out" 2>"$tmp/proxy.err" & pids+=($!)
http=$(ready "$tmp/proxy.out" "http=")
https=$(ready "$tmp/proxy.out" "https=")

echo "| row | protocol | req/s | mean latency | max latency | succeeded | failed |"
echo "|---|---|---:|---:|---:|---:|---:|"
row() { # NAME PROTOCOL STREAMS h2load-args...
  local name=$1 proto=$2 streams=$3; shift 3
  local out; out=$(h2load -n "$n" -c "$c" -m "$streams" -t 1 "$@" 2>&1)
  local rps mean max ok failed
  rps=$(grep -oP 'finished in [^,]+, \K[0-9.]+(?= req/s)' <<<"$out")
  mean=$(awk '/time for request:/ {print $6}' <<<"$out")
  max=$(awk '/time for request:/ {print $5}' <<<"$out")
  ok=$(grep -oP '[0-9]+(?= succeeded)' <<<"$out")
  failed=$(grep -oP '[0-9]+(?= failed)' <<<"$out" | head -1)
  echo "| $name | $proto | $rps | $mean | $max | $ok | $failed |"
}
row "backend direct (baseline)" "HTTP/1.1" 1 --h1 "http://$backend/"
row "handoff-proxy" "HTTP/1.1" 1 --h1 "http://$http/"
row "handoff-proxy" "h2c (prior knowledge)" "$m" "http://$http/"
row "handoff-proxy" "TLS 1.3 + h2" "$m" "https://$https/"
row "handoff-proxy" "TLS 1.3 + HTTP/1.1" 1 --h1 "https://$https/"
echo
echo "n=$n requests per row, $c clients, $m concurrent streams per h2 connection, no HTTP/1.1 pipelining, 1 h2load thread; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
