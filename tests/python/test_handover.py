"""The hand-over of Python references released by threads without the GIL (values.cpp).

A thread without the GIL (a oneTBB worker, or a Python thread inside run_passes or
release_retired_values) never drops a reference itself: it queues it and schedules a pending
call, and a thread holding the GIL drops it. These tests stop such a thread between queuing
the reference and scheduling the call (``_core._pause_next_handover``, a test hook) and make
the other side act in that window: the two races of issue 21 item 9 (docs/python.md,
"Threads and the GIL").
"""
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import nodemeta

_core = nodemeta._core


class Payload:
    pass


def wait_until(predicate, timeout=10.0):
    """Runs bytecode (so the main thread runs pending calls) until predicate() or timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def retire_a_payload():
    """A Payload held only by a retired value of a node: released by the next collection."""
    md = nodemeta.NodeMetadata()
    p = Payload()
    ref = weakref.ref(p)
    md["k"] = p
    _core._cpp_view(md, "k")  # flushed: the C++ node holds the Payload (Python writes are cached)
    del p
    md["k"] = 0
    _core._cpp_view(md, "k")  # flushed: the box holding the Payload is retired, not yet released
    return md, ref


def test_pending_call_clears_its_flag_when_a_drain_took_its_references():
    # A thread without the GIL queues a reference; before it schedules the pending call, a
    # write from Python (a drain point) drops the reference. The call then runs with nothing
    # to do. It must still clear "call scheduled": before the fix it returned early with the
    # flag set, so no later hand-over scheduled a call, and their references waited for the
    # next write from Python or the end of a run_passes.
    md, ref = retire_a_payload()
    other = nodemeta.NodeMetadata()
    handed = _core._handed_over()
    _core._pause_next_handover(0.5)
    t = threading.Thread(target=nodemeta.release_retired_values)
    t.start()
    try:
        assert wait_until(_core._handover_paused), "release_retired_values handed nothing over"
        other["x"] = 1  # drains (today it waits for the paused thread's lock, at most 0.5 s)
    finally:
        _core._resume_handover()
        t.join(10)
    assert not t.is_alive()
    assert _core._handed_over() > handed
    assert wait_until(lambda: ref() is None), "the handed-over reference was never dropped"
    idle = {"pending": 0, "call_scheduled": False}
    state = {}

    def settled():
        state.update(_core._handover_state())
        return {k: state[k] for k in idle} == idle

    assert wait_until(settled, 5.0), f"flag left set after the pending call ran: {state}"


EXIT_SCRIPT = textwrap.dedent("""
    import atexit, threading, time

    def after_nodemeta():  # registered before nodemeta's hook, so it runs after it
        _core._resume_handover()
        t.join(10)
        print("late_calls", _core._handover_state()["late_calls"], flush=True)

    atexit.register(after_nodemeta)

    import nodemeta
    _core = nodemeta._core

    class Payload:
        pass

    md = nodemeta.NodeMetadata()
    md["k"] = Payload()
    _core._cpp_view(md, "k")  # Python writes are cached: flushed into the C++ node here
    md["k"] = 0
    _core._cpp_view(md, "k")  # the box holding the Payload is retired
    _core._pause_next_handover(2.0)
    t = threading.Thread(target=nodemeta.release_retired_values, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not _core._handover_paused():
        assert time.monotonic() < deadline, "nothing handed over"
        time.sleep(0.001)
    print("exiting", flush=True)
""")


def test_no_pending_call_after_the_exit_hook(tmp_path):
    # The interpreter exits while a thread without the GIL has passed its liveness check
    # and not yet called Py_AddPendingCall. nodemeta's atexit hook must wait for it: after
    # the hook, Py_FinalizeEx frees the pending-call lock and the main interpreter, and a
    # Py_AddPendingCall then crashes. Before the fix the hook returned at once and the
    # thread, resumed later, called it anyway (late_calls 1).
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "exiting" in done.stdout
    assert "late_calls 0" in done.stdout, done.stdout + done.stderr[-2000:]
