#!/usr/bin/env bash
# Queries per second, average latency and server CPU per query of Coral's DNS
# server, next to NSD serving a static zone with answers of the same shape,
# in the same run (issue 6). dnsperf sends the queries over loopback UDP.
#
# Every server is measured twice:
#   unpinned  the server and dnsperf run anywhere (dnsperf, one thread, may
#             then be the bottleneck: issue 6 saw it saturate a core at
#             about 115k q/s against NSD);
#   pinned    the server on one core (SERVER_CPU, default 1) and dnsperf on
#             another (CLIENT_CPU, default 0), so q/s is the server's own
#             single-core throughput. Each server is restarted under taskset
#             for this, so coral's tokio runtime sizes itself to one core.
# Server CPU per query is the utime+stime the server's processes (every NSD
# process: xfrd, main and the server child) used during the dnsperf run
# (/proc/PID/stat, in clock ticks), divided by the queries completed.
#
# Installs dnsperf and nsd with apt-get when missing. Everything binds to
# 127.0.0.240 (coral) and 127.0.0.241 (NSD), port PORT; no response-rate
# limiting on either side (it would drop loopback load). Every step is
# bounded in time; a trap stops both servers and removes the temp directory.
#
#   scripts/bench-dns.sh                 # 10 s per run
#   DURATION=3 scripts/bench-dns.sh --json
# Environment: DURATION (s per dnsperf run, 10), OUTSTANDING (dnsperf -q,
# 200), NAMES (distinct query names, 100000), PORT (5300), SERVER_CPU (1),
# CLIENT_CPU (0), CORAL_BIN (skip the cargo build and use this binary;
# target/release/coral-mio works too, with the same flags).
set -euo pipefail
DURATION=${DURATION:-10}
OUTSTANDING=${OUTSTANDING:-200}
NAMES=${NAMES:-100000}
PORT=${PORT:-5300}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
CORAL_IP=127.0.0.240
NSD_IP=127.0.0.241
JSON=0
for arg in "$@"; do
  case "$arg" in
    --json) JSON=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/coral-bench-dns.XXXXXX)
CORAL_PID=""
NSD_PID=""
# stop_pid PID: SIGTERM, then SIGKILL if it is still there after 5 s.
stop_pid() {
  local p=$1
  [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
# stop_nsd: NSD's foreground process becomes its xfrd; the main process,
# whose pid is in the pidfile, is the one to signal: it stops its server
# child and xfrd, and so the process we started.
stop_nsd() {
  [ -n "$NSD_PID" ] || return 0
  [ -s "$WORK/nsd.pid" ] && kill "$(cat "$WORK/nsd.pid")" 2>/dev/null || true
  stop_pid "$NSD_PID"
  rm -f "$WORK/nsd.pid"
  NSD_PID=""
}
stop_coral() { stop_pid "$CORAL_PID"; CORAL_PID=""; }
cleanup() {
  stop_coral
  stop_nsd
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Tools -----------------------------------------------------------------
need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
# apt_install PKG...: installs from the current package lists, and only if
# that fails refreshes them (apt-get update) and tries once more.
apt_install() {
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq \
         && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null; }
}
INSTALLED_NSD=0
need dnsperf || apt_install dnsperf
need dig || apt_install bind9-dnsutils
if ! need nsd; then apt_install nsd; INSTALLED_NSD=1; fi
NSD=$(command -v nsd || echo /usr/sbin/nsd)
# The package enables (and, where allowed, starts) a system NSD on port 53.
# It would not clash with ours (other address and port), but it is not
# wanted on a benchmark machine: stop and disable the one we just installed.
# One that was there before is left alone, since someone may rely on it.
if [ "$INSTALLED_NSD" -eq 1 ]; then
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now nsd >/dev/null 2>&1 || true
  else
    $SUDO service nsd stop >/dev/null 2>&1 || true
    $SUDO update-rc.d nsd disable >/dev/null 2>&1 || true
  fi
fi

# --- Coral -----------------------------------------------------------------
if [ -n "${CORAL_BIN:-}" ]; then
  BIN=$CORAL_BIN
else
  timeout 1800 cargo build --release -q -p coral-tokio --bin coral --manifest-path "$ROOT/Cargo.toml"
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/coral
fi
# rrl_rate = 0: no response-rate limiting, as for NSD below. Logs at warn so
# logging costs nothing during the run (nothing is logged per query anyway).
cat >"$WORK/coral.toml" <<CONF
[node]
rpc = "$CORAL_IP:$((PORT + 91))"
admin = "$CORAL_IP:$((PORT + 92))"
http = "$CORAL_IP:$((PORT + 90))"
dns = "$CORAL_IP:$PORT"
[dns]
rrl_rate = 0
[log]
filter = "warn"
CONF

# wait_dns IP NAME PID: polls with dig until IP:PORT answers NAME A with at
# least one address, for at most 10 s, or until process PID has exited.
wait_dns() {
  local ip=$1 name=$2 pid=$3
  for _ in $(seq 40); do
    kill -0 "$pid" 2>/dev/null || return 1
    if [ -n "$(dig @"$ip" -p "$PORT" +time=1 +tries=1 +norec +short "$name" A 2>/dev/null | grep -E '^[0-9.]+$')" ]; then
      return 0
    fi
    sleep 0.25
  done
  return 1
}

# start_coral [taskset args...]: starts the node (optionally under taskset)
# and waits until it answers.
start_coral() {
  "$@" "$BIN" node --config "$WORK/coral.toml" >>"$WORK/coral.log" 2>&1 &
  CORAL_PID=$!
  if ! wait_dns "$CORAL_IP" probe.example.com.nyud.net "$CORAL_PID"; then
    echo "coral did not answer on $CORAL_IP:$PORT (exited, or 10 s passed); its log:" >&2
    tail -20 "$WORK/coral.log" >&2
    exit 1
  fi
}

# --- The query file --------------------------------------------------------
# Distinct names, so neither server answers the same name over and over; the
# same file for both servers. dnsperf loops over it for DURATION seconds.
awk -v n="$NAMES" 'BEGIN { for (i = 1; i <= n; i++) printf "host%d.example.com.nyud.net A\n", i }' >"$WORK/queries.txt"

# --- NSD -------------------------------------------------------------------
# "A static zone of the same size": an answer of the same shape as coral's.
# Coral answers <name>.nyud.net A with the proxies' A records (the node
# itself when alone), NS records for its level's zone (L2.L1.L0.nyucd.net
# once the resolver's RTT is known) and their glue. NSD gets a wildcard
# *.nyud.net with as many A records as coral's answer has, and as many NS
# records for nyud.net, named like coral's (ns-<16 hex>, so the same length),
# each with glue in the zone; NSD puts the zone's NS and glue in its answers
# too (minimal-responses: no). The one difference left: NSD's NS owner name
# is the zone apex, nyud.net, a compression pointer, where coral's is
# L2.L1.L0.nyucd.net, so coral's responses are some bytes larger. Both sizes
# are printed (dig, and dnsperf's average) so the reader can see them.
# Coral is asked first, with EDNS off as dnsperf sends its queries.
start_coral
CORAL_DIG=$(dig @"$CORAL_IP" -p "$PORT" +time=1 +tries=1 +norec +noedns +nocmd www.example.com.nyud.net A)
N_A=$(awk '/^;; ANSWER SECTION/ {s=1; next} /^$/ {s=0} s && $4 == "A"' <<<"$CORAL_DIG" | wc -l)
mapfile -t NS_LABELS < <(awk '/^;; AUTHORITY SECTION/ {s=1; next} /^$/ {s=0} s && $4 == "NS" {split($5, l, "."); print l[1]}' <<<"$CORAL_DIG")
[ "$N_A" -ge 1 ] || N_A=1
[ "${#NS_LABELS[@]}" -ge 1 ] || NS_LABELS=(ns-0000000000000000)
{
  echo "\$ORIGIN nyud.net."
  echo "\$TTL 30"
  echo "@ IN SOA ${NS_LABELS[0]} hostmaster 1 3600 600 86400 30"
  i=0
  for l in "${NS_LABELS[@]}"; do
    i=$((i + 1))
    echo "@ 21600 IN NS $l"
    echo "$l 21600 IN A 127.0.1.$i"
  done
  for i in $(seq "$N_A"); do echo "* 30 IN A 127.0.2.$i"; done
} >"$WORK/nyud.net.zone"
# One server process (coral serves UDP from one task too), no rate
# limiting, no privilege drop or chroot, every file under WORK, no
# remote control (it would want its keys).
cat >"$WORK/nsd.conf" <<CONF
server:
  ip-address: $NSD_IP@$PORT
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "$WORK"
  database: ""
  zonelistfile: "$WORK/zone.list"
  xfrdfile: "$WORK/xfrd.state"
  xfrdir: "$WORK"
  pidfile: "$WORK/nsd.pid"
  logfile: "$WORK/nsd.log"
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
  minimal-responses: no
remote-control:
  control-enable: no
zone:
  name: nyud.net
  zonefile: nyud.net.zone
CONF
start_nsd() {
  "$@" "$NSD" -d -c "$WORK/nsd.conf" >>"$WORK/nsd.out" 2>&1 &
  NSD_PID=$!
  if ! wait_dns "$NSD_IP" probe.example.com.nyud.net "$NSD_PID"; then
    echo "NSD did not answer on $NSD_IP:$PORT (exited, or 10 s passed); its logs:" >&2
    tail -20 "$WORK/nsd.out" "$WORK/nsd.log" >&2 2>/dev/null || true
    exit 1
  fi
}
start_nsd
NSD_DIG=$(dig @"$NSD_IP" -p "$PORT" +time=1 +tries=1 +norec +noedns +nocmd www.example.com.nyud.net A)

# sections DIG_OUTPUT: "answer/authority/additional counts, bytes".
sections() {
  local counts size
  counts=$(grep -o 'ANSWER: [0-9]*, AUTHORITY: [0-9]*, ADDITIONAL: [0-9]*' <<<"$1" | tr -dc '0-9,' | tr ',' '/')
  size=$(awk '/MSG SIZE/ {print $NF}' <<<"$1")
  echo "$counts records, $size bytes"
}
echo "Responses to www.example.com.nyud.net A without EDNS (answer/authority/additional):"
echo "  coral: $(sections "$CORAL_DIG")"
awk '/SECTION:$/ && !/QUESTION/ {s=1; next} /^$/ {s=0} s {print "    " $0}' <<<"$CORAL_DIG"
echo "  nsd:   $(sections "$NSD_DIG")"
awk '/SECTION:$/ && !/QUESTION/ {s=1; next} /^$/ {s=0} s {print "    " $0}' <<<"$NSD_DIG"

# --- Measuring -------------------------------------------------------------
TCK=$(getconf CLK_TCK)
# The process PID and all its descendants.
tree() {
  local p
  echo "$1"
  for p in $(ps -o pid= --ppid "$1"); do tree "$p"; done
}
# Clock ticks of CPU (user + system) the given processes have used so far.
# Fields are counted after the last ')' since the name ("nsd: server 1")
# may hold spaces; utime and stime are fields 14 and 15.
ticks() {
  local t=0 p
  for p in "$@"; do
    t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$t"
}

# Datagrams the kernel dropped for want of room in a UDP receive buffer, on
# the whole machine (RcvbufErrors): tells whether lost queries were dropped
# before the server read them.
udp_drops() { awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp; }

declare -A R   # R[mode.server.metric]
# measure MODE NAME IP PID [taskset args...]: one dnsperf run against IP,
# recording q/s, average latency, CPU per query, lost queries, response size.
measure() {
  local mode=$1 name=$2 ip=$3 pid=$4
  shift 4
  local pids before after drops out
  if ! kill -0 "$pid" 2>/dev/null; then echo "$name is not running" >&2; exit 1; fi
  read -r -a pids <<<"$(tree "$pid" | tr '\n' ' ')"
  drops=$(udp_drops)
  before=$(ticks "${pids[@]}")
  out=$(timeout $((DURATION + 30)) "$@" dnsperf -s "$ip" -p "$PORT" -d "$WORK/queries.txt" \
    -l "$DURATION" -q "$OUTSTANDING" -t 2 -O suppress=timeout 2>&1) || {
    echo "dnsperf against $name failed:" >&2; echo "$out" >&2; exit 1; }
  after=$(ticks "${pids[@]}")
  R[$mode.$name.drops]=$(( $(udp_drops) - drops ))
  local k="$mode.$name" completed
  completed=$(awk '/Queries completed:/ {print $3}' <<<"$out")
  R[$k.qps]=$(awk '/Queries per second:/ {printf "%.0f", $4}' <<<"$out")
  R[$k.lat]=$(awk '/Average Latency/ {printf "%.3f", $4 * 1000}' <<<"$out")
  R[$k.lost]=$(awk '/Queries lost:/ {print $3}' <<<"$out")
  R[$k.resp]=$(awk '/Average packet size:/ {print $NF}' <<<"$out")
  R[$k.cpu]=$(awk -v d=$((after - before)) -v t="$TCK" -v n="${completed:-0}" \
    'BEGIN { if (n > 0) printf "%.2f", d / t * 1e6 / n; else print "nan" }')
}

MODES=(unpinned)
if [ "$(nproc)" -ge 2 ]; then MODES+=(pinned); else echo "one CPU only: skipping the pinned runs" >&2; fi
for mode in "${MODES[@]}"; do
  srv=() cli=()
  if [ "$mode" = pinned ]; then
    srv=(taskset -c "$SERVER_CPU") cli=(taskset -c "$CLIENT_CPU")
    # Restart both servers on one core (coral's runtime then has one worker).
    stop_coral; stop_nsd
    start_coral "${srv[@]}"
    start_nsd "${srv[@]}"
  fi
  measure "$mode" coral "$CORAL_IP" "$CORAL_PID" "${cli[@]}"
  measure "$mode" nsd "$NSD_IP" "$NSD_PID" "${cli[@]}"
done

# --- Report ----------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a == a + 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "dnsperf: ${DURATION}s per run, $OUTSTANDING outstanding, $NAMES distinct names;" \
  "pinned: server on CPU $SERVER_CPU, dnsperf on CPU $CLIENT_CPU"
printf '%-9s %-22s %12s %12s %10s\n' mode metric coral nsd coral/nsd
for mode in "${MODES[@]}"; do
  for m in "qps|queries/s" "lat|avg latency ms" "cpu|cpu us/query" "lost|queries lost" "drops|udp rcvbuf drops" "resp|response bytes"; do
    IFS='|' read -r key label <<<"$m"
    c=${R[$mode.coral.$key]} n=${R[$mode.nsd.$key]}
    r="-"
    case "$key" in qps | lat | cpu) r=$(ratio "$c" "$n") ;; esac
    printf '%-9s %-22s %12s %12s %10s\n' "$mode" "$label" "$c" "$n" "$r"
  done
done
echo "Goal (issue 6): queries/s ratio >= 1 and cpu us/query ratio <= 1."

if [ "$JSON" -eq 1 ]; then
  # A number as JSON: itself, or null when it is not one (a failed ratio).
  num() { if [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; then echo "$1"; else echo null; fi; }
  json="{\"bench\":\"dns\",\"duration_s\":$DURATION,\"outstanding\":$OUTSTANDING,\"names\":$NAMES"
  for mode in "${MODES[@]}"; do
    json+=",\"$mode\":{"
    for s in coral nsd; do
      k="$mode.$s"
      json+="\"$s\":{\"qps\":$(num "${R[$k.qps]}"),\"latency_ms\":$(num "${R[$k.lat]}")"
      json+=",\"cpu_us_per_query\":$(num "${R[$k.cpu]}"),\"lost\":$(num "${R[$k.lost]}")"
      json+=",\"udp_rcvbuf_drops\":$(num "${R[$k.drops]}")"
      json+=",\"response_bytes\":$(num "${R[$k.resp]}")},"
    done
    json+="\"qps_ratio\":$(num "$(ratio "${R[$mode.coral.qps]}" "${R[$mode.nsd.qps]}")")"
    json+=",\"cpu_ratio\":$(num "$(ratio "${R[$mode.coral.cpu]}" "${R[$mode.nsd.cpu]}")")}"
  done
  echo "$json}"
fi
