#!/usr/bin/env python3
"""Tabulates criterion results for one benchmark family as Markdown, with ratios.

usage: summarize.py FAMILY CRITERION_DIR [PARAMETER_NAME]

Reads CRITERION_DIR/FAMILY_<contender>/<threads>/new/estimates.json (criterion's directory for
the benchmark group "FAMILY/<contender>"; the parameter is a thread count unless named otherwise), where one iteration is one
operation on every thread at once, so the median is nanoseconds per operation per thread.
"""
import json
import os
import platform
import sys


def load(root, family):
    results = {}
    prefix = family + "_"
    for entry in sorted(os.listdir(root)):
        cdir = os.path.join(root, entry)
        if not entry.startswith(prefix) or not os.path.isdir(cdir):
            continue
        contender = entry[len(prefix):]
        for threads in os.listdir(cdir):
            est = os.path.join(cdir, threads, "new", "estimates.json")
            if threads.isdigit() and os.path.exists(est):
                with open(est) as f:
                    results.setdefault(contender, {})[int(threads)] = json.load(f)["median"]["point_estimate"]
    return results


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main():
    family, root = sys.argv[1], sys.argv[2]
    label = sys.argv[3] if len(sys.argv) > 3 else "threads"
    results = load(root, family)
    if not results:
        sys.exit(f"no {family}_* results under {root}")
    contenders = list(results)
    threads = sorted({t for r in results.values() for t in r})
    print(f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, Linux {platform.release()}\n")
    print("ns per operation per thread (median; lower is better)\n")
    print(f"| {label} | " + " | ".join(contenders) + " |")
    print("|---:|" + "---:|" * len(contenders))
    for t in threads:
        cells = [f"{results[c][t]:.2f}" if t in results[c] else "–" for c in contenders]
        print(f"| {t} | " + " | ".join(cells) + " |")
    base = "percpu_rseq" if "percpu_rseq" in results else contenders[0]
    others = [c for c in contenders if c != base]
    print(f"\nratio: contender time / {base} time (above 1: {base} is faster)\n")
    print(f"| {label} | " + " | ".join(others) + " |")
    print("|---:|" + "---:|" * len(others))
    for t in threads:
        cells = [
            f"{results[c][t] / results[base][t]:.2f}×" if t in results[c] and t in results[base] else "–"
            for c in others
        ]
        print(f"| {t} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
