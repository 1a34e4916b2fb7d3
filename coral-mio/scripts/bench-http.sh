#!/usr/bin/env bash
# The HTTP proxy on coral-mio's one loop next to coral's tokio proxy, in the
# same run (issue 7 item 3): each node's idle RSS with an empty cache, then
# wrk requests/s, p99 latency and server CPU per request for cache hits of
# 1 KB, 41 KB and 1 MB objects fetched once from the same origin (nginx
# serving static files). Installs nginx and wrk with apt-get when missing.
# Everything binds to ${NET}x (NET=127.0.0.9 unless set: scripts/footprint.sh
# uses 127.0.0.8x, and both may run at once); every wrk run is bounded.
#
#   coral-mio/scripts/bench-http.sh
#   DURATION=5 CONNS=50 SIZES="41k" coral-mio/scripts/bench-http.sh
set -euo pipefail
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
THREADS=${THREADS:-2}
SIZES=${SIZES:-"1k 41k 1m"}
NET=${NET:-127.0.0.9}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/coral-mio-bench.XXXXXX)
chmod 755 "$WORK" # nginx workers run as another user
PIDS=()
NGINX=nginx
cleanup() {
  [ -f "$WORK/nginx.pid" ] && "$NGINX" -c "$WORK/nginx.conf" -s stop 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=scripts/lib-nginx.sh
. "$ROOT/scripts/lib-nginx.sh"
install_missing nginx wrk -- nginx-light wrk
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# The origin: nginx serving static files on ${NET}0:18180.
mkdir -p "$WORK/www" "$WORK/logs"
head -c 1024 /dev/urandom >"$WORK/www/1k.bin"
head -c $((41 * 1024)) /dev/urandom >"$WORK/www/41k.bin"
head -c $((1024 * 1024)) /dev/urandom >"$WORK/www/1m.bin"
write_nginx_conf "$WORK" 1 1024 <<CONF
server { listen ${NET}0:18180; root $WORK/www; expires 1h; }
CONF
"$NGINX" -c "$WORK/nginx.conf" -g 'daemon on;'

cargo build --release -q -p coral-tokio -p coral-mio --manifest-path "$ROOT/Cargo.toml"
BINDIR=${CARGO_TARGET_DIR:-$ROOT/target}/release

# Two separate one-node networks, so each proxy fetches from the origin itself.
declare -A PID ADMIN HTTP
start() { # name binary ip
  local name=$1 bin=$2 ip=$3
  cat >"$WORK/$name.toml" <<CONF
[node]
rpc = "$ip:18191"
admin = "$ip:18192"
http = "$ip:18190"
allow_origins = ["${NET}0/32"]
CONF
  "$BINDIR/$bin" node --config "$WORK/$name.toml" 2>"$WORK/logs/$name.log" &
  PIDS+=("$!")
  PID[$name]=$!
  ADMIN[$name]="http://$ip:18192"
  HTTP[$name]="http://$ip:18190"
  for _ in $(seq 100); do curl -sf -o /dev/null "${ADMIN[$name]}/metrics" && return; sleep 0.1; done
  echo "$name did not start:" >&2; cat "$WORK/logs/$name.log" >&2; exit 1
}
start coral-mio coral-mio "${NET}3"
start coral coral "${NET}2"
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
sleep 2
echo "binary sizes (bytes): coral-mio $(stat -c %s "$BINDIR/coral-mio"), coral $(stat -c %s "$BINDIR/coral")"
echo "idle RSS, empty cache (VmRSS kB): coral-mio $(rss "${PID[coral-mio]}"), coral $(rss "${PID[coral]}")"
echo "threads: coral-mio $(ls /proc/${PID[coral-mio]}/task | wc -l), coral $(ls /proc/${PID[coral]}/task | wc -l)"

HOST="${NET}0.18180.nyud.net"
tck=$(getconf CLK_TCK)
printf '%-8s %-10s %12s %10s %11s %9s\n' size proxy req/s p99_ms cpu_us/req rss_kB
for s in $SIZES; do
  f=$s.bin
  for name in coral-mio coral; do
    # Warm the cache (one origin fetch) and check the bytes.
    curl -sf -H "Host: $HOST" "${HTTP[$name]}/$f" | cmp - "$WORK/www/$f"
  done
  for name in coral-mio coral; do
    pid=${PID[$name]}
    before=$(awk '{print $14+$15}' "/proc/$pid/stat")
    out=$(timeout $((DURATION + 20)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency \
      -H "Host: $HOST" "${HTTP[$name]}/$f")
    after=$(awk '{print $14+$15}' "/proc/$pid/stat")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    errs=$(awk '/Non-2xx|Socket errors/' <<<"$out")
    cpu=$(awk -v d=$((after - before)) -v t="$tck" -v n="${reqs:-0}" 'BEGIN {if (n > 0) printf "%.1f", d / t * 1e6 / n; else print "-"}')
    printf '%-8s %-10s %12s %10s %11s %9s %s\n' "$s" "$name" "$rps" "$p99" "$cpu" "$(rss "$pid")" "$errs"
  done
done
for name in coral-mio coral; do
  fetched=$(curl -sf "${ADMIN[$name]}/metrics" | awk '/^coral_http_origin_fetches_total/ {print $2}')
  echo "$name origin fetches: $fetched"
done
