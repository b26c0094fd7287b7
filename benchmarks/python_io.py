#!/usr/bin/python3
"""Python's own reading and writing of a graph file, the yardstick of issue 8.

    python_io.py --graph=PATH [--reps=N] [--nodemeta-bench=BIN --nodemeta-cli=BIN]

Prints one JSON line: the median of N runs (after one untimed run) of
- load: json.load(open(PATH)) (for .gz: json.load(gzip.open(PATH, "rt")));
- dump: json.dump(doc, f) of the loaded document to a file in $TMPDIR (for .gz through
  gzip.open(..., "wt")), as compact as the file (separators without spaces).

With --nodemeta-bench (nodemeta_io_benchmark) and --nodemeta-cli (the nodemeta command),
both sides are measured interleaved, repetition by repetition, so that load from other
processes falls on both alike:
- warm: Python's json.load in this process, then nodemeta_io_benchmark --reps=1 (its load
  after one untimed load, in its own process) on every core, as load_graph runs by default
  and as `nodemeta run` loads in the cold column (a graph of 1 MiB or more in parts);
- cold: the first json.load in a fresh /usr/bin/python3 (imports done before the clock), then
  `nodemeta run GRAPH`'s reported load in a fresh process.
It adds the medians, the MB/s of JSON text of each, each series' spread ((max - min) /
median) and "noisy": a reason (a spread over 30%, or Python's warm rate outside 20-2000
MB/s, the sane range of json.load) for which report.py gives no verdict for the row, or null.
"""
import argparse
import gzip
import json
import os
import re
import statistics
import subprocess
import tempfile
import time

SPREAD_LIMIT = 0.30
PYTHON_SANE_MBPS = (20.0, 2000.0)
COLD_PYTHON = (
    "import gzip, json, sys, time\n"
    "p = sys.argv[1]\n"
    "t0 = time.perf_counter()\n"
    "f = gzip.open(p, 'rt', encoding='utf-8') if p.endswith('.gz') else open(p, encoding='utf-8')\n"
    "json.load(f)\n"
    "print((time.perf_counter() - t0) * 1e3)\n")


def spread(xs):
    m = statistics.median(xs)
    return (max(xs) - min(xs)) / m if m else 0.0


def interleaved(graph, reps, bench, cli, load):
    """Warm and cold loads of both sides, alternating; returns the fields to add."""
    text_bytes = None
    py_warm, nm_warm, py_cold, nm_cold = [], [], [], []
    load()  # untimed
    for _ in range(reps):
        t0 = time.perf_counter()
        load()
        py_warm.append((time.perf_counter() - t0) * 1e3)
        r = json.loads(subprocess.run([bench, "--graph=" + graph, "--reps=1", f"--threads={os.cpu_count() or 1}"], check=True,
                                      capture_output=True, text=True).stdout.splitlines()[-1])
        nm_warm.append(r["load_ms"])
        text_bytes = r["inflated_bytes"]
        py_cold.append(float(subprocess.run(["/usr/bin/python3", "-c", COLD_PYTHON, graph], check=True,
                                            capture_output=True, text=True).stdout))
        out = subprocess.run([cli, "run", graph], capture_output=True, text=True).stdout
        m = re.search(r"loaded in ([0-9.]+) ms", out)
        if m is None:
            raise SystemExit("python_io.py: no load time in `nodemeta run`'s output:\n" + out)
        nm_cold.append(float(m.group(1)))
    mb = text_bytes / 1e6
    res = {"json_bytes": text_bytes}
    noisy = []
    for name, xs in (("python_warm", py_warm), ("nodemeta_warm", nm_warm), ("python_cold", py_cold),
                     ("nodemeta_cold", nm_cold)):
        med = statistics.median(xs)
        res[name + "_ms"] = med
        res[name + "_mbps"] = mb / (med / 1e3)
        res[name + "_spread"] = spread(xs)
        if res[name + "_spread"] > SPREAD_LIMIT:
            noisy.append("%s spread %.0f%%" % (name, 100 * res[name + "_spread"]))
    lo, hi = PYTHON_SANE_MBPS
    if not lo <= res["python_warm_mbps"] <= hi:
        noisy.append("python rate %.0f MB/s outside %g-%g" % (res["python_warm_mbps"], lo, hi))
    res["noisy"] = "; ".join(noisy) or None
    return res


def opener(path, mode):
    return gzip.open(path, mode + "t", encoding="utf-8") if path.endswith(".gz") else open(path, mode, encoding="utf-8")


def median_ms(reps, fn):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--graph", required=True)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--nodemeta-bench", help="nodemeta_io_benchmark, to measure interleaved")
    ap.add_argument("--nodemeta-cli", help="the nodemeta command, for nodemeta's cold load")
    args = ap.parse_args()

    def load():
        with opener(args.graph, "r") as f:
            return json.load(f)

    doc = load()
    out = os.path.join(tempfile.gettempdir(), "nodemeta_python_io_%d%s" % (os.getpid(), ".json.gz" if args.graph.endswith(".gz") else ".json"))

    def dump():
        with opener(out, "w") as f:
            json.dump(doc, f, separators=(",", ":"))

    res = {"graph": os.path.basename(args.graph)}
    if args.nodemeta_bench and args.nodemeta_cli:
        res.update(interleaved(args.graph, args.reps, args.nodemeta_bench, args.nodemeta_cli, load))
        res["python_load_ms"] = res["python_warm_ms"]
    else:
        res["python_load_ms"] = median_ms(args.reps, load)
    res["python_dump_ms"] = median_ms(args.reps, dump)
    os.remove(out)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
