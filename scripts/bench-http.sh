#!/usr/bin/env bash
# Requests/s and p99 latency of cache hits through one Coral proxy, next to
# nginx proxy_cache in front of the same origin, in the same run (issue 5).
# Installs nginx and wrk with apt-get when missing. Everything binds to
# 127.0.0.x; every run is bounded (DURATION seconds per wrk run).
#
# Like for like: both servers run on the same CPUs (SERVER_CPUS, by default
# the first half of the machine's) with one worker per CPU (nginx
# worker_processes, coral's tokio worker threads, which follow the CPU
# affinity); wrk runs on the others (CLIENT_CPUS) with one thread per CPU.
# Server CPU per request is the servers' utime+stime over each wrk run
# (/proc/<pid>/stat, every nginx process for nginx), divided by requests.
#
#   scripts/bench-http.sh            # 10 s per size, 50 connections
#   DURATION=5 CONNS=50 scripts/bench-http.sh
set -euo pipefail
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
NCPU=$(nproc)
HALF=$(( NCPU > 1 ? NCPU / 2 : 1 ))
SERVER_CPUS=${SERVER_CPUS:-0-$((HALF - 1))}
if [ "$NCPU" -gt 1 ]; then CLIENT_CPUS=${CLIENT_CPUS:-$HALF-$((NCPU - 1))}; else CLIENT_CPUS=${CLIENT_CPUS:-0}; fi
count_cpus() { taskset -c "$1" nproc; }
WORKERS=$(count_cpus "$SERVER_CPUS")
THREADS=${THREADS:-$(count_cpus "$CLIENT_CPUS")}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/coral-bench.XXXXXX)
chmod 755 "$WORK"   # nginx workers run as another user
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

# The origin: nginx serving static files on 127.0.0.70:18080.
mkdir -p "$WORK/www" "$WORK/cache" "$WORK/logs"
head -c 1024 /dev/urandom >"$WORK/www/1k.bin"
head -c $((41 * 1024)) /dev/urandom >"$WORK/www/41k.bin"
head -c $((1024 * 1024)) /dev/urandom >"$WORK/www/1m.bin"
write_nginx_conf "$WORK" "$WORKERS" 4096 <<CONF
proxy_cache_path $WORK/cache keys_zone=c:10m max_size=256m;
server { listen 127.0.0.70:18080; root $WORK/www; expires 1h; }
server {
  listen 127.0.0.71:18081;
  location / { proxy_pass http://127.0.0.70:18080; proxy_cache c; proxy_cache_valid 200 1h;
               proxy_http_version 1.1; proxy_set_header Connection ""; }
}
CONF
taskset -c "$SERVER_CPUS" "$NGINX" -c "$WORK/nginx.conf" -g 'daemon on;'

# One Coral node whose proxy may fetch from the loopback origin.
cargo build --release -q -p coral-tokio --manifest-path "$ROOT/Cargo.toml"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/coral
cat >"$WORK/coral.toml" <<CONF
[node]
rpc = "127.0.0.72:18091"
admin = "127.0.0.72:18092"
http = "127.0.0.72:18090"
allow_origins = ["127.0.0.70/32"]
CONF
taskset -c "$SERVER_CPUS" "$BIN" node --config "$WORK/coral.toml" 2>"$WORK/logs/coral.log" &
PIDS+=("$!")
CORAL_PID=$!
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.72:18092/metrics" && break; sleep 0.1; done

# Ticks of CPU (user + system) used so far by the given processes.
ticks() {
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
nginx_pids() {
  local master
  master=$(cat "$WORK/nginx.pid")
  echo "$master" $(ps -o pid= --ppid "$master")
}

HOST="127.0.0.70.18080.nyud.net"
echo "servers on CPUs $SERVER_CPUS ($WORKERS nginx workers, $WORKERS tokio worker threads);" \
  "wrk on CPUs $CLIENT_CPUS ($THREADS threads), $CONNS connections, ${DURATION}s per run"
printf '%-8s %-22s %12s %10s %10s\n' size server req/s p99_ms cpu_us/req
for f in 1k.bin 41k.bin 1m.bin; do
  # Warm both caches and check the bytes.
  curl -sf -H "Host: $HOST" "http://127.0.0.72:18090/$f" | cmp - "$WORK/www/$f"
  curl -sf "http://127.0.0.71:18081/$f" | cmp - "$WORK/www/$f"
  for target in "coral|http://127.0.0.72:18090/$f|$HOST" "nginx-proxy_cache|http://127.0.0.71:18081/$f|" "nginx-static|http://127.0.0.70:18080/$f|"; do
    IFS='|' read -r name url host <<<"$target"
    hdr=(); [ -n "$host" ] && hdr=(-H "Host: $host")
    if [ "$name" = coral ]; then pids=("$CORAL_PID"); else read -r -a pids <<<"$(nginx_pids)"; fi
    before=$(ticks "${pids[@]}")
    out=$(timeout $((DURATION + 20)) taskset -c "$CLIENT_CPUS" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "${hdr[@]}" "$url")
    after=$(ticks "${pids[@]}")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    cpu="-"
    if [ "${reqs:-0}" -gt 0 ]; then
      tck=$(getconf CLK_TCK)
      cpu=$(awk -v d=$((after - before)) -v t="$tck" -v n="$reqs" 'BEGIN {printf "%.1f", d / t * 1e6 / n}')
    fi
    printf '%-8s %-22s %12s %10s %10s\n' "$f" "$name" "$rps" "$p99" "$cpu"
  done
done
