"""nodemeta for torch.fx: attach a graph's metadata to nodemeta, run the C++ passes on it, save it.

    import nodemeta.fx
    store = nodemeta.fx.attach(gm)            # every node.meta becomes a NodeMetadata
    results = nodemeta.fx.run_passes(gm)      # cost, propagate, verify, in C++, GIL released
    nodemeta.fx.save(gm, "model.json.gz")     # a graph file for `nodemeta run`

After ``attach``, torch.fx keeps working on the graph as with dicts (``node_copy``,
``eliminate_dead_code``, ``recompile``, ``copy.deepcopy``, ``split_module``,
``Interpreter``), and writing a protected key raises as PyTorch's NodeMetadata does (so
running ``ShapeProp`` after ``attach`` raises ``RuntimeError: Could not override node
key: tensor_meta``): run ShapeProp first, then ``attach``; add a protected key to an
attached node with ``node.meta.set_once(key, value)``. ``import nodemeta`` alone makes
``nodemeta.fx`` reachable (loaded on first use).
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from . import MetadataStore, NodeMetadata, _core, _fxjson

__all__ = ["attach", "run_passes", "save", "store_of", "PASSES"]

#: The passes run_passes knows, in pipeline order (fuse rewrites the graph: refused).
PASSES = ("cost", "propagate", "strip_debug", "verify")


def _graph(gm: Any):
    return gm.graph if hasattr(gm, "graph") else gm


def attach(gm: Any, store: Optional[MetadataStore] = None) -> MetadataStore:
    """Replace every ``node.meta`` of ``gm`` (a GraphModule or Graph) with a NodeMetadata.

    All nodes go into one store: ``store``, or a new ``MetadataStore()`` protecting
    PyTorch's five keys. Each node keeps the same entries (protected ones included; the
    values are the same objects). Nodes that share one meta object share one NodeMetadata
    afterwards, as they shared the dict. A node that already has a NodeMetadata of that
    store is left as it is. Returns the store.
    """
    if store is None:
        store = MetadataStore()
    made = {}  # id(old meta) -> (old meta, its NodeMetadata); the old one kept alive meanwhile
    for node in _graph(gm).nodes:
        meta = node.meta
        if isinstance(meta, NodeMetadata) and meta.store is store:
            continue
        entry = made.get(id(meta))
        if entry is None:
            entry = made[id(meta)] = (meta, store.create(meta))
        node.meta = entry[1]
    return store


def store_of(gm: Any) -> Optional[MetadataStore]:
    """The store of the first node whose meta is a NodeMetadata, or None."""
    for node in _graph(gm).nodes:
        if isinstance(node.meta, NodeMetadata):
            return node.meta.store
    return None


def run_passes(gm: Any, passes: Sequence[str] = ("cost", "propagate", "verify"),
               threads: Optional[int] = None, training: Optional[bool] = None) -> list:
    """Run nodemeta's C++ passes on ``gm``'s metadata, in place, with the GIL released.

    The passes read and write the nodes' NodeMetadata directly (no copy): afterwards
    ``node.meta["flops"]`` etc. hold what they computed. Nodes whose meta is not yet a
    NodeMetadata of the graph's store (new nodes, whose meta torch.fx makes a dict, or
    nodes copied from another graph's store) are attached first. ``threads``: oneTBB
    threads (default: all cores). ``fuse`` rewrites the graph and is refused here (run it
    with the ``nodemeta`` command on a saved file). Returns one dict per pass, as the
    command prints it: name, nodes_touched, rejected_protected, nodes_before, nodes_after,
    seconds, summary, problems. ``training``: the mode the graph was traced in (batch norm
    and dropout costs depend on it); default: a GraphModule's own ``training`` flag, unknown
    for a bare Graph. Each called module's type, attributes and parameter shapes go to the
    passes as the graph's "modules" attribute (``_fxjson.module_table``), and the non-node
    arguments of function and method calls as its "calls" attribute
    (``_fxjson.call_table``), as ``save()`` writes them, so nodes are costed alike here and
    from a saved file (built on each call that runs ``cost``). Concurrent-safe with other threads reading and writing the same nodes;
    the graph's structure must not change while it runs.
    """
    if isinstance(passes, str):
        passes = [p for p in passes.split(",") if p]
    graph = _graph(gm)
    store = store_of(gm)
    store = attach(gm, store)
    nodes = list(graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    spec = []
    for i, n in enumerate(nodes):
        inputs = []
        for a in n.all_input_nodes:
            j = index.get(a)
            if j is None:
                raise ValueError(f"run_passes: node {n.name!r} reads {a.name!r}, which is not in this graph")
            if j not in inputs:
                inputs.append(j)
        spec.append((n.name, n.op, _fxjson.target_name(n), inputs, n.meta))
    if training is None and not isinstance(gm, _torch_fx_graph()):
        training = getattr(gm, "training", None)
    attrs = {}
    if "cost" in passes:  # the one pass that reads them
        modules = _fxjson.module_table(gm)
        if modules:
            attrs["modules"] = modules  # what save() writes: the same costs from the file
        calls = _fxjson.call_table(gm)
        if calls:
            attrs["calls"] = calls
    return _core._run_passes(store, spec, list(passes), threads,
                             None if training is None else bool(training), attrs)


def _torch_fx_graph():
    import torch.fx
    return torch.fx.Graph


def save(gm: Any, path, **kw: Any) -> None:
    """Write ``gm`` as a nodemeta graph file (``.json``, or gzip for ``.json.gz``).

    The schema of shared/data/graphs/README.md, which ``nodemeta run`` reads: node names,
    ops, targets, inputs and every meta value (torch objects in their schema shape). A value
    that cannot be written raises ValueError naming the node and key; the file is then left
    untouched. Keyword arguments go to the document builder (model=, example_inputs=).
    """
    _fxjson.save(gm, path, **kw)
