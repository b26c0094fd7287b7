"""The per-node Python cache (python/src/module.cpp, "The cache"; docs/python.md): Python's
reads and writes and the C++ store stay one linearizable mapping.

What C++ sees is read through ``_core._cpp_view`` (the value as C++ code reads it) and
through the C++ passes themselves; each round of the threaded tests is fenced with barriers,
so each check knows exactly which writes have returned.
"""
import threading

import pytest

import nodemeta

_core = nodemeta._core

ROUNDS = 2000


def cpp_int(md, key):
    kind, _, text = _core._cpp_view(md, key)
    assert kind == "int", (key, kind, text)
    return int(text)


def test_python_writes_are_seen_by_cpp():
    store = nodemeta.MetadataStore(protected_keys=())
    md = store.create({"a": 1})
    for i in range(ROUNDS):
        md["a"] = i
        md[f"k{i % 7}"] = i
        assert cpp_int(md, "a") == i and cpp_int(md, f"k{i % 7}") == i
        assert md["a"] == i
    del md["a"]
    with pytest.raises(KeyError):
        _core._cpp_view(md, "a")
    md.update({"b": 2}, c=3)
    assert cpp_int(md, "b") == 2 and cpp_int(md, "c") == 3
    assert md.pop("b") == 2 and md.setdefault("d", 4) == 4
    with pytest.raises(KeyError):
        _core._cpp_view(md, "b")
    assert cpp_int(md, "d") == 4


def test_copy_and_reinit_are_seen_by_cpp():
    store = nodemeta.MetadataStore(protected_keys=())
    md = store.create({"a": 1})
    c = md.copy()
    c["a"] = 2  # the copy shares md's cache until this write
    assert (md["a"], c["a"]) == (1, 2)
    assert (cpp_int(md, "a"), cpp_int(c, "a")) == (1, 2)
    md.__init__({"z": 9})
    assert dict(md) == {"z": 9} and cpp_int(md, "z") == 9
    with pytest.raises(KeyError):
        _core._cpp_view(md, "a")
    assert store.node_count == 2


def test_iterators_see_the_node_as_of_their_start():
    md = nodemeta.MetadataStore(protected_keys=()).create({"b": 1, "a": 2})
    keys = iter(md)
    items = iter(md.items())
    md["c"] = 3  # copies the cache the iterators hold
    del md["a"]
    assert list(keys) == ["a", "b"]
    assert list(items) == [("a", 2), ("b", 1)]
    assert list(md) == ["b", "c"]  # key-name order, new keys included
    ks = md.keys()
    md["0"] = 0
    assert list(ks) == ["0", "b", "c"] and "0" in ks  # views stay live


torch = None


def attached_chain(n):
    global torch
    torch = pytest.importorskip("torch")
    import torch.fx
    import nodemeta.fx

    g = torch.fx.Graph()
    x = g.placeholder("x")
    tm = {"shape": [1, 64], "dtype": "torch.float32"}
    x.meta = {"val": tm, "tensor_meta": tm, "type": torch.Tensor}
    cur = x
    for i in range(n):
        cur = g.create_node("call_function", torch.relu, (cur,), name=f"relu{i}")
        cur.meta = {"val": tm, "tensor_meta": tm, "type": torch.Tensor}
    g.output(cur).meta = {}
    nodemeta.fx.attach(g)
    return g


def test_cpp_writes_are_seen_by_the_next_python_read():
    import nodemeta.fx
    g = attached_chain(20)
    relus = [n for n in g.nodes if n.op == "call_function"]
    for r in range(300):
        for n in relus:
            n.meta["flops"] = "python"  # cached, not yet in C++
            assert n.meta["flops"] == "python"  # and read back from the cache
        nodemeta.fx.run_passes(g, passes=("cost",), threads=2)
        for n in relus:
            assert n.meta["flops"] == 64, (r, n.meta["flops"])  # the pass's write, not the cache's
            assert cpp_int(n.meta, "flops") == 64


def test_python_threads_writing_and_reading_with_barriers():
    store = nodemeta.MetadataStore(protected_keys=())
    nodes = [store.create({"shared": -1}) for _ in range(8)]
    threads = 4
    barrier = threading.Barrier(threads)
    errors = []

    def worker(t):
        try:
            for r in range(ROUNDS):
                for md in nodes:
                    md[f"t{t}"] = r
                    if t == 0:
                        md["shared"] = r
                barrier.wait()
                for md in nodes:  # every thread's write of this round has returned
                    for u in range(threads):
                        assert md[f"t{u}"] == r
                    assert md["shared"] == r
                if t == r % threads:  # one thread looks at what C++ sees
                    md = nodes[r % len(nodes)]
                    assert [cpp_int(md, f"t{u}") for u in range(threads)] == [r] * threads
                barrier.wait()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            barrier.abort()

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[0]


def test_python_threads_and_run_passes_on_the_same_nodes():
    # While a thread runs the C++ passes (GIL released), others write and read the same
    # nodes: their writes go to C++ at once, their reads see C++'s writes.
    import nodemeta.fx
    g = attached_chain(200)
    relus = [n for n in g.nodes if n.op == "call_function"]
    stop = threading.Event()
    errors = []

    def passes():
        try:
            while not stop.is_set():
                nodemeta.fx.run_passes(g, passes=("cost",), threads=2)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def writer(t):
        try:
            for r in range(300):
                for n in relus[t::2]:
                    n.meta[f"w{t}"] = r
                    assert n.meta[f"w{t}"] == r
                    assert n.meta.get("flops") in (None, 64)  # only the pass writes it
                n = relus[t + 2 * (r % (len(relus) // 2))]  # one of this thread's nodes
                assert cpp_int(n.meta, f"w{t}") == r
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    p = threading.Thread(target=passes)
    ws = [threading.Thread(target=writer, args=(t,)) for t in range(2)]
    p.start()
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    stop.set()
    p.join()
    assert not errors, errors[0]
    nodemeta.fx.run_passes(g, passes=("cost",), threads=2)
    for i, n in enumerate(relus):
        assert n.meta[f"w{i % 2}"] == 299 and cpp_int(n.meta, f"w{i % 2}") == 299
        assert n.meta["flops"] == 64


def test_protected_keys_are_never_overwritten():
    for r in range(ROUNDS // 4):
        store = nodemeta.MetadataStore(protected_keys=("p",))
        md = store.create({"p": r})
        with pytest.raises(RuntimeError, match="Could not override node key: p"):
            md["p"] = -1
        with pytest.raises(RuntimeError, match="Could not override node key: p"):
            del md["p"]
        assert md.try_set("p", -1) is nodemeta.WriteResult.REJECTED_PROTECTED
        md["q"] = r  # cached; linearized before the protect() below
        store.protect("q")
        with pytest.raises(nodemeta.ProtectedKeyError, match="Could not override node key: q"):
            md["q"] = -1
        assert md["q"] == r and cpp_int(md, "q") == r and cpp_int(md, "p") == r
        assert md.set_once("n", r) and not md.set_once("n", -1)
        store.protect("n")
        assert md["n"] == r and cpp_int(md, "n") == r


def test_protect_while_threads_write_the_key():
    # Writers race protect("k"): each write either lands before the protection (and C++ has
    # it) or raises; after protect returns, none succeeds.
    for _ in range(50):
        store = nodemeta.MetadataStore(protected_keys=())
        nodes = [store.create({}) for _ in range(50)]
        barrier = threading.Barrier(3)
        protected = threading.Event()
        late = []

        def writer(t):
            barrier.wait()
            for i in range(400):
                was_protected = protected.is_set()
                md = nodes[(i + t) % len(nodes)]
                try:
                    md["k"] = (t, i)
                    if was_protected:
                        late.append((t, i))
                except nodemeta.ProtectedKeyError:
                    pass

        ws = [threading.Thread(target=writer, args=(t,)) for t in range(2)]
        for w in ws:
            w.start()
        barrier.wait()
        store.protect("k")
        protected.set()
        for w in ws:
            w.join()
        assert not late
        for md in nodes:
            if "k" in md:
                kind, _, text = _core._cpp_view(md, "k")
                assert kind == "list" and text == str(list(md["k"]))


def test_a_container_changed_in_place_and_written_back_reaches_cpp():
    # Review finding: the flush took "the C++ box holds this very object" for "unchanged",
    # so the new contents of a list/dict written back after an in-place change were lost.
    s = nodemeta.MetadataStore(protected_keys=())
    md = s.create({})
    shape = [1, 2]
    md["shape"] = shape
    assert nodemeta._core._cpp_view(md, "shape")[2] == "[1, 2]"
    shape.append(3)
    md["shape"] = shape
    assert nodemeta._core._cpp_view(md, "shape")[2] == "[1, 2, 3]"
    d = {"k": 1}
    md["d"] = d
    nodemeta._core._cpp_view(md, "d")
    d["k"] = 2
    md.update(d=d)
    assert nodemeta._core._cpp_view(md, "d")[2] == "{'k': 2}"
