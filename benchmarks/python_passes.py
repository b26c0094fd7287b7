#!/usr/bin/python3
"""nodemeta's cost, propagate and verify passes, written by hand in plain Python over
torch.fx-style `node.meta` dicts: the baseline the C++ passes (run from Python) are
benchmarked against.

This is a line-by-line port of src/passes/cost.cpp and the CostPass, PropagatePass,
VerifyPass and Baseline of src/passes/passes.cpp (formulas: docs/passes.md). Per node it
writes the same keys with the same values (`flops`, `bytes`, `cost_rule`,
`flops_lower_bound`, `depth`, `critical_path_flops`, `critical_path_complete`; "unknown"
where the C++ writes it), and per pass it returns the same statistics as the C++ PassStats.
The graph's "training" attribute (true, false, absent: unknown) is passed as `training`.

    from python_passes import nodes_from_json, run_passes, training_mode
    doc = json.load(open("resnet50.json"))
    nodes = nodes_from_json(doc)
    stats = run_passes(nodes, training=training_mode(doc), modules=doc.get("modules"),
                       calls=doc.get("calls"))  # mutates each node.meta

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
- integers are unbounded where the C++ computes in checked int64: counts are computed
  exactly and every count the C++ would find past int64 is refused here too (fits()), with
  the same "unknown" and the same rule; since every count is a sum of products of
  non-negative factors (a zero factor short-circuits in the C++), the C++ overflows exactly
  when the exact count is past 2**63 - 1.
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

INT64_MAX = 2**63 - 1

DTYPE_BYTES = {
    "torch.float32": 4, "torch.int32": 4,
    "torch.float64": 8, "torch.int64": 8, "torch.complex64": 8,
    "torch.float16": 2, "torch.bfloat16": 2, "torch.int16": 2,
    "torch.bool": 1, "torch.uint8": 1, "torch.int8": 1,
    "torch.complex128": 16,
}


def fits(*counts: Optional[int]) -> bool:
    """Every count is known and fits int64 (the C++ computes in checked int64: a count past
    it is unknown there, never a wrapped number). Counts are never negative."""
    return all(c is not None and c <= INT64_MAX for c in counts)


class Tensor(NamedTuple):
    shape: List[int]
    numel: int   # fits int64
    nbytes: int  # fits int64


class Unusable(Exception):
    """A tensor description the model cannot count; the message says why."""


def _shape_text(shape: Any) -> str:
    return "[" + ", ".join(str(d) if type(d) is int else "?" for d in shape) + "]"


def _is_tensor_value(v: Any) -> bool:
    return isinstance(v, dict) and "shape" in v and "dtype" in v


def parse_tensor(v: Dict[str, Any]) -> Tensor:
    shape, dtype = v["shape"], v["dtype"]
    if not isinstance(shape, list) or not isinstance(dtype, str):
        raise Unusable("a tensor whose shape is not a list or whose dtype is not a string")
    for d in shape:
        if type(d) is not int:  # JSON true/false are not dimensions
            raise Unusable("a tensor whose shape holds a non-integer")
        if d < 0:
            raise Unusable(f"a tensor of shape {_shape_text(shape)} (negative dimension)")
    itemsize = DTYPE_BYTES.get(dtype, 0)
    if not itemsize:
        raise Unusable(f"a tensor of dtype {dtype}, whose element size the model does not know")
    numel = math.prod(shape)
    if not fits(numel, numel * itemsize):
        raise Unusable(f"a tensor of shape {_shape_text(shape)} whose size does not fit int64")
    return Tensor(list(shape), numel, numel * itemsize)


def collect_tensors(v: Any, out: List[Tensor]) -> None:
    """Appends the tensors in v (a tensor, or lists holding tensors at any depth: an LSTM's
    (out, (h, c))); other entries are skipped. Raises Unusable."""
    if _is_tensor_value(v):
        out.append(parse_tensor(v))
    elif isinstance(v, list):
        for e in v:
            collect_tensors(e, out)


def scalar_leaves(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, list):
        return all(scalar_leaves(e) for e in v)
    return False


SCALAR_TYPES = frozenset({
    "builtins.int", "builtins.float", "builtins.bool", "builtins.complex", "builtins.str",
    "builtins.NoneType", "torch.Size", "torch.dtype", "torch.device", "torch.layout", "torch.memory_format"})

TENSORS, NON_TENSOR, UNKNOWN_RESULT = "tensors", "non-tensor", "unknown"


class Result(NamedTuple):
    kind: str                # TENSORS, NON_TENSOR or UNKNOWN_RESULT
    tensors: List[Tensor]    # TENSORS: every tensor, nested tuples flattened, in order
    nbytes: int              # TENSORS: their bytes together (fits int64)
    why: str                 # UNKNOWN_RESULT: what is missing


def node_result(meta: Dict[str, Any]) -> Result:
    """What a node produces: from tensor_meta (ShapeProp), else val (FakeTensorProp); without a
    tensor in either, a non-tensor only where the metadata says so (a scalar type, or a val of
    plain scalars), else unknown."""
    for k in ("tensor_meta", "val"):
        if k not in meta:
            continue
        tensors: List[Tensor] = []
        try:
            collect_tensors(meta[k], tensors)
        except Unusable as e:
            return Result(UNKNOWN_RESULT, [], 0, f"has {k} holding {e}")
        if not tensors:
            continue
        nbytes = sum(t.nbytes for t in tensors)
        if not fits(nbytes):
            return Result(UNKNOWN_RESULT, [], 0, "has tensors whose bytes together do not fit int64")
        return Result(TENSORS, tensors, nbytes, "")
    type_name = meta.get("type")
    val = meta.get("val")
    plain_val = val is not None and scalar_leaves(val)
    non_tensor = plain_val
    if not isinstance(type_name, str):
        type_name = ""
    else:
        non_tensor = type_name in SCALAR_TYPES or (type_name in ("builtins.tuple", "builtins.list") and plain_val)
    if non_tensor:
        return Result(NON_TENSOR, [], 0, "")
    return Result(UNKNOWN_RESULT, [], 0,
                  "has no tensor shape in tensor_meta/val" + (f" (type {type_name})" if type_name else ""))


def result_bytes(meta: Dict[str, Any]) -> Optional[int]:
    r = node_result(meta)
    return None if r.kind == UNKNOWN_RESULT else r.nbytes


_CALL_FUNCTION_PREFIXES = ("_operator.", "torch.nn.functional.", "torch._C._nn.", "torch.functional.", "torch.")


def op_key(node: Node, module: Optional[Dict[str, Any]] = None) -> str:
    """A short op name: "module:Conv2d", "aten.convolution", "add", "method:mean". Module
    formulas are for torch.nn's own classes only: another module's key is its qualified type.
    Where nn_module_stack names no type, the graph's "modules" entry `module` does."""
    op, target = node.op, node.target
    if op == "call_module":
        stack = node.meta.get("nn_module_stack")
        type_name = stack.get(target) if isinstance(stack, dict) else None
        if (not isinstance(type_name, str) or not type_name) and module is not None:
            type_name = module.get("type")
        if not isinstance(type_name, str) or not type_name:
            return "module:" + target + " (no type in nn_module_stack or the graph's modules table)"
        if type_name.startswith("torch.nn.modules."):
            return "module:" + type_name.rsplit(".", 1)[-1]
        return "module:" + type_name
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


def innermost_module(meta: Dict[str, Any]) -> str:
    stack = meta.get("nn_module_stack")
    if not isinstance(stack, dict) or not stack:
        return ""
    last = list(stack.values())[-1]
    return last if isinstance(last, str) else ""


def training_mode(attrs: Optional[Dict[str, Any]]) -> Optional[bool]:
    """The graph's "training" attribute: True, False, or None when the graph does not say."""
    v = (attrs or {}).get("training")
    return v if isinstance(v, bool) else None


VIEW_OPS = frozenset({
    "view", "_unsafe_view", "_reshape_alias", "reshape", "permute", "transpose", "t", "expand",
    "slice", "split", "unsqueeze", "squeeze", "flatten", "getitem", "getattr", "detach", "dim",
    "size", "Identity", "Flatten", "_assert", "chunk", "unbind", "swapaxes", "swapdims", "narrow", "select",
    "movedim", "unflatten"})
SCALAR_OPS = frozenset({"eq", "floordiv", "mul", "add", "sub", "truediv"})
ALLOC_OPS = frozenset({"empty", "empty_like", "full", "arange", "zeros", "ones"})
ELEMENTWISE_OPS = frozenset({
    "add", "sub", "mul", "div", "truediv", "neg", "pow", "exp", "log", "sqrt", "rsqrt", "relu",
    "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "leaky_relu", "elu", "hardtanh",
    "mish", "where", "bernoulli", "ReLU", "ReLU6", "GELU", "SiLU", "Sigmoid", "Tanh", "Hardswish", "Hardsigmoid",
    "LeakyReLU", "ELU", "Hardtanh", "Mish", "PReLU"})
DROPOUT_OPS = frozenset({"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
                         "torchvision.ops.stochastic_depth.stochastic_depth"})
COPY_OPS = frozenset({"clone", "contiguous", "torchvision.models.swin_transformer._patch_merging_pad",
                      "torchvision.models.swin_transformer._get_relative_position_bias"})
GROUP_NORM_OPS = frozenset({"GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "group_norm",
                            "instance_norm"})
ADAPTIVE_MAX_OPS = frozenset({"AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d", "adaptive_max_pool1d",
                              "adaptive_max_pool2d", "adaptive_max_pool3d"})
WINDOW_ATTENTION = "torchvision.models.swin_transformer.shifted_window_attention"
BATCH_NORM_OPS = frozenset({"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "native_batch_norm", "batch_norm"})
LAYER_NORM_OPS = frozenset({"LayerNorm", "native_layer_norm", "layer_norm"})
SOFTMAX_OPS = frozenset({"_softmax", "softmax", "Softmax"})
MEAN_OPS = frozenset({"AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "adaptive_avg_pool1d",
                      "adaptive_avg_pool2d", "adaptive_avg_pool3d", "mean"})
MATMUL_OPS = frozenset({"addmm", "mm", "bmm", "matmul"})
CONV_MODULES = frozenset({"Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"})
POOL_OPS = frozenset({"MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "max_pool1d",
                      "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d"})
FROM_TABLE = "; weight shape from the graph's modules table"
TORCH_CONV = frozenset({"torch.nn.modules.conv.Conv1d", "torch.nn.modules.conv.Conv2d", "torch.nn.modules.conv.Conv3d"})
TORCH_CONV_TRANSPOSE = frozenset({"torch.nn.modules.conv.ConvTranspose1d", "torch.nn.modules.conv.ConvTranspose2d",
                                  "torch.nn.modules.conv.ConvTranspose3d"})
FUSED_ACTIVATIONS = frozenset({"relu", "relu6", "gelu", "silu", "hardswish"})
MODE_UNKNOWN = "the graph does not say whether it was traced in training mode (graph attribute 'training')"


class Estimate(NamedTuple):
    """(flops, bytes, rule, flops_lower_bound): flops and bytes None where the model does not
    know them, with rule saying why; flops_lower_bound an int > 0 only where flops is None
    but part of the count is certain."""
    flops: Optional[int]
    nbytes: Optional[int]
    rule: str
    flops_lower_bound: Optional[int] = None


class _Estimator:
    """Estimator in src/passes/cost.cpp: the estimate of one node."""

    def __init__(self, nodes: Sequence[Node], index: int, training: Optional[bool],
                 modules: Optional[Dict[str, Any]] = None, calls: Optional[Dict[str, Any]] = None,
                 names: Optional[Dict[str, int]] = None):
        self.nodes = nodes
        self.n = nodes[index]
        entry = (modules or {}).get(self.n.target) if self.n.op == "call_module" else None
        self.module = entry if isinstance(entry, dict) else None
        call = (calls or {}).get(self.n.name) if self.n.op in ("call_function", "call_method") else None
        self.call = call if isinstance(call, dict) else None
        self.names = names
        self.modules = modules if isinstance(modules, dict) else {}
        self.index_ = index
        self.key = op_key(self.n, self.module)
        self.base = base_name(self.key)
        self.path = self.n.target  # the module path messages name (module_path_)
        self.training = training
        self.why = ""
        self.operand_why = ""  # a fused node's first unknown operand

    def unknown(self, why: str, lower_bound: Optional[int] = None) -> Estimate:
        return Estimate(None, None, "unknown: " + why,
                        lower_bound if lower_bound is not None and lower_bound > 0 else None)

    def known(self, flops: Optional[int], nbytes: Optional[int], rule: str) -> Estimate:
        if not fits(flops, nbytes):
            return self.unknown(f"{self.key}: the count does not fit int64 ({rule})")
        return Estimate(flops, nbytes, rule)

    def operand(self, k: int) -> Optional[Tensor]:
        if k >= len(self.inp):
            self.why = f"{self.key}: no operand {k} (the inputs list each node once)"
            return None
        if self.inp[k].kind != TENSORS or len(self.inp[k].tensors) != 1:
            self.why = f"{self.key}: operand {k} is not one tensor"
            return None
        return self.inp[k].tensors[0]

    def run(self) -> Estimate:
        n, key, base = self.n, self.key, self.base
        if n.op in ("placeholder", "get_attr", "output"):
            return Estimate(0, 0, f"no computation ({n.op})")
        if base in VIEW_OPS:
            return Estimate(0, 0, f"view/metadata op {key}: no arithmetic, no copy")
        self.out = node_result(n.meta)
        if self.out.kind == NON_TENSOR:
            if base in SCALAR_OPS:
                return Estimate(0, 0, f"scalar op {key} (non-tensor result)")
            return self.unknown(f"{key} has a non-tensor result and no cost formula")
        if self.out.kind == UNKNOWN_RESULT:
            return self.unknown(f"{key}: the result {self.out.why}")
        # Operands by position: inputs[k] is the k-th distinct node the op reads. A fused node
        # goes on without one (its parts that need no operand are still counted).
        fused_node = key.startswith("nodemeta.fused.")
        self.inp = []
        for k, j in enumerate(n.inputs):
            self.inp.append(node_result(self.nodes[j].meta))
            if self.inp[-1].kind == UNKNOWN_RESULT:
                why = f"{key}: operand {k} {self.inp[-1].why}"
                if not fused_node:
                    return self.unknown(why)
                self.operand_why = self.operand_why or why
        self.y = self.out.tensors[0]
        self.numel = self.y.numel
        self.io_bytes = (None if any(r.kind == UNKNOWN_RESULT for r in self.inp)
                         else self.out.nbytes + sum(r.nbytes for r in self.inp))
        if self.io_bytes is not None and not fits(self.io_bytes):
            self.io_bytes = None
        return self.formulas()

    def formulas(self) -> Estimate:
        key, base, numel, io_bytes, training = self.key, self.base, self.numel, self.io_bytes, self.training
        if key.startswith("nodemeta.fused."):
            return self.fused(key[len("nodemeta.fused."):])
        if base in DROPOUT_OPS and self.call is not None:  # stochastic_depth(input, p, mode, training)
            t, p = self.argument(3, "training"), self.number(self.argument(1, "p"))
            if isinstance(t, bool) and p is not None:
                if not t or p == 0.0:
                    return Estimate(0, 0, f"{key} (training=False or p=0 in the call): identity")
                return self.known(numel, io_bytes, f"{key} (training=True in the call): flops = numel(out) (mask and scale)")
        if base in DROPOUT_OPS:
            if training is None:
                return self.unknown(f"{key}: identity in eval mode, elementwise in training mode; {MODE_UNKNOWN}")
            if not training:
                return Estimate(0, 0, "Dropout (eval mode): identity")
            return self.known(numel, io_bytes, "Dropout (training mode): flops = numel(out) (mask and scale)")
        if base in COPY_OPS:
            return self.known(0, io_bytes, f"{key}: copy, 0 flops; bytes = read + write")
        if base in ALLOC_OPS:
            return self.known(0, self.out.nbytes, f"{key}: allocation/fill, 0 flops; bytes = output written")
        if base == "cat":
            return self.known(0, io_bytes, "cat: 0 flops; bytes = inputs read + output written")
        if base in ("embedding", "Embedding") and self.n.op == "call_module":
            return self.embedding_module()
        if base in ("embedding", "Embedding"):  # embedding(weight, indices)
            indices = self.operand(1) if self.operand(0) is not None else None
            if indices is None:
                return self.unknown(self.why)
            return self.known(0, 2 * self.y.nbytes + indices.nbytes,
                              "embedding: gather, 0 flops; bytes = rows read + output written + indices")
        if base in ELEMENTWISE_OPS:
            return self.known(numel, io_bytes, f"elementwise {key}: flops = numel(out)")
        if base in BATCH_NORM_OPS:
            return self.batch_norm()
        if base in LAYER_NORM_OPS:
            return self.known(5 * numel, io_bytes,
                              "layer norm: flops = 5*numel(out) (mean, centre, variance, normalise, affine)")
        if base in GROUP_NORM_OPS:
            return self.known(5 * numel, io_bytes,
                              "group/instance norm: flops = 5*numel(out) (mean, centre, variance, normalise, affine)")
        if base in SOFTMAX_OPS:
            return self.known(5 * numel, io_bytes, "softmax: flops = 5*numel(out) (max, subtract, exp, sum, divide)")
        if base in MEAN_OPS:
            x = self.operand(0)
            if x is None:
                return self.unknown(self.why)
            return self.known(x.numel, io_bytes, f"{key}: flops = numel(input) (one add per input element)")
        if base in ADAPTIVE_MAX_OPS:
            x = self.operand(0)
            if x is None:
                return self.unknown(self.why)
            return self.known(x.numel, io_bytes, f"{key}: flops = numel(input) (one compare per input element)")
        if base == "Linear" and self.module is not None:
            return self.linear_module()
        if base == "Linear":
            flops = self.linear()
            if flops is None:
                return self.unknown(self.why)
            return self.known(flops, io_bytes,
                              "Linear: flops = 2*numel(out)*in_features; bias add and weights not in fx metadata")
        if base in MATMUL_OPS:
            return self.matrix_product()
        if base == "einsum":
            return self.einsum()
        if base == "convolution":
            return self.convolution()
        if base == "MultiheadAttention":
            return self.attention()
        if base in CONV_MODULES:
            if self.module is not None:
                return self.conv_module()
            return self.unknown(f"{key}: kernel size and groups are not in fx call_module metadata")
        if base in POOL_OPS:
            if self.module is not None and self.n.op == "call_module":
                return self.pool(self.attribute("kernel_size"), "modules")
            if self.call is not None and self.n.op != "call_module":
                return self.pool(self.argument(1, "kernel_size"), "calls")
            return self.unknown(f"{key}: kernel size is not in the node metadata")
        if base == WINDOW_ATTENTION:
            return self.window_attention()
        return self.unknown(f"no cost formula for {key}")

    # ---- the call_module node's "modules" entry (self.module None without one) --------------

    def attribute(self, name: str) -> Any:
        a = self.module.get("attributes") if self.module is not None else None
        return a.get(name) if isinstance(a, dict) else None

    _MISSING = object()

    def parameter(self, name: str) -> Any:
        """The parameter's Tensor, None (the module has none), or _MISSING (self.why set)."""
        ps = self.module.get("parameters") if self.module is not None else None
        p = ps.get(name, self._MISSING) if isinstance(ps, dict) else self._MISSING
        if p is None:
            return None
        if not isinstance(p, dict) or not _is_tensor_value(p):
            self.why = f"{self.key}: the graph's modules table records no {name} shape for {self.path}"
            return self._MISSING
        try:
            return parse_tensor(p)
        except Unusable as u:
            self.why = f"{self.key}: the modules table's {name} is {u.why}"
            return self._MISSING

    def weight_and_bias(self):
        """(weight, bias or None), or None with self.why set."""
        w = self.parameter("weight")
        if w is None or w is self._MISSING:
            if w is None or not self.why:
                self.why = f"{self.key}: the module has no weight"
            return None
        b = self.parameter("bias")
        if b is self._MISSING:
            return None
        return w, b

    def conv_module(self) -> Estimate:
        key, y = self.key, self.y
        wb = self.weight_and_bias()
        if wb is None:
            return self.unknown(self.why)
        w, bias = wb
        if len(self.inp) != 1:
            return self.unknown(f"{key}: expects the input as its only operand")
        x = self.operand(0)
        if x is None:
            return self.unknown(self.why)
        r = len(w.shape)
        if r < 3 or len(x.shape) != len(y.shape) or len(x.shape) not in (r, r - 1):
            return self.unknown(f"{key}: input, weight and output are not [N, C, spatial...] (or [C, spatial...]) "
                                "tensors of the weight's rank")
        c = 1 if len(x.shape) == r else 0
        transposed = self.base.startswith("ConvTranspose")
        cin, cout, w0, w1 = x.shape[c], y.shape[c], w.shape[0], w.shape[1]
        groups = self.attribute("groups")
        groups = groups if type(groups) is int else None
        ok = (c == 0 or x.shape[0] == y.shape[0]) and w1 > 0
        if not transposed:
            ok = ok and cout == w0 and cin % w1 == 0 and (groups is None or groups * w1 == cin)
        else:
            ok = ok and cin == w0 and cout % w1 == 0 and (groups is None or groups * w1 == cout)
        if not ok:
            return self.unknown(f"{key}: the input, output and weight shapes do not fit the module")
        per = math.prod(w.shape[1:])
        if not fits(per):
            return self.unknown(f"{key}: the count does not fit int64")
        flops = 2 * (x.numel if transposed else self.numel) * per + (self.numel if bias is not None else 0)
        nbytes = self.io_bytes + w.nbytes + (bias.nbytes if bias is not None else 0)
        bias_rule = " + numel(out) (bias)" if bias is not None else ""
        rule = (f"{key}: flops = 2*numel(in)*C_out/groups*prod(kernel)" if transposed
                else f"{key}: flops = 2*numel(out)*C_in/groups*prod(kernel)") + bias_rule
        return self.known(flops, nbytes, rule + "; bytes = in + out + weight" + (" + bias" if bias is not None else "")
                          + FROM_TABLE)

    def linear_module(self) -> Estimate:
        wb = self.weight_and_bias()
        if wb is None:
            return self.unknown(self.why)
        w, bias = wb
        flops = self.linear()
        if flops is None:
            return self.unknown(self.why)
        if len(w.shape) != 2 or w.shape[1] != self.operand(0).shape[-1] or w.shape[0] != self.y.shape[-1]:
            return self.unknown(f"{self.key}: the weight's shape does not fit [..., in_features] -> [..., out_features]")
        return self.known(flops + (self.numel if bias is not None else 0),
                          self.io_bytes + w.nbytes + (bias.nbytes if bias is not None else 0),
                          "Linear: flops = 2*numel(out)*in_features" + (" + numel(out) (bias)" if bias is not None else "")
                          + "; bytes = in + out + weight" + (" + bias" if bias is not None else "") + FROM_TABLE)

    def embedding_module(self) -> Estimate:
        w = self.parameter("weight")
        if w is None or w is self._MISSING:
            return self.unknown(self.why if (w is self._MISSING and self.why) else f"{self.key}: the module has no weight")
        indices = self.operand(0)
        if indices is None:
            return self.unknown(self.why)
        if len(w.shape) != 2 or not self.y.shape or self.y.shape[-1] != w.shape[1]:
            return self.unknown(f"{self.key}: the output's last dimension is not the weight's embedding_dim")
        return self.known(0, 2 * self.y.nbytes + indices.nbytes,
                          "Embedding: gather, 0 flops; bytes = rows read + output written + indices")

    def pool(self, k: Any, table: str) -> Estimate:
        key = self.key
        dims = int(self.base[-2])
        if type(k) is int:
            window = k ** dims if k >= 0 else None
        elif isinstance(k, list) and len(k) == dims:
            window = math.prod(k) if all(type(e) is int and e >= 0 for e in k) else None
        else:
            where = self.n.name if table == "calls" else self.path
            return self.unknown(f"{key}: the graph's {table} table records no kernel_size (an int or {dims} ints) "
                                f"for {where}")
        if window is None or not fits(window):
            return self.unknown(f"{key}: kernel_size is negative or its product does not fit int64")
        what = "compare" if self.base.startswith("Max") else "add"
        return self.known(self.numel * window, self.io_bytes,
                          f"{key}: flops = numel(out)*prod(kernel_size) (one {what} per window element); "
                          f"kernel_size from the graph's {table} table")

    # ---- the call node's "calls" entry (self.call None without one) -------------------------

    def argument(self, pos: int, name: str) -> Any:
        if self.call is None:
            return None
        args = self.call.get("args")
        if isinstance(args, list) and pos < len(args):
            return args[pos]
        kwargs = self.call.get("kwargs")
        return kwargs.get(name) if isinstance(kwargs, dict) else None

    def node_argument(self, pos: int, name: str) -> Optional[Node]:
        return self.node_ref(self.argument(pos, name))

    @staticmethod
    def number(v: Any) -> Optional[float]:
        return float(v) if type(v) in (int, float) else None

    @staticmethod
    def ints(v: Any, n: int) -> Optional[List[int]]:
        if not isinstance(v, list) or len(v) != n or not all(type(e) is int and e >= 0 for e in v):
            return None
        return v

    def node_ref(self, a: Any) -> Optional[Node]:
        ref = a.get("node") if isinstance(a, dict) else None
        if not isinstance(ref, str):
            return None
        if self.names is None:
            self.names = {n.name: i for i, n in enumerate(self.nodes)}
        i = self.names.get(ref)
        return self.nodes[i] if i is not None else None

    def einsum(self) -> Estimate:
        key = self.key
        eq = self.argument(0, "equation")
        if not isinstance(eq, str):
            return self.unknown(f"{key}: the equation is not in the node metadata (no calls table entry)")
        e = eq.replace(" ", "")
        lhs = e.split("->", 1)[0]
        if lhs.count(",") != 1 or "." in e:
            return self.unknown(f"{key}: only two operands without an ellipsis are costed (equation '{eq}')")
        terms = lhs.split(",")
        listed = self.argument(1, "operands")
        size: Dict[str, int] = {}
        for k in range(2):
            if isinstance(listed, list):
                node = self.node_ref(listed[k] if len(listed) == 2 else None)
            else:
                node = self.node_argument(k + 1, "")
            r = node_result(node.meta) if node is not None else None
            if r is None or r.kind != TENSORS or len(r.tensors) != 1:
                return self.unknown(f"{key}: operand {k} is not one tensor with a shape")
            t = r.tensors[0]
            if len(t.shape) != len(terms[k]):
                return self.unknown(f"{key}: operand {k}'s rank does not fit '{eq}'")
            for c, dim in zip(terms[k], t.shape):
                if not (c.isascii() and c.isalpha()):
                    return self.unknown(f"{key}: equation '{eq}' is not letters, ',' and '->'")
                s = size.get(c, -1)
                if s in (-1, 1):
                    size[c] = max(s, dim)
                elif dim != s and dim != 1:
                    return self.unknown(f"{key}: index '{c}' has sizes {s} and {dim}")
        return self.known(2 * math.prod(size.values()), self.io_bytes,
                          f"{key}: flops = 2*prod(size of each index) (one multiply-add per combination); "
                          "equation from the graph's calls table")

    def window_attention(self) -> Estimate:
        key = self.key
        if self.call is None:
            return self.unknown(f"{key}: the window size and head count are not in the node metadata (no calls table)")
        nodes = [self.node_argument(0, "input"), self.node_argument(1, "qkv_weight"), self.node_argument(2, "proj_weight")]
        window, shift = self.ints(self.argument(4, "window_size"), 2), self.ints(self.argument(6, "shift_size"), 2)
        heads = self.argument(5, "num_heads")
        if (any(n is None for n in nodes) or window is None or shift is None or type(heads) is not int or heads <= 0
                or window[0] <= 0 or window[1] <= 0):
            return self.unknown(f"{key}: the calls table does not record input, qkv_weight, proj_weight, window_size, "
                                "num_heads and shift_size as the function takes them")
        t = []
        for k, n in enumerate(nodes):
            r = node_result(n.meta)
            if r.kind != TENSORS or len(r.tensors) != 1:
                return self.unknown(f"{key}: argument {k} is not one tensor with a shape")
            t.append(r.tensors[0])
        x, qkv_w, proj_w = t
        X = x.shape
        if (len(X) != 4 or self.y.shape != X or len(qkv_w.shape) != 2 or len(proj_w.shape) != 2
                or qkv_w.shape[1] != X[3] or proj_w.shape[0] != X[3] or proj_w.shape[1] != X[3] or X[3] % heads != 0):
            return self.unknown(f"{key}: the input [B, H, W, C], weights [O, C] and [C, C], output and num_heads do not fit")

        def has(pos: int, name: str) -> bool:
            return self.argument(pos, name) is not None

        qkv_bias, proj_bias, cosine = has(9, "qkv_bias"), has(10, "proj_bias"), has(11, "logit_scale")
        attn_p, out_p = self.number(self.argument(7, "attention_dropout")), self.number(self.argument(8, "dropout"))
        if (has(7, "attention_dropout") and attn_p is None) or (has(8, "dropout") and out_p is None):
            return self.unknown(f"{key}: a dropout probability in the calls table is not a number")
        a, b = window
        c, o, h = X[3], qkv_w.shape[0], heads
        hp, wp = -(-X[1] // a) * a, -(-X[2] // b) * b
        shifted = (a < hp and shift[0] > 0) or (b < wp and shift[1] > 0)
        n = X[0] * hp * wp
        if not fits(n):
            return self.unknown(f"{key}: the count does not fit int64")
        l = a * b
        rule = f"{key}: flops = 2*T*C*O + 2*T*C*C (qkv, proj) + 4*T*L*C (QK^T, AV) + 6*T*h*L (bias add, softmax)"
        flops = 2 * n * c * o + 2 * n * c * c + 4 * n * l * c + 6 * n * h * l
        if shifted:
            flops += n * h * l
            rule += " + T*h*L (shift mask)"
        if cosine:
            flops += 4 * n * c + n * h * l
            rule += " + 4*T*C + T*h*L (cosine attention)"
        else:
            flops += n * c
            rule += " + T*C (q scale)"
        if qkv_bias or proj_bias:
            flops += (n * o if qkv_bias else 0) + (n * c if proj_bias else 0)
            rule += " + biases"
        if (attn_p is not None and attn_p != 0.0) or (out_p is not None and out_p != 0.0):
            flops += (n * h * l if attn_p is not None and attn_p != 0.0 else 0) + \
                (n * c if out_p is not None and out_p != 0.0 else 0)
            rule += " + dropout"
        return self.known(flops, self.io_bytes,
                          f"{rule}; T = B*Hp*Wp = {n} tokens (padded), L = {l} (window {a}x{b}), h = {h} "
                          "from the graph's calls table")

    def batch_norm(self) -> Estimate:
        key, numel = self.key, self.numel
        if self.training is None:
            return self.unknown(f"{key}: 2*numel(out) in eval mode, 5*numel(out) in training mode; {MODE_UNKNOWN}"
                                "; flops_lower_bound = 2*numel(out)", 2 * numel if fits(2 * numel) else None)
        if not self.training:
            return self.known(2 * numel, self.io_bytes, "batch norm (eval mode): flops = 2*numel(out) (folded scale, shift)")
        return self.known(5 * numel, self.io_bytes,
                          "batch norm (training mode): flops = 5*numel(out) (batch mean, centre, variance, normalise, affine)")

    def linear(self) -> Optional[int]:
        """2*numel(out)*in_features, or None with self.why set."""
        x = self.operand(0)
        if x is None:
            return None
        if not x.shape or len(x.shape) != len(self.y.shape) or x.shape[:-1] != self.y.shape[:-1]:
            self.why = f"{self.key}: input and output shapes do not fit [..., in_features] -> [..., out_features]"
            return None
        return 2 * self.numel * x.shape[-1]

    def matrix_product(self) -> Estimate:
        # addmm(bias, a, b); mm(a, b); bmm(a, b); matmul(a, b): K is a's last dimension.
        key, base, y = self.key, self.base, self.y
        addmm = base == "addmm"
        first = 1 if addmm else 0
        if addmm and self.operand(0) is None:
            return self.unknown(self.why)
        a = self.operand(first)
        b = self.operand(first + 1) if a is not None else None
        if b is None:
            return self.unknown(self.why)
        A, B, Y = a.shape, b.shape, y.shape
        if base in ("mm", "addmm"):
            ok = len(A) == 2 and len(B) == 2 and len(Y) == 2 and A[1] == B[0] and Y[0] == A[0] and Y[1] == B[1]
        elif base == "bmm":
            ok = (len(A) == 3 and len(B) == 3 and len(Y) == 3 and A[0] == B[0] and A[2] == B[1] and Y[0] == A[0]
                  and Y[1] == A[1] and Y[2] == B[2])
        else:  # matmul: b's contracted dimension is its second-to-last (its only one if 1-D)
            ok = len(A) >= 1 and len(B) >= 1 and A[-1] == B[len(B) - 2 if len(B) >= 2 else 0]
        if not ok:
            return self.unknown(f"{key}: operand shapes do not fit a matrix product")
        k = A[-1]
        if addmm:
            return self.known(2 * self.numel * k + self.numel, self.io_bytes,
                              f"{key}: flops = 2*numel(out)*K + numel(out) (bias)")
        return self.known(2 * self.numel * k, self.io_bytes, f"{key}: flops = 2*numel(out)*K")

    def convolution(self) -> Estimate:
        """aten.convolution(x, weight[, bias]); `transposed` is not in the file: the innermost
        module (torch.nn.Conv*d or ConvTranspose*d) decides, else the shapes."""
        key, y = self.key, self.y
        if not 2 <= len(self.inp) <= 3:
            return self.unknown(f"{key}: expects input, weight[, bias] as operands")
        x = self.operand(0)
        w = self.operand(1) if x is not None else None
        bias = self.operand(2) if (w is not None and len(self.inp) == 3) else None
        if w is None or (len(self.inp) == 3 and bias is None):
            return self.unknown(self.why)
        r = len(w.shape)
        if r < 3 or len(x.shape) != r or len(y.shape) != r:
            return self.unknown(f"{key}: input, weight and output are not [N, C, spatial...] tensors of one rank")
        per = math.prod(w.shape[1:])  # C/groups * prod(kernel)
        cin, cout, w0, w1 = x.shape[1], y.shape[1], w.shape[0], w.shape[1]
        batch = y.shape[0] == x.shape[0]
        forward_fits = batch and cout == w0 and w1 > 0 and cin > 0 and cin % w1 == 0 and cout % (cin // w1) == 0
        transposed_fits = batch and cin == w0 and w1 > 0 and cout > 0 and cout % w1 == 0 and cin % (cout // w1) == 0
        bias_flops = self.numel if bias is not None else 0
        forward = 2 * self.numel * per + bias_flops if fits(per) else None
        transposed = 2 * x.numel * per + bias_flops if fits(per) else None
        bias_rule = " + numel(out) (bias)" if bias is not None else ""
        forward_rule = "convolution: flops = 2*numel(out)*C_in/groups*prod(kernel)" + bias_rule
        transposed_rule = "convolution (transposed): flops = 2*numel(in)*C_out/groups*prod(kernel)" + bias_rule
        module = innermost_module(self.n.meta)
        if module in TORCH_CONV or module in TORCH_CONV_TRANSPOSE:
            conv_module = module in TORCH_CONV
            if not (forward_fits if conv_module else transposed_fits):
                return self.unknown(f"{key}: the shapes do not fit the {module} that made the node")
            short = module.rsplit(".", 1)[-1]
            if conv_module:
                return self.known(forward, self.io_bytes, f"{forward_rule} ({short})")
            return self.known(transposed, self.io_bytes, f"{transposed_rule} ({short})")
        if forward_fits and not transposed_fits:
            return self.known(forward, self.io_bytes, forward_rule)
        if transposed_fits and not forward_fits:
            return self.known(transposed, self.io_bytes, transposed_rule)
        if not forward_fits:
            return self.unknown(f"{key}: the shapes fit neither a forward nor a transposed convolution")
        if not fits(forward, transposed):
            return self.known(None, self.io_bytes, forward_rule)
        if forward == transposed:
            return self.known(forward, self.io_bytes, forward_rule + " (a transposed convolution gives the same count)")
        return self.unknown(f"{key}: the shapes fit a forward and a transposed convolution, and the graph does not "
                            "say which; flops_lower_bound = the smaller count", min(forward, transposed))

    def attention(self) -> Estimate:
        """MultiheadAttention: inputs [q], [q, kv] or [q, k, v]; batch_first is not in the file."""
        key, y, inp = self.key, self.y, self.inp
        if not 1 <= len(inp) <= 3:
            return self.unknown(f"{key}: expects query[, key][, value] as its only operands (masks are not costed)")
        q = self.operand(0)
        k = self.operand(1 if len(inp) == 3 else len(inp) - 1) if q is not None else None
        v = self.operand(len(inp) - 1) if k is not None else None
        if v is None:
            return self.unknown(self.why)
        r = len(q.shape)
        if r not in (2, 3) or len(k.shape) != r or len(v.shape) != r:
            return self.unknown(f"{key}: query, key and value are not all [L, E] or all 3-D")
        if y.shape != q.shape:
            return self.unknown(f"{key}: the output's shape is not the query's")
        e, kdim, vdim = q.shape[-1], k.shape[-1], v.shape[-1]
        if len(inp) == 2 and kdim != e:
            return self.unknown(f"{key}: with two operands the second may be the key, the value or both, which "
                                "differ when its last dimension is not the query's")

        def flops(nb: int, seq_l: int, seq_s: int) -> int:
            return 4 * nb * seq_l * e * e + 2 * nb * seq_s * e * kdim + 2 * nb * seq_s * e * vdim + 4 * nb * seq_l * seq_s * e

        formula = "flops = 4*N*L*E^2 + 2*N*S*E*(kdim + vdim) + 4*N*L*S*E"
        Q, K, V = q.shape, k.shape, v.shape
        if r == 2:  # unbatched: [L, E], [S, kdim], [S, vdim]
            if K[0] != V[0]:
                return self.unknown(f"{key}: key and value lengths differ")
            return self.known(flops(1, Q[0], K[0]), self.io_bytes, "MultiheadAttention (unbatched): " + formula)
        batch_first = Q[0] == K[0] == V[0] and K[1] == V[1]
        seq_first = Q[1] == K[1] == V[1] and K[0] == V[0]
        bf = flops(Q[0], Q[1], K[1])
        sf = flops(Q[1], Q[0], K[0])
        b_attr = self.attribute("batch_first")
        if isinstance(b_attr, bool):  # the modules table says
            if not (batch_first if b_attr else seq_first):
                return self.unknown(f"{key}: the shapes do not fit the module's layout (batch_first "
                                    f"{'true' if b_attr else 'false'})")
            return self.known(bf if b_attr else sf, self.io_bytes,
                              f"MultiheadAttention ({'batch_first [N, L, E]' if b_attr else '[L, N, E]'}, batch_first "
                              "from the graph's modules table): " + formula)
        if batch_first and not seq_first:
            return self.known(bf, self.io_bytes, "MultiheadAttention (batch_first [N, L, E]): " + formula)
        if seq_first and not batch_first:
            return self.known(sf, self.io_bytes, "MultiheadAttention ([L, N, E]): " + formula)
        if not batch_first:
            return self.unknown(f"{key}: query, key and value shapes fit neither [N, L, E] nor [L, N, E]")
        if not fits(bf, sf):
            return self.known(None, self.io_bytes, "MultiheadAttention: " + formula)
        if bf == sf:
            return self.known(bf, self.io_bytes, "MultiheadAttention ([N, L, E] and [L, N, E] give the same count): "
                              + formula)
        return self.unknown(f"{key}: the shapes fit [N, L, E] and [L, N, E], and batch_first is not in the metadata; "
                            f"flops_lower_bound = the smaller count ({formula})", min(bf, sf))

    def fused_sources(self) -> List[tuple]:
        """The call_module sources in the node's from_node, in order: (path, type, table
        entry or None); the type is the merged nn_module_stack's for the path if it names one,
        else the modules table's (fused_sources in cost.cpp)."""
        chain = self.n.meta.get("from_node")
        if not isinstance(chain, list):
            return []
        stack = self.n.meta.get("nn_module_stack")
        stack = stack if isinstance(stack, dict) else {}
        out = []
        for source in chain:
            if not isinstance(source, dict):
                continue
            op, target = source.get("op"), source.get("target")
            if op != "call_module" or not isinstance(target, str):
                continue
            entry = self.modules.get(target)
            entry = entry if isinstance(entry, dict) else None
            t = stack.get(target)
            t = t if isinstance(t, str) else ""
            if not t:
                t = entry.get("type") if entry is not None and isinstance(entry.get("type"), str) else ""
            out.append((target, t, entry))
        return out

    def fused_module(self, sources: List[tuple], cursor: List[int], type_name: str, key: str) -> Optional[Estimate]:
        """A fused node's conv or linear part, costed as the module it replaced: the next
        source of that type (each part takes its own), from its table entry; None where it has
        no entry (fused_module in cost.cpp)."""
        while cursor[0] < len(sources):
            target, t, entry = sources[cursor[0]]
            cursor[0] += 1
            if t != type_name:
                continue
            if entry is None:
                return None
            sub = _Estimator(self.nodes, self.index_, self.training, self.modules, None, self.names)
            sub.module, sub.call, sub.key, sub.path = entry, None, key, target
            sub.base = base_name(key)
            return sub.run()
        return None

    def fused(self, pattern: str) -> Estimate:
        """A node made by the fuse pass: the sum of its parts, each costed as the module it
        replaced (conv and linear from the modules table where the source has an entry);
        bytes = inputs + output (+ the weights the table records). Unknown if a part is,
        keeping the known parts."""
        total: Optional[int] = 0
        lower = 0
        weights = 0
        terms: List[str] = []
        lower_terms: List[str] = []  # what flops_lower_bound adds
        unknown_parts: List[str] = []
        numel, training = self.numel, self.training
        sources = self.fused_sources()
        next_conv, next_linear = [0], [0]
        for part in pattern.split("_"):
            if part in ("conv", "linear"):
                conv = part == "conv"
                c = (self.fused_module(sources, next_conv, "torch.nn.modules.conv.Conv2d", "module:Conv2d") if conv
                     else self.fused_module(sources, next_linear, "torch.nn.modules.linear.Linear", "module:Linear"))
                if c is not None and c.flops is not None:
                    at = c.rule.find("flops = ")
                    end = c.rule.find(";", at) if at >= 0 else -1
                    formula = c.rule if at < 0 else (c.rule[at + 8:] if end < 0 else c.rule[at + 8:end])
                    terms.append(f"{formula} ({part}, weight shape from the graph's modules table)")
                    lower_terms.append(terms[-1])
                    total = total + c.flops if total is not None else None
                    lower += c.flops
                    if c.nbytes is not None and self.io_bytes is not None:
                        weights += c.nbytes - self.io_bytes
                elif c is not None:
                    unknown_parts.append(f"{part} ({c.rule})")
                    total = None
                    if c.flops_lower_bound is not None:
                        lower += c.flops_lower_bound
                        lower_terms.append(f"the {part}'s lower bound")
                elif conv:
                    unknown_parts.append("conv (kernel size and groups are not in fx call_module metadata)")
                    total = None
                else:
                    f = self.linear()
                    if f is not None:
                        terms.append("2*numel(out)*in_features (linear)")
                        lower_terms.append(terms[-1])
                        total = total + f if total is not None else None
                        lower += f
                    else:
                        unknown_parts.append(f"linear ({self.why})")
                        total = None
            elif part == "bn":
                if training is not None:
                    f = (5 if training else 2) * numel
                    terms.append("5*numel(out) (bn, training mode)" if training else "2*numel(out) (bn, eval mode)")
                    lower_terms.append(terms[-1])
                    total = total + f if total is not None else None
                    lower += f
                else:
                    unknown_parts.append(f"bn ({MODE_UNKNOWN})")
                    total = None
                    lower += 2 * numel
                    lower_terms.append("2*numel(out) (bn at the eval-mode rate)")
            elif part in FUSED_ACTIVATIONS:
                terms.append(f"numel(out) ({part})")
                lower_terms.append(terms[-1])
                total = total + numel if total is not None else None
                lower += numel
            else:
                return self.unknown(f"no cost formula for {self.key} (unknown part '{part}')")
        sum_text = " + ".join(terms)
        if not unknown_parts and self.io_bytes is None:  # every part known, but an operand is not
            if not fits(lower):
                return self.unknown(f"{self.key}: the known parts do not fit int64")
            return self.unknown(f"fused {pattern}: flops = {sum_text} as a lower bound; the bytes are unknown: "
                                + (self.operand_why or "they do not fit int64"), lower)
        if not unknown_parts:
            nbytes = self.io_bytes + weights if weights > 0 else self.io_bytes
            return self.known(total, nbytes,
                              f"fused {pattern}: flops = {sum_text}; bytes = inputs + output"
                              + (" + weights" if weights > 0 else "") + " (intermediates stay on chip)")
        parts = ", ".join(unknown_parts)
        if not fits(lower):
            return self.unknown(f"{self.key}: unknown parts: {parts}; the known parts do not fit int64")
        lower_text = " + ".join(lower_terms)
        return self.unknown(f"fused {pattern}: unknown parts: {parts}"
                            + (f"; flops_lower_bound = {lower_text}" if lower_text else ""), lower)


def estimate_cost(nodes: Sequence[Node], index: int, training: Optional[bool] = None,
                  modules: Optional[Dict[str, Any]] = None, calls: Optional[Dict[str, Any]] = None,
                  names: Optional[Dict[str, int]] = None) -> Estimate:
    """The cost of one node (src/passes/cost.cpp's estimate_cost); `training` is the graph's
    "training" attribute (None: the graph does not say), `modules` and `calls` its "modules"
    and "calls" attributes (None: absent); `names` maps node names to indices (built when
    needed)."""
    return _Estimator(nodes, index, training, modules, calls, names).run()


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


def write_cost(meta: Dict[str, Any], c: Estimate) -> None:
    meta["flops"] = UNKNOWN if c.flops is None else c.flops
    meta["bytes"] = UNKNOWN if c.nbytes is None else c.nbytes
    meta["cost_rule"] = c.rule
    if c.flops_lower_bound is not None:
        meta["flops_lower_bound"] = c.flops_lower_bound
    else:
        meta.pop("flops_lower_bound", None)


def cost_pass(nodes: Sequence[Node], stats: Dict[str, Any], training: Optional[bool] = None,
              modules: Optional[Dict[str, Any]] = None, calls: Optional[Dict[str, Any]] = None) -> None:
    unknown = 0
    names = {n.name: i for i, n in enumerate(nodes)} if calls else None
    modules = modules if isinstance(modules, dict) else None
    calls = calls if isinstance(calls, dict) else None
    for i, node in enumerate(nodes):
        c = estimate_cost(nodes, i, training, modules, calls, names)
        if c.flops is None:
            unknown += 1
        write_cost(node.meta, c)
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
        # An unknown cost counts its lower bound (0 if it has none, or cost never ran).
        own = node.meta.get("flops")
        if type(own) is not int:
            complete = False
            own = node.meta.get("flops_lower_bound")
            if type(own) is not int:
                own = 0
        path = longest + own
        if path > INT64_MAX:  # the C++ saturates (and the path is then only a lower bound)
            path = INT64_MAX
            complete = False
        node.meta["depth"] = depth
        node.meta["critical_path_flops"] = path
        node.meta["critical_path_complete"] = complete
        critical = max(critical, path)
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
    # A loaded node keeps every protected value as loaded, whatever else it carries (from_node
    # included: a rewrite's result, saved and loaded again, is a loaded node now).
    b = base.index.get(node.name)
    if b is not None:
        want = base.values[b]
        for k in PROTECTED_KEYS:
            if (k in want) != (k in meta) or (k in want and want[k] != meta[k]):
                problems.append(f"node '{node.name}': protected key '{k}' changed since load")
        return []
    # A new node was made by a rewrite, which must say what it replaced.
    if "from_node" not in meta:
        problems.append(f"node '{node.name}' is new but has no from_node provenance")
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
    seen = set()  # loaded nodes still here, or named by the chain of a new node that replaced them
    for node in nodes:
        covered = _check_node(node, baseline, problems)
        if node.name in baseline.index:
            seen.add(node.name)
        seen.update(name for name in covered if name in baseline.index)
    stats["nodes_touched"] = len(nodes)
    for name in baseline.names:
        if name not in seen:
            problems.append(f"node '{name}' vanished: no from_node chain names it")
    stats["problems"] = problems
    stats["summary"] = "clean" if not problems else f"{len(problems)} problems"


def run_passes(nodes: Sequence[Node], passes: Iterable[str] = PASSES,
               baseline: Optional[Baseline] = None, training: Optional[bool] = None,
               modules: Optional[Dict[str, Any]] = None, calls: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """Runs the named passes in order on `nodes` (mutating each node.meta) and returns one
    dict per pass: name, nodes_touched, rejected_protected, nodes_before, nodes_after,
    seconds, summary, problems. verify checks against `baseline`, taken here before the
    first pass when not given (`nodemeta run` takes it right after loading). `training`
    is the graph's "training" attribute (training_mode(doc)); None: the graph does not say.
    `modules` and `calls` are the graph's "modules" and "calls" attributes (doc.get(...))."""
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
            cost_pass(nodes, stats, training, modules, calls)
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
    doc = load_document(graph_path)
    nodes = nodes_from_json(doc)
    t0 = time.perf_counter()
    stats = run_passes(nodes, passes, training=training_mode(doc), modules=doc.get("modules"), calls=doc.get("calls"))
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
        doc = load_document(g)
        nodes = nodes_from_json(doc)
        t0 = time.perf_counter()
        baseline = Baseline(nodes)
        baseline_s = time.perf_counter() - t0
        stats = run_passes(nodes, passes, baseline, training_mode(doc), doc.get("modules"), doc.get("calls"))
        print(json.dumps({"graph": g, "nodes": len(nodes), "baseline_seconds": baseline_s,
                          "total_seconds": baseline_s + sum(s["seconds"] for s in stats), "passes": stats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
