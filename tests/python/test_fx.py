"""nodemeta under real torch.fx graphs: traced torchvision models, torch.fx's own transforms,
and the C++ passes run from Python against the nodemeta command on the same model."""
import copy
import gzip
import json
import subprocess

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
import torch.fx  # noqa: E402
from torch.fx.passes.shape_prop import ShapeProp  # noqa: E402
from torch.fx.passes.split_module import split_module  # noqa: E402

import nodemeta  # noqa: E402
import nodemeta.fx  # noqa: E402
from nodemeta import _core  # noqa: E402


def trace(model):
    tracer = torch.fx.Tracer()
    tracer.record_stack_traces = True
    graph = tracer.trace(model)
    return torch.fx.GraphModule(tracer.root, graph)


@pytest.fixture(scope="module", params=["resnet18", "mobilenet_v3_small"])
def model(request):
    torch.manual_seed(0)
    m = getattr(torchvision.models, request.param)().eval()
    x = torch.randn(1, 3, 64, 64)
    gm = trace(m)
    ShapeProp(gm).propagate(x)  # on plain dicts, as PyTorch users do
    return gm, x


@pytest.fixture
def attached(model):
    gm, x = model
    gm = copy.deepcopy(gm)  # plain dicts still: deepcopy of a dict-meta graph
    plain = {n.name: dict(n.meta) for n in gm.graph.nodes}
    store = nodemeta.fx.attach(gm)
    return gm, x, store, plain


def test_attach_keeps_every_entry_and_object(attached):
    gm, _, store, plain = attached
    assert store.node_count == len(plain)
    for n in gm.graph.nodes:
        assert isinstance(n.meta, nodemeta.NodeMetadata) and n.meta.store is store
        assert n.meta == plain[n.name]
        for k, v in plain[n.name].items():
            assert n.meta[k] is v  # TensorMetadata, types, dicts: the same objects
    some = next(n for n in gm.graph.nodes if n.op == "call_module")
    kind, _, text = _core._cpp_view(some.meta, "tensor_meta")
    assert kind == "dict" and "'shape': [1," in text and "'dtype': 'torch.float32'" in text
    assert _core._cpp_view(some.meta, "type") == ("string", "std::string", "'torch.Tensor'")


def test_shape_prop_again_raises_like_pytorch(attached):
    gm, x, _, _ = attached
    with pytest.raises(RuntimeError, match="^Could not override node key: tensor_meta"):
        ShapeProp(gm).propagate(x)


def test_torch_fx_transforms_work_as_with_dicts(attached, model):
    gm, x, store, _ = attached
    reference = model[0](x)
    # Interpreter, recompile, deepcopy.
    assert torch.equal(torch.fx.Interpreter(gm).run(x), reference)
    gm.recompile()
    assert torch.equal(gm(x), reference)
    clone = copy.deepcopy(gm)
    assert torch.equal(clone(x), reference)
    for a, b in zip(gm.graph.nodes, clone.graph.nodes):
        if a.op == "output":  # torch.fx's deepcopy makes a new output node, meta {} (dicts too)
            continue
        assert isinstance(b.meta, nodemeta.NodeMetadata) and b.meta == a.meta and b.meta is not a.meta
    # node_copy into a new graph: each copy's meta is an independent copy.
    g2 = torch.fx.Graph()
    env = {}
    for n in gm.graph.nodes:
        env[n] = g2.node_copy(n, lambda a: env[a])
    for n in gm.graph.nodes:
        c = env[n]
        assert c.meta == n.meta and c.meta is not n.meta
        c.meta["note"] = 1
        assert "note" not in n.meta
    assert torch.equal(torch.fx.GraphModule(gm, g2)(x), reference)
    # Dead code: a node nobody uses goes away, its metadata with it.
    before = store.node_count
    first = next(n for n in gm.graph.nodes if n.op == "placeholder")
    with gm.graph.inserting_after(first):
        dead = gm.graph.call_function(torch.relu, (first,))
    dead.meta = store.create({"val": None})
    assert store.node_count == before + 1
    gm.graph.eliminate_dead_code()
    assert dead not in gm.graph.nodes
    del dead  # (its metadata dies with the Node object, whenever torch.fx lets go of it)
    gm.recompile()
    assert torch.equal(gm(x), reference)
    # split_module: two partitions.
    names = [n.name for n in gm.graph.nodes]
    half = {name: (0 if i < len(names) // 2 else 1) for i, name in enumerate(names)}
    split = split_module(gm, gm, lambda n: half[n.name])
    assert torch.equal(split(x), reference)


def node_results(nodes):
    keys = ("flops", "bytes", "cost_rule", "depth", "critical_path_flops", "critical_path_complete")
    return {name: {k: meta.get(k) for k in keys} for name, meta in nodes}


def test_run_passes_matches_the_command(attached, cli, tmp_path):
    gm, _, store, _ = attached
    path = tmp_path / "model.json.gz"
    nodemeta.fx.save(gm, path)
    results = nodemeta.fx.run_passes(gm, threads=2)
    assert [r["name"] for r in results] == ["cost", "propagate", "verify"]
    assert results[-1]["problems"] == [] and results[0]["nodes_touched"] == len(gm.graph.nodes)
    out = tmp_path / "after.json"
    done = subprocess.run([cli, "run", str(path), "--passes", "cost,propagate,verify", "--threads", "2",
                           "--output", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected = node_results((n["name"], n["meta"]) for n in json.loads(out.read_text())["nodes"])
    ours = node_results((n.name, n.meta) for n in gm.graph.nodes)
    assert ours == expected
    assert any(isinstance(v["flops"], int) and v["flops"] > 0 for v in ours.values())
    # What C++ wrote comes back as plain Python objects.
    n = next(n for n in gm.graph.nodes if n.op == "call_module")
    assert type(n.meta["flops"]) in (int, str) and type(n.meta["cost_rule"]) is str
    # One thread gives the same numbers.
    again = copy.deepcopy(gm)
    nodemeta.fx.run_passes(again, threads=1)
    assert node_results((m.name, m.meta) for m in again.graph.nodes) == ours


def test_run_passes_refuses_fuse_and_unknown_passes(attached):
    gm, _, _, _ = attached
    with pytest.raises(ValueError, match="fuse"):
        nodemeta.fx.run_passes(gm, passes=("cost", "fuse"))
    with pytest.raises(ValueError, match="unknown"):
        nodemeta.fx.run_passes(gm, passes=("nope",))
    with pytest.raises(ValueError, match="threads"):
        nodemeta.fx.run_passes(gm, threads=0)


def test_run_passes_attaches_new_nodes(model):
    gm, x = model
    gm = copy.deepcopy(gm)  # plain dicts
    results = nodemeta.fx.run_passes(gm, passes="cost")
    assert results[0]["name"] == "cost"
    store = nodemeta.fx.store_of(gm)
    assert all(isinstance(n.meta, nodemeta.NodeMetadata) and n.meta.store is store for n in gm.graph.nodes)
    assert all("flops" in n.meta for n in gm.graph.nodes)


def test_saved_file_loads_in_the_command(attached, cli, tmp_path):
    gm, _, _, _ = attached
    path = tmp_path / "m.json"
    nodemeta.fx.save(gm, path)
    doc = json.loads(path.read_text())
    assert [n["name"] for n in doc["nodes"]] == [n.name for n in gm.graph.nodes]
    assert doc["training"] is False  # the model was traced in eval mode
    done = subprocess.run([cli, "run", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# Kind: regression (issue 23 item 3)
def test_pickled_graph_metadata_in_one_new_store(model):
    import pickle
    gm = copy.deepcopy(model[0])
    store = nodemeta.fx.attach(gm, nodemeta.MetadataStore([]))
    graph = pickle.loads(pickle.dumps(gm.graph))  # (torch 1.13 re-traces a pickled GraphModule
    stores = {id(n.meta.store) for n in graph.nodes}  # from its code, dropping every meta)
    assert len(stores) == 1 and next(iter(graph.nodes)).meta.store is not store
    new = next(iter(graph.nodes)).meta.store
    assert new.protected_keys == [] and new.node_count == len(graph.nodes)
    for before, after in zip(gm.graph.nodes, graph.nodes):
        assert isinstance(after.meta, nodemeta.NodeMetadata) and sorted(after.meta) == sorted(before.meta)
    some = next(n for n in graph.nodes if "tensor_meta" in n.meta)
    some.meta["tensor_meta"] = None  # not protected in this store, as in the one pickled


# Kind: regression (issue 23 item 3): the order README shows
def test_shape_prop_then_attach_works_and_set_once_after_attach():
    torch.manual_seed(0)
    m = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    # attach() then ShapeProp: raises at the first node (tensor_meta is protected).
    gm = trace(m)
    nodemeta.fx.attach(gm)
    with pytest.raises(RuntimeError, match="^Could not override node key: tensor_meta"):
        ShapeProp(gm).propagate(x)
    first = next(iter(gm.graph.nodes))
    assert "tensor_meta" not in first.meta  # nothing half-written
    # ShapeProp, then attach: every node keeps its tensor_meta.
    gm = trace(m)
    ShapeProp(gm).propagate(x)
    metas = {n.name: n.meta["tensor_meta"] for n in gm.graph.nodes if "tensor_meta" in n.meta}
    nodemeta.fx.attach(gm)
    assert metas
    for n in gm.graph.nodes:
        if n.name in metas:
            assert n.meta["tensor_meta"] is metas[n.name]
    # After attach, a protected key is added once with set_once (not []=).
    new = gm.graph.create_node("call_function", torch.relu, (first,), name="extra")
    nodemeta.fx.attach(gm)
    tm = metas[first.name]
    assert new.meta.set_once("tensor_meta", tm) is True
    assert new.meta.set_once("tensor_meta", None) is False and new.meta["tensor_meta"] is tm
    with pytest.raises(nodemeta.ProtectedKeyError):
        new.meta["tensor_meta"] = tm
