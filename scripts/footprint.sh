#!/usr/bin/env bash
# Footprint of an idle `coral-mio node` next to nginx and NSD measured the
# same way (issue 7): resident memory (VmRSS from /proc/<pid>/status, summed
# over every process of the server), CPU used over an idle minute (utime +
# stime from /proc/<pid>/stat), and the size of the binaries. With
# LOAD_SECS > 0 it then keeps the RPC benchmark's client node busy against
# the mio node for that long and reads the node's VmRSS under that load.
#
# Opt-in, not part of the test suite. Installs nginx and nsd with apt-get
# when missing. Everything binds to 127.0.0.x and every step is bounded.
#
#   scripts/footprint.sh                 # 60 s idle window, 10 s of load
#   IDLE_SECS=20 LOAD_SECS=0 scripts/footprint.sh
set -euo pipefail
IDLE_SECS=${IDLE_SECS:-60}
LOAD_SECS=${LOAD_SECS:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d /tmp/coral-footprint.XXXXXX)
chmod 755 "$WORK" # nginx workers and nsd drop privileges
PIDS=()
cleanup() {
  [ -f "$WORK/nginx.pid" ] && nginx -c "$WORK/nginx.conf" -s stop 2>/dev/null || true
  [ -f "$WORK/nsd.pid" ] && kill "$(cat "$WORK/nsd.pid")" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # NSD may still be writing into its directory as it exits.
  rm -rf "$WORK" 2>/dev/null || { sleep 1; rm -rf "$WORK"; }
}
trap cleanup EXIT

# shellcheck source=scripts/lib-nginx.sh
. "$ROOT/scripts/lib-nginx.sh"
install_missing nginx nsd -- nginx-light nsd
export PATH="$PATH:/usr/sbin"

# kB of VmRSS summed over the given pids.
rss_kb() {
  local sum=0 p v
  for p in "$@"; do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
# Clock ticks of utime+stime summed over the given pids (threads included).
ticks() {
  local sum=0 p
  for p in "$@"; do
    sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$sum"
}
# Waits up to 10 s for a TCP or UDP listener on 127.0.0.x:port.
wait_port() {
  for _ in $(seq 100); do
    ss -Hlntu | grep -q "$1" && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  return 1
}
HZ=$(getconf CLK_TCK)
# Prints "name rss_kB cpu_% " for pids measured over IDLE_SECS.
report_idle() {
  local name=$1
  shift
  local t0 t1
  t0=$(ticks "$@")
  sleep "$IDLE_SECS"
  t1=$(ticks "$@")
  printf '%-22s idle VmRSS %6s kB   CPU over %s s: %s ticks = %s%% of a core\n' \
    "$name" "$(rss_kb "$@")" "$IDLE_SECS" "$((t1 - t0))" \
    "$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v s="$IDLE_SECS" 'BEGIN {printf "%.3f", 100 * d / hz / s}')"
}

echo "building coral-mio (release)..."
cargo build --release -q -p coral-mio --manifest-path "$ROOT/Cargo.toml"
BIN=$TARGET/release/coral-mio
cp "$BIN" "$WORK/coral-mio.stripped"
strip "$WORK/coral-mio.stripped"
printf 'coral-mio binary: %s bytes (%s bytes stripped)\n' \
  "$(stat -c %s "$BIN")" "$(stat -c %s "$WORK/coral-mio.stripped")"

# The mio node: RPC, admin, the HTTP proxy and DNS, an empty cache, no peers.
"$BIN" node --rpc 127.0.0.81:18191 --admin 127.0.0.81:18192 --http 127.0.0.81:18190 \
  --dns 127.0.0.81:18153 2>"$WORK/coral-mio.log" &
MIO=$!
PIDS+=("$MIO")
wait_port 127.0.0.81:18190
sleep 2

# nginx with one worker, serving one static file.
mkdir -p "$WORK/www"
echo hello >"$WORK/www/index.html"
write_nginx_conf "$WORK" 1 1024 <<CONF
server { listen 127.0.0.82:18180; root $WORK/www; }
CONF
nginx -c "$WORK/nginx.conf"
wait_port 127.0.0.82:18180
NGINX_PIDS=$(pgrep -f "nginx.*$WORK/nginx.conf|nginx: worker process" | tr '\n' ' ')

# NSD with one small zone.
mkdir -p "$WORK/nsd"
cat >"$WORK/nsd/example.zone" <<ZONE
\$ORIGIN example.test.
\$TTL 3600
@ IN SOA ns1 hostmaster 1 3600 900 604800 300
@ IN NS ns1
ns1 IN A 127.0.0.83
www IN A 127.0.0.83
ZONE
cat >"$WORK/nsd/nsd.conf" <<CONF
server:
  ip-address: 127.0.0.83@18153
  pidfile: "$WORK/nsd.pid"
  zonelistfile: "$WORK/nsd/zone.list"
  xfrdfile: "$WORK/nsd/xfrd.state"
  database: ""
  username: ""
  chroot: ""
  server-count: 1
  verbosity: 0
  logfile: "$WORK/nsd/nsd.log"
remote-control:
  control-enable: no
zone:
  name: example.test
  zonefile: "$WORK/nsd/example.zone"
CONF
nsd -c "$WORK/nsd/nsd.conf"
wait_port 127.0.0.83:18153
sleep 1
NSD_PIDS=$(pgrep -f "nsd -c $WORK/nsd/nsd.conf" | tr '\n' ' ')

echo "idle window: $IDLE_SECS s each, measured at the same time"
# shellcheck disable=SC2086 # word splitting of the pid lists is intended
{
  report_idle "coral-mio node" "$MIO" &
  R1=$!
  report_idle "nginx (1 worker)" $NGINX_PIDS &
  R2=$!
  report_idle "nsd (1 server)" $NSD_PIDS &
  R3=$!
  wait "$R1" "$R2" "$R3"
}

if [ "$LOAD_SECS" -gt 0 ]; then
  echo "RPC load on the mio node for $LOAD_SECS s (the rpc benchmark's client node)..."
  PEAK=0
  (
    cd "$ROOT"
    CORAL_BENCH_TARGET=127.0.0.81:18191 CORAL_BENCH_SECS=$LOAD_SECS \
      cargo bench -q -p coral-mio --bench rpc 2>&1 | tail -3
  ) &
  LOADER=$!
  while kill -0 "$LOADER" 2>/dev/null; do
    r=$(rss_kb "$MIO")
    [ "$r" -gt "$PEAK" ] && PEAK=$r
    sleep 0.5
  done
  wait "$LOADER"
  printf 'coral-mio node under RPC load: peak VmRSS %s kB\n' "$PEAK"
fi
