#!/usr/bin/env bash
# Load benchmark: smtpsrv's mailsink example versus Postfix's smtp-sink and
# ../shared/floor-sink (the floor), all driven by Postfix's smtp-source over
# 127.0.0.1.  See benches/README.md.
#
#   benches/load/run.sh              # all workloads W1..W5
#   benches/load/run.sh W1 W3        # a selection
#   SCALE=0.1 benches/load/run.sh    # quick run with 10% of the messages
#   REPEAT=3 benches/load/run.sh     # three runs each, the table shows medians
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

log() { printf '[load] %s\n' "$*" >&2; }

# --- Postfix's smtp-sink / smtp-source, without ever starting Postfix itself.
install_postfix_tools() {
    if [[ -x /usr/sbin/smtp-sink && -x /usr/sbin/smtp-source ]]; then
        return
    fi
    if [[ $(id -u) -ne 0 ]]; then
        log "smtp-sink/smtp-source missing and not root: install the 'postfix' package"
        exit 1
    fi
    log "installing postfix (for smtp-sink and smtp-source; the daemon stays off)"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        # Exit 101 tells invoke-rc.d not to start any service during the install.
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null
    if [[ $made_policy -eq 1 ]]; then
        rm -f /usr/sbin/policy-rc.d
    fi
    if pgrep -x master >/dev/null; then
        log "a Postfix 'master' process is running after the install; stop it before benchmarking"
        exit 1
    fi
}

install_postfix_tools
command -v python3 >/dev/null || { log "python3 is required"; exit 1; }

# --- Our server: build mailsink unless the command is overridden.
if [[ -z "${SMTPSRV_CMD:-}" ]]; then
    target_dir="${CARGO_TARGET_DIR:-$repo/target}"
    log "building mailsink (cargo build --release --example mailsink)"
    cargo build --release --example mailsink
    export MAILSINK_BIN="$target_dir/release/examples/mailsink"
    [[ -x "$MAILSINK_BIN" ]] || { log "no binary at $MAILSINK_BIN"; exit 1; }
fi

# --- The floor: ../shared/floor-sink beside the repository (as in CI's
# clone), or FLOOR_SINK_DIR; built into the project's target directory.
# Without it the report has two servers.
if [[ -z "${FLOOR_SINK_BIN:-}" && -z "${FLOOR_CMD:-}" ]]; then
    floor_dir="${FLOOR_SINK_DIR:-$repo/../shared/floor-sink}"
    if [[ -f "$floor_dir/Cargo.toml" ]]; then
        floor_target="${CARGO_TARGET_DIR:-$repo/target}/floor-sink"
        log "building floor-sink ($floor_dir)"
        cargo build --release --manifest-path "$floor_dir/Cargo.toml" --target-dir "$floor_target"
        export FLOOR_SINK_BIN="$floor_target/release/floor-sink"
    else
        log "no floor-sink at $floor_dir (set FLOOR_SINK_DIR); reporting without the floor"
    fi
fi

# --- Enough file descriptors for W4's idle connections on both sides.
want_fds=$(( ${W4_CONNS:-5000} * 2 + 1024 ))
hard_fds=$(ulimit -Hn)
if [[ $hard_fds != unlimited && $hard_fds -lt $want_fds ]]; then
    want_fds=$hard_fds
fi
ulimit -n "$want_fds"

export BENCH_OUT_DIR="${BENCH_OUT_DIR:-$repo/target/bench}"

# --- Run the driver; whatever happens, no server or client outlives us.
driver_pid=""
cleanup() {
    if [[ -n $driver_pid ]] && kill -0 "$driver_pid" 2>/dev/null; then
        kill -TERM "$driver_pid" 2>/dev/null || true
        wait "$driver_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

python3 "$here/bench.py" "$@" &
driver_pid=$!
status=0
wait "$driver_pid" || status=$?
driver_pid=""
exit "$status"
