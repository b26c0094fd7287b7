"""Python threads and nodemeta's C++ worker threads on one store at once."""
import gc
import threading
import weakref

import pytest

torch = pytest.importorskip("torch")
import torch.fx  # noqa: E402

import nodemeta  # noqa: E402
import nodemeta.fx  # noqa: E402

NODES = 3000


def chain_graph(n=NODES):
    """x -> relu -> relu ... -> output, with tensor metadata the cost pass can read."""
    g = torch.fx.Graph()
    x = g.placeholder("x")
    tm = {"shape": [1, 64], "dtype": "torch.float32"}
    x.meta = {"val": tm, "tensor_meta": tm, "type": torch.Tensor}
    cur = x
    for i in range(n):
        # Unique names: torch 1.13's namespace would probe relu_1, relu_2, ... for each node.
        cur = g.create_node("call_function", torch.relu, (cur,), name=f"relu{i}")
        cur.meta = {"val": tm, "tensor_meta": tm, "debug_handle": i + 2, "type": torch.Tensor}
    out = g.output(cur)
    out.meta = {}
    return g


class Payload:
    released_on = []

    def __del__(self):
        Payload.released_on.append(threading.get_ident())


def test_python_values_released_by_cpp_workers():
    g = chain_graph()
    nodemeta.fx.attach(g)
    Payload.released_on.clear()
    handed_before = nodemeta._core._handed_over()
    refs = []
    for _ in range(4):
        for n in g.nodes:
            p = Payload()
            refs.append(weakref.ref(p))
            n.meta["flops"] = p  # the cost pass overwrites it on oneTBB threads
        del p
        results = nodemeta.fx.run_passes(g, passes=("cost",), threads=2)
        assert results[0]["nodes_touched"] == NODES + 2
    nodemeta.release_retired_values()
    gc.collect()
    assert all(r() is None for r in refs)
    assert len(Payload.released_on) == len(refs)
    # Some were released by a oneTBB worker (a worker collects its retired values once it
    # has retired 128: 3,000 nodes a round on 2 threads), which has no GIL: it handed the
    # references over, and a Python thread dropped them.
    assert nodemeta._core._handed_over() > handed_before
    for n in g.nodes:
        assert not isinstance(n.meta["flops"], Payload)


def test_python_threads_alongside_a_running_pass():
    g = chain_graph(1000)
    store = nodemeta.fx.attach(g)
    nodes = list(g.nodes)
    errors = []
    stop = threading.Event()
    start = threading.Barrier(4)

    def passes():
        try:
            start.wait()
            for _ in range(20):
                res = nodemeta.fx.run_passes(g, threads=2)
                assert res[-1]["problems"] == [], res[-1]["problems"][:3]
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        finally:
            stop.set()

    def writer(tag):
        try:
            start.wait()
            i = 0
            while not stop.is_set():
                md = nodes[i % len(nodes)].meta
                md[f"note_{tag}"] = [tag, i]  # a Python object C++ may release later
                assert md[f"note_{tag}"] == [tag, i]
                with pytest.raises(RuntimeError, match="Could not override node key: val"):
                    md["val"] = None
                md.get("flops")
                "depth" in md
                i += 1
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=passes)] + [threading.Thread(target=writer, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "deadlock: a thread did not finish"
    assert errors == []
    for i, n in enumerate(nodes[1:-1]):
        assert n.meta["debug_handle"] == i + 2 and n.meta["tensor_meta"]["shape"] == [1, 64]
        assert isinstance(n.meta["flops"], int)
    assert store.node_count == len(nodes)


def test_many_python_threads_one_node():
    md = nodemeta.NodeMetadata({"val": 0})
    barrier = threading.Barrier(8)
    wins = []

    def worker(t):
        barrier.wait()
        for i in range(2000):
            md[f"k{i % 16}"] = (t, i)
            if md.set_once(f"once{i % 50}", t):
                wins.append(i % 50)
            assert md.try_set("val", 1) is nodemeta.WriteResult.REJECTED_PROTECTED

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == list(range(50))  # every set_once key won exactly once
    assert md["val"] == 0 and len(md) == 1 + 16 + 50


EXIT_SCRIPT = r"""
import sys, threading, time
sys.path.insert(0, {tests!r})
import nodemeta, nodemeta.fx
from test_threads import chain_graph

class Payload:
    def __del__(self):
        pass

g = chain_graph(20000)
nodemeta.fx.attach(g)
def loop():
    while True:
        for n in g.nodes:
            n.meta["flops"] = Payload()  # the pass overwrites them on oneTBB workers
        nodemeta.fx.run_passes(g, threads=2)
threading.Thread(target=loop, daemon=True).start()
time.sleep(0.7)
print("exiting")
"""


@pytest.mark.parametrize("attempt", range(2))
def test_exit_while_a_daemon_thread_runs_passes(attempt, tmp_path):
    # The interpreter finalizes while a daemon thread is inside run_passes and oneTBB
    # workers release Python values: no abort (a thread that would wait for the GIL then is
    # stopped by a forced unwind).
    import os
    import subprocess
    import sys
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT.format(tests=os.path.dirname(__file__)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "exiting" in done.stdout


class Obj:
    finalized = 0

    def __del__(self):
        Obj.finalized += 1


def test_collector_never_finalizes_live_values_while_passes_run():
    # While run_passes copies values on oneTBB threads (its baseline holds every protected
    # value), the collector must not be shown box counts that change under it.
    import gc
    g = chain_graph(3000)
    store = nodemeta.fx.attach(g)
    nodes = list(g.nodes)
    objs = [Obj() for _ in nodes]
    refs = [weakref.ref(o) for o in objs]
    for n, o in zip(nodes, objs):
        n.meta["payload"] = o
    del objs
    done = threading.Event()

    def passes():
        try:
            for _ in range(10):
                nodemeta.fx.run_passes(g, passes=("verify",), threads=2)
        finally:
            done.set()

    t = threading.Thread(target=passes)
    t.start()
    while not done.is_set():
        gc.collect()
    t.join()
    gc.collect()
    assert Obj.finalized == 0 and all(r() is not None for r in refs)
    assert all(isinstance(n.meta["payload"], Obj) for n in nodes)
    assert store.node_count == len(nodes)


def test_reinit_while_passes_run_is_refused():
    g = chain_graph(2000)
    nodemeta.fx.attach(g)
    nodes = list(g.nodes)
    done = threading.Event()
    refused = []

    def passes():
        try:
            for _ in range(5):
                nodemeta.fx.run_passes(g, threads=2)
        finally:
            done.set()

    t = threading.Thread(target=passes)
    t.start()
    i = 0
    while not done.is_set():
        md = nodes[1 + i % (len(nodes) - 2)].meta
        try:
            md.__init__({"val": None, "tensor_meta": {"shape": [1, 64], "dtype": "torch.float32"}})
        except RuntimeError as e:
            refused.append(str(e))
        i += 1
    t.join()
    assert all("run_passes" in r for r in refused)
