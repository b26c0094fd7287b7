#!/usr/bin/python3
"""nodemeta.NodeMetadata against the plain dict it replaces as torch.fx's ``node.meta``,
per operation, and per pass, interleaved in one process.

  --mode=ops     timeit per op (one thread): reads, writes of each value type, iteration,
                 copy, creation, on dict, on nodemeta.NodeMetadata (a store without
                 protected keys, as a torch.fx user replacing node.meta would use), on
                 PyTorch's class (benchmarks/python_original.py) where it has the op, and
                 for md[k], k in md and len(md) on a types.MappingProxyType of a dict (the
                 floor for any mapping that is not exactly a dict). Repetitions interleave
                 them, so noise hits all of them.
  --mode=passes  on a traced torchvision model: (a) a Python pass that reads tensor_meta
                 and writes one key per node, (b) ShapeProp then that pass, each on the
                 graph with dict metas and with NodeMetadata metas (attached), interleaved;
                 (a) also with PyTorch's class wrapping each node.meta after ShapeProp
                 (which it cannot follow: tensor_meta is one of its protected keys), the
                 pass written with `in` and `[]` (the class has no get), against a dict
                 running that same form.

Prints a table (and with --json one JSON object). Needs nodemeta importable
(PYTHONPATH=build/release/python); --mode=passes and the TensorMetadata / FakeTensor rows
need torch (the rows are left out without it).
"""
import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import timeit
import types

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import python_original as original  # noqa: E402
import nodemeta  # noqa: E402

KEYS = ["val", "stack_trace", "nn_module_stack", "debug_handle", "tensor_meta", "flops"]


class Opaque:
    pass


def sample_values():
    """The values the write rows store (one object each, made once)."""
    values = {"int": 12345, "str": "torch.float32", "list": [1, 2, 3], "tuple": (1, 2, 3),
              "object": Opaque()}
    try:
        import torch
        from torch.fx.passes.shape_prop import _extract_tensor_metadata
        t = torch.randn(2, 3)
        values["TensorMetadata"] = _extract_tensor_metadata(t)
        try:
            from torch._subclasses.fake_tensor import FakeTensorMode
            with FakeTensorMode() as mode:
                values["FakeTensor"] = mode.from_tensor(t)
        except Exception:  # noqa: BLE001 (no fake tensors in this torch)
            pass
    except ImportError:
        pass
    return values


def node_data():
    return {k: i for i, k in enumerate(KEYS)} | {"stack_trace": "File x.py, line 1", "flops": [1, 2]}


# (row name, statement, which implementations have it). `md` is the mapping under test,
# `C` its class, `data` a dict of six keys, `v` the value of a write row.
READS = [
    ("md[k] (node C++ wrote, cache rebuilt)", "md['val']", "dc"),
    ("get (hit)", "md.get('val')", "dn"),
    ("get (miss)", "md.get('nope')", "dn"),
    ("md[k]", "md['val']", "dnop"),
    ("k in md", "'val' in md", "dnop"),
    ("len(md)", "len(md)", "dnp"),
]
OTHERS = [
    ("for k in md", "for k in md: pass", "dn"),
    ("for k, v in md.items()", "for k, v in md.items(): pass", "dn"),
    ("for k in md.keys()", "for k in md.keys(): pass", "dn"),
    ("md.copy()", "md.copy()", "dno"),
    ("setdefault (present)", "md.setdefault('val', 0)", "dn"),
    ("C(data) (6 keys)", "C(data)", "dno"),
    ("C() (empty)", "C()", "dn"),
]


def make_impls():
    store = nodemeta.MetadataStore(protected_keys=())
    data = node_data()

    def nm(d=None):
        return store.create(d)

    # A node whose cache was rebuilt from the C++ store (as after run_passes): its reads check
    # the C++ node's version first.
    clean = store.create(data | {"zz": 0})
    clean.id  # into the C++ store
    clean.popitem()  # removes "zz" by a C++ edit: the cache is rebuilt by the reads below
    for _ in range(3):
        clean.get("val")
    assert dict(clean) == data
    return {
        "d": ("dict", dict, dict(data)),
        "n": ("nodemeta", nm, store.create(data)),
        "c": ("nodemeta", nm, clean),
        "o": ("original", original.NodeMetadata, original.NodeMetadata(data)),
        # The floor for any mapping that is not exactly a dict: CPython 3.11 specializes
        # md[k] for an exact dict only (BINARY_SUBSCR_DICT), and a mappingproxy is the thinnest
        # C wrapper of one (its slots call the dict's).
        "p": ("mappingproxy", types.MappingProxyType, types.MappingProxyType(dict(data))),
    }, data, store


def rows_spec(values):
    rows = list(READS)
    for name in values:
        rows.append((f"md[k] = v ({name})", "md['flops'] = v", "dno", name))
    rows += OTHERS
    return [r if len(r) == 4 else (*r, None) for r in rows]


def mode_ops(reps, number):
    values = sample_values()
    impls, data, store = make_impls()
    # C(data) for nodemeta: a node of the same store (NodeMetadata(data) is the default store's).
    classes = {"d": dict, "n": nodemeta.NodeMetadata, "c": nodemeta.NodeMetadata, "o": original.NodeMetadata,
               "p": types.MappingProxyType}
    specs = rows_spec(values)
    timers = {}
    for name, stmt, which, vname in specs:
        for code in which:
            label, _, md = impls[code]
            ns = {"md": md, "C": classes[code], "data": data, "v": values.get(vname)}
            timers[(name, code)] = timeit.Timer(stmt, globals=ns)
    empty = timeit.Timer("pass")
    samples = {k: [] for k in timers}
    loop = []
    for _ in range(reps):
        loop.append(empty.timeit(number))
        for name, _, which, _ in specs:
            for code in which:  # interleaved: noise hits every implementation
                if (name, code) in timers:
                    samples[(name, code)].append(timers[(name, code)].timeit(number))
    loop_ns = statistics.median(loop) / number * 1e9
    rows = []
    for name, _, which, _ in specs:
        row = {"op": name}
        per = {}
        for code in which:
            if (name, code) not in samples:
                continue
            s = [x / number * 1e9 for x in samples[(name, code)]]
            per[code] = s
            row[impls[code][0] + "_ns"] = round(statistics.median(s), 1)
        mine = per.get("n", per.get("c"))
        if mine is not None:
            ratios = sorted(n / d for n, d in zip(mine, per["d"]))
            row["nodemeta_over_dict"] = round(statistics.median(ratios), 2)
            row["ratio_min"] = round(ratios[0], 2)
            row["ratio_max"] = round(ratios[-1], 2)
        if "p" in per:
            row["mappingproxy_over_dict"] = round(statistics.median(p / d for p, d in zip(per["p"], per["d"])), 2)
        rows.append(row)
    return {"mode": "ops", "reps": reps, "number": number, "loop_ns": round(loop_ns, 1), "rows": rows,
            "note": "ns per op, timeit's loop included (loop_ns is an empty statement's)"}


def tensor_meta_pass(gm):
    """A user's pass: reads tensor_meta, writes one key per node."""
    for n in gm.graph.nodes:
        tm = n.meta.get("tensor_meta")
        if tm is not None and hasattr(tm, "shape"):
            numel = 1
            for d in tm.shape:
                numel *= d
            n.meta["numel"] = numel
        else:
            n.meta["numel"] = None


def tensor_meta_pass_indexing(gm):
    """The same pass with `in` and `[]`, the reads PyTorch's class offers (it has no get).
    Written out again rather than sharing a helper: each is the loop a user writes, timed."""
    for n in gm.graph.nodes:
        tm = n.meta["tensor_meta"] if "tensor_meta" in n.meta else None
        if tm is not None and hasattr(tm, "shape"):
            numel = 1
            for d in tm.shape:
                numel *= d
            n.meta["numel"] = numel
        else:
            n.meta["numel"] = None


def mode_passes(reps, model_name):
    import copy
    import time

    import torch
    import torch.fx
    import torchvision
    from torch.fx.passes.shape_prop import ShapeProp

    import nodemeta.fx

    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)().eval()
    x = torch.randn(1, 3, 224, 224)
    base = torch.fx.symbolic_trace(model)

    def plain():
        gm = copy.deepcopy(base)
        return gm

    def attached():
        gm = copy.deepcopy(base)
        nodemeta.fx.attach(gm, nodemeta.MetadataStore(protected_keys=()))
        return gm

    propagated = {"dict": plain(), "nodemeta": attached()}
    with torch.no_grad():
        for gm in propagated.values():
            ShapeProp(gm).propagate(x)
    # PyTorch's class (benchmarks/python_original.py) for the pass alone: node.meta wrapped
    # after ShapeProp, which it could not follow (tensor_meta is one of its protected keys).
    wrapped = plain()
    with torch.no_grad():
        ShapeProp(wrapped).propagate(x)
    for n in wrapped.graph.nodes:
        n.meta = original.NodeMetadata(n.meta)
    # Same results first.
    for gm in propagated.values():
        tensor_meta_pass(gm)
    tensor_meta_pass_indexing(wrapped)
    numels = [[n.meta["numel"] for n in gm.graph.nodes] for gm in (*propagated.values(), wrapped)]
    same = numels[0] == numels[1] == numels[2]

    inner = 50  # the pass alone is short: timed over this many runs
    samples = {(w, i): [] for w in ("pass", "pass after run_passes", "shapeprop+pass") for i in ("dict", "nodemeta")}
    samples[("pass", "original")] = []
    samples[("pass", "dict indexing")] = []
    for _ in range(reps):
        # Each sample: the median of `inner` runs, the implementations alternating run by run
        # (PyTorch's class and a dict side by side with the `in`/`[]` form of the pass).
        runs = {impl: [] for impl in ("dict", "nodemeta", "original", "dict indexing")}
        for _ in range(inner):
            for impl, gm, fn in (("dict", propagated["dict"], tensor_meta_pass),
                                 ("nodemeta", propagated["nodemeta"], tensor_meta_pass),
                                 ("original", wrapped, tensor_meta_pass_indexing),
                                 ("dict indexing", propagated["dict"], tensor_meta_pass_indexing)):
                t = time.perf_counter()
                fn(gm)
                runs[impl].append(time.perf_counter() - t)
        for impl, r in runs.items():
            samples[("pass", impl)].append(statistics.median(r))
        # The pass on nodes the C++ passes just wrote; the dict side runs the same pass on
        # its dicts.
        runs = {impl: [] for impl in propagated}
        for _ in range(inner // 2):
            for impl, gm in propagated.items():
                if impl == "nodemeta":
                    nodemeta.fx.run_passes(gm, passes=("cost",))
                t = time.perf_counter()
                tensor_meta_pass(gm)
                runs[impl].append(time.perf_counter() - t)
        for impl in propagated:
            samples[("pass after run_passes", impl)].append(statistics.median(runs[impl]))
        for impl, make in (("dict", plain), ("nodemeta", attached)):
            gm = make()
            t = time.perf_counter()
            with torch.no_grad():
                ShapeProp(gm).propagate(x)
            tensor_meta_pass(gm)
            samples[("shapeprop+pass", impl)].append(time.perf_counter() - t)
    rows = []
    for what in ("pass", "pass after run_passes", "shapeprop+pass"):
        d = samples[(what, "dict")]
        n = samples[(what, "nodemeta")]
        ratios = sorted(a / b for a, b in zip(n, d))
        row = {"op": what, "dict_ms": round(statistics.median(d) * 1e3, 3),
               "nodemeta_ms": round(statistics.median(n) * 1e3, 3),
               "nodemeta_over_dict": round(statistics.median(ratios), 3),
               "ratio_min": round(ratios[0], 3), "ratio_max": round(ratios[-1], 3)}
        if (what, "original") in samples:  # against the dict running the same `in`/`[]` form
            o, di = samples[(what, "original")], samples[(what, "dict indexing")]
            row["original_ms"] = round(statistics.median(o) * 1e3, 3)
            row["original_over_dict"] = round(statistics.median(a / b for a, b in zip(o, di)), 3)
        rows.append(row)
    return {"mode": "passes", "model": model_name, "nodes": len(base.graph.nodes), "reps": reps,
            "same_results": same, "rows": rows}


def print_table(result):
    rows = result["rows"]
    cols = [c for c in ("dict_ns", "nodemeta_ns", "original_ns", "dict_ms", "nodemeta_ms", "original_ms")
            if any(c in r for r in rows)]
    ratios = [c for c in ("mappingproxy_over_dict", "original_over_dict") if any(c in r for r in rows)]
    head = ["op", *cols, "nodemeta/dict", "min", "max", *ratios]
    print(" | ".join(head))
    for r in rows:
        print(" | ".join([r["op"], *[str(r.get(c, "")) for c in cols], str(r.get("nodemeta_over_dict", "")),
                          str(r.get("ratio_min", "")), str(r.get("ratio_max", "")),
                          *[str(r.get(c, "")) for c in ratios]]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["ops", "passes"], default="ops")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--number", type=int, default=200_000, help="timeit's number per sample (ops)")
    ap.add_argument("--model", default="resnet50", help="torchvision model (passes)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = ap.parse_args()
    result = mode_ops(a.reps, a.number) if a.mode == "ops" else mode_passes(a.reps, a.model)
    result["python"] = platform.python_version()
    result["nodemeta_from"] = os.path.dirname(nodemeta.__file__)
    result["load_average"] = os.getloadavg()
    if a.json:
        print(json.dumps(result))
    else:
        print(f"# {result['mode']}, reps {result['reps']}, load average {result['load_average']}")
        print_table(result)


if __name__ == "__main__":
    main()
