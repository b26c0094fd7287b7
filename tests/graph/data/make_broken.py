#!/usr/bin/env python3
"""Writes the broken-input suite: broken/*.json[.gz] plus broken/EXPECTED.tsv (file, then a
substring the one-line error must contain). Each file breaks one rule of the graph schema of
shared/data/graphs/README.md. Run from this folder: python3 make_broken.py"""
import copy, gzip, json, os

def meta(i, extra=None):
    m = {"stack_trace": f'  File "m.py", line {i}, in forward\n', "nn_module_stack": {},
         "tensor_meta": {"shape": [1, 4], "dtype": "torch.float32", "stride": [4, 1],
                         "requires_grad": False, "memory_format": "torch.contiguous_format",
                         "is_quantized": False},
         "val": {"shape": [1, 4], "dtype": "torch.float32"}, "debug_handle": i + 1,
         "type": "torch.Tensor"}
    m.update(extra or {})
    return m

BASE = {"model": "tiny", "source": "make_broken.py", "tracer": "fx", "torch_version": "1.13.0a0",
        "torchvision_version": None, "example_inputs": [{"shape": [1, 4], "dtype": "torch.float32"}],
        "nodes": [
            {"id": 0, "name": "x", "op": "placeholder", "target": "x", "inputs": [], "meta": meta(0)},
            {"id": 1, "name": "relu", "op": "call_function", "target": "torch.relu", "inputs": [0],
             "meta": meta(1)},
            {"id": 2, "name": "output", "op": "output", "target": "output", "inputs": [1],
             "meta": meta(2, {"stack_trace": None, "tensor_meta": None})},
        ]}

cases = []

def emit(name, text_or_bytes, expected):
    data = text_or_bytes.encode() if isinstance(text_or_bytes, str) else text_or_bytes
    with open(os.path.join("broken", name), "wb") as f:
        f.write(data)
    cases.append((name, expected))

def variant(fn):
    g = copy.deepcopy(BASE)
    fn(g)
    return json.dumps(g)

os.makedirs("broken", exist_ok=True)
good = json.dumps(BASE)
gz = gzip.compress(good.encode(), mtime=0)
emit("truncated.json.gz", gz[: len(gz) // 2], "truncated gzip")
emit("corrupt.json.gz", gz[:10] + b"\x00" * 40, "corrupt gzip")
emit("empty.json", "", "invalid JSON")
emit("invalid_json.json", good[: len(good) // 2], "invalid JSON")
emit("trailing_garbage.json", good + " }", "invalid JSON")
emit("not_an_object.json", "[1, 2, 3]", "(top level): expected an object, got an array")
emit("missing_nodes.json", '{"model": "tiny"}', "missing field 'nodes'")
emit("nodes_not_array.json", '{"nodes": {}}', "nodes: expected an array, got an object")
emit("missing_name.json", variant(lambda g: g["nodes"][1].pop("name")), "nodes[1]: missing field 'name'")
emit("missing_meta.json", variant(lambda g: g["nodes"][2].pop("meta")), "missing field 'meta'")
emit("wrong_type_inputs.json", variant(lambda g: g["nodes"][1].update(inputs="0")),
     "nodes[1].inputs (node 'relu'): expected an array, got a string")
emit("wrong_type_input_id.json", variant(lambda g: g["nodes"][1].update(inputs=[0.0])),
     "nodes[1].inputs[0] (node 'relu'): expected an integer node id, got a float")
emit("wrong_type_debug_handle.json", variant(lambda g: g["nodes"][1]["meta"].update(debug_handle="2")),
     "nodes[1].meta.debug_handle (node 'relu'): expected an integer or null, got a string")
emit("wrong_type_stack_trace.json", variant(lambda g: g["nodes"][1]["meta"].update(stack_trace=7)),
     "nodes[1].meta.stack_trace (node 'relu'): expected a string or null")
emit("wrong_type_nn_module_stack.json",
     variant(lambda g: g["nodes"][1]["meta"].update(nn_module_stack={"layer": 3})),
     "nodes[1].meta.nn_module_stack['layer'] (node 'relu'): expected a string")
emit("input_not_earlier.json", variant(lambda g: g["nodes"][1].update(inputs=[2])),
     "nodes[1].inputs[0] (node 'relu'): input id 2 is not an earlier node")
emit("input_self.json", variant(lambda g: g["nodes"][1].update(inputs=[1])),
     "input id 1 is not an earlier node")
emit("input_negative.json", variant(lambda g: g["nodes"][1].update(inputs=[-1])),
     "input id -1 is not an earlier node")
emit("duplicate_name.json", variant(lambda g: g["nodes"][2].update(name="relu")),
     "nodes[2].name: duplicate node name 'relu' (first at nodes[1])")
emit("id_mismatch.json", variant(lambda g: g["nodes"][1].update(id=5)),
     "nodes[1].id (node 'relu'): expected 1")
emit("unknown_op.json", variant(lambda g: g["nodes"][1].update(op="call_everything")),
     "unknown op 'call_everything'")
emit("unexpected_field.json", variant(lambda g: g["nodes"][1].update(kwargs={})),
     "nodes[1].kwargs: unexpected field")
emit("integer_overflow.json", variant(lambda g: g["nodes"][1]["meta"].update(flops=2**64 - 1)),
     "does not fit a 64-bit signed integer")
# torch.fx invariants: exactly one output node, the last (so nothing reads it); the five
# standard keys on every node; the graph attribute "training" a bool or null.
emit("empty_nodes.json", variant(lambda g: g.update(nodes=[])), "nodes: no nodes (a graph has at least its output node")
emit("no_output.json", variant(lambda g: g["nodes"].pop()),
     "nodes[1].op (node 'relu'): the last node is a call_function node, not an output node")
def two_outputs(g):  # x, relu, output, output2
    g["nodes"].append(dict(copy.deepcopy(g["nodes"][2]), id=3, name="output2", inputs=[2]))
emit("two_outputs.json", variant(two_outputs),
     "nodes[2].op (node 'output'): an output node before the last node")
def output_read(g):  # x, out0 (an output), relu reading out0, output
    out0 = dict(copy.deepcopy(g["nodes"][2]), name="out0", inputs=[0])
    g["nodes"].insert(1, out0)
    for i, n in enumerate(g["nodes"]):
        n["id"] = i
    g["nodes"][2]["inputs"] = [1]
    g["nodes"][3]["inputs"] = [2]
emit("output_read.json", variant(output_read),
     "nodes[1].op (node 'out0'): an output node before the last node (a graph has exactly one output node, and it is last)")
emit("missing_standard_key.json", variant(lambda g: g["nodes"][1]["meta"].pop("val")),
     "nodes[1].meta (node 'relu'): missing standard key 'val'")
emit("bad_training.json", variant(lambda g: g.update(training="yes")),
     "training: expected true, false or null")
# Duplicate JSON keys cannot be written with json.dumps: splice them into the text.
dup = good.replace('"debug_handle": 2,', '"debug_handle": 2, "val": {"shape": [1, 8], "dtype": "torch.float32"},', 1)
assert dup != good
emit("duplicate_protected_key.json", dup,
     "nodes[1].meta.val (node 'relu'): protected key 'val' given twice with different values")
dup2 = good.replace('"debug_handle": 2,', '"debug_handle": 2, "type": "builtins.int",', 1)
emit("duplicate_key.json", dup2, "key 'type' given twice with different values")

with open(os.path.join("broken", "EXPECTED.tsv"), "w") as f:
    f.write("# file\tsubstring of the one-line error (written by make_broken.py)\n")
    for name, expected in cases:
        f.write(f"{name}\t{expected}\n")

# A file that is fine: a protected key repeated with the same value is accepted once.
os.makedirs("ok", exist_ok=True)
same = good.replace('"debug_handle": 2,', '"debug_handle": 2, "debug_handle": 2,', 1)
with open(os.path.join("ok", "duplicate_same_value.json"), "w") as f:
    f.write(same)
with open(os.path.join("ok", "tiny.json"), "w") as f:
    f.write(good)
# The schema allows null for each of the five standard keys.
nulls = copy.deepcopy(BASE)
nulls["nodes"][1]["meta"].update(nn_module_stack=None, debug_handle=None, val=None, tensor_meta=None,
                                 stack_trace=None)
with open(os.path.join("ok", "null_standard_keys.json"), "w") as f:
    f.write(json.dumps(nulls))
# Long names and targets (issue 12): `nodemeta inspect` must keep its columns apart. A
# 34-character name from a real U-Net trace, a 200-character name and a 120-character target.
long_names = copy.deepcopy(BASE)
long_names["nodes"][0]["name"] = long_names["nodes"][0]["target"] = "down1_maxpool_conv_1_double_conv_0"
long_names["nodes"][1]["name"] = "n" * 200
long_names["nodes"][1]["target"] = "torch.ops." + "t" * 110
with open(os.path.join("ok", "long_names.json"), "w") as f:
    f.write(json.dumps(long_names))
# Names a terminal shows wider or narrower than their bytes: `nodemeta inspect` pads by
# display columns (CJK characters take two, a combining accent none, é one).
wide = copy.deepcopy(BASE)
wide["nodes"][0]["name"] = "输入层"
wide["nodes"][0]["target"] = "re\u0301sume\u0301"
wide["nodes"][1]["name"] = "café_relu"
with open(os.path.join("ok", "wide_names.json"), "w", encoding="utf-8") as f:
    f.write(json.dumps(wide, ensure_ascii=False))
# Control characters and bidirectional overrides in a model attribute, node names, an op's
# target and a metadata value: the command prints them escaped, never raw.
control = copy.deepcopy(BASE)
control["model"] = "evil\x1b[2J\u202e"
control["nodes"][0]["name"] = "x\ty\u202ez"
control["nodes"][1]["name"] = "line\nbreak"
control["nodes"][1]["target"] = "torch.relu\x1b]0;title\x07"
control["nodes"][1]["meta"]["note"] = "a\x9bb\u2028c"
with open(os.path.join("ok", "control_names.json"), "w", encoding="utf-8") as f:
    f.write(json.dumps(control, ensure_ascii=False))
