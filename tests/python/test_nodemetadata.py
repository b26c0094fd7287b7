"""nodemeta.NodeMetadata against PyTorch's class, the MutableMapping contract, and C++'s view."""
import collections.abc
import copy
import pickle
import random

import pytest

import nodemeta
from nodemeta import _core

PROTECTED = sorted(nodemeta.PROTECTED_KEYS)


def outcome(fn):
    """(result or None, exception type, message): what a call did, to compare two classes."""
    try:
        return ("ok", fn(), None)
    except Exception as e:  # noqa: BLE001 - comparing what both sides raise
        return ("raised", type(e), str(e))


# ---- the differential test against PyTorch's own class ---------------------------------------

def random_value(rng):
    return rng.choice([
        lambda: rng.randint(-5, 300),
        lambda: rng.random(),
        lambda: "s" * rng.randint(0, 20),
        lambda: [rng.randint(0, 3)] * rng.randint(0, 3),
        lambda: (1, "two", None),
        lambda: {"k": rng.randint(0, 9)},
        lambda: None,
        lambda: object(),
    ])()


@pytest.mark.parametrize("seed", range(40))
def test_random_operations_match_the_original(original, seed):
    rng = random.Random(seed)
    keys = PROTECTED + ["a", "b", "flops", "é", ""]
    start = {k: random_value(rng) for k in rng.sample(keys, rng.randint(0, 6))}
    ours, theirs = [nodemeta.NodeMetadata(start)], [original.NodeMetadata(start)]
    for step in range(300):
        op = rng.choice(["get", "set", "contains", "copy", "get", "set"])
        i = rng.randrange(len(ours))
        key = rng.choice(keys)
        where = f"seed {seed} step {step}: {op} {key!r}"
        if op == "get":
            a, b = outcome(lambda: ours[i][key]), outcome(lambda: theirs[i][key])
            assert a[0] == b[0] and a[2:] == b[2:], where
            if a[0] == "raised":
                assert a[1] is b[1] is KeyError, where
            elif type(b[1]) in (int, float):
                assert a[1] == b[1] and type(a[1]) is type(b[1]), where  # equal (docs/python.md)
            else:
                assert a[1] is b[1], where  # the very object, as the original's dict gives
        elif op == "set":
            v = random_value(rng)
            a = outcome(lambda: ours[i].__setitem__(key, v))
            b = outcome(lambda: theirs[i].__setitem__(key, v))
            assert a[0] == b[0] and a[2] == b[2], where
            if a[0] == "raised":
                assert b[1] is RuntimeError and issubclass(a[1], RuntimeError), where
                assert a[1] is nodemeta.ProtectedKeyError, where
        elif op == "contains":
            assert (key in ours[i]) == (key in theirs[i]), where
        else:
            ours.append(ours[i].copy())
            theirs.append(theirs[i].copy())
    for a, b in zip(ours, theirs):
        assert dict(a) == b.data
        for k, v in b.data.items():
            assert a[k] is v or (type(v) in (int, float) and a[k] == v)


def test_protected_write_raises_whether_or_not_present(original):
    for cls in (nodemeta.NodeMetadata, original.NodeMetadata):
        md = cls({"val": 1})
        for key in ("val", "stack_trace"):
            with pytest.raises(RuntimeError, match=f"^Could not override node key: {key}$"):
                md[key] = 2
    md = nodemeta.NodeMetadata({"val": 1})
    assert md["val"] == 1 and "stack_trace" not in md
    assert issubclass(nodemeta.ProtectedKeyError, RuntimeError)
    assert nodemeta.PROTECTED_KEYS == frozenset(
        {"val", "stack_trace", "nn_module_stack", "debug_handle", "tensor_meta"})


def test_missing_key_is_a_key_error_carrying_the_key():
    md = nodemeta.NodeMetadata({})
    for key in ("absent", "never-interned-" + "x" * 50, 3, (1, 2)):
        with pytest.raises(KeyError) as info:
            md[key]
        assert info.value.args == (key,)


# ---- identity and values -----------------------------------------------------------------------

@pytest.mark.parametrize("value", [[1, 2], {"a": 1}, (1, 2), "text", object(), 2**80, {1: 2},
                                   "\ud800", [object()], bytearray(b"x")], ids=repr)
def test_reads_return_the_stored_object(value):
    md = nodemeta.NodeMetadata({"init": value})
    md["k"] = value
    assert md["k"] is value and md["init"] is value and md.get("k") is value
    assert md.copy()["k"] is value  # copy() is shallow, as dict.copy is
    value_list = list(md.values())
    assert value_list[0] is value


def test_mutable_value_is_shared_with_python():
    md = nodemeta.NodeMetadata({})
    stack = {"layer1": "torch.nn.Conv2d"}
    md["nn"] = stack
    md["nn"]["layer2"] = "torch.nn.ReLU"
    assert stack == {"layer1": "torch.nn.Conv2d", "layer2": "torch.nn.ReLU"}


def test_scalars_come_back_equal():
    md = nodemeta.NodeMetadata({"i": 12345678901, "f": 2.5, "b": True, "n": None, "neg": -7})
    assert md["i"] == 12345678901 and type(md["i"]) is int
    assert md["f"] == 2.5 and md["b"] is True and md["n"] is None and md["neg"] == -7


def test_cpp_sees_native_values():
    md = nodemeta.NodeMetadata({
        "i": 3, "f": 1.5, "b": False, "n": None, "s": "héllo", "l": [1, "a", (2, 3)],
        "d": {"x": [1.0]}, "o": object(), "big": 2**70, "surrogate": "\ud800", "intkeys": {1: 2}})
    assert _core._cpp_view(md, "i") == ("int", "std::int64_t", "3")
    assert _core._cpp_view(md, "f") == ("double", "double", "1.5")
    assert _core._cpp_view(md, "b")[0] == "bool"
    assert _core._cpp_view(md, "n")[0] == "none"
    assert _core._cpp_view(md, "s") == ("string", "std::string", "'héllo'")
    assert _core._cpp_view(md, "l") == ("list", "nodemeta::Value::List", "[1, 'a', [2, 3]]")
    assert _core._cpp_view(md, "d")[0:2] == ("dict", "nodemeta::Value::Dict")
    assert _core._cpp_as(md, "s", "str") == "héllo"
    assert _core._cpp_as(md, "i", "int") == 3
    for key, name in (("o", "object"), ("big", "int"), ("surrogate", "str"), ("intkeys", "dict")):
        kind, type_name, _ = _core._cpp_view(md, key)
        assert kind == "object" and type_name == f"Python {name}", key
        with pytest.raises(TypeError, match=f"Python {name}"):
            _core._cpp_as(md, key, "int")


def test_nested_unconvertible_objects_are_opaque_elements():
    marker = object()
    md = nodemeta.NodeMetadata({"l": [1, marker]})
    kind, _, text = _core._cpp_view(md, "l")
    assert kind == "list" and text.startswith("[1, <Python object")
    assert md["l"][1] is marker


def test_deep_and_self_referencing_values_are_bounded():
    loop = []
    loop.append(loop)
    md = nodemeta.NodeMetadata({"loop": loop})
    assert md["loop"] is loop
    deep = current = []
    for _ in range(10_000):
        current.append([])
        current = current[0]
    md["deep"] = deep
    assert md["deep"] is deep and _core._cpp_view(md, "deep")[0] == "list"
    shared = [1, 2]
    for _ in range(60):  # a DAG whose tree is 2^60 leaves: converted once per distinct list
        shared = [shared, shared]
    md["dag"] = shared
    assert md["dag"] is shared


def test_str_subclass_keys_and_invalid_keys():
    class Name(str):
        pass

    md = nodemeta.NodeMetadata({})
    md[Name("k")] = 1
    assert md["k"] == 1 and Name("k") in md
    with pytest.raises(TypeError, match="keys must be str, not int"):
        md[1] = 2
    with pytest.raises(ValueError, match="NUL"):
        md["a\0b"] = 1
    assert 1 not in md and "a\0b" not in md and len(md) == 1
    with pytest.raises(UnicodeEncodeError):
        md["\ud800"] = 1
    assert "\ud800" not in md


# ---- the MutableMapping protocol ---------------------------------------------------------------

def test_is_a_mutable_mapping():
    md = nodemeta.NodeMetadata({"val": 1, "a": 2})
    assert isinstance(md, collections.abc.MutableMapping)
    assert len(md) == 2 and sorted(md) == ["a", "val"] and bool(md)
    assert not nodemeta.NodeMetadata({})
    assert set(md.keys()) == {"a", "val"} and sorted(md.values()) == [1, 2]
    assert set(md.items()) == {("a", 2), ("val", 1)}
    assert md.keys() == {"a", "val"} and ("a", 2) in md.items() and 2 in md.values()
    assert md == {"val": 1, "a": 2} and {"val": 1, "a": 2} == md and md != {"val": 1}
    assert md == nodemeta.NodeMetadata({"a": 2, "val": 1}) and md != [1]
    assert repr(md) == "NodeMetadata({'a': 2, 'val': 1})"
    with pytest.raises(TypeError):
        hash(md)


def test_delete_and_pop():
    md = nodemeta.NodeMetadata({"val": 1, "a": 2, "b": 3})
    del md["a"]
    assert "a" not in md
    with pytest.raises(KeyError):
        del md["a"]
    for key in ("val", "stack_trace"):  # protected: raises whether or not present
        with pytest.raises(nodemeta.ProtectedKeyError, match=f"^Could not override node key: {key}$"):
            del md[key]
    assert md.pop("b") == 3 and md.pop("b", "d") == "d"
    with pytest.raises(KeyError):
        md.pop("b")
    with pytest.raises(nodemeta.ProtectedKeyError):
        md.pop("val")
    assert md.pop("tensor_meta", None) is None  # absent protected key: the default
    assert md == {"val": 1}


def test_setdefault_update_clear_popitem():
    md = nodemeta.NodeMetadata({"val": 1})
    v = [1]
    assert md.setdefault("a", v) is v and md.setdefault("a", 2) is v
    assert md.setdefault("val", 5) == 1
    with pytest.raises(nodemeta.ProtectedKeyError):
        md.setdefault("stack_trace", "x")
    md.update({"b": 2}, c=3)
    md.update([("d", 4)])
    assert md == {"val": 1, "a": [1], "b": 2, "c": 3, "d": 4}
    with pytest.raises(nodemeta.ProtectedKeyError, match="tensor_meta"):
        md.update({"e": 5, "tensor_meta": 1})
    assert "e" not in md  # all or nothing
    assert md.popitem() == ("d", 4)
    with pytest.raises(nodemeta.ProtectedKeyError):
        md.clear()  # val is protected: nothing removed
    assert len(md) == 4
    for k in ("a", "b", "c"):
        del md[k]
    with pytest.raises(nodemeta.ProtectedKeyError):
        md.popitem()
    empty = nodemeta.NodeMetadata({"x": 1})
    empty.clear()
    assert len(empty) == 0
    with pytest.raises(KeyError):
        empty.popitem()


def test_set_once_and_try_set():
    md = nodemeta.NodeMetadata({})
    assert md.try_set("a", 1) is nodemeta.WriteResult.INSERTED
    assert md.try_set("a", 2) is nodemeta.WriteResult.UPDATED
    assert md.try_set("val", 2) is nodemeta.WriteResult.REJECTED_PROTECTED
    assert "val" not in md and md["a"] == 2
    assert md.set_once("val", 7) is True and md.set_once("val", 8) is False and md["val"] == 7
    assert md.set_once("b", 1) is True and md.set_once("b", 2) is False


def test_copies_and_pickle():
    inner = [1, 2]
    md = nodemeta.NodeMetadata({"val": inner, "a": {"x": inner}})
    shallow = copy.copy(md)
    assert shallow == md and shallow["val"] is inner and shallow is not md
    shallow["b"] = 1
    assert "b" not in md  # independent nodes
    deep = copy.deepcopy(md)
    assert deep == md and deep["val"] is not inner and deep["a"]["x"] is deep["val"]
    with pytest.raises(nodemeta.ProtectedKeyError):
        deep["val"] = 0
    again = pickle.loads(pickle.dumps(md))
    assert type(again) is nodemeta.NodeMetadata and again == md
    with pytest.raises(RuntimeError):
        again["val"] = 0
    md["self"] = md  # a node holding itself: deepcopy and repr still end
    assert copy.deepcopy(md)["self"] is not md
    assert "NodeMetadata(...)" in repr(md)


def test_stores():
    store = nodemeta.MetadataStore(protected_keys=["owner"])
    assert store.protected_keys == ["owner"] and store.is_protected("owner")
    assert not store.is_protected("val") and not store.is_protected(3)
    md = store.create({"owner": "me", "val": 1})
    assert md.store is store and store.node_count == 1
    md["val"] = 2  # not protected in this store
    with pytest.raises(RuntimeError, match="owner"):
        md["owner"] = "you"
    store.protect("val")
    with pytest.raises(RuntimeError, match="val"):
        md["val"] = 3
    c = md.copy()
    assert c.store is store and store.node_count == 2
    del md, c
    assert store.node_count == 0
    assert nodemeta.NodeMetadata({}).store is nodemeta.default_store


def test_store_and_nodes_die_in_either_order():
    import gc
    store = nodemeta.MetadataStore()
    nodes = [store.create({"val": [i]}) for i in range(100)]
    del store  # the nodes keep it alive
    gc.collect()
    assert nodes[5]["val"] == [5] and nodes[0].store.node_count == 100
    s = nodes[0].store
    del nodes
    assert s.node_count == 0
    store = nodemeta.MetadataStore()
    one = store.create({})
    del one, store


def test_values_are_released():
    import gc
    import weakref

    class Payload:
        pass

    md = nodemeta.NodeMetadata({})
    p = Payload()
    ref = weakref.ref(p)
    md["p"] = p
    del p
    md["p"] = 1  # the old value is retired, then released
    nodemeta.release_retired_values()
    gc.collect()
    assert ref() is None


# ---- found by review ------------------------------------------------------------------------

def test_memo_never_matches_a_reused_address():
    class Evil(list):
        def __iter__(self):
            outer[0] = None  # frees A (converted already); B may get its address
            outer.append([7, 7, 7])
            return iter(())

    a = [1, 1, 1]
    outer = [a, Evil()]
    del a
    md = nodemeta.NodeMetadata({})
    md["x"] = outer
    kind, _, text = _core._cpp_view(md, "x")
    assert kind == "list"
    # Whatever state C++ saw, the third element (if any) is [7, 7, 7], never A's contents.
    assert "[7, 7, 7]" in text or text.count("[1, 1, 1]") <= 1


def test_subclasses_of_scalars_and_dicts_keep_type_and_identity():
    import collections

    class MyInt(int):
        pass

    class MyFloat(float):
        pass

    counter = collections.Counter({0: 1})
    ordered = collections.OrderedDict({1: "a"})
    values = {"i": MyInt(5), "f": MyFloat(2.5), "c": counter, "o": ordered,
              "od": collections.OrderedDict({"a": 1})}
    md = nodemeta.NodeMetadata(values)
    for k, v in values.items():
        assert md[k] is v, k
    md["c"][3] += 1  # a Counter still
    assert counter[3] == 1
    assert _core._cpp_view(md, "i")[0] == "object" and _core._cpp_view(md, "c")[0] == "object"
    assert _core._cpp_view(md, "od")[0] == "dict"  # str keys: C++ reads it


def test_values_whose_conversion_fails_are_stored_opaque():
    class Meta(type):
        def __eq__(cls, other):
            return cls is other  # no __hash__: instances' type is unhashable

    class Odd(metaclass=Meta):
        pass

    class BadList(list):
        def __iter__(self):
            raise ValueError("iter boom")

    class S(str):
        def __hash__(self):
            return 1

        def __eq__(self, other):
            return False

    odd, bad, dup = Odd(), BadList([1]), {"a": 1, S("a"): 2}
    md = nodemeta.NodeMetadata({})
    for k, v in (("odd", odd), ("bad", bad), ("dup", dup)):
        md[k] = v
        assert md[k] is v and _core._cpp_view(md, k)[0] == "object", k


def test_opaque_type_names():
    import collections
    md = nodemeta.NodeMetadata({"d": collections.deque(), "s": nodemeta.default_store, "o": object()})
    assert _core._cpp_view(md, "d")[1] == "Python collections.deque"
    assert _core._cpp_view(md, "s")[1] == "Python nodemeta._core.MetadataStore"
    assert _core._cpp_view(md, "o")[1] == "Python object"


def test_cpp_key_error_is_a_key_error():
    with pytest.raises(KeyError):
        _core._cpp_view(nodemeta.NodeMetadata({}), "nope")


def test_subclass_with_its_own_init_weakrefs_and_reinit():
    import weakref

    class Tagged(nodemeta.NodeMetadata):
        __slots__ = ("tag",)

        def __init__(self, data, tag):
            super().__init__(data)
            self.tag = tag

    t = Tagged({"a": 1}, "x")
    assert t["a"] == 1 and t.tag == "x"
    md = nodemeta.NodeMetadata({"a": 1, "val": 2})
    md.__init__({"b": 2})  # re-initialised: holds exactly the new data
    assert dict(md) == {"b": 2}
    r = weakref.ref(md)
    assert r() is md
    del md
    assert r() is None


def test_pickle_of_a_node_holding_itself():
    md = nodemeta.NodeMetadata({"val": 1})
    md["self"] = md
    again = pickle.loads(pickle.dumps(md))
    assert again["self"] is again and again["val"] == 1
    with pytest.raises(RuntimeError):
        again["val"] = 2


def test_store_takes_any_iterable_of_keys():
    store = nodemeta.MetadataStore(protected_keys=nodemeta.PROTECTED_KEYS)
    assert sorted(store.protected_keys) == sorted(nodemeta.PROTECTED_KEYS)
    assert nodemeta.MetadataStore(protected_keys=iter(["a"])).protected_keys == ["a"]
    with pytest.raises(TypeError):
        nodemeta.MetadataStore(protected_keys="val")
    with pytest.raises(TypeError):
        nodemeta.MetadataStore(protected_keys=[1])


def test_small_api_parity():
    md = nodemeta.NodeMetadata({"a": 1, "b": 2})
    with pytest.raises(TypeError):
        md.update(None)
    with pytest.raises(TypeError):
        md[[1]]
    with pytest.raises(TypeError):
        [1] in md
    assert list(reversed(md)) == ["b", "a"]


def test_values_in_live_nodes_are_finalized_at_exit(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "out.txt"
    # A buffered file stored in a node is flushed when the node dies at exit (its reference is
    # dropped, not leaked), as with a dict.
    script = (
        "import nodemeta\n"
        "md = nodemeta.NodeMetadata({})\n"
        f"md['log'] = open({str(out)!r}, 'w')\n"
        "md['log'].write('important data\\n')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == "important data\n"


def test_cycles_through_the_store_are_collected():
    import gc
    import weakref

    class Holder:
        pass

    def make():
        h = Holder()
        h.meta = nodemeta.NodeMetadata({"val": [1]})
        h.meta["back"] = h  # value -> holder -> node: a cycle through the C++ store
        h.meta["copy_shares_the_cache"] = [h]
        h.other = h.meta.copy()  # shares h.meta's cache dict (visited by both), not C++ boxes
        return weakref.ref(h)

    refs = [make() for _ in range(50)]
    gc.collect()
    assert all(r() is None for r in refs)

    def flushed():
        h = make()()
        _core._cpp_view(h.meta, "back")  # both nodes in the C++ store, each with its own box
        _core._cpp_view(h.other, "back")
        return weakref.ref(h)

    refs = [flushed() for _ in range(50)]
    gc.collect()
    assert all(r() is None for r in refs)
    def lone():
        h = Holder()
        h.meta = nodemeta.NodeMetadata({})
        h.meta["back"] = h
        return weakref.ref(h)
    lone_refs = [lone() for _ in range(50)]
    gc.collect()
    assert all(r() is None for r in lone_refs)


class Tagged(nodemeta.NodeMetadata):
    __slots__ = ("tag",)

    def __init__(self, data, tag):  # two required arguments: pickle must not call it
        super().__init__(data)
        self.tag = tag


def test_subclass_state_survives_copies_and_pickle_without_init():
    t = Tagged({"val": 1, "a": [1]}, "hello")
    for again in (copy.copy(t), copy.deepcopy(t), *(pickle.loads(pickle.dumps(t, p)) for p in range(6))):
        assert type(again) is Tagged and again.tag == "hello" and dict(again) == {"val": 1, "a": [1]}
        with pytest.raises(RuntimeError):
            again["val"] = 2
    assert copy.copy(t)["a"] is t["a"] and copy.deepcopy(t)["a"] is not t["a"]


# Kind: regression (issue 23 item 3)
def test_pickle_keeps_the_store_protection_and_one_store_per_pickle():
    store = nodemeta.MetadataStore([])  # protects nothing
    a = store.create({"val": 1, "x": [1, 2]})
    b = store.create({"tensor_meta": "t"})
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        a2, b2 = pickle.loads(pickle.dumps([a, b], protocol))
        assert a2 == a and b2 == b
        assert a2.store is b2.store and a2.store is not store  # one new store for the pickle
        assert a2.store.protected_keys == []
        a2["val"] = 2  # not protected there, as in the store it came from
        b2["tensor_meta"] = "u"
        assert a2.store.node_count == 2
    # Two pickles: two stores. The default store's nodes come back in the default store.
    one, two = pickle.loads(pickle.dumps(a)), pickle.loads(pickle.dumps(a))
    assert one.store is not two.store
    d = pickle.loads(pickle.dumps(nodemeta.NodeMetadata({"val": 1})))
    assert d.store is nodemeta.default_store
    with pytest.raises(nodemeta.ProtectedKeyError):
        d["val"] = 2
    # A store's own protected keys, protect() included, come back protected.
    custom = nodemeta.MetadataStore(["k"])
    custom.protect("later")
    c = pickle.loads(pickle.dumps(custom.create({"k": 1, "later": 2, "free": 3})))
    assert sorted(c.store.protected_keys) == ["k", "later"] and c == {"k": 1, "later": 2, "free": 3}
    for key in ("k", "later"):
        with pytest.raises(nodemeta.ProtectedKeyError):
            c[key] = 0
    c["val"] = 0  # not one of this store's keys


# Kind: regression (issue 23 item 3)
def test_import_nodemeta_loads_no_torch_and_fx_is_an_attribute():
    import subprocess
    import sys
    script = (
        "import sys, nodemeta\n"
        "assert 'torch' not in sys.modules, 'import nodemeta imported torch'\n"
        "assert 'nodemeta.fx' not in sys.modules\n"
        "assert 'fx' in dir(nodemeta)\n"
        "fx = nodemeta.fx\n"
        "assert fx is sys.modules['nodemeta.fx'] and nodemeta.fx is fx\n"
        "assert 'torch' not in sys.modules, 'nodemeta.fx imported torch before use'\n"
        "try:\n"
        "    nodemeta.nothing\n"
        "except AttributeError as e:\n"
        "    assert 'nothing' in str(e)\n"
        "else:\n"
        "    raise AssertionError('nodemeta.nothing did not raise')\n"
        "try:\n"
        "    import torch, torch.fx\n"
        "except ImportError:\n"
        "    print('no torch'); sys.exit(0)\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x + 1\n"
        "gm = torch.fx.symbolic_trace(M())\n"
        "store = nodemeta.fx.attach(gm)\n"
        "assert all(isinstance(n.meta, nodemeta.NodeMetadata) and n.meta.store is store for n in gm.graph.nodes)\n"
        "print('attached')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() in ("attached", "no torch")
