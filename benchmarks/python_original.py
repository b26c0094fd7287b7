#!/usr/bin/env python3
"""The Python original, timed on W1, W1o and W3 (one thread) and measured for bytes per node.

The NodeMetadata class below is written out from PyTorch's
torch/_export/pass_infra/node_metadata.py (a dict held by a small wrapper, five protected
keys, RuntimeError on a later write to one of them), so nodemeta can be compared with what
it replaces without installing PyTorch.

  python3 benchmarks/python_original.py --mode=speed    # W1, W1o, W3: items/s, JSON on stdout
  python3 benchmarks/python_original.py --mode=memory   # bytes/node (RSS growth), JSON on stdout
  python3 benchmarks/python_original.py --mode=graph --graph=PATH   # a real graph's metadata

Run each mode in its own process (scripts/bench does), so the RSS growth is clean.
"""
import argparse
import ctypes
import gzip
import json
import os
import platform
import statistics
import time
from typing import Any, Dict, Set

# --- from torch/_export/pass_infra/node_metadata.py ------------------------------------------
NodeMetadataValue = Any

PROTECTED_KEYS: Set[str] = {
    "val",
    "stack_trace",
    "nn_module_stack",
    "debug_handle",
    "tensor_meta",
}


class NodeMetadata:
    def __init__(self, data: Dict[str, Any]) -> None:
        self.data: Dict[str, Any] = data.copy()

    def __getitem__(self, key: str) -> NodeMetadataValue:
        return self.data[key]

    def __setitem__(self, key: str, value: NodeMetadataValue) -> NodeMetadataValue:
        if key in PROTECTED_KEYS:
            raise RuntimeError(f"Could not override node key: {key}")
        self.data[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def copy(self) -> "NodeMetadata":
        return NodeMetadata(self.data.copy())
# --- end of the original -----------------------------------------------------------------------

NODES = 100_000  # the C++ workloads' graph size
PROTECTED = ["val", "stack_trace", "nn_module_stack", "debug_handle", "tensor_meta"]
PASS_KEY = "pass_flops"


def seeded(i: int, with_pass_key: bool = False) -> NodeMetadata:
    # Five protected keys with distinct integer values, like the C++ workloads.
    data = {k: i * 8 + j for j, k in enumerate(PROTECTED)}
    if with_pass_key:
        data[PASS_KEY] = -1
    return NodeMetadata(data)


def w1(nodes) -> None:  # per node: set a pass key, read "val"
    for i, md in enumerate(nodes):
        md[PASS_KEY] = i
        md["val"]


def w3_set(nodes) -> int:  # the throwing write, caught
    rejected = 0
    keys = PROTECTED
    for i, md in enumerate(nodes):
        try:
            md[keys[i % 5]] = 1
        except RuntimeError:
            rejected += 1
    return rejected


def w3_contains(nodes) -> int:  # the presence test the rejection is compared with
    found = 0
    keys = PROTECTED
    for i, md in enumerate(nodes):
        if keys[i % 5] in md:
            found += 1
    return found


def timed(fn, make_nodes, repeats: int) -> float:
    """Median items/s of `repeats` runs; the graph is rebuilt, untimed, before each run."""
    rates = []
    for _ in range(repeats):
        nodes = make_nodes()
        t0 = time.perf_counter()
        fn(nodes)
        rates.append(len(nodes) / (time.perf_counter() - t0))
    return statistics.median(rates)


def speed(repeats: int) -> Dict[str, Any]:
    fresh = lambda: [seeded(i) for i in range(NODES)]  # noqa: E731
    present = lambda: [seeded(i, True) for i in range(NODES)]  # noqa: E731
    return {
        "W1_fresh": timed(w1, fresh, repeats),
        "W1o_overwrite": timed(w1, present, repeats),
        "W3_set_throw": timed(w3_set, fresh, repeats),
        "W3_contains": timed(w3_contains, fresh, repeats),
    }


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory(nodes: int) -> Dict[str, Any]:
    warm = [seeded(i) for i in range(16)]  # noqa: F841  (warms the allocator, like the C++ side)
    del warm
    before = rss_bytes()
    graph = [seeded(i) for i in range(nodes)]
    after = rss_bytes()
    assert len(graph) == nodes
    return {"nodes": nodes, "keys_per_node": 5, "rss_before": before, "rss_after": after,
            "bytes_per_node": (after - before) / nodes}


def graph_memory(path: str) -> Dict[str, Any]:
    """RSS growth of parsing a real graph into the original's form: one NodeMetadata per node
    plus the node's name, op, target and inputs (as nodemeta's Graph holds them). The file is
    read (and inflated) first and freed memory is trimmed, as on the C++ side."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    before = rss_bytes()
    data = json.loads(text)
    nodes = [(n["name"], n["op"], n["target"], n["inputs"], NodeMetadata(n["meta"])) for n in data["nodes"]]
    del data  # the graph-level fields; every node's dicts stay alive in `nodes`
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # as on the C++ side: count what the graph holds
    after = rss_bytes()
    return {"graph": os.path.basename(path), "nodes": len(nodes), "rss_before": before, "rss_after": after,
            "bytes_per_node": (after - before) / len(nodes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["speed", "memory", "graph"], required=True)
    ap.add_argument("--graph", help="graph mode: a graph file (.json or .json.gz)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=1_000_000, help="memory mode: graph size")
    args = ap.parse_args()
    result: Dict[str, Any] = {"impl": "python_original", "python": platform.python_version()}
    if args.mode == "graph":
        result.update(graph_memory(args.graph))
    else:
        result.update(speed(args.repeats) if args.mode == "speed" else memory(args.nodes))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
