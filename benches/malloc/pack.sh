#!/usr/bin/env bash
# Packs what run.sh and classes.sh need into one folder, for a machine with no compiler, package
# manager or network: their C programs, libpercpu_malloc.so and the peers' libraries as installed
# here (the target needs only a compatible glibc and libstdc++). There, from a checkout:
#
#   MALLOC_BENCH_PACK=DIR benches/malloc/run.sh ...
#
# usage: benches/malloc/pack.sh DIR
set -euo pipefail
dir=${1:?usage: benches/malloc/pack.sh DIR}
cd "$(dirname "$0")/../.."
source benches/malloc/allocators.sh
mkdir -p "$dir"
for name in shapes classes norseq; do
    cp "$(program "$name")" "$dir/"
done
for a in percpu mimalloc jemalloc tcmalloc; do
    cp -L "${lib[$a]}" "$dir/$(basename "${lib[$a]}")"
done
ls -l "$dir"
