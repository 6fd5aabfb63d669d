#!/usr/bin/env bash
# Start or stop the dockerd that the docker-backend tests use.
#
#   dockerd.sh start   use a dockerd that already answers, else start one (root only)
#   dockerd.sh stop    stop the dockerd that `start` started (none other)
#
# The dockerd started here leaves the host network alone (no bridge, no
# iptables rules) and keeps its images and state in its own data root, so it
# can run beside (or instead of) a system docker without touching it.
set -uo pipefail
SOCK=/var/run/docker.sock
DATA=/var/lib/ofnode-docker
EXEC=/run/ofnode-docker
PIDFILE=/run/ofnode-dockerd.pid
LOG=/var/log/ofnode-dockerd.log

answers() {
  command -v curl >/dev/null 2>&1 && curl -sf --max-time 2 --unix-socket "$SOCK" http://docker/_ping >/dev/null 2>&1 && return 0
  python3 - "$SOCK" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
sys.exit(0 if b" 200 " in s.recv(256).split(b"\r\n")[0] else 1)
PY
}

case "${1:-}" in
start)
  if answers; then echo "dockerd: using the one answering on $SOCK"; exit 0; fi
  if [ "$(id -u)" != 0 ]; then
    echo "dockerd: none answers on $SOCK and starting one needs root; the docker-backend tests will skip" >&2
    exit 0
  fi
  if ! command -v dockerd >/dev/null; then echo "dockerd: not installed (Debian package docker.io)" >&2; exit 1; fi
  mkdir -p "$DATA" "$EXEC"
  echo "dockerd: starting (no bridge, no iptables; data root $DATA; log $LOG)"
  setsid dockerd --bridge=none --iptables=false --ip6tables=false --data-root "$DATA" --exec-root "$EXEC" \
    --pidfile "$PIDFILE" -H "unix://$SOCK" >>"$LOG" 2>&1 < /dev/null &
  for _ in $(seq 1 300); do
    answers && { echo "dockerd: ready"; exit 0; }
    kill -0 $! 2>/dev/null || break
    sleep 0.1
  done
  echo "dockerd: did not come up; last lines of $LOG:" >&2; tail -20 "$LOG" >&2; exit 1
  ;;
stop)
  [ -f "$PIDFILE" ] || exit 0
  pid=$(cat "$PIDFILE")
  kill "$pid" 2>/dev/null || exit 0
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || { echo "dockerd: stopped"; exit 0; }; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null; echo "dockerd: killed"
  ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
