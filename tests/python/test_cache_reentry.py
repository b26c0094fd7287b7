"""The node cache under re-entry (python/src/module.cpp, "The cache"; docs/python.md): Python
code that runs in the middle of a cache operation (a value's ``__del__``, a weakref callback,
the cycle collector and its callbacks) and protection changing underneath a write.

Each probe that could crash the interpreter runs in a child process, so a crash is a test
failure and not the end of the run. What C++ sees is read through ``_core._cpp_view`` (which
flushes the node first) and through the C++ passes (``_core._run_passes`` on a one-node graph).
"""
import gc
import os
import subprocess
import sys
import textwrap
import weakref

import pytest

import nodemeta

_core = nodemeta._core


def cpp(md, key):
    """What C++ code reads for key (the node flushed first): (kind, text)."""
    kind, _, text = _core._cpp_view(md, key)
    return kind, text


def run_verify(store, md):
    """The C++ passes on a one-node graph holding md (flushes it, as run_passes does)."""
    return _core._run_passes(store, [("n0", "placeholder", "x", [], md)], ["verify"])


def run_child(code):
    """Runs code in a fresh interpreter with this package; returns (rc, output)."""
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


class Writer:
    """A value whose __del__ writes `value` under `key` into `target` (a node)."""

    def __init__(self, target, key, value):
        self.target, self.key, self.value = target, key, value

    def __del__(self):
        self.target[self.key] = self.value


# --- Lead 1: a __del__ that writes while the cache deletes, pops, clears or overwrites ----


@pytest.mark.parametrize("op", ["del", "pop", "overwrite", "update", "clear", "popitem", "reinit"])
@pytest.mark.parametrize("where", ["same_key", "other_key", "other_node"])
def test_a_del_that_writes_while_a_key_goes_is_seen_by_python_and_cpp(op, where):
    store = nodemeta.MetadataStore(protected_keys=())
    md = store.create({"keep": 1})
    other = store.create({"o": 0})
    target, key = {"same_key": (md, "k"), "other_key": (md, "late"), "other_node": (other, "late")}[where]
    md["k"] = Writer(target, key, "from __del__")
    if op in ("clear", "popitem"):
        _core._cpp_view(md, "keep")  # flushed: the value is then held by C++ too
    if op == "del":
        del md["k"]
    elif op == "pop":
        md.pop("k")
    elif op == "overwrite":
        md["k"] = "new"
    elif op == "update":
        md.update({"k": "new"})
    elif op == "clear":
        md.clear()
    elif op == "popitem":
        del md["keep"]
        md.popitem()
    elif op == "reinit":
        md.__init__({"keep": 2})
    nodemeta.release_retired_values()  # C++'s copy of the Writer, released now
    gc.collect()
    assert target[key] == "from __del__", (op, where, dict(target))
    assert cpp(target, key) == ("string", "'from __del__'"), (op, where)
    # Still coherent: the next Python write and a pass both see the whole node.
    target["after"] = 1
    run_verify(store, target)
    assert target[key] == "from __del__" and cpp(target, "after") == ("int", "1")
    assert dict(target) == dict(target._items())


def test_a_del_that_writes_during_an_overwrite_that_copies_the_cache():
    # An iterator holds the cache, so the overwrite copies it first; the __del__ then writes
    # into the node's new dict while the iterator keeps the old one.
    store = nodemeta.MetadataStore(protected_keys=())
    md = store.create({})
    md["k"] = Writer(md, "late", 7)
    it = iter(md)
    md["k"] = "new"
    assert list(it) == ["k"]
    nodemeta.release_retired_values()
    assert dict(md) == {"k": "new", "late": 7}
    assert cpp(md, "late") == ("int", "7") and cpp(md, "k") == ("string", "'new'")


class FlushingWriter:
    """A value whose __del__ writes into `target` and makes C++ read it at once (a flush
    of the node from inside whatever released the value)."""

    def __init__(self, target, i):
        self.target, self.i = target, i

    def __del__(self):
        self.target[f"d{self.i}"] = self.i
        assert cpp(self.target, f"d{self.i}") == ("int", str(self.i))


@pytest.mark.parametrize("via", ["flush", "write_through"])
def test_a_del_run_by_a_cpp_write_may_write_and_flush_the_node_being_written(via):
    # C++ releases replaced values in batches at the end of later writes: here the flush's
    # own edit (or a write made straight to C++ while a C++ view is taken), whose node is
    # then written and flushed again by the __del__ before the outer operation returns.
    store = nodemeta.MetadataStore(protected_keys=())
    md = store.create({})
    for i in range(600):
        if via == "flush":
            md["slot"] = FlushingWriter(md, i)
            assert cpp(md, "slot")[0] == "object"
        else:
            md.update({"slot": FlushingWriter(md, i), "n": i})  # a C++ edit after the first
            _ = md.pop("missing", None)
    nodemeta.release_retired_values()
    released = [i for i in range(600) if f"d{i}" in md]
    assert len(released) >= 599 - 1, len(released)
    for i in released:
        assert md[f"d{i}"] == i and cpp(md, f"d{i}") == ("int", str(i))
    run_verify(store, md)
    assert dict(md) == dict(md._items())


# --- Lead 2: protected keys and the flush --------------------------------------------------


@pytest.mark.parametrize("op", ["set", "try_set", "update", "del", "pop"])
def test_protect_between_the_protection_check_and_the_cache_store_refuses_the_write(op):
    # The write checks the key's protection, then prepares the cache, which copies it (an
    # iterator shares it): the copy allocates, so the cycle collector may run, and a gc
    # callback protects the key right then. The write must not land in the cache after the
    # protection (C++ would never see it: the flush's set_once is refused).
    store = nodemeta.MetadataStore(protected_keys=())
    md = store.create({"k": "old"})
    _core._cpp_view(md, "k")  # C++ holds 'old'
    armed = []
    in_op = [False]
    during_op = []  # one entry per protection made while the operation ran

    def protect_now(phase, info):
        if phase == "start" and armed:
            store.protect(armed.pop())
            if in_op[0]:
                during_op.append(1)

    gc.callbacks.append(protect_now)
    old_threshold = gc.get_threshold()
    try:
        for attempt in range(40):
            key = f"k{attempt}"
            md.set_once(key, "old")
            _core._cpp_view(md, key)
            it = iter(md)  # shares the cache: the next write copies it (PyDict_Copy)
            gc.disable()
            gc.collect()
            hold = [{} for _ in range(100)]  # dict's free list empty: the copy is a GC allocation
            base = gc.get_count()[0]
            # A collection starts at the first GC allocation once the count passes the
            # threshold: with offset 0 that is the cache copy inside the write.
            gc.set_threshold(base + attempt % 4)
            armed.append(key)
            gc.enable()
            in_op[0] = True
            try:
                if op == "set":
                    md[key] = "new"
                elif op == "try_set":
                    assert md.try_set(key, "new") != nodemeta.WriteResult.REJECTED_PROTECTED
                elif op == "update":
                    md.update({key: "new"})
                elif op == "del":
                    del md[key]
                else:
                    md.pop(key)
                landed = True
            except (nodemeta.ProtectedKeyError, AssertionError):
                landed = False
            in_op[0] = False
            gc.set_threshold(*old_threshold)
            armed.clear()
            del it, hold
            if not store.is_protected(key):
                store.protect(key)  # the collection came after the write
            # Whenever the protection came, Python and C++ agree on the key.
            py_value = md.get(key)
            try:
                cpp_value = cpp(md, key)
            except KeyError:
                cpp_value = None
            assert cpp_value == (py_value and ("string", repr(py_value))), (attempt, landed, py_value)
            run_verify(store, md)
            assert md.get(key) == py_value
    finally:
        gc.callbacks.remove(protect_now)
        gc.set_threshold(*old_threshold)
        gc.enable()
    # These operations allocate nothing before their protection check, so a collection
    # while they run came after it: the window was probed (update's new entries are
    # copied before its check, so its collection may come first).
    if op != "update":
        assert during_op, "no collection ran inside the write: the probe missed its window"


def test_a_protected_container_changed_in_place_keeps_its_cpp_value_and_flushes_the_rest():
    # C++ holds a protected value as it was when it was set; a list changed in place after
    # that is not a write (protected values never change in C++), and it does not stop the
    # node's other writes from reaching C++.
    store = nodemeta.MetadataStore()
    md = store.create({})
    shape = [1, 2]
    assert md.set_once("val", shape)
    assert cpp(md, "val") == ("list", "[1, 2]")
    shape.append(3)
    md["flops"] = 5
    assert cpp(md, "flops") == ("int", "5")
    assert cpp(md, "val") == ("list", "[1, 2]")
    assert md["val"] is shape
    run_verify(store, md)


def test_the_flush_refuses_a_different_value_for_a_key_cpp_protects():
    # A protected key the cache holds a different object for than C++ (only reachable if the
    # Python-side protected names lag C++; forced here through the hook that makes them lag).
    store = nodemeta.MetadataStore(protected_keys=())
    md = store.create({"k": "cpp"})
    _core._cpp_view(md, "k")
    _core._protect_cpp_only(store, "k")  # C++ protects k; Python's names are not told
    md["k"] = "python"  # accepted by the stale names, into the cache
    md["other"] = 1
    with pytest.raises(nodemeta.ProtectedKeyError, match="Could not override node key: k"):
        _core._cpp_view(md, "other")
    # Nothing stored is lost: C++ keeps its protected value, the cache shows it again, and the
    # node's other writes reach C++.
    assert md["k"] == "cpp"
    assert cpp(md, "k") == ("string", "'cpp'")
    assert cpp(md, "other") == ("int", "1")
    # The same for an erase the cache holds.
    md["k2"] = "cpp2"
    _core._cpp_view(md, "k2")
    _core._protect_cpp_only(store, "k2")
    del md["k2"]
    md["other"] = 2
    with pytest.raises(nodemeta.ProtectedKeyError, match="Could not override node key: k2"):
        run_verify(store, md)
    assert md["k2"] == "cpp2" and cpp(md, "other") == ("int", "2")


# --- Lead 3: the cycle collector and dying nodes -----------------------------------------


def test_a_cycle_through_the_cache_is_collected_and_the_store_stays_sound():
    store = nodemeta.MetadataStore(protected_keys=())
    survivors = [store.create({"a": i}) for i in range(4)]
    refs = []
    for i in range(50):
        md = store.create({})
        md["self"] = md  # cycle: node -> cache -> node
        md["box"] = [md, {"back": md}]
        if i % 2:
            _core._cpp_view(md, "box")  # flushed: C++ holds the cycle too
        refs.append(weakref.ref(md))
        del md
    for s in survivors:
        s["dirty"] = 1  # dirty nodes beside the garbage in the store's list
    gc.collect()
    nodemeta.release_retired_values()
    gc.collect()
    assert all(r() is None for r in refs)
    assert store.node_count == len(survivors)  # flushes every dirty node
    for s in survivors:
        run_verify(store, s)
        assert cpp(s, "dirty") == ("int", "1")


CHILD_PRELUDE = """
import gc, weakref, nodemeta
_core = nodemeta._core
store = nodemeta.MetadataStore(protected_keys=())
"""


@pytest.mark.parametrize("action", ["node_count", "protect", "flush_other"])
def test_a_weakref_callback_of_a_dying_dirty_node_may_use_the_store(action):
    # The callback runs while the node is being deallocated: a flush of the store's dirty
    # nodes then must not find the dying node in the list.
    rc, out = run_child(CHILD_PRELUDE + f"""
action = {action!r}
live = store.create({{"x": 1}})
calls = []
def callback(ref):
    live["y"] = 2  # dirty beside the dying node
    if action == "node_count":
        calls.append(store.node_count)
    elif action == "protect":
        store.protect("p")
        calls.append(1)
    else:
        calls.append(_core._cpp_view(live, "y"))
for i in range(20):
    md = store.create({{"a": i}})
    md["b"] = [i]
    r = weakref.ref(md, callback)
    del md
    gc.collect()
assert len(calls) == 20, calls
assert store.node_count == 1, store.node_count
print("ok")
""")
    assert rc == 0 and out.strip().endswith("ok"), out


def test_a_slot_of_a_dying_subclass_node_whose_del_flushes_the_store():
    # A subclass's dealloc clears its __slots__ before NodeMetadata's own dealloc runs: a
    # value there whose __del__ flushes the store meets the dying node still in the list.
    rc, out = run_child(CHILD_PRELUDE + """
class Sub(nodemeta.NodeMetadata):
    __slots__ = ("extra",)
class Flusher:
    def __del__(self):
        counts.append(store.node_count)
counts = []
for i in range(20):
    md = _core._new_in(Sub, store)
    md["a"] = [i]  # dirty
    md.extra = Flusher()
    del md
assert len(counts) == 20, counts
assert store.node_count == 0, store.node_count
print("ok")
""")
    assert rc == 0 and out.strip().endswith("ok"), out


def test_gc_clear_of_a_node_in_a_cycle_with_a_weakref_callback():
    # tp_clear empties a dying node and marks it dirty; the collector then frees it. A
    # callback (of a weakref that is not garbage) and a flush of the store in between must
    # neither revive it in the C++ store nor touch it after it is freed.
    rc, out = run_child(CHILD_PRELUDE + """
seen = []
keep = store.create({"k": 0})
def callback(ref):
    keep["k"] += 1
    seen.append(store.node_count)
refs = []
for i in range(30):
    md = store.create({"i": i})
    md["self"] = md
    if i % 3 == 0:
        _core._cpp_view(md, "i")
    refs.append(weakref.ref(md, callback))
    del md
gc.collect()
nodemeta.release_retired_values()
gc.collect()
assert all(r() is None for r in refs)
assert store.node_count == 1, store.node_count
assert _core._cpp_view(keep, "k")[2] == "30", _core._cpp_view(keep, "k")
print("ok")
""")
    assert rc == 0 and out.strip().endswith("ok"), out


# --- Also probed: two fx nodes sharing one meta, copies of dirty nodes, iteration ---------


def test_two_fx_nodes_sharing_one_meta_share_one_node():
    torch = pytest.importorskip("torch")
    import torch.fx
    import nodemeta.fx
    g = torch.fx.Graph()
    x = g.placeholder("x")
    y = g.create_node("call_function", torch.relu, (x,), name="y")
    z = g.create_node("call_function", torch.relu, (y,), name="z")
    g.output(z).meta = {}
    tm = {"shape": [1, 8], "dtype": "torch.float32"}
    shared = {"tag": "t", "tensor_meta": tm}
    x.meta = y.meta = shared  # as a dict, one object for both nodes
    z.meta = {"tensor_meta": tm}
    store = nodemeta.fx.attach(g)
    assert x.meta is y.meta  # still one mapping, now one node
    x.meta["tag"] = "written through x"
    assert y.meta["tag"] == "written through x"
    z.meta = y.meta  # shared after attach too: the same node twice in the passes' graph
    nodemeta.fx.run_passes(g)
    assert cpp(y.meta, "tag") == ("string", "'written through x'")
    assert y.meta["tag"] == "written through x" and "flops" in z.meta
    assert store.node_count == len({id(n.meta) for n in g.nodes})


def test_pickle_and_deepcopy_of_a_dirty_node_keep_its_unflushed_writes():
    import copy
    import pickle
    store = nodemeta.MetadataStore()
    md = store.create({"a": 1})
    _core._cpp_view(md, "a")
    md["b"] = [1, 2]  # dirty, not yet in C++
    md.set_once("val", "v")
    del md["a"]
    for c in (pickle.loads(pickle.dumps(md)), copy.deepcopy(md), copy.copy(md), md.copy()):
        assert dict(c) == {"b": [1, 2], "val": "v"}
        assert cpp(c, "b") == ("list", "[1, 2]") and cpp(c, "val") == ("string", "'v'")
        with pytest.raises(KeyError):
            _core._cpp_view(c, "a")
    assert dict(md) == {"b": [1, 2], "val": "v"}


def test_writes_during_iteration_are_not_seen_by_it_and_reach_cpp():
    store = nodemeta.MetadataStore(protected_keys=())
    md = store.create({f"k{i}": i for i in range(5)})
    seen = []
    for k, v in md.items():
        seen.append(k)
        md[k] = v + 100
        md["z" + k] = v
        del md[k]
    assert seen == [f"k{i}" for i in range(5)]
    assert dict(md) == {f"zk{i}": i for i in range(5)}
    assert cpp(md, "zk3") == ("int", "3")
    with pytest.raises(KeyError):
        _core._cpp_view(md, "k3")
