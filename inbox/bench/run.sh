#!/usr/bin/env bash
# Ingest and API latency of smtpsrv-inbox, beside maildev 3.x, in one run.
#   inbox/bench/run.sh            # needs postfix's smtp-source, node/npm, python3, curl
# Report: target/bench/inbox-<date>.txt
set -euo pipefail
cd "$(dirname "$0")/../.."
out=target/bench; mkdir -p "$out"; report="$out/inbox-$(date -u +%Y%m%d-%H%M%S).txt"
log() { echo "$*" | tee -a "$report"; }
N=${N:-20000}; FILL=${FILL:-100000}
cargo build --release -p smtpsrv-inbox >/dev/null 2>&1
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$1/status"; }
ingest() { # ingest PORT COUNT -> msgs/s (smtp-source W1 shape)
  local t0 t1; t0=$(date +%s.%N)
  /usr/sbin/smtp-source -s 50 -m "$2" -l 10240 -d -f a@example.com -t b@example.com "127.0.0.1:$1"
  t1=$(date +%s.%N); python3 -c "print(round($2/($t1-$t0)))"
}
lat() { # lat URL COUNT -> "p50 p99" in ms over one keep-alive connection
  python3 - "$1" "$2" <<'PY'
import sys, time, http.client, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1]); c = http.client.HTTPConnection(u.hostname, u.port)
path = u.path + ("?" + u.query if u.query else ""); ts = []
for _ in range(int(sys.argv[2])):  # "{n}" in the URL: the request's number
    t = time.perf_counter(); c.request("GET", path.replace("{n}", str(_))); r = c.getresponse(); r.read(); ts.append((time.perf_counter() - t) * 1000)
    assert r.status == 200, r.status
ts.sort(); print(f"p50 {ts[len(ts)//2]:.2f} ms, p99 {ts[int(len(ts)*0.99)-1]:.2f} ms")
PY
}
log "smtpsrv-inbox vs maildev, $(date -u), load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# maildev (in memory) and smtpsrv-inbox (SQLite file, WAL, FTS5) take turns,
# ROUNDS times, so that both see the same machine load.
md_dir=${MAILDEV_DIR:-$work/md}
if [[ ! -x "$md_dir/node_modules/.bin/maildev" ]]; then
  mkdir -p "$md_dir"; (cd "$md_dir" && npm install --no-audit --no-fund maildev@3 >/dev/null 2>&1)
fi
md_version=$(node -e 'console.log(require(process.argv[1]).version)' "$md_dir/node_modules/maildev/package.json")
target/release/smtpsrv-inbox --smtp 127.0.0.1:22025 --listen 127.0.0.1:28025 --max 0 \
  --database "$work/inbox.db" --quiet >/dev/null & ib=$!
timeout 10 bash -c 'until (echo >/dev/tcp/127.0.0.1/22025) 2>/dev/null; do sleep 0.2; done'
sent=0
for round in $(seq "${ROUNDS:-2}"); do
  "$md_dir/node_modules/.bin/maildev" --ip 127.0.0.1 --smtp 21025 --web 21080 --silent >/dev/null 2>&1 & md=$!
  if timeout 20 bash -c 'until (echo >/dev/tcp/127.0.0.1/21025) 2>/dev/null; do sleep 0.2; done'; then
    log "round $round: maildev $md_version: W1 ingest $(ingest 21025 "$N") msgs/s ($N x 10 KiB, load $(cut -d' ' -f1 /proc/loadavg)), RSS $(rss $md)"
  else
    log "round $round: maildev $md_version did not listen on 127.0.0.1:21025 (node $(node --version))"
  fi
  kill $md 2>/dev/null; wait $md 2>/dev/null || true
  log "round $round: smtpsrv-inbox: W1 ingest $(ingest 22025 "$N") msgs/s ($N x 10 KiB, load $(cut -d' ' -f1 /proc/loadavg)), RSS $(rss $ib)"
  sent=$((sent + N))
done
stored=$(curl -s "http://127.0.0.1:28025/api/v1/messages?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
found=$(curl -s "http://127.0.0.1:28025/api/v1/search?query=from:a@example.com&limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages_count"])')
log "  stored after the runs: $stored, found by search: $found (smtp-source got 250 for $sent)"
python3 -c 'import smtplib; smtplib.SMTP("127.0.0.1", 22025).sendmail("ann@example.com", ["bob@example.com"], "From: ann@example.com\r\nTo: bob@example.com\r\nSubject: needle quarterly\r\n\r\nhi\r\n")'
for at in 10000 "$FILL"; do
  have=$(curl -s "http://127.0.0.1:28025/api/v1/messages?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
  if (( have < at )); then ingest 22025 $((at - have)) >/dev/null; fi
  # One message read, so that counting the unread among the matches takes
  # the general path (not the all-unread shortcut).
  needle=$(curl -s "http://127.0.0.1:28025/api/v1/search?query=subject:needle" | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"][0]["ID"])' || true)
  curl -s -X PUT -d "{\"IDs\":[\"$needle\"],\"Read\":true}" http://127.0.0.1:28025/api/v1/messages >/dev/null
  log "with $at stored: RSS $(rss $ib), database $(du -m "$work/inbox.db" | cut -f1) MiB"
  log "  GET / (UI page)                         $(lat http://127.0.0.1:28025/ 500)"
  log "  GET /api/v1/messages (50)               $(lat 'http://127.0.0.1:28025/api/v1/messages' 500)"
  log "  GET /api/v1/messages?start=5000         $(lat 'http://127.0.0.1:28025/api/v1/messages?start=5000' 200)"
  log "  search subject:needle (1 match)         $(lat 'http://127.0.0.1:28025/api/v1/search?query=subject:needle' 500)"
  log "  search from:a@example.com (all match)   $(lat 'http://127.0.0.1:28025/api/v1/search?query=from:a@example.com' 200)"
  log "  search example (all match, any field)   $(lat 'http://127.0.0.1:28025/api/v1/search?query=example' 200)"
  # A different query each time (a negated word that matches nothing):
  # never answered from the per-snapshot cache, one full pass each.
  log "  search from:a@example.com -zzN (uncached) $(lat 'http://127.0.0.1:28025/api/v1/search?query=from:a@example.com+-zz{n}' 100)"
  log "  search example -zzN (uncached)          $(lat 'http://127.0.0.1:28025/api/v1/search?query=example+-zz{n}' 100)"
  log "  search is:unread (flag, SQL path)       $(lat 'http://127.0.0.1:28025/api/v1/search?query=is:unread' 100)"
done
kill -TERM $ib; wait $ib 2>/dev/null || true
log "report: $report"
