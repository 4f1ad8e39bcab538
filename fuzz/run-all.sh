#!/usr/bin/env bash
# Runs every fuzz target for SECS seconds (default 120) from the committed
# seeds, printing the final exec count and coverage of each.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-120}
for t in command address params proxy data session; do
  mkdir -p corpus/$t
  RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$t" corpus/$t seeds/$t -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 \
    | grep -E "^#[0-9]+.*(DONE|pulse)|Done|ERROR|panicked" | tail -2 | sed "s/^/$t: /"
done
