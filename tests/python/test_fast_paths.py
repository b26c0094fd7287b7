"""The creation and method-call fast paths of nodemeta.NodeMetadata (python/src/module.cpp):
the node free list, the initial keys read from the dict's table, and the methods bound to
the exact class. Each test would fail if its shortcut changed what the slow path does."""
import copy
import gc
import pickle
import sys
import threading
import weakref

import pytest

import nodemeta
from nodemeta import _core

NodeMetadata = nodemeta.NodeMetadata


def cpp(md, key):
    """What C++ reads for key (the node flushed first): (kind, text)."""
    kind, _, text = _core._cpp_view(md, key)
    return kind, text


# ---- methods bound to the exact class ---------------------------------------------------------

METHODS = [name for name, member in vars(_core.NodeMetadataBase).items()
           if type(member).__name__ == "method_descriptor"]


def test_every_base_method_is_bound_to_the_class_unless_the_class_defines_it():
    assert "get" in METHODS and "setdefault" in METHODS and "items" in METHODS
    for name in METHODS:
        member = NodeMetadata.__dict__.get(name)
        assert member is not None, name
        if type(member).__name__ == "method_descriptor":
            assert member.__objclass__ is NodeMetadata, name
    # The class's own Python methods stay its own.
    assert NodeMetadata.__dict__["__copy__"].__qualname__ == "NodeMetadata.__copy__"
    assert NodeMetadata.__dict__["__setstate__"].__qualname__ == "NodeMetadata.__setstate__"


def test_the_bound_methods_behave_as_the_base_ones_on_the_class_and_on_subclasses():
    class Sub(NodeMetadata):
        pass

    class Own(NodeMetadata):
        def get(self, key, default=None):
            return ("own", key, default)

    store = nodemeta.MetadataStore(protected_keys=("p",))
    for cls in (NodeMetadata, Sub):
        md = store.create({"a": 1, "p": 2}) if cls is NodeMetadata else cls({"a": 1})
        assert md.get("a") == 1 and md.get("zz") is None and md.get("zz", 7) == 7
        assert NodeMetadata.get(md, "a") == 1 and _core.NodeMetadataBase.get(md, "a") == 1
        assert md.setdefault("b", 3) == 3 and md.setdefault("b", 4) == 3
        assert md.pop("b") == 3 and md.pop("b", None) is None
        assert dict(md.items())["a"] == 1 and "a" in md.keys()
        assert md.try_set("c", 5) == nodemeta.WriteResult.INSERTED
        assert md.set_once("c", 6) is False and md["c"] == 5
        assert cpp(md, "c") == ("int", "5")
        with pytest.raises(TypeError):
            md.get()
        with pytest.raises(TypeError):
            md.get("a", 1, 2)
    assert Own({"a": 1}).get("a") == ("own", "a", None)
    with pytest.raises(TypeError, match="doesn't apply"):
        NodeMetadata.get(_core.NodeMetadataBase(), "a")


# ---- the free list ----------------------------------------------------------------------------

def test_reused_nodes_are_new_empty_tracked_weakrefable_and_balance_the_type_refcount():
    store = nodemeta.MetadataStore(protected_keys=())
    gc.collect()
    before = sys.getrefcount(NodeMetadata)
    seen = set()
    for i in range(3000):
        md = NodeMetadata() if i % 2 else store.create({"i": i})
        seen.add(id(md))
        assert gc.is_tracked(md)
        assert len(md) == (0 if i % 2 else 1)
        assert md.store is (nodemeta.default_store if i % 2 else store)
        fired = []
        r = weakref.ref(md, lambda _: fired.append(1))
        assert r() is md
        md["k"] = i
        assert cpp(md, "k") == ("int", str(i))
        del md
        assert fired == [1] and r() is None
    assert len(seen) < 100  # memory was reused
    kept = [NodeMetadata() for _ in range(200)]
    del kept
    assert _core._free_node_count() == 80  # the list's bound, whatever it held before
    more = [NodeMetadata({"x": 1}) for _ in range(30)]
    assert _core._free_node_count() == 50  # ... and taken from it
    del more
    gc.collect()
    assert sys.getrefcount(NodeMetadata) == before


def test_nodes_freed_by_the_cycle_collector_are_reused_soundly():
    store = nodemeta.MetadataStore(protected_keys=())
    for rnd in range(200):
        nodes = [store.create({"n": j}) for j in range(10)]
        for j, md in enumerate(nodes):  # a ring through the cache, and each node holds itself
            md["next"] = nodes[(j + 1) % 10]
            md["self"] = md
        refs = [weakref.ref(md) for md in nodes]
        del nodes, md
        assert gc.collect() > 0
        assert all(r() is None for r in refs)
        fresh = [store.create({"r": rnd, "j": j}) for j in range(10)]
        for j, md in enumerate(fresh):
            assert dict(md) == {"r": rnd, "j": j}
            assert gc.is_tracked(md)
            assert cpp(md, "j") == ("int", str(j))
            with pytest.raises(KeyError):
                cpp(md, "next")
        # The store's C++ nodes are exactly the live ones (a reused node left in the store's
        # dirty list would be flushed twice, or a dead one flushed at all).
        assert store.node_count == 10
        del fresh, md
    gc.collect()
    assert store.node_count == 0


def test_a_del_given_to_the_class_runs_for_every_node_reused_or_not():
    # A reused node must not carry its earlier life's "finalized" mark (review finding).
    calls = []
    NodeMetadata.__del__ = lambda self: calls.append(1)
    try:
        gc.collect()
        first = NodeMetadata({"a": 1})
        del first  # finalized
        fresh = NodeMetadata({"b": 2})
        assert not gc.is_finalized(fresh)
        del fresh
        calls.clear()
        for i in range(20):
            md = NodeMetadata({"i": i})
            del md
        assert len(calls) == 20
        calls.clear()
        for i in range(20):
            md = NodeMetadata({"i": i})
            md["self"] = md  # a cycle: the collector finalizes it
            del md
            gc.collect()
        assert len(calls) == 20
    finally:
        del NodeMetadata.__del__
    # Nodes finalized while __del__ was set and freed afterwards are new again too.
    for _ in range(100):
        assert not gc.is_finalized(NodeMetadata())


class Tagged(NodeMetadata):
    __slots__ = ("tag",)


def test_binding_methods_to_a_subclass_keeps_the_python_overrides_in_between():
    T = Tagged
    views = (nodemeta._KeysView, nodemeta._ValuesView, nodemeta._ItemsView)
    _core._set_node_type(T, views)
    try:
        assert "__copy__" not in T.__dict__ and "__setstate__" not in T.__dict__  # NodeMetadata's stay
        assert T.__dict__["get"].__objclass__ is T
        t = T({"a": 1})
        t.tag = "kept"
        assert copy.copy(t).tag == "kept"
        assert pickle.loads(pickle.dumps(t)).tag == "kept"
    finally:
        _core._set_node_type(NodeMetadata, views)
    assert NodeMetadata.__dict__["get"].__objclass__ is NodeMetadata


def test_subclass_instances_are_not_taken_from_or_put_in_the_free_list():
    class WithDict(NodeMetadata):
        pass

    for i in range(500):
        w = WithDict({"w": i})
        w.extra = [i]
        del w
        md = NodeMetadata({"m": i})
        assert type(md) is NodeMetadata and not hasattr(md, "extra") and not hasattr(md, "__dict__")
        assert dict(md) == {"m": i}


def test_nodes_made_and_dropped_by_many_threads_keep_their_own_contents():
    sys_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads between almost every bytecode
    store = nodemeta.MetadataStore(protected_keys=())
    errors = []
    start = threading.Barrier(4)

    def work(t):
        start.wait()
        try:
            for i in range(4000):
                md = store.create({"t": t, "i": i}) if i % 3 else NodeMetadata({"t": t, "i": i})
                md["sq"] = i * i
                if md["t"] != t or md["i"] != i or md["sq"] != i * i or len(md) != 3:
                    errors.append((t, i, dict(md)))
                if i % 97 == 0 and cpp(md, "sq") != ("int", str(i * i)):
                    errors.append((t, i, "cpp"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    try:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(sys_interval)
    assert errors == []


# ---- the initial keys, read from the dict's table -----------------------------------------

def test_invalid_initial_keys_are_refused_every_time_even_among_known_ones():
    for _ in range(3):
        NodeMetadata({"a": 1, "b": 2})  # a and b remembered as valid
        with pytest.raises(ValueError, match="NUL"):
            NodeMetadata({"a": 1, "b\0c": 2})
        with pytest.raises(TypeError, match="must be str"):
            NodeMetadata({"a": 1, 3: 2})
    class S(str):
        pass
    md = NodeMetadata({S("a"): 1, "b": 2})
    assert sorted(md) == ["a", "b"] and all(type(k) is str for k in md)


def test_deleted_entries_and_shared_key_tables_are_read_right():
    d = {"x\0y": 1, "keep": 2, "gone": 3}
    del d["x\0y"], d["gone"]
    assert dict(NodeMetadata(d)) == {"keep": 2}

    class Obj:
        def __init__(self):
            self.alpha, self.beta = 1, 2

    a, b = Obj(), Obj()
    del b.beta  # a split table shared with `a`, whose key beta is not b's
    assert dict(NodeMetadata(a.__dict__)) == {"alpha": 1, "beta": 2}
    assert dict(NodeMetadata(b.__dict__)) == {"alpha": 1}
    weird = "é\u1234key"  # not ASCII: checked the slow way, then remembered
    for _ in range(3):
        md = NodeMetadata({weird: 1, "plain": 2})
        assert md[weird] == 1 and cpp(md, weird) == ("int", "1")


# ---- reads that probe the cache's table -------------------------------------------------------

def fresh_copy(s):
    """An equal str that is another object, its hash not computed yet."""
    return "".join(list(s))


@pytest.mark.parametrize("size", [0, 1, 5, 8, 40, 171, 300, 45000])
def test_reads_agree_with_a_dict_at_every_table_size_and_with_equal_strs(size):
    # 171 keys: a table of 256 slots and 2-byte indices; 45,000: 65,536 slots and 4-byte ones.
    store = nodemeta.MetadataStore(protected_keys=())
    names = [f"k{i}" for i in range(size + size // 3)]
    d = {}
    md = store.create({})
    for i, name in enumerate(names):
        d[name] = md[name] = i
    for name in names[size:]:  # deleted entries: dummy slots inside probe chains
        del d[name], md[name]
    assert len(md) == len(d) == size
    probes = names[:: max(1, len(names) // 400)] + [f"absent{i}" for i in range(50)] + ["", "k"]

    def agree():
        for name in probes:
            for key in (name, fresh_copy(name)):
                assert md.get(key) == d.get(key), key
                assert md.get(key, "dflt") == d.get(key, "dflt"), key
                assert (key in md) == (key in d), key
                if key in d:
                    assert md[key] == d[key]
                else:
                    with pytest.raises(KeyError):
                        md[key]

    agree()  # the cache as built: a table of the str kind
    assert list(md) == sorted(d)  # iteration sorts the cache: a presized table, general kind
    agree()
    if size:  # C++ writes the node: the cache is rebuilt from C++ (presized) on later reads
        _core._run_passes(store, [("n0", "placeholder", "x", [], md)], ["cost"])
        d.update((k, md[k]) for k in ("flops", "bytes", "cost_rule") if k in md)
        for _ in range(4):
            assert md.get(names[0]) == 0
        agree()


def test_reads_of_a_cache_with_a_shared_key_table_and_non_interned_keys():
    class Obj:
        def __init__(self):
            self.alpha, self.beta, self.gamma = 1, 2, 3

    a = Obj()
    md = NodeMetadata(a.__dict__)  # the cache may keep the split table
    for key in ("alpha", "beta", "gamma", fresh_copy("beta")):
        assert md[key] == a.__dict__[key] and md.get(key) == a.__dict__[key] and key in md
    assert md.get("delta") is None and "delta" not in md
    built = {fresh_copy("val"): 1, fresh_copy("tensor_meta"): 2}  # keys not interned
    md = NodeMetadata(built)
    assert md["val"] == 1 and md.get("tensor_meta") == 2 and "val" in md
    assert md[fresh_copy("val")] == 1 and md.get("other") is None
