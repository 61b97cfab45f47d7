#!/usr/bin/env bash
# handoff in one command: build a demo app image, start handoff-proxy on
# 127.0.0.1:8088, deploy v1, put it under load, deploy v2 in the middle of the
# load, and count every response. A second app on its own host
# (admin.localhost) shares the same proxy, untouched by the first one's
# deploy. Needs Rust (cargo), Docker and curl.
#
#   ./demo.sh                      # DEMO_PORT=9000 ./demo.sh to use another port
#
# Everything it starts (proxy, containers, load) is stopped on exit, also on
# Ctrl-C or failure. It leaves the two images handoff-demo:v1/v2 (to drop them:
# docker rmi handoff-demo:v1 handoff-demo:v2) and its results in target/demo/.
set -euo pipefail
cd "$(dirname "$0")"

PORT=${DEMO_PORT:-8088}
ADMIN_PORT=${DEMO_ADMIN_PORT:-9188}
APP=handoff-demo
ADMIN_APP=handoff-demo-admin   # a second app, routed by Host through the same proxy
ADMIN_HOST=admin.localhost
WORKERS=4          # keep-alive clients sending short requests
BATCH=10           # short requests per curl run; a timestamp is taken per run
LOAD_MAX_SECONDS=60
MAX_BATCHES=2000   # per client: the load stops by itself even if we do not

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
say() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
die() { printf '\ndemo: %s\n' "$*" >&2; exit 1; }

# --- what we need -----------------------------------------------------------
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust from https://rustup.rs first."
command -v curl >/dev/null 2>&1 || die "curl not found: install curl first."
command -v docker >/dev/null 2>&1 ||
    die "Docker is not installed. The demo deploys containers, so it needs a Docker engine (https://docs.docker.com/engine/install/)."
if ! docker_err=$(docker info 2>&1 >/dev/null); then
    die "no Docker engine answers, so there is nothing to deploy to.
      docker info said: $(printf '%s' "$docker_err" | tail -n 1)
      Start the daemon (e.g. sudo systemctl start docker) or check that you may use it."
fi

target=${CARGO_TARGET_DIR:-target} # relative to the repository root, where we are
out="$target/demo"
work=$(mktemp -d "${TMPDIR:-/tmp}/handoff-demo.XXXXXX")
proxy_pid=""
load_pids=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    touch "$work/stop" 2>/dev/null || true
    for pid in "${load_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ -n "$proxy_pid" ]; then
        kill -TERM "$proxy_pid" 2>/dev/null || true
        wait "$proxy_pid" 2>/dev/null || true
    fi
    remove_containers
    rm -rf "$work"
    exit "$status"
}
remove_containers() {
    local ids=()
    mapfile -t ids < <(
        docker ps -aq --filter "label=handoff.app=$APP" 2>/dev/null || true
        docker ps -aq --filter "label=handoff.app=$ADMIN_APP" 2>/dev/null || true
    )
    if [ ${#ids[@]} -gt 0 ]; then docker rm -f "${ids[@]}" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build ------------------------------------------------------------------
say "Building handoff-proxy and handoff (the first run compiles for a few minutes)"
cargo build -p handoff-proxy -p handoff-deployer
proxy_bin="$target/debug/handoff-proxy"
handoff_bin="$target/debug/handoff"

say "Building the demo app images handoff-demo:v1 and handoff-demo:v2"
# The app is tests/testapp/main.rs, the one the deploy tests ship: std only,
# compiled statically, so the image is that one file and no registry is needed.
rustc --edition 2021 -O -C target-feature=+crt-static -C strip=debuginfo \
    -o "$work/app" tests/testapp/main.rs
for v in v1 v2; do
    tar -C "$work" -c app | docker import --change 'ENTRYPOINT ["/app"]' \
        --change "ENV APP_VERSION=$v" - "$APP:$v" >/dev/null
    echo "built $APP:$v"
done
remove_containers # a run killed with -9 may have left some

# --- proxy --------------------------------------------------------------------
say "Starting handoff-proxy on http://127.0.0.1:$PORT (its socket, state and log in $work)"
proxy_args=(--http "127.0.0.1:$PORT" --control "$work/control.sock" --state "$work/state.json")
admin_args=()
if "$proxy_bin" --help | grep -q -- '--admin'; then admin_args=(--admin "127.0.0.1:$ADMIN_PORT"); fi
echo "\$ handoff-proxy ${proxy_args[*]} ${admin_args[*]}"
RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 "$proxy_bin" "${proxy_args[@]}" "${admin_args[@]}" \
    >"$work/proxy.out" 2>"$work/proxy.log" &
proxy_pid=$!
for _ in $(seq 1 100); do # the proxy prints one "ready" line once it listens
    grep -q '^handoff-proxy ready' "$work/proxy.out" 2>/dev/null && break
    kill -0 "$proxy_pid" 2>/dev/null || { tail -n 5 "$work/proxy.log" >&2; die "handoff-proxy did not start (are ports $PORT and $ADMIN_PORT free? DEMO_PORT=... DEMO_ADMIN_PORT=... pick others)"; }
    sleep 0.1
done
grep -q '^handoff-proxy ready' "$work/proxy.out" || die "handoff-proxy did not report ready within 10s"
cat "$work/proxy.out"

# The demo's handoff talks to this proxy's socket and keeps its lock files in
# the temp dir; on a real host both defaults (/run/handoff, /var/lib/handoff) fit.
handoff() { "$handoff_bin" --control "$work/control.sock" --state-dir "$work" "$@"; }
deploy() {
    # The demo app ignores SIGTERM (it is PID 1 with no handler), hence the short stop timeout.
    local args=(deploy --image "$APP:$1" --name "$APP" --container-port 8080 --health-path /health
        --pull never --stop-timeout 2s)
    echo "\$ handoff ${args[*]}"
    handoff "${args[@]}"
}

say "Deploying v1"
deploy v1
echo "curl http://127.0.0.1:$PORT/  ->  $(curl -s "http://127.0.0.1:$PORT/")"

say "A second app on its own host, through the same proxy"
admin_args_deploy=(deploy --image "$APP:v1" --name "$ADMIN_APP" --host "$ADMIN_HOST" --container-port 8080
    --health-path /health --pull never --stop-timeout 2s)
echo "\$ handoff ${admin_args_deploy[*]}"
handoff "${admin_args_deploy[@]}"
echo "curl -H 'Host: $ADMIN_HOST' http://127.0.0.1:$PORT/  ->  $(curl -s -H "Host: $ADMIN_HOST" "http://127.0.0.1:$PORT/")"
echo "\$ handoff list"
handoff list | sed 's/^/  /'

# --- load ---------------------------------------------------------------------
# Each client is a loop of curl runs over one keep-alive connection; every
# response is recorded as "<body>|<status>", status 000 when the connection
# failed. Bounded by a stop file, a deadline and a batch count.
load_client() {
    local file="$work/load.$1" url=$2 batch=$3 deadline=$(($(date +%s) + LOAD_MAX_SECONDS)) n=0
    while [ ! -e "$work/stop" ] && [ "$(date +%s)" -lt "$deadline" ] && [ "$n" -lt "$MAX_BATCHES" ]; do
        echo "T $(date +%s%3N)" >>"$file"
        curl -s --max-time 10 -w '|%{http_code}\n' "$url&b=$n&i=[1-$batch]" >>"$file" 2>/dev/null || true
        n=$((n + 1))
    done
}

say "Load: $WORKERS clients sending short requests, 1 client sending 1.5 s requests"
load_start=$(date +%s%3N)
for i in $(seq 1 "$WORKERS"); do
    load_client "$i" "http://127.0.0.1:$PORT/slow?ms=5" "$BATCH" &
    load_pids+=($!)
done
load_client long "http://127.0.0.1:$PORT/slow?ms=1500" 1 &
load_pids+=($!)
sleep 3 # let v1 serve for a while, so the chart shows before and after

say "Deploying v2 while the load runs"
deploy_start=$(date +%s%3N)
deploy v2
deploy_end=$(date +%s%3N)
sleep 2 # and v2 for a while after
touch "$work/stop"
wait "${load_pids[@]}" 2>/dev/null || true
load_pids=()
load_end=$(date +%s%3N)

# --- results --------------------------------------------------------------------
mkdir -p "$out"
# One line per response: time (ms since load start, per batch), client, version, status.
for f in "$work"/load.*; do
    awk -v c="${f##*/load.}" -v t0="$load_start" '
        /^T [0-9]+$/ { t = $2 - t0; next }
        /\|[0-9][0-9][0-9]$/ { split($0, p, "|"); code = p[length(p)]; ver = (code == "200") ? p[1] : "-";
                                 print t, c, ver, code }' "$f"
done | sort -n >"$out/responses.txt"

read -r total ok v1 v2 failed < <(awk '{ n++; if ($4 == "200") { ok++; if ($3 == "v1") a++; else if ($3 == "v2") b++ } else f++ }
    END { print n+0, ok+0, a+0, b+0, f+0 }' "$out/responses.txt")

# Chart: responses per 250 ms, stacked v1 / v2 / failed, deploy start and end marked.
awk -v ds=$((deploy_start - load_start)) -v de=$((deploy_end - load_start)) -v end=$((load_end - load_start)) '
    { b = int($1 / 250); if ($4 != "200") f[b]++; else if ($3 == "v1") a[b]++; else c[b]++
      if (a[b] + c[b] + f[b] > max) max = a[b] + c[b] + f[b] }
    END {
        n = int(end / 250) + 1; W = 900; H = 320; L = 50; B = 40; w = (W - L - 20) / n; s = (H - B - 30) / (max ? max : 1)
        printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H
        printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
        printf "<text x=\"%d\" y=\"18\" font-size=\"14\">handoff demo: responses per 250 ms while v1 is replaced by v2</text>\n", L
        for (i = 0; i < n; i++) {
            x = L + i * w; y = H - B
            if (a[i]) { h = a[i] * s; y -= h; printf "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#3b7dd8\"/>\n", x, y, w * 0.9, h }
            if (c[i]) { h = c[i] * s; y -= h; printf "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#2ca02c\"/>\n", x, y, w * 0.9, h }
            if (f[i]) { h = f[i] * s; y -= h; printf "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#d62728\"/>\n", x, y, w * 0.9, h }
        }
        for (k = 0; k <= end / 1000; k++) printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%ds</text>\n", L + k * 4 * w, H - B + 16, k
        printf "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%d</text>\n", L - 6, 30 + 4, max
        printf "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", L, H - B, W - 20, H - B
        split(ds " " de, m, " "); split("deploy v2 starts|deploy v2 done", lbl, "|")
        for (k = 1; k <= 2; k++) { x = L + m[k] / 250 * w
            printf "<line x1=\"%.1f\" y1=\"28\" x2=\"%.1f\" y2=\"%d\" stroke=\"#555\" stroke-dasharray=\"4 3\"/>\n", x, x, H - B
            printf "<text x=\"%.1f\" y=\"%d\" fill=\"#555\">%s</text>\n", x + 3, 28 + 12 * k, lbl[k] }
        printf "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" fill=\"#3b7dd8\"/><text x=\"%d\" y=\"%d\">v1</text>\n", L, H - 14, L + 14, H - 5
        printf "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" fill=\"#2ca02c\"/><text x=\"%d\" y=\"%d\">v2</text>\n", L + 50, H - 14, L + 64, H - 5
        printf "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" fill=\"#d62728\"/><text x=\"%d\" y=\"%d\">failed</text>\n", L + 100, H - 14, L + 114, H - 5
        print "</svg>"
    }' "$out/responses.txt" >"$out/chart.svg"

say "What the clients saw"
admin_after=$(curl -s -H "Host: $ADMIN_HOST" "http://127.0.0.1:$PORT/")
echo "the second app, untouched by the first one's deploy: curl -H 'Host: $ADMIN_HOST' ... -> $admin_after"
echo "handoff status --name $APP:"
handoff status --name "$APP" | sed 's/^/  /' || true
if [ ${#admin_args[@]} -gt 0 ]; then
    echo "the proxy's own count (curl -s http://127.0.0.1:$ADMIN_PORT/metrics | grep ...):"
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" |
        grep -E '^handoff_(requests_total\{class="[25]xx"\}|switches_total|drains_total)' | sed 's/^/  /' || true
fi
echo
echo "$total requests while v1 was replaced by v2: $ok answered 200 (v1: $v1, v2: $v2), $failed failed."
echo "chart:     $out/chart.svg"
echo "responses: $out/responses.txt (ms since load start, client, version, status)"
if [ "$failed" -ne 0 ] || [ "$v1" -eq 0 ] || [ "$v2" -eq 0 ]; then
    die "expected zero failed requests and answers from both versions; see the files above"
fi
[ "$admin_after" = v1 ] || die "the second app answered \"$admin_after\", not v1"
echo "Zero failed requests: the deploy cut nothing off."
