#!/usr/bin/env bash
# Manual check (not part of CI): deploy/systemd/ under a live systemd.
#
# Boots Debian bookworm with systemd as PID 1 in a Docker container (the
# image is built once with debootstrap if missing), installs handoff-proxy
# with the commands of the units' own header comments (no drop-in: the
# units as shipped, :80 inside the container), points it at a busybox
# httpd backend over the control socket, then runs `systemctl reload
# handoff-proxy` several times without traffic and several times under
# HTTP load on 127.0.0.1 (the container has no other network), and ends
# with `systemctl stop`: first with the proxy binding :80 itself, then with
# handoff-proxy-http.socket (socket activation). Fails unless every reload
# exits 0, systemd follows the new main PID (its own child, not "alien"),
# every old process exits 0, the unit never stops or restarts, no request
# fails or is refused, and the stop is a clean exit 0 after SIGTERM. The
# container is removed at the end, even on failure; the summary and the
# container's journal are kept in $OUT.
#
# Inside the container only: systemd logs at debug level (each child's
# exit status is read from it) and journald has no rate limit.
#
# Needs: root (debootstrap, only to build the image), Docker, Debian's
# mirror (only to build the image), cargo (unless HANDOFF_CHECK_BINARY).
#
#   deploy/systemd/check-live.sh
#
# Settings (environment):
#   IDLE_RELOADS=5            reloads without traffic per variant, first
#   RELOADS=5                 then reloads under load per variant
#   LOAD_WORKERS=4            curl clients (half keep-alive, half a new
#                             connection per request)
#   LOAD_MAX_SECONDS=180      hard limit of each load run
#   LOAD_MAX_REQUESTS=200000  hard limit of requests per client and run
#   VARIANTS="service socket" which variants to run
#   HANDOFF_CHECK_BINARY=     a handoff-proxy to test instead of building one
#                             (it must run on Debian bookworm's glibc)
#   HANDOFF_CHECK_IMAGE=handoff-systemd-check   the rootfs image (kept)
#   DEBIAN_MIRROR=http://deb.debian.org/debian
#   OUT=target/check-live     where the summary and the journal go
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
RELOADS=${RELOADS:-5}
IDLE_RELOADS=${IDLE_RELOADS:-5}
LOAD_WORKERS=${LOAD_WORKERS:-4}
LOAD_MAX_SECONDS=${LOAD_MAX_SECONDS:-180}
LOAD_MAX_REQUESTS=${LOAD_MAX_REQUESTS:-200000}
VARIANTS=${VARIANTS:-service socket}
IMAGE=${HANDOFF_CHECK_IMAGE:-handoff-systemd-check}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
OUT=${OUT:-$repo/target/check-live}
BINARY=${HANDOFF_CHECK_BINARY:-}
NAME=handoff-check-live-$$
BACKEND_PORT=8080

rootfs=""
load_job=""
container_started=false
problems=()

say() { echo "== $*"; }
die() { echo "check-live: error: $*" >&2; exit 1; }
problem() { echo "check-live: FAILED: $*" >&2; problems+=("$*"); }
# A command inside the container, bounded in time.
inside() { timeout 120 docker exec "$NAME" "$@"; }
in_sh() { timeout 120 docker exec "$NAME" bash -euo pipefail -c "$1"; }
unit_prop() { inside systemctl show -P "$1" "$2"; }

cleanup() {
  local rc=$?
  set +e
  if [ -n "$load_job" ]; then kill "$load_job" 2>/dev/null; wait "$load_job" 2>/dev/null; fi
  if $container_started; then
    mkdir -p "$OUT"
    timeout 60 docker exec "$NAME" journalctl --no-pager -o short-monotonic >"$OUT/journal.txt" 2>&1 \
      && echo "journal of the container: $OUT/journal.txt"
  fi
  docker rm -f "$NAME" >/dev/null 2>&1
  [ -n "$rootfs" ] && rm -rf "$rootfs"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- prerequisites ------------------------------------------------------------
command -v docker >/dev/null || die "docker is not installed"
timeout 30 docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info)"
mkdir -p "$OUT"
: >"$OUT/summary.txt"

# --- the image: Debian bookworm with systemd, curl and busybox ---------------
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  say "image $IMAGE: present"
else
  say "image $IMAGE: building it with debootstrap from $MIRROR (a few minutes)"
  [ "$(id -u)" = 0 ] || die "building the image needs root (debootstrap)"
  if ! command -v debootstrap >/dev/null; then
    { timeout 600 apt-get update -qq && timeout 600 apt-get install -y -qq debootstrap; } >/dev/null \
      || die "could not install debootstrap (apt-get install debootstrap)"
  fi
  rootfs=$(mktemp -d /tmp/handoff-sd-rootfs.XXXXXX)
  timeout 1800 debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,curl,ca-certificates,busybox \
    bookworm "$rootfs" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 \
    || die "debootstrap failed, see $OUT/debootstrap.log"
  tar -C "$rootfs" -c . | docker import -c 'CMD ["/lib/systemd/systemd"]' - "$IMAGE" >/dev/null \
    || die "docker import of the rootfs failed"
  rm -rf "$rootfs"; rootfs=""
fi

# --- the binary -----------------------------------------------------------------
if [ -z "$BINARY" ]; then
  command -v cargo >/dev/null || die "cargo is missing (or set HANDOFF_CHECK_BINARY)"
  say "cargo build --release -p handoff-proxy"
  (cd "$repo" && cargo build --release -p handoff-proxy) || die "cargo build failed"
  BINARY=${CARGO_TARGET_DIR:-$repo/target}/release/handoff-proxy
fi
[ -x "$BINARY" ] || die "no executable handoff-proxy at $BINARY"

# --- systemd as PID 1 -------------------------------------------------------------
# Loopback only (--network none). --privileged where the engine can grant
# every capability; where it cannot (an engine that lacks some itself),
# the same by parts.
say "starting systemd in container $NAME"
run_common=(-d --name "$NAME" --hostname handoff-check --network none -e container=docker
  --tmpfs /run --tmpfs /run/lock --tmpfs /tmp
  --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw)
if ! docker run "${run_common[@]}" --privileged "$IMAGE" /lib/systemd/systemd >/dev/null 2>"$OUT/docker-run.err"; then
  echo "docker run --privileged failed ($(grep -m1 -i error "$OUT/docker-run.err")); retrying without it"
  docker rm -f "$NAME" >/dev/null 2>&1 || true
  caps=$(grep CapBnd /proc/self/status | awk '{print $2}')
  drop=()
  # CAP_SYS_RESOURCE (24) is the one such engines lack; drop whatever is missing.
  for cap in 24:SYS_RESOURCE 25:SYS_TIME 16:SYS_MODULE 17:SYS_RAWIO 38:PERFMON 39:BPF 40:CHECKPOINT_RESTORE; do
    (( (16#$caps >> ${cap%%:*}) & 1 )) || drop+=(--cap-drop "${cap#*:}")
  done
  docker run "${run_common[@]}" --cap-add ALL "${drop[@]}" \
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    --security-opt systempaths=unconfined --device-cgroup-rule 'a *:* rwm' \
    "$IMAGE" /lib/systemd/systemd >/dev/null 2>"$OUT/docker-run.err" \
    || die "docker run failed: $(cat "$OUT/docker-run.err")"
fi
container_started=true
boot=starting
for _ in $(seq 1 90); do
  # Its bus socket appears a moment after the container starts.
  boot=$(timeout 90 docker exec "$NAME" systemctl is-system-running --wait 2>&1) || true
  case "$boot" in running | degraded) break ;; esac
  sleep 1
done
case "$boot" in
  running) ;;
  degraded) echo "warning: systemd is degraded:"; inside systemctl --failed --no-pager || true ;;
  *) die "systemd in the container did not boot within 90 s (is-system-running: $boot)" ;;
esac
systemd_version=$(inside systemctl --version | head -n1)
docker_version=$(docker version --format '{{.Server.Version}}')
cgroup=v1; [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && cgroup=v2
say "$systemd_version; Docker engine $docker_version; cgroup $cgroup"
# Debug level: systemd then logs every child's exit status, which is how
# the old processes' exit codes are read below. No journal rate limit: the
# proxy logs one line per request, and journald would otherwise drop lines
# this check reads (ExecReload's outcome among them).
inside systemd-analyze log-level debug
in_sh 'mkdir -p /etc/systemd/journald.conf.d
  printf "[Journal]\nRateLimitIntervalSec=0\n" >/etc/systemd/journald.conf.d/check-live.conf
  systemctl restart systemd-journald'

# --- install, as the unit files' header comments say ---------------------------
# The repository's files where those commands expect them (cwd = a checkout).
inside mkdir -p /opt/hc/repo/target/release /opt/hc/repo/deploy
docker cp "$BINARY" "$NAME:/opt/hc/repo/target/release/handoff-proxy" >/dev/null
docker cp "$repo/deploy/systemd" "$NAME:/opt/hc/repo/deploy/systemd" >/dev/null
inside /opt/hc/repo/target/release/handoff-proxy --version >/dev/null \
  || die "the binary does not run on Debian bookworm (glibc too old for it?): build it there or set HANDOFF_CHECK_BINARY"

# The indented command lines of a unit's header comment after a line matching $2.
header_commands() {
  awk -v start="$2" '
    /^[^#]/ { exit }
    found && /^#   / { sub(/^#   /, ""); print; next }
    found && !/^#   / { exit }
    $0 ~ start { found = 1 }' "$repo/deploy/systemd/$1"
}
run_header_commands() {
  local unit=$1 start=$2 line n=0
  while IFS= read -r line; do
    n=$((n + 1))
    echo "   $ $line"
    in_sh "cd /opt/hc/repo && $line" || die "the command from $unit's header failed: $line"
  done < <(header_commands "$unit" "$start")
  [ "$n" -gt 0 ] || die "no install commands found in $unit's header comment"
}

say "install (handoff-proxy.service header)"
run_header_commands handoff-proxy.service '^# Install'
inside systemctl is-active --quiet handoff-proxy || die "handoff-proxy is not active after install"

# --- the backend ----------------------------------------------------------------
say "backend: busybox httpd on 127.0.0.1:$BACKEND_PORT"
in_sh "mkdir -p /srv/www && echo handoff-check-backend >/srv/www/index.html
  systemd-run --quiet --unit=hc-backend busybox httpd -f -p 127.0.0.1:$BACKEND_PORT -h /srv/www"
# One 200 from $1 within 10 s.
wait_200() {
  local i
  for i in $(seq 1 50); do
    [ "$(inside curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true)" = 200 ] && return 0
    sleep 0.2
  done
  return 1
}
wait_200 "http://127.0.0.1:$BACKEND_PORT/" || die "the busybox backend does not answer 200"
switch=$(inside curl -sS --max-time 10 --unix-socket /run/handoff/control.sock -X PUT \
  -H 'Content-Type: application/json' http://localhost/v1/backend \
  -d "{\"addr\":\"127.0.0.1:$BACKEND_PORT\"}") || die "PUT /v1/backend failed"
echo "   control: $switch"
wait_200 http://127.0.0.1/ || die "the proxy does not answer 200 through the backend"

# --- load -------------------------------------------------------------------------
# Clients inside the container. Each runs curl on batches of 50 URLs until
# the stop file, its time limit or its request limit: a keep-alive client
# reuses one connection per batch, a close client opens one per request.
# One line per request: R <http code> <curl exit code> (7: refused).
timeout 60 docker exec -i "$NAME" bash -c 'cat >/opt/hc/load.sh' <<'EOF'
#!/bin/bash
set -u
workers=$1 max=$2 secs=$3 dir=$4
mkdir -p "$dir"
end=$((SECONDS + secs))
client() {
  local id=$1 n=0 b=0 hdr=()
  [ $((id % 2)) = 1 ] && hdr=(-H 'Connection: close')
  while [ ! -e "$dir/stop" ] && [ "$SECONDS" -lt "$end" ] && [ "$n" -lt "$max" ]; do
    curl -sS --connect-timeout 5 --max-time 20 "${hdr[@]}" \
      -w '%{stderr}R %{http_code} %{exitcode}\n' \
      "http://127.0.0.1/?c=$id&b=$b&n=[1-50]" >/dev/null 2>>"$dir/client$id"
    n=$((n + 50)) b=$((b + 1))
  done
}
for id in $(seq 1 "$workers"); do client "$id" & done
wait
EOF

start_load() {
  load_dir=/run/hc-load/$1
  inside rm -rf "$load_dir"
  timeout $((LOAD_MAX_SECONDS + 60)) docker exec "$NAME" \
    bash /opt/hc/load.sh "$LOAD_WORKERS" "$LOAD_MAX_REQUESTS" "$LOAD_MAX_SECONDS" "$load_dir" &
  load_job=$!
  local i
  for i in $(seq 1 100); do
    [ "$(in_sh "cat $load_dir/client* 2>/dev/null | grep -c '^R ' || true")" -ge 200 ] && return 0
    sleep 0.1
  done
  die "the load did not get going (fewer than 200 requests in 10 s)"
}
# Sets load_counts to: sent ok refused failed.
stop_load() {
  inside touch "$load_dir/stop"
  wait "$load_job" || problem "the load clients ended abnormally"
  load_job=""
  load_counts=$(in_sh "cat $load_dir/client* | awk '
    /^R / { sent++; if (\$3 == 7) refused++; else if (\$2 == 200 && \$3 == 0) ok++; else failed++ }
    END { printf \"%d %d %d %d\n\", sent, ok, refused, failed }'")
}

journal_cursor() { inside journalctl -n 1 -o cat --show-cursor | sed -n 's/^-- cursor: //p'; }
# systemd's log of PID $1's exit, after cursor $2 (debug level), waited for up to 60 s.
child_exit() {
  local i line
  [ "$1" != 0 ] || { echo "no process (MainPID 0)"; return 0; }
  for i in $(seq 1 300); do
    line=$(inside journalctl --no-pager -o cat _PID=1 --after-cursor="$2" \
      | grep -E "^Child $1 \(.*\) died \(" | tail -n1 || true)
    [ -n "$line" ] && { sed -E 's/.*\((code=[^)]*)\)$/\1/' <<<"$line"; return 0; }
    sleep 0.2
  done
  echo "no exit seen within 60 s"
}

total_sent=0 total_ok=0 total_refused=0 total_failed=0 total_reloads=0
report() { echo "$*" | tee -a "$OUT/summary.txt"; }

# One reload ($1: label): checks and prints its figures.
reload_once() {
  local label=$1 before after out rc=0 cur old_exit summary state
  before=$(unit_prop MainPID handoff-proxy)
  cur=$(journal_cursor)
  out=$(timeout 120 docker exec "$NAME" systemctl reload handoff-proxy 2>&1) || rc=$?
  after=$before
  for _ in $(seq 1 25); do
    after=$(unit_prop MainPID handoff-proxy)
    [ "$after" != "$before" ] && break
    sleep 0.2
  done
  state=$(unit_prop ActiveState handoff-proxy)
  old_exit=$(child_exit "$before" "$cur")
  for _ in $(seq 1 25); do
    summary=$(inside journalctl --no-pager -o cat -u handoff-proxy --after-cursor="$cur" \
      | grep -E '^upgraded: |^upgrade failed' | tail -n1 || true)
    [ -n "$summary" ] && break
    sleep 0.2
  done
  report "$label: systemctl reload exit=$rc${out:+ output=\"$out\"}; MainPID $before -> $after ($state); old pid $before: $old_exit"
  report "    ExecReload said: ${summary:-nothing}"
  total_reloads=$((total_reloads + 1))
  [ "$rc" = 0 ] || problem "$label: systemctl reload exited $rc: $out"
  [ "$state" = active ] || problem "$label: the unit is $state after the reload"
  { [ "$after" != "$before" ] && [ "$after" != 0 ]; } \
    || problem "$label: MainPID did not move to a new process ($before -> $after)"
  [ "$old_exit" = "code=exited, status=0/SUCCESS" ] \
    || problem "$label: the old process $before: $old_exit"
  grep -q "^upgraded: pid $before -> $after " <<<"$summary" \
    || problem "$label: ExecReload's outcome does not name $before -> $after"
  [ "$state" = active ]
}

# $1: variant. $IDLE_RELOADS reloads without traffic (the old process
# has nothing to drain and exits at once), then $RELOADS under load; the
# unit must stay up throughout, as one invocation.
reloads() {
  local variant=$1 i inv0 nr0 cur0 sent ok refused failed bad
  inv0=$(unit_prop InvocationID handoff-proxy)
  nr0=$(unit_prop NRestarts handoff-proxy)
  cur0=$(journal_cursor)
  say "$variant: $IDLE_RELOADS reloads without traffic, then $RELOADS under load ($LOAD_WORKERS clients)"
  local down=false
  for i in $(seq 1 "$IDLE_RELOADS"); do
    reload_once "$variant reload $i (idle)" || { down=true; break; }
    sleep 0.5
  done
  $down || start_load "$variant"
  for i in $(seq 1 "$RELOADS"); do
    $down && break
    reload_once "$variant reload $((IDLE_RELOADS + i)) (load)" || down=true
    sleep 1
  done
  $down && problem "$variant: the unit went down; its remaining reloads were skipped"
  if [ -n "$load_job" ]; then
    sleep 1
    stop_load
  else
    load_counts="0 0 0 0"
  fi
  read -r sent ok refused failed <<<"$load_counts"
  report "$variant load: $sent requests sent, $ok answered 200, $refused refused, $failed failed"
  total_sent=$((total_sent + sent)) total_ok=$((total_ok + ok))
  total_refused=$((total_refused + refused)) total_failed=$((total_failed + failed))
  [ "$refused" = 0 ] && [ "$failed" = 0 ] && { [ "$sent" -gt 0 ] || $down; } \
    || problem "$variant: $refused refused and $failed failed of $sent requests"
  if [ $((refused + failed)) -gt 0 ]; then
    in_sh "cat $load_dir/client* | grep -v '^R 200 0$' | sort | uniq -c | head -n 20" || true
  fi
  [ "$(unit_prop InvocationID handoff-proxy)" = "$inv0" ] \
    || problem "$variant: the unit was stopped or restarted (its InvocationID changed)"
  [ "$(unit_prop NRestarts handoff-proxy)" = "$nr0" ] \
    || problem "$variant: NRestarts went from $nr0 to $(unit_prop NRestarts handoff-proxy)"
  bad=$(inside journalctl --no-pager -o cat -u handoff-proxy --after-cursor="$cur0" \
    | grep -E 'Main process exited|Failed with result|Deactivated|Stopping|Scheduled restart|not our child' || true)
  [ -z "$bad" ] || problem "$variant: the journal shows: $bad"
  report "$variant: systemd's view (journal):"
  inside journalctl --no-pager -o short-monotonic -u handoff-proxy --after-cursor="$cur0" \
    | grep -E 'Got notification message|New main PID|not our child|Main process exited|Reloaded|Failed with' \
    | sed 's/^/    /' | tee -a "$OUT/summary.txt" || true
}

# `systemctl stop handoff-proxy` after the reloads: SIGTERM, and systemd
# waits for the main process, which drains and exits 0.
stop_check() {
  local label=$1 main cur rc=0 out exit_line result
  main=$(unit_prop MainPID handoff-proxy)
  cur=$(journal_cursor)
  out=$(timeout 120 docker exec "$NAME" systemctl stop handoff-proxy 2>&1) || rc=$?
  exit_line=$(child_exit "$main" "$cur")
  result=$(unit_prop Result handoff-proxy)
  report "$label: systemctl stop exit=$rc${out:+ output=\"$out\"}; main pid $main: $exit_line; unit result: $result"
  [ "$rc" = 0 ] || problem "$label: systemctl stop exited $rc: $out"
  [ "$exit_line" = "code=exited, status=0/SUCCESS" ] \
    || problem "$label: on stop the main process $main ended with $exit_line, not a clean exit"
  [ "$result" = success ] || problem "$label: the unit's result after stop is $result"
}

# Whether PID 1 (systemd) and the main process hold the same socket
# listening on :80 (socket activation: systemd's socket, passed on).
listener_holders() {
  in_sh 'inode=$(awk '\''$2 ~ /:0050$/ && $4 == "0A" { print $10; exit }'\'' /proc/net/tcp)
    [ -n "$inode" ] || { echo "no listener on :80"; exit 0; }
    main=$(systemctl show -P MainPID handoff-proxy)
    for p in 1 $main; do
      ls -l /proc/$p/fd 2>/dev/null | grep -q "socket:\[$inode\]" && echo -n "$p:holds " || echo -n "$p:lacks "
    done'
}
check_holders() {
  local main holders
  main=$(unit_prop MainPID handoff-proxy)
  holders=$(listener_holders)
  report "socket: the :80 listening socket $1: $holders"
  [ "$holders" = "1:holds $main:holds " ] \
    || problem "socket: systemd and the main process $main do not share the :80 socket ($holders)"
}

# --- variant 1: the proxy binds :80 itself ------------------------------------
case " $VARIANTS " in *" service "*)
  reloads service
  stop_check service
;; esac

# --- variant 2: socket activation --------------------------------------------
case " $VARIANTS " in *" socket "*)
  inside systemctl is-active --quiet handoff-proxy && stop_check "socket (before)"
  say "socket: install handoff-proxy-http.socket (its header)"
  inside install -m 0644 /opt/hc/repo/deploy/systemd/handoff-proxy-http.socket /etc/systemd/system/
  run_header_commands handoff-proxy-http.socket 'Install next to handoff-proxy.service'
  inside systemctl is-active --quiet handoff-proxy-http.socket || die "the socket unit is not active"
  # The first connection starts the service, with the state file's backend.
  wait_200 http://127.0.0.1/ || die "no 200 through the socket-activated proxy"
  main=$(unit_prop MainPID handoff-proxy)
  inside journalctl --no-pager -o cat _PID="$main" | grep -q 'listener from systemd' \
    || problem "socket: the proxy (pid $main) did not log a listener from systemd"
  check_holders "before the reloads"
  reloads socket
  check_holders "after the reloads"
  stop_check socket
;; esac

# --- outcome ---------------------------------------------------------------------
report "---"
report "$systemd_version; Docker engine $docker_version; cgroup $cgroup (host)"
report "total: $total_reloads reloads; $total_sent requests sent, $total_ok answered 200, $total_refused refused, $total_failed failed"
if [ ${#problems[@]} -gt 0 ]; then
  echo "check-live: ${#problems[@]} problem(s):" >&2
  printf '  - %s\n' "${problems[@]}" >&2
  exit 1
fi
report "check-live: OK"
