#!/usr/bin/env bash
# Real programs under LD_PRELOAD, as people try an allocator: python3 (dicts, strings, lists),
# sqlite3 (an in-memory table of 300,000 rows, indexed and queried), sort (a 34 MB file) and the
# C compiler (compiling shapes.c at -O2), each with glibc, percpu (libpercpu_malloc.so) and
# Debian's mimalloc, jemalloc and tcmalloc. Each round runs every allocator once, in an order
# that rotates between rounds; reports each one's median wall time, its ratio to percpu's, and
# its median peak RSS, as Markdown. Every run's output must equal glibc's: a difference stops
# the script.
#
# usage: benches/malloc/programs.sh [ROUNDS (5)]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}
source benches/malloc/allocators.sh
for tool in python3 sqlite3 sort cc; do
    command -v "$tool" >/dev/null || { echo "$tool: not installed" >&2; exit 1; }
done
# The interpreter itself, not a wrapper (pyenv's shims are shell scripts that start several
# processes before it).
python=$(python3 -c 'import sys; print(sys.executable)')

cat >"$work/program.py" <<'PY'
table = {}
for i in range(400_000):
    table[str(i)] = [i, str(i) * 3, (i, i + 1)]
total = sum(len(v[1]) for v in table.values())
del table
blobs = [bytes(i % 200) for i in range(300_000)]
words = sorted({str(i * 7919 % 100_003) for i in range(200_000)})
print(total, len(blobs), len(words), words[:3])
PY
cat >"$work/program.sql" <<'SQL'
CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT, c REAL);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000)
INSERT INTO t SELECT i, hex(i * 2654435761 % 4294967296), i * 0.5 FROM n;
CREATE INDEX tb ON t(b);
SELECT count(*), sum(c) FROM t WHERE b > '8';
SELECT b FROM t ORDER BY b LIMIT 3;
SQL
sort_input=$work/program-sort.txt
[ -s "$sort_input" ] ||
    python3 -c "
import random
random.seed(7)
print('\n'.join(f'{random.getrandbits(48):x} {random.random():.6f} line {i}' for i in range(1_000_000)))
" >"$sort_input"

launcher=$(program peakrss)

python3 - "$rounds" "$work" "$sort_input" "$launcher" "$python" \
    "${lib[glibc]}" "${lib[percpu]}" "${lib[mimalloc]}" "${lib[jemalloc]}" "${lib[tcmalloc]}" <<'PY'
import hashlib, os, platform, statistics, subprocess, sys

rounds, work, sort_input, launcher, python = sys.argv[1:6]
rounds = int(rounds)
names = ["glibc", "percpu", "mimalloc", "jemalloc", "tcmalloc"]
libs = dict(zip(names, sys.argv[6:11]))
measured = f"{work}/program-measured.txt"
programs = {
    "python3": ([python, f"{work}/program.py"], None),
    "sqlite3": (["sqlite3", ":memory:"], f"{work}/program.sql"),
    "sort": (["sort", "-S", "512M", sort_input], None),
    "cc -O2": (["cc", "-O2", "-c", "-o", "/dev/null", "benches/malloc/shapes.c"], None),
}

def run(argv, stdin, lib):
    """Runs `argv` under `lib` (the launcher itself without it): seconds, peak RSS in KiB, and
    a digest of its output."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if lib:
        env["LD_PRELOAD"] = lib
    with open(stdin or os.devnull, "rb") as inp:
        child = subprocess.run([launcher, measured, *argv], stdin=inp, capture_output=True, env=env)
    if child.returncode != 0:
        sys.exit(f"{argv[0]} under {lib or 'glibc'}: exit status {child.returncode}")
    seconds, rss = open(measured).read().split()
    return float(seconds), int(rss), hashlib.sha256(child.stdout).hexdigest()

results = {}
for name, (argv, stdin) in programs.items():
    expected = run(argv, stdin, "")[2]
    for r in range(rounds):
        for i in range(len(names)):
            a = names[(i + r) % len(names)]
            seconds, rss, digest = run(argv, stdin, libs[a])
            if digest != expected:
                sys.exit(f"{name} under {a}: output differs from glibc's")
            results.setdefault(name, {}).setdefault(a, []).append((seconds, rss))
    print(f"{name} done", file=sys.stderr)

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"Machine: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}; {rounds} rounds\n")
print("median seconds (ratio to percpu's), median peak RSS MiB; **bold**: fastest, smallest\n")
print("| program | " + " | ".join(names) + " |")
print("|---|" + "---:|" * len(names))
for name, by in results.items():
    med = {a: statistics.median(s for s, _ in by[a]) for a in names}
    rss = {a: statistics.median(m for _, m in by[a]) / 1024 for a in names}
    cells = []
    for a in names:
        t = f"{med[a]:.3f}"
        if med[a] == min(med.values()):
            t = f"**{t}**"
        m = f"{rss[a]:.1f}"
        if rss[a] == min(rss.values()):
            m = f"**{m}**"
        cells.append(f"{t} ({med[a] / med['percpu']:.2f}), {m}")
    print(f"| {name} | " + " | ".join(cells) + " |")
PY
