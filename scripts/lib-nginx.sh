# Shell helpers the benchmark scripts share (sourced, not run):
# installing missing tools, and an nginx configuration that keeps every
# file nginx writes under one work directory.

# Whether the command `$1` is installed (daemons live in /usr/sbin).
need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

# install_missing CMD... -- PKG...: installs the Debian packages PKG with
# apt-get unless every CMD is already installed. nginx-light, when asked
# for, falls back to the full nginx package on releases without it.
install_missing() {
  local cmds=() missing=0
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do cmds+=("$1"); shift; done
  shift
  for c in "${cmds[@]}"; do need "$c" || missing=1; done
  [ "$missing" -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null \
    || DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${@/nginx-light/nginx}" >/dev/null
}

# write_nginx_conf WORK WORKERS CONNECTIONS: writes WORK/nginx.conf with
# WORKERS worker processes, its pid, error log and temp files under WORK,
# no access log, and the http-level directives read from standard input
# (server blocks and the like).
write_nginx_conf() {
  local work=$1 workers=$2 conns=$3
  mkdir -p "$work/logs"
  {
    cat <<CONF
worker_processes $workers;
pid $work/nginx.pid;
error_log $work/logs/error.log;
events { worker_connections $conns; }
http {
  access_log off;
  client_body_temp_path $work/tmp-body; proxy_temp_path $work/tmp-proxy;
  fastcgi_temp_path $work/tmp-fcgi; uwsgi_temp_path $work/tmp-uwsgi; scgi_temp_path $work/tmp-scgi;
CONF
    sed 's/^/  /'
    echo "}"
  } >"$work/nginx.conf"
}
