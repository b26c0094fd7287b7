#!/usr/bin/python3
"""How many call nodes the cost pass knows on every torchvision classification model traced
with torch.fx.symbolic_trace, from nodemeta.fx.run_passes and from the saved file alike.

For each model of torchvision.models.list_models(module=torchvision.models) (random
weights, eval mode, torch.manual_seed(0)): symbolic_trace, ShapeProp on one
1x3xSxS float32 input (S = 299 for inception_v3, else 224), save() to a temporary file, then
run_passes(gm, ["cost"]) and `nodemeta run FILE --passes cost --output OUT`, and compare
every node's flops, bytes, cost_rule and flops_lower_bound. Prints one row per model: call
nodes (call_function, call_method, call_module), how many have a known cost, the share,
the most frequent unknown reasons, and whether run_passes and the saved file agree; then,
with --cli, the saved file through `--passes cost,fuse,propagate,verify`: the chains fuse
made (found through the file's modules table: torch 1.13 records no nn_module_stack),
whether the critical path is the one `cost,propagate` gives, how many fused nodes have an
unknown cost, and whether verify is clean. Models that symbolic_trace (or ShapeProp)
refuses are listed with the error.

--unpack-fix replaces torch 1.13's Proxy.__iter__ while tracing with one that finds the
UNPACKING instruction by byte offset (on Python 3.11 its `f_lasti // 2` index misses it, so
`n, c, h, w = x.shape` raises TraceError), as the shared graphs' generator does; the models
that then trace (vit, shufflenet, maxvit) are the ones Python <= 3.10 traces unpatched.

    PYTHONPATH=build/debug/python /usr/bin/python3 benchmarks/fx_cost_coverage.py \\
        --cli build/debug/tools/nodemeta/nodemeta [--models resnet18,densenet121] [--markdown]

Exit status 0 when every traced model has >= --goal (default 95) percent known and agrees
(and, with --cli, fuse keeps the critical path and verify is clean), 1 otherwise.
"""
import argparse
import collections
import dis
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import torch
import torch.fx
import torchvision
from torch.fx.passes.shape_prop import ShapeProp

import nodemeta.fx

COST_KEYS = ("flops", "bytes", "cost_rule", "flops_lower_bound")


def input_size(name):
    return 299 if name == "inception_v3" else 224


def _iter_by_offset(self):
    # torch 1.13's Proxy.__iter__, the instruction looked up by its byte offset.
    caller = inspect.currentframe().f_back
    inst = next((i for i in dis.get_instructions(caller.f_code) if i.offset == caller.f_lasti), None)
    if inst is not None and inst.opname == "UNPACK_SEQUENCE":
        return (self[i] for i in range(inst.argval))
    return self.tracer.iter(self)


def traced(name):
    """(GraphModule after ShapeProp, None) or (None, why it could not be traced)."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name).eval()
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # torch 1.13 on Python 3.11: Proxy.__iter__ (n, c, h, w = x.shape)
        return None, f"symbolic_trace: {type(e).__name__}: {str(e).splitlines()[0].split('. ')[0][:90]}"
    s = input_size(name)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.randn(1, 3, s, s))
    except Exception as e:
        return None, f"ShapeProp: {type(e).__name__}: {str(e).splitlines()[0][:90]}"
    return gm, None


def reason_of(rule):
    """An unknown cost_rule without the node-specific parts (module paths, shapes)."""
    r = rule.removeprefix("unknown: ")
    r = re.sub(r"module:[\w.]+ \(no type", "module:<path> (no type", r)
    r = re.sub(r"\[[0-9, ]*\]", "[..]", r)
    return r[:100]


def cost_results(nodes):
    return {name: {k: meta.get(k) for k in COST_KEYS} for name, meta in nodes}


def cover(name, cli, workdir):
    gm, why = traced(name)
    if gm is None:
        return {"model": name, "error": why}
    path = os.path.join(workdir, f"{name}.json")
    out = os.path.join(workdir, f"{name}.after.json")
    nodemeta.fx.save(gm, path, model=name)
    t0 = time.perf_counter()
    nodemeta.fx.run_passes(gm, passes=["cost"])
    seconds = time.perf_counter() - t0
    calls = [n for n in gm.graph.nodes if n.op.startswith("call_")]
    unknown = [n for n in calls if n.meta["flops"] == "unknown"]
    reasons = collections.Counter(reason_of(n.meta["cost_rule"]) for n in unknown)
    agree = None
    if cli:
        done = subprocess.run([cli, "run", path, "--passes", "cost", "--threads", "2", "--output", out],
                              capture_output=True, text=True)
        if done.returncode != 0:
            agree = f"nodemeta run failed: {done.stderr.strip()[:80]}"
        else:
            with open(out, encoding="utf-8") as f:
                saved = cost_results((n["name"], n["meta"]) for n in json.load(f)["nodes"])
            ours = cost_results((n.name, n.meta) for n in gm.graph.nodes)
            agree = saved == ours
        fuse = fuse_check(cli, path, workdir)
        for p in (path, out):
            if os.path.exists(p):
                os.remove(p)
    else:
        fuse = None
    return {"model": name, "calls": len(calls), "known": len(calls) - len(unknown),
            "reasons": reasons.most_common(3), "agree": agree, "seconds": seconds, "fuse": fuse}


def fuse_check(cli, path, workdir):
    """The saved file through `cost,fuse,propagate,verify` against `cost,propagate`: fuse's
    summary, whether the critical path (FLOPs, complete) is the same, how many fused nodes
    have an unknown cost, and whether verify is clean; or a string saying what failed."""
    results = {}
    for passes in ("cost,propagate", "cost,fuse,propagate,verify"):
        out, stats = os.path.join(workdir, "fuse.after.json"), os.path.join(workdir, "fuse.stats.json")
        done = subprocess.run([cli, "run", path, "--passes", passes, "--threads", "2", "--output", out,
                               "--json", stats], capture_output=True, text=True)
        if done.returncode != 0:
            return f"nodemeta run --passes {passes} failed: {done.stderr.strip()[:80]}"
        with open(out, encoding="utf-8") as f:
            nodes = json.load(f)["nodes"]
        with open(stats, encoding="utf-8") as f:
            results[passes] = (nodes, {p["name"]: p for p in json.load(f)["passes"]})
        os.remove(out)
        os.remove(stats)
    plain, (fused, stats) = results["cost,propagate"][0], results["cost,fuse,propagate,verify"]
    path_of = lambda ns: (ns[-1]["meta"].get("critical_path_flops"), ns[-1]["meta"].get("critical_path_complete"))  # noqa: E731
    made = [n for n in fused if n["target"].startswith("nodemeta.fused.")]
    return {"summary": stats["fuse"]["summary"], "same_path": path_of(fused) == path_of(plain),
            "unknown_fused": sum(1 for n in made if n["meta"].get("flops") == "unknown"),
            "clean": not stats["verify"]["problems"]}


def row(r, markdown):
    if "error" in r:
        cells = [r["model"], "", "", "", f"not traced: {r['error']}", "", ""]
    else:
        pct = 100.0 * r["known"] / r["calls"] if r["calls"] else 100.0
        reasons = "; ".join(f"{n}x {t}" for t, n in r["reasons"]) or "-"
        agree = {True: "yes", False: "NO", None: "not checked"}.get(r["agree"], r["agree"])
        f = r.get("fuse")
        if f is None:
            fuse = "not checked"
        elif isinstance(f, str):
            fuse = f
        else:
            chains = f["summary"].replace("no fusable chains", "0").replace(" chains fused", "").replace(
                " chain fused", "").replace(" nodes replaced", "")
            fuse = (chains + ("" if f["same_path"] else "; critical path CHANGED") +
                    (f"; {f['unknown_fused']} fused unknown" if f["unknown_fused"] else "") +
                    ("" if f["clean"] else "; verify NOT clean"))
        cells = [r["model"], str(r["calls"]), str(r["known"]), f"{pct:.1f}", reasons, agree, fuse]
    if markdown:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    return "  ".join(cells)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cli", help="the nodemeta command (for the saved-file comparison)")
    ap.add_argument("--models", help="comma-separated model names (default: every classification model)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--unpack-fix", action="store_true",
                    help="trace with Proxy.__iter__ fixed for Python 3.11 (see above)")
    ap.add_argument("--goal", type=float, default=95.0, help="percent known every traced model must reach")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.unpack_fix:
        torch.fx.proxy.Proxy.__iter__ = _iter_by_offset
    names = args.models.split(",") if args.models else sorted(torchvision.models.list_models(module=torchvision.models))
    if args.markdown:
        print("| model | call nodes | known | % | top unknown reasons | run_passes = saved file | fuse: chains (nodes replaced) |")
        print("|---|---:|---:|---:|---|---|---|")
    ok = True
    with tempfile.TemporaryDirectory() as workdir:
        for name in names:
            r = cover(name, args.cli, workdir)
            print(row(r, args.markdown), flush=True)
            if "error" not in r:
                ok &= r["known"] >= args.goal / 100.0 * r["calls"] and r["agree"] in (True, None)
                f = r.get("fuse")
                ok &= f is None or (isinstance(f, dict) and f["same_path"] and f["clean"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
