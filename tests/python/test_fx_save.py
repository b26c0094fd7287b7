"""nodemeta._fxjson: torch.fx graphs and their metadata saved as nodemeta graph files.

Environment: NODEMETA_CLI (the nodemeta command) and NODEMETA_SHARED_GRAPHS (the directory of
shared/data/graphs) enable the tests that need them; the others need only torch (and
torchvision for the resnet50 ones). CPU only; models are built after torch.manual_seed(0)
and put in eval().
"""

from __future__ import annotations

import enum
import functools
import gzip
import json
import operator
import os
import subprocess
import warnings
from collections import namedtuple
from collections.abc import Mapping

import pytest

torch = pytest.importorskip("torch")
import torch.fx  # noqa: E402
from torch.fx.immutable_collections import immutable_dict, immutable_list  # noqa: E402
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata, _extract_tensor_metadata  # noqa: E402

from nodemeta import _fxjson  # noqa: E402

# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli() -> str:
    path = os.environ.get("NODEMETA_CLI")
    if not path or not os.access(path, os.X_OK):
        pytest.skip("NODEMETA_CLI is unset or not an executable")
    return path


@pytest.fixture(scope="module")
def shared_resnet50() -> dict:
    directory = os.environ.get("NODEMETA_SHARED_GRAPHS")
    if not directory or not os.path.isfile(os.path.join(directory, "resnet50.json")):
        pytest.skip("NODEMETA_SHARED_GRAPHS is unset or holds no resnet50.json")
    with open(os.path.join(directory, "resnet50.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def resnet50() -> torch.fx.GraphModule:
    """torchvision's resnet50 traced as the shared graph was (module level, stack traces), after ShapeProp."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    tracer = torch.fx.Tracer()
    tracer.record_stack_traces = True
    graph = tracer.trace(model)
    gm = torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
    ShapeProp(gm).propagate(torch.randn(1, 3, 224, 224))
    return gm


def small_graph(fake: bool = True) -> torch.fx.GraphModule:
    """A hand-built graph with tuple results (torch.max, torch.split, the output), an int
    result (x.size(1)) and a node reading one input twice; ShapeProp, then FakeTensorProp."""
    g = torch.fx.Graph()
    x = g.placeholder("x")
    mx = g.call_function(torch.max, (x, 1))
    values = g.call_function(operator.getitem, (mx, 0))
    indices = g.call_function(operator.getitem, (mx, 1))
    g.call_function(torch.split, (x, 2))
    size = g.call_method("size", (x, 1))
    twice = g.call_function(operator.add, (values, values))
    g.output((twice, indices, size))
    gm = torch.fx.GraphModule(torch.nn.Module(), g, "Small")
    torch.manual_seed(0)
    ShapeProp(gm).propagate(torch.randn(3, 4))
    if fake:
        from torch.fx.passes.fake_tensor_prop import FakeTensorProp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch 1.13: "Mode.push() is no longer necessary"
            FakeTensorProp(gm).propagate(torch.randn(3, 4))
    return gm


def node_named(gm: torch.fx.GraphModule, name: str) -> torch.fx.Node:
    return next(n for n in gm.graph.nodes if n.name == name)


def load(path) -> dict:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def assert_plain(value) -> None:
    """Only JSON's types: dicts with str keys, lists, str, int, float, bool, None."""
    if isinstance(value, dict):
        assert type(value) is dict
        for k, v in value.items():
            assert type(k) is str
            assert_plain(v)
    elif isinstance(value, list):
        assert type(value) is list
        for v in value:
            assert_plain(v)
    else:
        assert value is None or type(value) in (str, int, float, bool), type(value)


def matching_formats(shape, stride) -> set:
    """The memory formats a tensor of this shape and stride is contiguous in ({None}: none).
    ShapeProp reports whichever of them its set iteration meets first."""
    t = torch.empty_strided(shape, stride)
    fmts = (torch.contiguous_format, torch.channels_last, torch.channels_last_3d)
    return {str(f) for f in fmts if t.is_contiguous(memory_format=f)} or {None}


# ---- (a) resnet50 against the shared graph and the nodemeta command -----------------------


@pytest.mark.parametrize("suffix", [".json", ".json.gz", ".JSON.GZ"])
def test_saved_resnet50_runs_clean_in_nodemeta(resnet50, cli, tmp_path, suffix):
    path = tmp_path / f"resnet50{suffix}"
    _fxjson.save(resnet50, path, model="resnet50")
    with open(path, "rb") as f:
        assert (f.read(2) == b"\x1f\x8b") == suffix.lower().endswith(".gz")  # any case, as in C++
    r = subprocess.run([cli, "run", str(path), "--threads", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resnet50, 177 nodes" in r.stdout


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_saved_file_is_the_compact_document(resnet50, tmp_path, suffix):
    path = tmp_path / f"g{suffix}"
    _fxjson.save(resnet50, path, model="resnet50")
    doc = _fxjson.graph_document(resnet50, model="resnet50")
    raw = gzip.decompress(path.read_bytes()) if suffix.endswith(".gz") else path.read_bytes()
    assert raw.decode("utf-8") == json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    assert load(path) == doc


def test_resnet50_matches_shared_graph(resnet50, shared_resnet50):
    ours = _fxjson.graph_document(resnet50, model="resnet50", source="torchvision.models.resnet50")
    ref = shared_resnet50
    # The shared files predate the "training" attribute (the mode the model was traced in)
    # and the "modules" and "calls" tables (what the cost pass reads of modules and calls).
    assert ours.pop("training") is False
    assert ours.pop("modules")["conv1"]["type"] == "torch.nn.modules.conv.Conv2d"
    assert ours.pop("calls")["flatten"] == {"args": [{"node": "avgpool"}, 1], "kwargs": {}}
    assert list(ours) == list(ref)
    for key in ("model", "source", "example_inputs"):
        assert ours[key] == ref[key], key
    assert ours["tracer"] == "fx"
    assert len(ours["nodes"]) == len(ref["nodes"]) == 177
    for a, b in zip(ours["nodes"], ref["nodes"]):
        where = f"{b['id']} {b['name']}"
        for key in ("id", "name", "op", "target", "inputs"):
            assert a[key] == b[key], (where, key)
        ma, mb = a["meta"], b["meta"]
        assert list(ma) == list(mb), where  # the five schema keys and type, in nodemeta's order
        assert ma["type"] == mb["type"], where
        assert ma["debug_handle"] == mb["debug_handle"] == b["id"] + 1
        ta, tb = dict(ma["tensor_meta"]), dict(mb["tensor_meta"])
        fa, fb = ta.pop("memory_format"), tb.pop("memory_format")
        assert ta == tb, where
        formats = matching_formats(tb["shape"], tb["stride"])
        assert fa in formats and fb in formats, (where, fa, fb)
        assert (ma["stack_trace"] is None) == (mb["stack_trace"] is None), where
        # Not compared: stack_trace (the shared file rewrote its paths), nn_module_stack (torch
        # 1.13 records none; the shared file's came from hooks while tracing) and val (from
        # FakeTensorProp, which this test does not run).


# ---- (b) to_plain and converter_for on each type -------------------------------------------


class Color(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 3


class MyTensor(torch.Tensor):
    pass


def test_tensor_metadata():
    md = _extract_tensor_metadata(torch.zeros(2, 3, 4, 5))
    assert _fxjson.to_plain(md) == {
        "shape": [2, 3, 4, 5],
        "dtype": "torch.float32",
        "stride": [60, 20, 5, 1],
        "requires_grad": False,
        "memory_format": "torch.contiguous_format",
        "is_quantized": False,
    }
    keys = ["shape", "dtype", "stride", "requires_grad", "memory_format", "is_quantized"]
    assert list(_fxjson.to_plain(md)) == keys
    last = _extract_tensor_metadata(torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last))
    assert _fxjson.to_plain(last)["memory_format"] == "torch.channels_last"
    transposed = _extract_tensor_metadata(torch.zeros(2, 3).t())
    assert _fxjson.to_plain(transposed)["memory_format"] is None
    grad = _extract_tensor_metadata(torch.nn.Parameter(torch.zeros(2)))
    assert _fxjson.to_plain(grad)["requires_grad"] is True


def test_quantized_tensor_metadata_has_qparams():
    q = torch.quantize_per_tensor(torch.zeros(2, 2), 0.5, 3, torch.quint8)
    plain = _fxjson.to_plain(_extract_tensor_metadata(q))
    assert plain["is_quantized"] is True and plain["dtype"] == "torch.quint8"
    assert plain["qparams"] == {"qscheme": "torch.per_tensor_affine", "scale": 0.5, "zero_point": 3}
    assert_plain(plain)


def test_tensors_become_shape_and_dtype():
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode():
        fake = torch.empty(2, 3, dtype=torch.int64)
    assert type(fake) is FakeTensor
    expected = {"shape": [2, 3], "dtype": "torch.int64"}
    assert _fxjson.to_plain(fake) == expected
    assert _fxjson.to_plain(torch.zeros(2, 3, dtype=torch.int64)) == expected
    assert _fxjson.to_plain(torch.nn.Parameter(torch.zeros(4))) == {"shape": [4], "dtype": "torch.float32"}
    assert _fxjson.to_plain(torch.zeros(4).as_subclass(MyTensor)) == {"shape": [4], "dtype": "torch.float32"}
    assert _fxjson.to_plain(torch.tensor(1.5)) == {"shape": [], "dtype": "torch.float32"}


def test_torch_scalars_become_strings_and_lists():
    assert _fxjson.to_plain(torch.Size([1, 3, 224, 224])) == [1, 3, 224, 224]
    assert _fxjson.to_plain(torch.float16) == "torch.float16"
    assert _fxjson.to_plain(torch.channels_last) == "torch.channels_last"
    assert _fxjson.to_plain(torch.device("cpu")) == "cpu"
    assert _fxjson.to_plain(torch.strided) == "torch.strided"
    assert _fxjson.to_plain(torch.per_channel_affine) == "torch.per_channel_affine"


def test_types_become_qualified_names():
    assert _fxjson.to_plain(torch.Tensor) == "torch.Tensor"
    assert _fxjson.to_plain(torch.nn.Parameter) == "torch.nn.parameter.Parameter"
    assert _fxjson.to_plain(torch.Size) == "torch.Size"
    assert _fxjson.to_plain(int) == "builtins.int"
    assert _fxjson.to_plain(tuple) == "builtins.tuple"
    assert _fxjson.to_plain(type(None)) == "builtins.NoneType"
    assert _fxjson.to_plain(torch.nn.Conv2d) == "torch.nn.modules.conv.Conv2d"
    assert _fxjson.to_plain(Color) == f"{__name__}.Color"  # a class whose metaclass is EnumMeta


def test_callables_become_qualified_names():
    def local():
        pass

    assert _fxjson.to_plain(operator.add) == "_operator.add"
    assert _fxjson.to_plain(getattr) == "getattr"
    assert _fxjson.to_plain(torch.flatten) == "torch.flatten"
    assert _fxjson.to_plain(torch.nn.functional.relu) == "torch.nn.functional.relu"
    assert _fxjson.to_plain(torch.ops.aten.addmm.default) == "torch.ops.aten.addmm.default"
    assert _fxjson.to_plain(torch.ops.aten.addmm) == "torch.ops.aten.addmm"
    assert _fxjson.to_plain(torch.Tensor.add) == "torch.Tensor.add"  # a method descriptor
    assert _fxjson.to_plain([].append) == "builtins.list.append"
    assert _fxjson.to_plain(local) == f"{__name__}.local"


def test_enum_members_become_strings():
    assert _fxjson.to_plain(Color.RED) == "Color.RED"
    assert _fxjson.to_plain(Level.HIGH) == "Level.HIGH"  # not int's "3"


def test_containers_become_lists_and_dicts():
    md = _extract_tensor_metadata(torch.zeros(3))
    Pair = namedtuple("Pair", "a b")
    value = immutable_dict({"t": (md, None, 2), "l": immutable_list([torch.int8, Pair(1, 2.5)]), "s": "é"})
    plain = _fxjson.to_plain(value)
    assert plain == {"t": [_fxjson.to_plain(md), None, 2], "l": ["torch.int8", [1, 2.5]], "s": "é"}
    assert_plain(plain)
    assert json.loads(json.dumps(plain, allow_nan=False)) == plain
    assert _fxjson.to_plain(torch.max(torch.zeros(2, 3), 1)) == [
        {"shape": [2], "dtype": "torch.float32"},
        {"shape": [2], "dtype": "torch.int64"},
    ]


def test_converter_for():
    for tp in (type(None), bool, int, float, str, list, tuple, dict):
        assert _fxjson.converter_for(tp) is None, tp
    for tp in (object, bytes, complex, torch.nn.Linear, torch.fx.Node):
        assert _fxjson.converter_for(tp) is None, tp
    from torch._subclasses.fake_tensor import FakeTensor

    tensor = _fxjson.converter_for(torch.Tensor)
    assert tensor is not None
    assert _fxjson.converter_for(FakeTensor) is tensor
    assert _fxjson.converter_for(torch.nn.Parameter) is tensor
    assert _fxjson.converter_for(MyTensor) is tensor
    size = _fxjson.converter_for(torch.Size)
    assert size is not None and size(torch.Size([2, 3])) == [2, 3]
    md = _fxjson.converter_for(TensorMetadata)(_extract_tensor_metadata(torch.zeros(1)))
    assert md["shape"] == [1]
    assert _fxjson.converter_for(immutable_list)(immutable_list([1])) == [1]
    assert type(_fxjson.converter_for(immutable_dict)(immutable_dict(a=1))) is dict


# ---- (c) errors: named, refused before anything is written ---------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_floats_are_refused(value):
    with pytest.raises(ValueError, match="JSON has no such number"):
        _fxjson.to_plain(value)
    with pytest.raises(ValueError, match=r"^\['a'\]\[1\]: cannot save"):
        _fxjson.to_plain({"a": [0.5, value]})


def test_integers_outside_int64_are_refused():
    assert _fxjson.to_plain([-(2**63), 2**63 - 1]) == [-(2**63), 2**63 - 1]
    for value in (2**63, -(2**63) - 1):
        with pytest.raises(ValueError, match="does not fit a 64-bit signed integer"):
            _fxjson.to_plain(value)


def test_unconvertible_values_and_keys_name_their_type_and_place():
    with pytest.raises(TypeError, match=r"^\['a'\]\[1\]: cannot convert <class 'object'>$"):
        _fxjson.to_plain({"a": [1, object()]})
    with pytest.raises(TypeError, match="<class 'bytes'>"):
        _fxjson.to_plain(b"x")
    with pytest.raises(TypeError, match=r"dict key 1 is <class 'int'>, not str"):
        _fxjson.to_plain({1: 2})


def test_unencodable_strings_and_deep_nesting_are_refused():
    with pytest.raises(ValueError, match="UTF-8 cannot encode"):
        _fxjson.to_plain(["\udcff"])
    deep = []
    for _ in range(_fxjson.MAX_VALUE_DEPTH):
        deep = [deep]
    with pytest.raises(ValueError, match="nested deeper than"):
        _fxjson.to_plain(deep)
    assert _fxjson.to_plain(deep[0]) == deep[0]
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="contains itself"):
        _fxjson.to_plain(loop)


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
@pytest.mark.parametrize(
    "value, message",
    [
        (object(), ": cannot convert <class 'object'>$"),
        ({"x": [float("nan")]}, r"\['x'\]\[0\]: cannot save nan"),
    ],
)
def test_save_error_names_node_and_key_and_leaves_file_untouched(tmp_path, suffix, value, message):
    gm = small_graph(fake=False)
    node = node_named(gm, "getitem_1")
    node.meta["foo"] = value
    path = tmp_path / f"g{suffix}"
    path.write_bytes(b"previous contents")
    with pytest.raises(ValueError, match=r"^nodes\[3\] \(getitem_1\)\.meta\['foo'\]" + message):
        _fxjson.save(gm, path)
    assert path.read_bytes() == b"previous contents"


@pytest.mark.parametrize(
    "key, value",
    [("stack_trace", 3), ("debug_handle", "7"), ("debug_handle", True), ("nn_module_stack", {"conv": 1})],
)
def test_schema_keys_of_the_wrong_type_are_refused(key, value):
    gm = small_graph(fake=False)
    node_named(gm, "add").meta[key] = value
    with pytest.raises(ValueError, match=rf"^nodes\[6\] \(add\)\.meta\['{key}'\]"):
        _fxjson.graph_document(gm)


def test_unnameable_call_function_target_is_refused():
    gm = small_graph(fake=False)
    node_named(gm, "add").target = functools.partial(operator.add, 1)
    with pytest.raises(ValueError, match=r"^nodes\[6\] \(add\)\.target: cannot name"):
        _fxjson.graph_document(gm)


# ---- (d) a small graph with tuple results --------------------------------------------------


def test_small_graph_document():
    doc = _fxjson.graph_document(small_graph())
    assert doc["model"] == "Small" and doc["tracer"] == "fx" and doc["torch_version"] == torch.__version__
    assert doc["example_inputs"] == [{"shape": [3, 4], "dtype": "torch.float32"}]
    nodes = {n["name"]: n for n in doc["nodes"]}
    assert [(n["name"], n["op"], n["target"], n["inputs"]) for n in doc["nodes"]] == [
        ("x", "placeholder", "x", []),
        ("max_1", "call_function", "torch.max", [0]),
        ("getitem", "call_function", "_operator.getitem", [1]),
        ("getitem_1", "call_function", "_operator.getitem", [1]),
        ("split", "call_function", "torch.functional.split", [0]),
        ("size", "call_method", "size", [0]),
        ("add", "call_function", "_operator.add", [2]),  # reads getitem twice
        ("output", "output", "output", [6, 3, 5]),
    ]

    def md(shape, dtype="torch.float32"):
        stride = [4, 1] if len(shape) == 2 else [1]
        return {"shape": shape, "dtype": dtype, "stride": stride, "requires_grad": False,
                "memory_format": "torch.contiguous_format", "is_quantized": False}

    maxed = nodes["max_1"]["meta"]
    assert maxed["tensor_meta"] == [md([3]), md([3], "torch.int64")]  # ShapeProp's tuple
    assert maxed["val"] == [{"shape": [3], "dtype": "torch.float32"}, {"shape": [3], "dtype": "torch.int64"}]
    assert maxed["type"] == "torch.return_types.max"
    assert nodes["split"]["meta"]["tensor_meta"] == [md([2, 4]), md([1, 4])]
    assert nodes["split"]["meta"]["type"] == "builtins.tuple"
    size = nodes["size"]["meta"]
    assert (size["tensor_meta"], size["val"], size["type"]) == (None, 4, "builtins.int")
    out = nodes["output"]["meta"]
    assert out["tensor_meta"] == [md([3]), md([3], "torch.int64"), 4]
    assert out["val"] == [{"shape": [3], "dtype": "torch.float32"}, {"shape": [3], "dtype": "torch.int64"}, 4]
    for i, n in enumerate(doc["nodes"]):
        assert n["id"] == i and n["meta"]["debug_handle"] == i + 1
        assert list(n["meta"]) == ["stack_trace", "nn_module_stack", "tensor_meta", "val", "debug_handle", "type"]
        assert n["meta"]["stack_trace"] is None and n["meta"]["nn_module_stack"] == {}
    assert_plain(doc)


def test_small_graph_saved_runs_clean_in_nodemeta(cli, tmp_path):
    gm = small_graph()
    node_named(gm, "add").meta["note"] = "é → ü"
    path = tmp_path / "small.json"
    _fxjson.save(gm, path)
    assert "é → ü".encode() in path.read_bytes()  # ensure_ascii=False
    r = subprocess.run([cli, "run", str(path), "--threads", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_deepest_value_allowed_loads_in_nodemeta(cli, tmp_path):
    deep: list = []
    for _ in range(_fxjson.MAX_VALUE_DEPTH - 1):
        deep = [deep]
    gm = small_graph(fake=False)
    node_named(gm, "add").meta["deep"] = deep
    path = tmp_path / "deep.json"
    _fxjson.save(gm, path)
    r = subprocess.run([cli, "inspect", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    node_named(gm, "add").meta["deep"] = [deep]
    with pytest.raises(ValueError, match=r"^nodes\[6\] \(add\)\.meta\['deep'\](\[0\])+: nested deeper"):
        _fxjson.save(gm, path)


def test_meta_keys_kept_and_ordered_as_nodemeta_writes_them():
    gm = small_graph(fake=False)
    meta = node_named(gm, "add").meta
    meta["zeta"] = (1, 2)
    meta["alpha"] = {"k": torch.float32}
    meta["debug_handle"] = 40
    meta["is_wrapped"] = True
    meta["nn_module_stack"] = {"L__self___fc": ("fc", torch.nn.Linear)}  # torch 2's form
    got = next(n for n in _fxjson.graph_document(gm)["nodes"] if n["name"] == "add")["meta"]
    assert list(got) == ["stack_trace", "nn_module_stack", "tensor_meta", "val", "debug_handle", "is_wrapped",
                         "type", "alpha", "zeta"]
    assert got["debug_handle"] == 40 and got["is_wrapped"] is True
    assert got["alpha"] == {"k": "torch.float32"} and got["zeta"] == [1, 2]
    assert got["nn_module_stack"] == {"fc": "torch.nn.modules.linear.Linear"}


class OnlyMapping(Mapping):
    """A read-only Mapping that is not a dict, as nodemeta's own metadata store is."""

    def __init__(self, data):
        self._data = dict(data)

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)


def test_meta_may_be_any_mapping_and_a_graph_may_be_given():
    gm = small_graph()
    expected = _fxjson.graph_document(gm)
    for node in gm.graph.nodes:
        node.meta = OnlyMapping(node.meta)
    assert _fxjson.graph_document(gm) == expected
    from_graph = _fxjson.graph_document(gm.graph)
    assert from_graph["nodes"] == expected["nodes"]
    assert from_graph["model"] == "Small" and from_graph["source"] == "torch.fx.Graph"


def test_given_example_inputs_and_attributes():
    doc = _fxjson.graph_document(
        small_graph(fake=False), model="m", example_inputs=[torch.zeros(5), 3], source="here", tracer="aten"
    )
    assert (doc["model"], doc["source"], doc["tracer"]) == ("m", "here", "aten")
    assert doc["example_inputs"] == [{"shape": [5], "dtype": "torch.float32"}, 3]
    with pytest.raises(ValueError, match=r"graph attributes: \['example_inputs'\]\[0\]: cannot convert"):
        _fxjson.graph_document(small_graph(fake=False), example_inputs=[object()])
