"""torch.fx graphs as nodemeta graph files: the JSON shape of metadata values, and the writer.

The schema is shared/data/graphs/README.md's. What nodemeta's loader (src/graph/graph_io.cpp)
accepts sets the limits checked here, so that a file this module writes always loads:
integers fit int64, floats are finite, strings are valid Unicode, dict keys are strings, a
node's meta value nests at most as deep as the loader's default --max-depth allows, and the
standard keys have the schema's types.

torch is not imported here: converter_for() and to_plain() know torch's types once torch is
loaded (an object cannot be of a torch type before that); graph_document() and save() need
the caller's torch.fx graph, hence torch, anyway.
"""

from __future__ import annotations

import enum
import gzip
import json
import math
import os
import sys
import types
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["MAX_VALUE_DEPTH", "SCHEMA_KEYS", "converter_for", "to_plain", "target_name", "module_table",
           "call_table", "graph_document", "save"]

#: The arrays/objects a node's meta value may nest: nodemeta loads a document nested at most
#: 256 deep by default (--max-depth, LoadOptions::max_depth), and a meta value sits at depth 5.
MAX_VALUE_DEPTH = 256 - 5 + 1

#: The meta keys every node has in a graph file (None / {} where torch set nothing).
SCHEMA_KEYS = ("stack_trace", "nn_module_stack", "tensor_meta", "val", "debug_handle")

# Meta keys in the order nodemeta's own writer puts them (graph_io.cpp, schema_rank); any
# other key follows, sorted by name.
_KEY_ORDER = {k: i for i, k in enumerate(SCHEMA_KEYS + ("is_wrapped", "type"))}

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

# ---- converters ---------------------------------------------------------------------------

# Types the caller converts itself: converter_for() answers None for them.
_EXACT = frozenset({type(None), bool, int, float, str, list, tuple, dict})

# Subclasses of JSON's own types with no converter of their own become the plain type.
# int.__int__, float.__float__ and str.__str__ return the exact type for a subclass.
_BUILTIN_BASES: dict[type, Callable[[Any], Any]] = {
    int: int.__int__,
    float: float.__float__,
    str: str.__str__,
    list: list,
    tuple: list,
    dict: dict,
}


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _enum_name(e: enum.Enum) -> str:
    # "Color.RED", as str() writes a plain Enum member (an IntEnum's str() is its number).
    cls = type(e).__qualname__
    return f"{cls}.{e.name}" if e.name is not None else f"{cls}({e.value!r})"


def _callable_name(f: Any) -> str:
    fx_node = sys.modules.get("torch.fx.node")
    if fx_node is not None:
        try:
            return fx_node._get_qualified_name(f)
        except Exception:  # no __module__ (method descriptors), or no module found
            pass
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None)
    if not isinstance(name, str):
        raise TypeError("it has neither __qualname__ nor __name__")
    module = getattr(f, "__module__", None)
    if not isinstance(module, str):
        owner = getattr(f, "__objclass__", None)  # method and slot descriptors
        if owner is None:
            bound = getattr(f, "__self__", None)  # bound builtin methods
            if isinstance(bound, types.ModuleType):
                module = bound.__name__
            elif bound is not None:
                owner = bound if isinstance(bound, type) else type(bound)
        if owner is not None:
            torch = sys.modules.get("torch")
            short = getattr(f, "__name__", None)
            if torch is not None and isinstance(short, str) and getattr(torch.Tensor, short, None) is f:
                return f"torch.Tensor.{short}"  # a Tensor method defined by torch._C._TensorBase
            module = owner.__module__
    return f"{module}.{name}" if isinstance(module, str) else name


_CALLABLE_TYPES = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.MethodWrapperType,
    types.ClassMethodDescriptorType,
)

_PLAIN_TABLE: dict[type, Callable[[Any], Any]] = {
    type: _type_name,
    enum.Enum: _enum_name,
    **{t: _callable_name for t in _CALLABLE_TYPES},
}


def _tensor(t: Any) -> dict:
    return {"shape": list(t.shape), "dtype": str(t.dtype)}


def _tensor_metadata(m: Any) -> dict:
    d = {
        "shape": list(m.shape),
        "dtype": str(m.dtype),
        "stride": list(m.stride),
        "requires_grad": bool(m.requires_grad),
        "memory_format": None if m.memory_format is None else str(m.memory_format),
        "is_quantized": bool(m.is_quantized),
    }
    if m.is_quantized:
        d["qparams"] = m.qparams  # qscheme, scale, zero_point[, axis]: converted by the caller
    return d


def _torch_table() -> dict[type, Callable[[Any], Any]]:
    import torch
    import torch._ops
    from torch.fx.passes.shape_prop import TensorMetadata

    table = dict(_PLAIN_TABLE)
    table[TensorMetadata] = _tensor_metadata
    table[torch.Tensor] = _tensor  # FakeTensor, Parameter, ...
    table[torch.Size] = list
    for t in (torch.dtype, torch.memory_format, torch.device, torch.layout, torch.qscheme):
        table[t] = str  # "torch.float32", "torch.contiguous_format", "cpu", ...
    # Operators: OpOverload (torch.ops.aten.addmm.default), its packet, and the higher-order
    # operator classes of the torch version at hand.
    for name in ("OpOverload", "OpOverloadPacket", "PyOperator", "HigherOrderOperator"):
        t = getattr(torch._ops, name, None)
        if isinstance(t, type):
            table[t] = _callable_name
    return table


_table: dict[type, Callable[[Any], Any]] | None = None  # with torch's types, once torch is loaded
# Weak keys: a cached class must not keep itself (and its module's globals, which may hold
# graphs) alive.
_cache: "weakref.WeakKeyDictionary[type, Callable[[Any], Any] | None]" = weakref.WeakKeyDictionary()


def _current_table() -> dict[type, Callable[[Any], Any]]:
    global _table
    if _table is None:
        if "torch" not in sys.modules:
            return _PLAIN_TABLE
        _table = _torch_table()
        _cache.clear()  # answers given before torch was loaded
    return _table


def converter_for(tp: type) -> Callable[[Any], Any] | None:
    """The function turning one object of type `tp` into its JSON-like shape, or None.

    None for the types the caller converts itself (None, bool, int, float, str and exact
    list, tuple, dict) and for types not converted (opaque). The first of tp.__mro__ with a
    converter decides, so subclasses (FakeTensor, Parameter) are covered:

    * TensorMetadata: {"shape", "dtype", "stride", "requires_grad", "memory_format",
      "is_quantized"} (+ "qparams" when quantized), memory_format a str or None;
    * torch.Tensor: {"shape": [int], "dtype": str};
    * torch.Size: list of ints; torch.dtype, memory_format, device, layout, qscheme: str();
    * a class (an object of type `type`): module + "." + qualname ("builtins.int");
    * functions, builtins, methods, descriptors, OpOverload and its kin: the qualified name
      (torch.fx.node._get_qualified_name where it can name them: "_operator.add",
      "torch.ops.aten.addmm.default");
    * enum members: "Class.MEMBER";
    * other subclasses of int, float, str, list, tuple, dict (immutable_list, named tuples):
      the plain type.

    The result may still hold objects to convert (a qparams dict holds a torch.qscheme); the
    caller converts its elements in turn.
    """
    if tp in _EXACT:
        return None
    try:
        return _cache[tp]
    except KeyError:
        pass
    table = _current_table()
    mro = tp.__mro__
    conv = next((table[b] for b in mro if b in table), None)
    if conv is None:
        conv = next((_BUILTIN_BASES[b] for b in mro if b in _BUILTIN_BASES), None)
    if len(_cache) >= 4096:  # per-instance classes (GraphModule's) must not pile up
        _cache.clear()
    _cache[tp] = conv
    return conv


# ---- to_plain ------------------------------------------------------------------------------


class _Refused(Exception):
    """A value that cannot be written; `path` collects the steps to it, innermost first."""

    def __init__(self, kind: type[Exception], message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.path: list[str] = []

    def where(self) -> str:
        return "".join(reversed(self.path))


def _check_str(s: str) -> None:
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as e:
            raise _Refused(ValueError, f"a string holds {s[e.start]!r}, which UTF-8 cannot encode") from None


def _too_deep(limit: int) -> _Refused:
    return _Refused(ValueError, f"nested deeper than {limit} arrays/objects (or it contains itself)")


def _plain(obj: Any, room: int, limit: int) -> Any:
    # One frame per level of nesting; `room` is how many more arrays/objects may open.
    while True:
        tp = type(obj)
        if tp is str:
            _check_str(obj)
            return obj
        if obj is None or tp is bool:
            return obj
        if tp is int:
            if _INT64_MIN <= obj <= _INT64_MAX:
                return obj
            raise _Refused(ValueError, f"integer {obj} does not fit a 64-bit signed integer")
        if tp is float:
            if math.isfinite(obj):
                return obj
            raise _Refused(ValueError, f"cannot save {obj!r}: JSON has no such number")
        if tp is list or tp is tuple:
            if room <= 0:
                raise _too_deep(limit)
            out = []
            for i, x in enumerate(obj):
                try:
                    out.append(_plain(x, room - 1, limit))
                except _Refused as r:
                    r.path.append(f"[{i}]")
                    raise
            return out
        if tp is dict:
            if room <= 0:
                raise _too_deep(limit)
            out_d = {}
            for k, v in obj.items():
                if type(k) is not str:
                    if not isinstance(k, str):
                        raise _Refused(TypeError, f"dict key {k!r} is {type(k)!r}, not str")
                    k = str.__str__(k)
                    if k in out_d:
                        raise _Refused(ValueError, f"dict key {k!r} given twice (once as a str subclass)")
                _check_str(k)
                try:
                    out_d[k] = _plain(v, room - 1, limit)
                except _Refused as r:
                    r.path.append(f"[{k!r}]")
                    raise
            return out_d
        conv = converter_for(tp)
        if conv is None:
            raise _Refused(TypeError, f"cannot convert {tp!r}")
        try:
            new = conv(obj)
        except Exception as e:
            raise _Refused(TypeError, f"cannot convert {tp!r}: {type(e).__name__}: {e}") from e
        if type(new) is tp:
            raise _Refused(TypeError, f"cannot convert {tp!r}: its converter returned the same type")
        obj = new


def to_plain(obj: Any, max_depth: int = MAX_VALUE_DEPTH) -> Any:
    """`obj` as JSON-able Python: dicts with str keys, lists, str, int, float, bool, None.

    Tuples become lists; other objects go through converter_for(), recursively.
    Raises TypeError for an object no converter takes and for a dict key that is not a str;
    ValueError for what nodemeta's loader refuses: NaN and infinities, integers outside
    int64, strings UTF-8 cannot encode (lone surrogates), nesting deeper than `max_depth`
    arrays/objects. The message starts with the path to the offending part ("[2]['scale']").
    """
    try:
        return _plain(obj, max_depth, max_depth)
    except _Refused as r:
        where = r.where()
        raise r.kind(f"{where}: {r.message}" if where else r.message) from r.__cause__


# ---- graph files ---------------------------------------------------------------------------


def _module_stack(value: Any) -> Any:
    # torch 2's nn_module_stack maps a key to (module path, module type); the schema maps the
    # path to the type name.
    if not isinstance(value, Mapping):
        return value
    out = {}
    for k, v in value.items():
        if isinstance(v, (tuple, list)) and len(v) == 2:
            k, v = v
        out[k] = v
    return out


def _check_schema_value(key: str, v: Any) -> None:
    # The types nodemeta's loader requires of the standard keys (graph_io.cpp, check_meta).
    if v is None:
        return
    if key == "stack_trace" and type(v) is not str:
        raise _Refused(ValueError, f"expected a str or None, got {type(v).__name__}")
    if key == "debug_handle" and type(v) is not int:
        raise _Refused(ValueError, f"expected an int or None, got {type(v).__name__}")
    if key == "nn_module_stack":
        if type(v) is not dict:
            raise _Refused(ValueError, f"expected a dict or None, got {type(v).__name__}")
        for path, t in v.items():
            if type(t) is not str:
                r = _Refused(ValueError, f"expected a str (the module type), got {type(t).__name__}")
                r.path.append(f"[{path!r}]")
                raise r


def _node_meta(i: int, node: Any, where: str) -> dict:
    values: dict[str, Any] = {}
    for key, value in node.meta.items():
        if not isinstance(key, str):
            raise ValueError(f"{where}.meta: key {key!r} is {type(key)!r}, not str")
        try:
            if "\0" in key:
                raise _Refused(ValueError, "a key name may not hold a NUL character")
            _check_str(key)
            if key == "nn_module_stack":
                value = _module_stack(value)
            plain = _plain(value, MAX_VALUE_DEPTH, MAX_VALUE_DEPTH)
            _check_schema_value(key, plain)
        except _Refused as r:
            raise ValueError(f"{where}.meta[{key!r}]{r.where()}: {r.message}") from r.__cause__
        values[str.__str__(key)] = plain
    for key in SCHEMA_KEYS:
        if values.get(key) is None:
            values[key] = i + 1 if key == "debug_handle" else {} if key == "nn_module_stack" else None
    order = sorted(values, key=lambda k: (_KEY_ORDER.get(k, len(_KEY_ORDER)), k))
    return {k: values[k] for k in order}


def _target(node: Any) -> str:
    target = node.target
    if node.op == "call_function" and not isinstance(target, str):
        try:
            target = _callable_name(target)
        except Exception as e:
            raise _Refused(TypeError, f"cannot name {type(target)!r}: {e}") from e
    return _plain(str(target), 0, 0)


def target_name(node: Any) -> str:
    """A node's target as graph files spell it: the qualified name of a call_function's
    function ("_operator.add", "torch.ops.aten.addmm.default"), else str(target).
    ValueError naming the node if it cannot be named."""
    try:
        return _target(node)
    except _Refused as r:
        raise ValueError(f"node {node.name!r}.target: {r.message}") from r.__cause__


def _node_document(i: int, node: Any, ids: Mapping[Any, int]) -> dict:
    where = f"nodes[{i}] ({node.name})"
    field = "name"
    try:
        name = _plain(node.name, 0, 0)
        field = "op"
        op = _plain(node.op, 0, 0)
        field = "target"
        target = _target(node)
    except _Refused as r:
        raise ValueError(f"{where}.{field}: {r.message}") from r.__cause__
    inputs = []
    for n in node.all_input_nodes:
        j = ids.get(n)
        if j is None:
            raise ValueError(f"{where}.inputs: node {n.name!r} is not an earlier node of the graph")
        inputs.append(j)
    return {
        "id": i,
        "name": name,
        "op": op,
        "target": target,
        "inputs": list(dict.fromkeys(inputs)),
        "meta": _node_meta(i, node, where),
    }


def _plain_attribute(v: Any) -> tuple[bool, Any]:
    # (True, JSON value) for a module attribute of plain scalars (and tuples/lists of them,
    # one level deep: kernel_size, normalized_shape, output_size), else (False, None).
    if v is None or type(v) in (bool, str):
        return True, v
    if type(v) is int:
        return _INT64_MIN <= v <= _INT64_MAX, v
    if type(v) is float:
        return math.isfinite(v), v
    if type(v) in (tuple, list):
        out = []
        for x in v:
            ok, p = _plain_attribute(x) if not isinstance(x, (tuple, list)) else (False, None)
            if not ok:
                return False, None
            out.append(p)
        return True, out
    return False, None


def _module_entry(module: Any) -> dict:
    attributes = {}
    for k, v in vars(module).items():
        if not isinstance(k, str) or k.startswith("_"):
            continue
        ok, p = _plain_attribute(v)
        if ok and (type(p) is not str or p.isascii()):
            attributes[k] = p
    parameters = {}
    for k, p in module._parameters.items():  # the module's own, not its children's
        parameters[k] = None if p is None else {"shape": [int(d) for d in p.shape], "dtype": str(p.dtype)}
    return {"type": _type_name(type(module)), "attributes": attributes, "parameters": parameters}


def module_table(gm: Any) -> dict:
    """The graph's "modules" attribute: {path: entry} for each module a call_module node calls.

    An entry is {"type": qualified class name ("torch.nn.modules.conv.Conv2d"),
    "attributes": the module's public instance attributes that are plain values (int, float,
    bool, str, None, or a flat list of them: in_channels, kernel_size, stride, padding,
    groups, eps, p, training, ...), "parameters": {name: {"shape", "dtype"} or None} of the
    module's own parameters (weight, bias)}. The cost pass reads it where a call_module
    node's nn_module_stack does not name the type (torch 1.13's symbolic_trace records no
    module stack). `gm` is a GraphModule, or a Graph whose owning module is used ({} without
    one); in graph order of first call.
    """
    import torch.fx

    root = gm.owning_module if isinstance(gm, torch.fx.Graph) else gm
    graph = gm if isinstance(gm, torch.fx.Graph) else gm.graph
    table: dict = {}
    if root is None:
        return table
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(node.target, str) or node.target in table:
            continue
        try:
            module = root.get_submodule(node.target)
        except AttributeError:
            continue
        table[node.target] = _module_entry(module)
    return table


def call_table(gm: Any) -> dict:
    """The graph's "calls" attribute: {node name: {"args": [...], "kwargs": {...}}} for each
    call_function / call_method node with an argument that is not a node (a kernel size, a
    dim, a window size, a flag), its arguments as to_plain() writes them, each node among
    them as {"node": its name}. A node whose arguments cannot all be written (a slice, an
    opaque object) or that has only node arguments is left out. The cost pass reads it where
    a function's cost depends on an argument (the kernel size of F.max_pool2d, swin's window
    size). `gm` is a GraphModule or a Graph; in graph order.
    """
    import torch.fx

    graph = gm if isinstance(gm, torch.fx.Graph) else gm.graph
    Node = torch.fx.Node
    table: dict = {}
    for node in graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        constants = []
        torch.fx.node.map_aggregate((node.args, node.kwargs),
                                    lambda a: constants.append(a) if not isinstance(a, Node) else None)
        if not constants:
            continue
        as_names = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: {"node": n.name})
        try:
            args, kwargs = to_plain(as_names)
        except (TypeError, ValueError):
            continue
        if not isinstance(kwargs, dict):
            continue
        table[node.name] = {"args": args, "kwargs": kwargs}
    return table


def _example_input(meta: Mapping[str, Any]) -> Any:
    # A placeholder's converted tensor_meta or val: {"shape", "dtype"} of a tensor.
    value = meta["tensor_meta"] if meta["tensor_meta"] is not None else meta["val"]
    if isinstance(value, dict) and "shape" in value and "dtype" in value:
        return {"shape": value["shape"], "dtype": value["dtype"]}
    return value


def graph_document(
    gm: Any,
    model: str | None = None,
    example_inputs: Iterable[Any] | None = None,
    *,
    source: str | None = None,
    tracer: str = "fx",
    training: bool | None = None,
) -> dict:
    """The graph-file document (shared/data/graphs/README.md's schema) of a torch.fx graph.

    `gm` is a GraphModule or a Graph. `model` defaults to the class name of `gm` (a traced
    GraphModule takes its root module's), or of a Graph's owning module ("Graph" if none);
    `source` to "torch.fx.GraphModule" / "torch.fx.Graph"; `tracer` is "fx" or "aten";
    "torchvision_version" is None unless torchvision is imported. `example_inputs` (tensors,
    or anything to_plain() takes) default to each placeholder's tensor_meta, else val:
    {"shape", "dtype"} for a tensor, the value itself otherwise, None where neither is set.

    Each node's meta holds every key of node.meta (any Mapping) converted by to_plain(), and
    the five SCHEMA_KEYS where absent or None: stack_trace, tensor_meta, val None,
    nn_module_stack {}, debug_handle id + 1. torch 2's nn_module_stack values (path, type)
    become {path: type name}. Keys are ordered as nodemeta writes them: the schema's, then
    the others by name.

    "training" (the mode the graph was traced in, which the passes' batch norm, dropout and
    conv+bn folding depend on) is `training`, else a GraphModule's own `training` flag; a
    bare Graph without it writes none (unknown).

    "modules" is module_table(gm) (each called module's type, plain attributes and parameter
    shapes, which the cost pass reads for call_module nodes), left out when empty; "calls"
    is call_table(gm) (the non-node arguments of call_function / call_method nodes, which
    the cost pass reads for the ops whose cost depends on one), left out when empty.

    Raises ValueError naming the node and the key for anything a graph file cannot hold:
    "nodes[12] (relu_3).meta['foo']: cannot convert <class 'X'>".
    """
    import torch
    import torch.fx

    is_graph = isinstance(gm, torch.fx.Graph)
    graph = gm if is_graph else gm.graph
    if model is None:
        owner = gm.owning_module if is_graph else gm
        model = type(owner).__name__ if owner is not None else "Graph"
    if source is None:
        source = "torch.fx.Graph" if is_graph else "torch.fx.GraphModule"
    ids: dict[Any, int] = {}
    nodes = []
    for i, node in enumerate(graph.nodes):
        ids[node] = i
        nodes.append(_node_document(i, node, ids))
    if example_inputs is None:
        example_inputs = [_example_input(n["meta"]) for n in nodes if n["op"] == "placeholder"]
    torchvision = sys.modules.get("torchvision")
    doc = {
        "model": model,
        "source": source,
        "tracer": tracer,
        "torch_version": torch.__version__,
        "torchvision_version": getattr(torchvision, "__version__", None),
        "example_inputs": list(example_inputs),
    }
    if training is None and not is_graph:
        training = getattr(gm, "training", None)
    if training is not None:
        doc["training"] = bool(training)
    modules = module_table(gm)
    if modules:
        doc["modules"] = modules
    calls = call_table(gm)
    if calls:
        doc["calls"] = calls
    try:
        doc = to_plain(doc)
    except (TypeError, ValueError) as e:
        raise ValueError(f"graph attributes: {e}") from e
    doc["nodes"] = nodes
    return doc


def save(gm: Any, path: str | os.PathLike, **kw: Any) -> None:
    """Writes graph_document(gm, **kw) to `path` as compact JSON, gzip-compressed if the
    path ends with ".gz" in any case (as the C++ writer decides). The text is built whole before the file is opened, so a graph
    that cannot be written (ValueError from graph_document) leaves the file untouched.
    """
    text = json.dumps(graph_document(gm, **kw), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    data = text.encode("utf-8")
    p = os.fspath(path)
    if p.lower().endswith(b".gz" if isinstance(p, bytes) else ".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    with open(p, "wb") as f:
        f.write(data)
