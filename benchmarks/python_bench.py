#!/usr/bin/env python3
"""nodemeta from Python against what it replaces, side by side in one process.

  --mode=ops      per operation, one thread: md[k] = v, md[k], k in md, try_set, on
                  nodemeta.NodeMetadata and on PyTorch's class (benchmarks/python_original.py;
                  its try_set is the obvious method on top of its dict). Reps interleaved.
  --mode=passes   cost, propagate, verify on a traced torchvision ResNet-50 (ShapeProp'd):
                  nodemeta.fx.run_passes at 1 and 2 threads against the same passes written in
                  plain Python over node.meta (benchmarks/python_passes.py), after checking
                  that both give the same per-node results.

Prints one JSON object. Needs nodemeta importable (PYTHONPATH=build/release/python).
"""
import argparse
import copy
import json
import os
import pathlib
import platform
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import python_original as original  # noqa: E402
import nodemeta  # noqa: E402

PROTECTED = ["val", "stack_trace", "nn_module_stack", "debug_handle", "tensor_meta"]


class OriginalWithTrySet(original.NodeMetadata):
    """PyTorch's class plus the try_set a user would add: no exception on a protected key."""

    def try_set(self, key, value):
        if key in original.PROTECTED_KEYS:
            return nodemeta.WriteResult.REJECTED_PROTECTED
        existed = key in self.data
        self.data[key] = value
        return nodemeta.WriteResult.UPDATED if existed else nodemeta.WriteResult.INSERTED


def make_nodes(cls, n):
    return [cls({k: i * 8 + j for j, k in enumerate(PROTECTED)} | {"flops": -1}) for i in range(n)]


def op_set_int(nodes, rounds):
    for r in range(rounds):
        for md in nodes:
            md["flops"] = r


def op_set_list(nodes, rounds):
    v = [1, 2]
    for _ in range(rounds):
        for md in nodes:
            md["flops"] = v


def op_set_str(nodes, rounds):
    v = "torch.float32"
    for _ in range(rounds):
        for md in nodes:
            md["flops"] = v


def op_get(nodes, rounds):
    for _ in range(rounds):
        for md in nodes:
            md["val"]


def op_contains(nodes, rounds):
    for _ in range(rounds):
        for md in nodes:
            "val" in md


def op_try_set(nodes, rounds):
    for r in range(rounds):
        for md in nodes:
            md.try_set("flops", r)


def op_try_set_protected(nodes, rounds):
    for r in range(rounds):
        for md in nodes:
            md.try_set("val", r)


def op_loop(nodes, rounds):  # the loop alone, subtracted from every row
    for _ in range(rounds):
        for md in nodes:
            pass


OPS = [
    ("md[k] = v (int)", op_set_int),
    ("md[k] = v (str)", op_set_str),
    ("md[k] = v (list)", op_set_list),
    ("md[k]", op_get),
    ("k in md", op_contains),
    ("try_set (inserted/updated)", op_try_set),
    ("try_set (protected)", op_try_set_protected),
]


def timed(fn, nodes, rounds):
    t = time.perf_counter()
    fn(nodes, rounds)
    return time.perf_counter() - t


def mode_ops(reps, n, rounds):
    impls = {"original": make_nodes(OriginalWithTrySet, n), "nodemeta": make_nodes(nodemeta.NodeMetadata, n)}
    samples = {(op, impl): [] for op, _ in OPS for impl in impls}
    loop = []
    for _ in range(reps):
        loop.append(timed(op_loop, impls["original"], rounds))
        for op, fn in OPS:
            for impl, nodes in impls.items():  # interleaved: noise hits both
                samples[(op, impl)].append(timed(fn, nodes, rounds))
    per = n * rounds
    loop_ns = statistics.median(loop) / per * 1e9
    rows = []
    for op, _ in OPS:
        o = statistics.median(samples[(op, "original")]) / per * 1e9 - loop_ns
        m = statistics.median(samples[(op, "nodemeta")]) / per * 1e9 - loop_ns
        rows.append({"op": op, "original_ns": round(o, 1), "nodemeta_ns": round(m, 1),
                     "speedup": round(o / m, 2) if m > 0 else None})
    return {"mode": "ops", "nodes": n, "rounds": rounds, "reps": reps, "loop_ns": round(loop_ns, 1), "rows": rows}


def per_node(nodes_meta):
    keys = ("flops", "bytes", "cost_rule", "depth", "critical_path_flops", "critical_path_complete")
    return [{k: meta.get(k) for k in keys} for meta in nodes_meta]


def mode_passes(reps):
    import torch
    import torch.fx
    import torchvision
    from torch.fx.passes.shape_prop import ShapeProp

    import nodemeta.fx
    from nodemeta import _fxjson
    import python_passes

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    tracer = torch.fx.Tracer()
    tracer.record_stack_traces = True
    graph = tracer.trace(model)
    gm = torch.fx.GraphModule(tracer.root, graph)
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.randn(1, 3, 224, 224))
    passes = ("cost", "propagate", "verify")

    # Plain Python: node.meta dicts in the schema's shape (the conversion of torch objects is
    # done once, outside the timing: a user's pass would read TensorMetadata directly).
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}

    def python_nodes():
        out = []
        for n in nodes:
            meta = {k: _fxjson.to_plain(v) for k, v in n.meta.items()}
            for k in _fxjson.SCHEMA_KEYS:
                meta.setdefault(k, {} if k == "nn_module_stack" else None)
            out.append(python_passes.Node(n.name, n.op, _fxjson.target_name(n),
                                          list(dict.fromkeys(index[a] for a in n.all_input_nodes)), meta))
        return out

    attached = copy.deepcopy(gm)
    nodemeta.fx.attach(attached)
    for n in attached.graph.nodes:  # the schema's five keys, as the Python side has them
        for k in _fxjson.SCHEMA_KEYS:
            if k not in n.meta:
                n.meta.set_once(k, {} if k == "nn_module_stack" else None)

    # Same results first.
    py_nodes = python_nodes()
    # The graph attributes run_passes gives the C++ passes, built once, as the conversion is.
    tables = {"modules": _fxjson.module_table(gm), "calls": _fxjson.call_table(gm)}
    python_passes.run_passes(py_nodes, passes, training=gm.training, **tables)
    nodemeta.fx.run_passes(attached, passes, threads=1)
    same = per_node(n.meta for n in py_nodes) == per_node(n.meta for n in attached.graph.nodes)

    samples = {"python": [], "nodemeta_1": [], "nodemeta_2": []}
    for _ in range(reps):
        fresh = python_nodes()
        t = time.perf_counter()
        python_passes.run_passes(fresh, passes, training=gm.training, **tables)
        samples["python"].append(time.perf_counter() - t)
        for threads in (1, 2):
            t = time.perf_counter()
            nodemeta.fx.run_passes(attached, passes, threads=threads)
            samples[f"nodemeta_{threads}"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {"mode": "passes", "model": "resnet50", "nodes": len(nodes), "passes": list(passes), "reps": reps,
            "same_results": same, "python_ms": round(med["python"] * 1e3, 3),
            "nodemeta_1_ms": round(med["nodemeta_1"] * 1e3, 3), "nodemeta_2_ms": round(med["nodemeta_2"] * 1e3, 3),
            "speedup_1": round(med["python"] / med["nodemeta_1"], 2),
            "speedup_2": round(med["python"] / med["nodemeta_2"], 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["ops", "passes"], required=True)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=200)
    a = ap.parse_args()
    result = mode_ops(a.reps, a.nodes, a.rounds) if a.mode == "ops" else mode_passes(a.reps)
    result["python"] = platform.python_version()
    result["nodemeta_from"] = os.path.dirname(nodemeta.__file__)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
