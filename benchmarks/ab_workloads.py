#!/usr/bin/python3
"""Two builds of nodemeta_workloads_benchmark side by side, interleaved in one driver.

Each round runs every row in build A, then in build B (the order alternates between rounds),
so a burst of load from other processes falls on both. A row is a --benchmark_filter regex
with {} where the implementation goes; nodemeta and (d) absl run in the same process, so
each build also gives its ratio to (d). Prints medians over the rounds.

  benchmarks/ab_workloads.py --a build/release/benchmarks/nodemeta_workloads_benchmark \\
      --b /tmp/old/nodemeta_workloads_benchmark --b-lib /tmp/old --rounds 3 \\
      'W1_fresh/{}/real_time/threads:1$' 'W5_mixed_s0.99/{}/real_time/threads:1$'

--cpu: rates per CPU-second instead of per wall-second (less sensitive to preemption on a
loaded machine; the verdicts in docs/benchmarks.md use wall time).
"""
import argparse
import os
import re
import statistics
import subprocess

UNITS = {"G": 1e3, "M": 1.0, "k": 1e-3, "": 1e-6}


def run(binary, lib, row, min_time, cpu):
    env = dict(os.environ)
    if lib:
        env["LD_LIBRARY_PATH"] = lib
    out = subprocess.run([binary, "--benchmark_filter=" + row.format("(nodemeta|d_absl_flat_mutex)"),
                          "--benchmark_min_time=%s" % min_time],
                         capture_output=True, text=True, env=env, check=True).stdout
    rates = {}
    for line in out.splitlines():
        m = re.match(r"(\S+)\s+([\d.]+) ns\s+([\d.]+) ns.*items_per_second=([\d.]+)([GMk]?)/s", line)
        if m:
            rate = float(m.group(4)) * UNITS[m.group(5)]
            if cpu:
                rate *= float(m.group(2)) / float(m.group(3))
            rates["nodemeta" if "/nodemeta/" in m.group(1) else "absl"] = rate
    if set(rates) != {"nodemeta", "absl"}:
        raise SystemExit("row %r: expected a nodemeta and a (d) result, got %r" % (row, rates))
    return rates


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="build A's benchmark binary")
    p.add_argument("--a-lib", default="", help="LD_LIBRARY_PATH for A")
    p.add_argument("--b", required=True, help="build B's benchmark binary")
    p.add_argument("--b-lib", default="", help="LD_LIBRARY_PATH for B")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-time", default="0.2")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("rows", nargs="+")
    args = p.parse_args()
    results = {}
    for r in range(args.rounds):
        builds = [("A", args.a, args.a_lib), ("B", args.b, args.b_lib)]
        if r % 2:
            builds.reverse()
        for row in args.rows:
            for name, binary, lib in builds:
                results.setdefault((row, name), []).append(run(binary, lib, row, args.min_time, args.cpu))
    print("| row | A | B | A / B | A / (d) | B / (d) | A's samples |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for row in args.rows:
        a, b = results[(row, "A")], results[(row, "B")]
        am = statistics.median(x["nodemeta"] for x in a)
        bm = statistics.median(x["nodemeta"] for x in b)
        ad = statistics.median(x["nodemeta"] / x["absl"] for x in a)
        bd = statistics.median(x["nodemeta"] / x["absl"] for x in b)
        samples = ", ".join("%.1f" % x["nodemeta"] for x in a)
        print("| %s | %.2f M/s | %.2f M/s | %.2fx | %.2fx | %.2fx | %s |"
              % (row.format("*"), am, bm, am / bm, ad, bd, samples))


if __name__ == "__main__":
    main()
