#!/usr/bin/python3
"""Python's own reading and writing of a graph file, the yardstick of issue 8.

    python_io.py --graph=PATH [--reps=N]

Prints one JSON line: the median of N runs (after one untimed run) of
- load: json.load(open(PATH)) (for .gz: json.load(gzip.open(PATH, "rt")));
- dump: json.dump(doc, f) of the loaded document to a file in $TMPDIR (for .gz through
  gzip.open(..., "wt")), as compact as the file (separators without spaces).
"""
import argparse
import gzip
import json
import os
import statistics
import tempfile
import time


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
    args = ap.parse_args()

    def load():
        with opener(args.graph, "r") as f:
            return json.load(f)

    doc = load()
    out = os.path.join(tempfile.gettempdir(), "nodemeta_python_io_%d%s" % (os.getpid(), ".json.gz" if args.graph.endswith(".gz") else ".json"))

    def dump():
        with opener(out, "w") as f:
            json.dump(doc, f, separators=(",", ":"))

    load_ms = median_ms(args.reps, load)
    dump_ms = median_ms(args.reps, dump)
    os.remove(out)
    print(json.dumps({"graph": os.path.basename(args.graph), "python_load_ms": load_ms, "python_dump_ms": dump_ms}))


if __name__ == "__main__":
    main()
