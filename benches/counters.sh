#!/usr/bin/env bash
# Counter benchmark, both paths side by side: the rseq run (all contenders), then the same
# binary with PERCPU_FORCE_FALLBACK=1 (percpu's fallback path only), then one table.
# Usage: benches/counters.sh [extra criterion args]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p percpu-benches --bench counters -- "$@"
PERCPU_FORCE_FALLBACK=1 cargo bench -p percpu-benches --bench counters -- "$@"
python3 benches/summarize.py counter target/criterion
