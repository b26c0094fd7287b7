#!/usr/bin/python3
"""nodemeta's cost, propagate and verify passes, written by hand in plain Python over
torch.fx-style `node.meta` dicts: the baseline the C++ passes (run from Python) are
benchmarked against.

This is a line-by-line port of src/passes/cost.cpp and the CostPass, PropagatePass,
VerifyPass and Baseline of src/passes/passes.cpp (formulas: docs/passes.md). Per node it
writes the same keys with the same values (`flops`, `bytes`, `cost_rule`, `depth`,
`critical_path_flops`, `critical_path_complete`; "unknown" where the C++ writes it), and
per pass it returns the same statistics as the C++ PassStats.

    from python_passes import nodes_from_json, run_passes
    nodes = nodes_from_json(json.load(open("resnet50.json")))
    stats = run_passes(nodes)            # mutates each node.meta, returns one dict per pass

    /usr/bin/python3 benchmarks/python_passes.py --check GRAPH... --expected DUMP...

--check runs the Python passes on each GRAPH and compares every node's resulting meta (all
keys, kinds exact: 1, 1.0 and true differ) and the per-pass statistics with DUMP, the
C++ result for that graph, given in the same order. A DUMP is either what
`nodemeta::graph::save_graph` writes for the graph after the passes, or an object
{"passes": [PassStats...], "graph": <that>} (then the statistics are compared too).
Exit status 0 when everything matches, 1 otherwise.

Without --check, prints each GRAPH's pass statistics and timings as JSON lines.

Where the C++ passes run node-parallel (cost, verify) or by wavefront (propagate), this
code loops over the nodes in graph order: the C++ results do not depend on the schedule
(a parallel step writes only the node it visits and reads only finished inputs), so the
per-node results are the same.

Differences that cannot show on schema-conforming graphs, kept on purpose (idiomatic
Python rather than an emulation of the C++ Value):
- verify compares protected values with Python's ==, where the C++ Value never equates
  kinds (1 == 1.0 == True in Python) and takes NaN == NaN;
- integers are unbounded, where the C++ computes in int64 (none of the shared graphs comes
  near 2**63).
The passes here never write a protected key, so `rejected_protected` is always 0, as it
is for the C++ cost, propagate and verify.
"""
import argparse
import copy
import gzip
import json
import math
import sys
import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence

UNKNOWN = "unknown"
PROTECTED_KEYS = ("val", "stack_trace", "nn_module_stack", "debug_handle", "tensor_meta")

PASSES = ("cost", "propagate", "verify")


# ---- nodes ------------------------------------------------------------------------------------

class Node:
    """What the passes need of a torch.fx node: name, op, target (a string), inputs (indices
    of earlier nodes) and meta (mutated in place)."""

    __slots__ = ("name", "op", "target", "inputs", "meta")

    def __init__(self, name: str, op: str, target: str, inputs: List[int], meta: Dict[str, Any]):
        self.name = name
        self.op = op
        self.target = target
        self.inputs = inputs
        self.meta = meta

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.op!r}, {self.target!r}, inputs={self.inputs})"


def nodes_from_json(doc: Dict[str, Any]) -> List[Node]:
    """Nodes from a loaded graph document (shared/data/graphs/README.md schema). Each node's
    meta is the document's own dict (not a copy)."""
    nodes = []
    for i, n in enumerate(doc["nodes"]):
        inputs = list(n["inputs"])
        if any(not 0 <= j < i for j in inputs):
            raise ValueError(f"nodes[{i}] ({n['name']!r}): inputs must be earlier nodes, got {inputs}")
        nodes.append(Node(n["name"], n["op"], n["target"], inputs, n["meta"]))
    return nodes


def load_document(path: str) -> Dict[str, Any]:
    """json.load of a graph file, through gzip for .gz (as the schema's README reads it)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


# ---- cost model (src/passes/cost.cpp) ------------------------------------------------------------

DTYPE_BYTES = {
    "torch.float32": 4, "torch.int32": 4,
    "torch.float64": 8, "torch.int64": 8, "torch.complex64": 8,
    "torch.float16": 2, "torch.bfloat16": 2, "torch.int16": 2,
    "torch.bool": 1, "torch.uint8": 1, "torch.int8": 1,
    "torch.complex128": 16,
}


class Tensor(NamedTuple):
    shape: List[int]
    itemsize: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


def as_tensor(v: Any) -> Optional[Tensor]:
    """A {"shape": [...], "dtype": "..."} value as a Tensor, else None."""
    if not isinstance(v, dict):
        return None
    shape = v.get("shape")
    dtype = v.get("dtype")
    if not isinstance(shape, list) or not isinstance(dtype, str):
        return None
    if any(type(d) is not int for d in shape):  # JSON true/false are not dimensions
        return None
    itemsize = DTYPE_BYTES.get(dtype, 0)
    if not itemsize:
        return None
    return Tensor(shape, itemsize)


def tensors_in(v: Any) -> List[Tensor]:
    t = as_tensor(v)
    if t is not None:
        return [t]
    if isinstance(v, list):
        return [t for t in map(as_tensor, v) if t is not None]
    return []


def node_tensors(meta: Dict[str, Any]) -> List[Tensor]:
    """The tensors a node produces: from tensor_meta (ShapeProp), else val (FakeTensorProp)."""
    tensors = tensors_in(meta.get("tensor_meta"))
    if tensors:
        return tensors
    return tensors_in(meta.get("val"))


_CALL_FUNCTION_PREFIXES = ("_operator.", "torch.nn.functional.", "torch.")


def op_key(node: Node) -> str:
    """A short op name: "module:Conv2d", "aten.convolution", "add", "method:mean"."""
    op, target = node.op, node.target
    if op == "call_module":
        stack = node.meta.get("nn_module_stack")
        type_name = stack.get(target) if isinstance(stack, dict) else None
        if isinstance(type_name, str) and type_name:
            return "module:" + type_name.rsplit(".", 1)[-1]
        return "module:" + target
    if op == "call_method":
        return "method:" + target
    if op != "call_function":
        return op
    if target.startswith("torch.ops.aten."):
        return "aten." + target[len("torch.ops.aten."):].split(".", 1)[0]  # drop the overload
    for prefix in _CALL_FUNCTION_PREFIXES:
        if target.startswith(prefix) and "." not in target[len(prefix):]:
            return target[len(prefix):]
    return target


def base_name(key: str) -> str:
    """"aten.relu_" and "relu" both give "relu"."""
    for prefix in ("aten.", "module:", "method:"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    if key.endswith("_") and key != "_":  # in-place variant
        key = key[:-1]
    return key


VIEW_OPS = frozenset({
    "view", "_unsafe_view", "_reshape_alias", "reshape", "permute", "transpose", "t", "expand",
    "slice", "split", "unsqueeze", "squeeze", "flatten", "getitem", "getattr", "detach", "dim",
    "size", "Identity", "Flatten", "_assert"})
SCALAR_OPS = frozenset({"eq", "floordiv", "mul", "add", "sub", "truediv"})
ALLOC_OPS = frozenset({"empty", "empty_like", "full", "arange", "zeros", "ones"})
ELEMENTWISE_OPS = frozenset({
    "add", "sub", "mul", "div", "truediv", "neg", "pow", "exp", "log", "sqrt", "rsqrt", "relu",
    "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "where", "bernoulli",
    "ReLU", "ReLU6", "GELU", "SiLU", "Sigmoid", "Tanh", "Hardswish", "Hardsigmoid"})
BATCH_NORM_OPS = frozenset({"BatchNorm2d", "BatchNorm1d", "native_batch_norm"})
LAYER_NORM_OPS = frozenset({"LayerNorm", "native_layer_norm", "layer_norm"})
SOFTMAX_OPS = frozenset({"_softmax", "softmax", "Softmax"})
MEAN_OPS = frozenset({"AdaptiveAvgPool2d", "adaptive_avg_pool2d", "mean"})
MATMUL_OPS = frozenset({"addmm", "mm", "bmm", "matmul"})
CONV_MODULES = frozenset({"Conv2d", "Conv1d", "Conv3d"})
POOL_OPS = frozenset({"MaxPool2d", "AvgPool2d", "max_pool2d", "avg_pool2d"})


def estimate_cost(nodes: Sequence[Node], index: int):
    """(flops, bytes, rule) of one node; flops and bytes are None where the model does not
    know the op, with rule saying why."""
    n = nodes[index]
    if n.op in ("placeholder", "get_attr", "output"):
        return 0, 0, f"no computation ({n.op})"
    key = op_key(n)
    base = base_name(key)
    out = node_tensors(n.meta)
    inp = []  # the first tensor of each input that has one
    for j in n.inputs:
        t = node_tensors(nodes[j].meta)
        if t:
            inp.append(t[0])
    io_bytes = sum(t.nbytes for t in inp) + sum(t.nbytes for t in out)

    def unknown(why):
        return None, None, "unknown: " + why

    if base in VIEW_OPS:
        return 0, 0, f"view/metadata op {key}: no arithmetic, no copy"
    if not out:
        if base in SCALAR_OPS:
            return 0, 0, f"scalar op {key} (no tensor result)"
        return unknown(f"{key} has no tensor shape in tensor_meta/val")
    numel = out[0].numel

    if base == "Dropout":
        return 0, 0, "Dropout (eval-mode trace): identity"
    if base in ("clone", "contiguous"):
        return 0, io_bytes, f"{key}: copy, 0 flops; bytes = read + write"
    if base in ALLOC_OPS:
        return 0, sum(t.nbytes for t in out), f"{key}: allocation/fill, 0 flops; bytes = output written"
    if base == "cat":
        return 0, io_bytes, "cat: 0 flops; bytes = inputs read + output written"
    if base == "embedding":
        return (0, 2 * out[0].nbytes + (inp[1].nbytes if len(inp) > 1 else 0),
                "embedding: gather, 0 flops; bytes = rows read + output written + indices")
    if base in ELEMENTWISE_OPS:
        return numel, io_bytes, f"elementwise {key}: flops = numel(out)"
    if base in BATCH_NORM_OPS:
        return 2 * numel, io_bytes, "batch norm (inference): flops = 2*numel(out) (folded scale, shift)"
    if base in LAYER_NORM_OPS:
        return 5 * numel, io_bytes, "layer norm: flops = 5*numel(out) (mean, centre, variance, normalise, affine)"
    if base in SOFTMAX_OPS:
        return 5 * numel, io_bytes, "softmax: flops = 5*numel(out) (max, subtract, exp, sum, divide)"
    if base in MEAN_OPS:
        if not inp:
            return unknown(f"{key}: input shape missing")
        return inp[0].numel, io_bytes, f"{key}: flops = numel(input) (one add per input element)"
    if base == "Linear":
        if not inp or not inp[0].shape:
            return unknown("Linear: input shape missing")
        return (2 * numel * inp[0].shape[-1], io_bytes,
                "Linear: flops = 2*numel(out)*in_features; bias add and weights not in fx metadata")
    if base in MATMUL_OPS:
        # addmm(bias, a, b); mm(a, b); bmm(a, b): K is a's last dimension.
        a = 1 if base == "addmm" else 0
        if len(inp) <= a or not inp[a].shape:
            return unknown(f"{key}: operand shape missing")
        k = inp[a].shape[-1]
        if base == "addmm":
            return 2 * numel * k + numel, io_bytes, f"{key}: flops = 2*numel(out)*K + numel(out) (bias)"
        return 2 * numel * k, io_bytes, f"{key}: flops = 2*numel(out)*K"
    if base == "convolution":
        # convolution(x, weight[, bias]): weight is [C_out, C_in/groups, k...].
        if len(inp) < 2 or len(inp[1].shape) < 3:
            return unknown("convolution: weight shape missing")
        per_out = math.prod(inp[1].shape[1:])
        bias = numel if len(inp) >= 3 else 0
        return (2 * numel * per_out + bias, io_bytes,
                "convolution: flops = 2*numel(out)*C_in/groups*prod(kernel)" +
                (" + numel(out) (bias)" if bias else ""))
    if base == "MultiheadAttention":
        if not inp or len(inp[0].shape) != 3:
            return unknown("MultiheadAttention: query shape missing")
        nb, seq, e = inp[0].shape
        return (8 * nb * seq * e * e + 4 * nb * seq * seq * e, io_bytes,
                "MultiheadAttention (batch_first [N, L, E], self-attention): flops = 8*N*L*E^2 + 4*N*L^2*E")
    if base in CONV_MODULES:
        return unknown(f"{key}: kernel size and groups are not in fx call_module metadata")
    if base in POOL_OPS:
        return unknown(f"{key}: kernel size is not in the node metadata")
    return unknown(f"no cost formula for {key}")


# ---- baseline and the passes (src/passes/passes.cpp) -------------------------------------------

class Baseline:
    """Every node's protected values as loaded, by name: what verify checks against. Take it
    before any pass runs; the values are deep copies, so a later in-place change to a node's
    dict shows up as a difference (the C++ Baseline holds immutable Values)."""

    def __init__(self, nodes: Sequence[Node]):
        self.names = [n.name for n in nodes]
        # values[i]: node i's protected keys that were present, with their values
        self.values = [copy.deepcopy({k: n.meta[k] for k in PROTECTED_KEYS if k in n.meta}) for n in nodes]
        self.index = {name: i for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)


def _stats(name: str, nodes: Sequence[Node]) -> Dict[str, Any]:
    return {"name": name, "nodes_touched": 0, "rejected_protected": 0, "nodes_before": len(nodes),
            "nodes_after": len(nodes), "seconds": 0.0, "summary": "", "problems": []}


def cost_pass(nodes: Sequence[Node], stats: Dict[str, Any]) -> None:
    unknown = 0
    for i, node in enumerate(nodes):
        flops, nbytes, rule = estimate_cost(nodes, i)
        if flops is None:
            unknown += 1
        node.meta["flops"] = UNKNOWN if flops is None else flops
        node.meta["bytes"] = UNKNOWN if nbytes is None else nbytes
        node.meta["cost_rule"] = rule
    stats["nodes_touched"] = len(nodes)
    stats["summary"] = f"cost unknown for {unknown} of {len(nodes)} nodes"


def propagate_pass(nodes: Sequence[Node], stats: Dict[str, Any]) -> None:
    # Graph order is a topological order: every input was done before its users.
    critical = max_depth = 0
    for node in nodes:
        depth = longest = 0
        complete = True
        for j in node.inputs:
            m = nodes[j].meta
            depth = max(depth, m["depth"] + 1)
            longest = max(longest, m["critical_path_flops"])
            complete = complete and m["critical_path_complete"]
        own = node.meta.get("flops")
        if type(own) is not int:  # "unknown" (or cost never ran) counts as 0
            own = 0
            complete = False
        node.meta["depth"] = depth
        node.meta["critical_path_flops"] = longest + own
        node.meta["critical_path_complete"] = complete
        critical = max(critical, longest + own)
        max_depth = max(max_depth, depth)
    stats["nodes_touched"] = len(nodes)
    stats["summary"] = f"critical path {critical} flops, depth {max_depth}"


def from_node_names(chain: Any) -> List[str]:
    """Every name in a from_node chain, nested chains included, in order."""
    out = []
    if isinstance(chain, list):
        for entry in chain:
            if not isinstance(entry, dict):
                continue
            name = entry.get("name")
            if isinstance(name, str):
                out.append(name)
            if "from_node" in entry:
                out.extend(from_node_names(entry["from_node"]))
    return out


def _check_node(node: Node, base: Baseline, problems: List[str]) -> List[str]:
    """Appends node's problems; returns the names its from_node chain covers."""
    meta = node.meta
    if "from_node" not in meta:
        b = base.index.get(node.name)
        if b is None:
            problems.append(f"node '{node.name}' is new but has no from_node provenance")
            return []
        want = base.values[b]
        for k in PROTECTED_KEYS:
            if (k in want) != (k in meta) or (k in want and want[k] != meta[k]):
                problems.append(f"node '{node.name}': protected key '{k}' changed since load")
        return []

    who = f"rewritten node '{node.name}': "
    for k in PROTECTED_KEYS:
        if k not in meta:
            problems.append(who + "missing " + k)
    chain = meta["from_node"]
    if not isinstance(chain, list) or not chain:
        problems.append(who + "from_node is not a non-empty list")
        return []
    covered = from_node_names(chain)
    # The direct sources: each must be a loaded node (or itself rewritten, with a chain).
    direct = []
    for entry in chain:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            problems.append(who + "from_node entry without a name")
            continue
        b = base.index.get(name)
        if b is not None:
            direct.append(b)
        elif "from_node" not in entry:
            problems.append(who + f"from_node names '{name}', which was never loaded")
    if not direct:
        return covered
    # Policy: the output source's val and debug_handle; the merged module stack covers every source's.
    out = direct[-1]
    for k in ("val", "debug_handle"):
        want = base.values[out]
        if k in want and (k not in meta or want[k] != meta[k]):
            problems.append(who + f"{k} differs from its output source '{base.names[out]}'")
    if "nn_module_stack" in meta:
        stack = meta["nn_module_stack"]
        for b in direct:
            src = base.values[b].get("nn_module_stack")
            if not isinstance(src, dict):
                continue
            for path, type_name in src.items():
                if not isinstance(stack, dict) or path not in stack or stack[path] != type_name:
                    problems.append(who + f"nn_module_stack lacks '{path}' of source '{base.names[b]}'")
    return covered


def verify_pass(nodes: Sequence[Node], stats: Dict[str, Any], baseline: Optional[Baseline]) -> None:
    if baseline is None:
        stats["problems"].append("no baseline: verify needs the graph as loaded")
        stats["summary"] = "FAILED"
        return
    problems: List[str] = []
    seen = set()  # loaded nodes still here, or named by the chain of the node that replaced them
    for node in nodes:
        covered = _check_node(node, baseline, problems)
        if "from_node" not in node.meta and node.name in baseline.index:
            seen.add(node.name)
        seen.update(name for name in covered if name in baseline.index)
    stats["nodes_touched"] = len(nodes)
    for name in baseline.names:
        if name not in seen:
            problems.append(f"node '{name}' vanished: no from_node chain names it")
    stats["problems"] = problems
    stats["summary"] = "clean" if not problems else f"{len(problems)} problems"


def run_passes(nodes: Sequence[Node], passes: Iterable[str] = PASSES,
               baseline: Optional[Baseline] = None) -> List[Dict[str, Any]]:
    """Runs the named passes in order on `nodes` (mutating each node.meta) and returns one
    dict per pass: name, nodes_touched, rejected_protected, nodes_before, nodes_after,
    seconds, summary, problems. verify checks against `baseline`, taken here before the
    first pass when not given (`nodemeta run` takes it right after loading)."""
    passes = list(passes)
    for name in passes:
        if name not in PASSES:
            raise ValueError(f"unknown pass '{name}' (valid: {', '.join(PASSES)})")
    if baseline is None and "verify" in passes:
        baseline = Baseline(nodes)
    results = []
    for name in passes:
        stats = _stats(name, nodes)
        t0 = time.perf_counter()
        if name == "cost":
            cost_pass(nodes, stats)
        elif name == "propagate":
            propagate_pass(nodes, stats)
        else:
            verify_pass(nodes, stats, baseline)
        stats["seconds"] = time.perf_counter() - t0
        results.append(stats)
    return results


# ---- command line -----------------------------------------------------------------------------

_STAT_FIELDS = ("name", "nodes_touched", "rejected_protected", "nodes_before", "nodes_after", "summary", "problems")


def _same(a: Any, b: Any) -> bool:
    """Equal, kinds included (1, 1.0 and true differ), as the C++ Value compares."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def check(graph_path: str, expected_path: str, passes: Sequence[str], max_report: int = 10) -> bool:
    nodes = nodes_from_json(load_document(graph_path))
    t0 = time.perf_counter()
    stats = run_passes(nodes, passes)
    seconds = time.perf_counter() - t0
    expected = load_document(expected_path)
    want_graph = expected.get("graph", expected)
    mismatches: List[str] = []
    want_nodes = want_graph["nodes"]
    if len(want_nodes) != len(nodes):
        mismatches.append(f"{len(nodes)} nodes here, {len(want_nodes)} in the expected dump")
    values = 0
    for node, want in zip(nodes, want_nodes):
        if node.name != want["name"]:
            mismatches.append(f"node '{node.name}': expected node '{want['name']}' at its place")
            continue
        have_meta, want_meta = node.meta, want["meta"]
        for k in sorted(set(have_meta) | set(want_meta)):
            values += 1
            if k not in have_meta:
                mismatches.append(f"node '{node.name}': key '{k}' missing (expected {want_meta[k]!r})")
            elif k not in want_meta:
                mismatches.append(f"node '{node.name}': key '{k}' = {have_meta[k]!r} not in the expected dump")
            elif not _same(have_meta[k], want_meta[k]):
                mismatches.append(f"node '{node.name}': {k} = {have_meta[k]!r}, expected {want_meta[k]!r}")
    if "passes" in expected:
        want_stats = expected["passes"]
        if [s["name"] for s in want_stats] != [s["name"] for s in stats]:
            mismatches.append(f"passes {[s['name'] for s in stats]}, expected {[s['name'] for s in want_stats]}")
        else:
            for have, want in zip(stats, want_stats):
                for f in _STAT_FIELDS:
                    if f in want and not _same(have[f], want[f]):
                        mismatches.append(f"pass {have['name']}: {f} = {have[f]!r}, expected {want[f]!r}")
    name = graph_path.rsplit("/", 1)[-1]
    if mismatches:
        print(f"MISMATCH {name}: {len(mismatches)} differences")
        for m in mismatches[:max_report]:
            print("  " + m)
        return False
    summaries = "; ".join(f"{s['name']}: {s['summary']}" for s in stats)
    print(f"OK {name}: {len(nodes)} nodes, {values} meta values equal"
          f"{', pass statistics equal' if 'passes' in expected else ''} ({summaries}); "
          f"python passes {seconds * 1e3:.1f} ms")
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("graphs", nargs="+", metavar="GRAPH")
    ap.add_argument("--check", action="store_true", help="compare with --expected (the C++ results)")
    ap.add_argument("--expected", nargs="+", default=[], metavar="DUMP",
                    help="one C++ dump per GRAPH, in the same order")
    ap.add_argument("--passes", default=",".join(PASSES), help="comma-separated, from: " + ",".join(PASSES))
    args = ap.parse_args(argv)
    passes = args.passes.split(",")
    if args.check:
        if len(args.expected) != len(args.graphs):
            ap.error(f"--check needs one --expected dump per graph ({len(args.graphs)} graphs, "
                     f"{len(args.expected)} dumps)")
        ok = [check(g, e, passes) for g, e in zip(args.graphs, args.expected)]
        print(f"{sum(ok)} of {len(ok)} graphs match")
        return 0 if all(ok) else 1
    for g in args.graphs:
        nodes = nodes_from_json(load_document(g))
        t0 = time.perf_counter()
        baseline = Baseline(nodes)
        baseline_s = time.perf_counter() - t0
        stats = run_passes(nodes, passes, baseline)
        print(json.dumps({"graph": g, "nodes": len(nodes), "baseline_seconds": baseline_s,
                          "total_seconds": baseline_s + sum(s["seconds"] for s in stats), "passes": stats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
