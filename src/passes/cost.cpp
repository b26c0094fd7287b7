// The cost model behind the cost pass. Formulas: docs/passes.md ("Cost model").
#include <algorithm>
#include <array>
#include <cstdint>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nodemeta/passes/passes.h"

namespace nodemeta::passes {
namespace {

struct Tensor {
  std::vector<std::int64_t> shape;
  std::int64_t elem_bytes = 0;
  std::int64_t numel() const {
    return std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>());
  }
  std::int64_t bytes() const { return numel() * elem_bytes; }
};

std::int64_t dtype_bytes(std::string_view dtype) {
  if (dtype == "torch.float32" || dtype == "torch.int32") return 4;
  if (dtype == "torch.float64" || dtype == "torch.int64" || dtype == "torch.complex64") return 8;
  if (dtype == "torch.float16" || dtype == "torch.bfloat16" || dtype == "torch.int16") return 2;
  if (dtype == "torch.bool" || dtype == "torch.uint8" || dtype == "torch.int8") return 1;
  if (dtype == "torch.complex128") return 16;
  return 0;
}

// A {"shape": [...], "dtype": "..."} value as a Tensor.
std::optional<Tensor> as_tensor(const Value& v) {
  const Value* shape = v.find("shape");
  const Value* dtype = v.find("dtype");
  if (!shape || !dtype) return std::nullopt;
  const auto* dims = shape->get_if<Value::List>();
  const auto* dt = dtype->get_if<std::string>();
  if (!dims || !dt) return std::nullopt;
  Tensor t;
  for (const Value& d : *dims) {
    const auto* n = d.get_if<std::int64_t>();
    if (!n) return std::nullopt;
    t.shape.push_back(*n);
  }
  t.elem_bytes = dtype_bytes(*dt);
  if (t.elem_bytes == 0) return std::nullopt;
  return t;
}

std::vector<Tensor> tensors_in(const Value& v) {
  std::vector<Tensor> out;
  if (auto t = as_tensor(v)) {
    out.push_back(std::move(*t));
  } else if (const auto* list = v.get_if<Value::List>()) {
    for (const Value& e : *list) {
      if (auto te = as_tensor(e)) out.push_back(std::move(*te));
    }
  }
  return out;
}

// The tensors a node produces: from tensor_meta (ShapeProp), else val (FakeTensorProp).
std::vector<Tensor> node_tensors(const graph::Node& n) {
  if (auto tm = n.meta.get(keys::tensor_meta)) {
    auto t = tensors_in(*tm);
    if (!t.empty()) return t;
  }
  if (auto v = n.meta.get(keys::val)) return tensors_in(*v);
  return {};
}

std::string last_component(std::string_view s) {
  const auto dot = s.rfind('.');
  return std::string(dot == std::string_view::npos ? s : s.substr(dot + 1));
}

// A short op name: "module:Conv2d", "aten.convolution", "add", "method:mean".
std::string op_key(const graph::Node& n) {
  if (n.op == "call_module") {
    std::string type;
    if (auto stack = n.meta.get(keys::nn_module_stack)) {
      if (const Value* t = stack->find(n.target)) {
        if (const auto* s = t->get_if<std::string>()) type = *s;
      }
    }
    return "module:" + (type.empty() ? n.target : last_component(type));
  }
  if (n.op == "call_method") return "method:" + n.target;
  if (n.op != "call_function") return n.op;
  std::string_view t = n.target;
  if (t.rfind("torch.ops.aten.", 0) == 0) {
    t.remove_prefix(15);
    return "aten." + std::string(t.substr(0, t.find('.')));  // drop the overload
  }
  for (std::string_view prefix : {"_operator.", "torch.nn.functional.", "torch."}) {
    if (t.rfind(prefix, 0) == 0 && t.find('.', prefix.size()) == std::string_view::npos) {
      return std::string(t.substr(prefix.size()));
    }
  }
  if (t == "getattr") return "getattr";
  return std::string(t);
}

bool one_of(std::string_view k, std::initializer_list<std::string_view> names) {
  return std::find(names.begin(), names.end(), k) != names.end();
}

// "aten.relu_" and "relu" both give "relu".
std::string base_name(std::string_view key) {
  for (std::string_view prefix : {"aten.", "module:", "method:"}) {
    if (key.rfind(prefix, 0) == 0) key.remove_prefix(prefix.size());
  }
  std::string s(key);
  if (!s.empty() && s.back() == '_' && s != "_") s.pop_back();  // in-place variant
  return s;
}

}  // namespace

std::int64_t result_bytes(const graph::Node& node) {
  std::int64_t b = 0;
  for (const Tensor& t : node_tensors(node)) b += t.bytes();
  return b;
}

CostEstimate estimate_cost(const graph::Graph& graph, std::size_t index) {
  const graph::Node& n = graph.node(index);
  if (n.op == "placeholder" || n.op == "get_attr" || n.op == "output") {
    return {0, 0, "no computation (" + n.op + ")"};
  }
  const std::string key = op_key(n);
  const std::string base = base_name(key);
  const std::vector<Tensor> out = node_tensors(n);
  std::vector<Tensor> in;  // the first tensor of each input that has one
  for (std::size_t j : n.inputs) {
    auto t = node_tensors(graph.node(j));
    if (!t.empty()) in.push_back(std::move(t.front()));
  }
  auto sum_bytes = [](const std::vector<Tensor>& ts) {
    std::int64_t b = 0;
    for (const Tensor& t : ts) b += t.bytes();
    return b;
  };
  const std::int64_t io_bytes = sum_bytes(in) + sum_bytes(out);
  auto unknown = [&](std::string why) { return CostEstimate{std::nullopt, std::nullopt, "unknown: " + why}; };

  // Views and metadata ops: no arithmetic, no copy.
  if (one_of(base, {"view", "_unsafe_view", "_reshape_alias", "reshape", "permute", "transpose", "t",
                    "expand", "slice", "split", "unsqueeze", "squeeze", "flatten", "getitem",
                    "getattr", "detach", "dim", "size", "Identity", "Flatten", "_assert"})) {
    return {0, 0, "view/metadata op " + key + ": no arithmetic, no copy"};
  }
  if (out.empty()) {
    if (one_of(base, {"eq", "floordiv", "mul", "add", "sub", "truediv"})) {
      return {0, 0, "scalar op " + key + " (no tensor result)"};
    }
    return unknown(key + " has no tensor shape in tensor_meta/val");
  }
  const Tensor& y = out.front();
  const std::int64_t numel = y.numel();

  if (one_of(base, {"Dropout"})) return {0, 0, "Dropout (eval-mode trace): identity"};
  if (one_of(base, {"clone", "contiguous"})) return {0, io_bytes, key + ": copy, 0 flops; bytes = read + write"};
  if (one_of(base, {"empty", "empty_like", "full", "arange", "zeros", "ones"})) {
    return {0, sum_bytes(out), key + ": allocation/fill, 0 flops; bytes = output written"};
  }
  if (one_of(base, {"cat"})) return {0, io_bytes, "cat: 0 flops; bytes = inputs read + output written"};
  if (base == "embedding") {
    return {0, 2 * y.bytes() + (in.size() > 1 ? in[1].bytes() : 0),
            "embedding: gather, 0 flops; bytes = rows read + output written + indices"};
  }
  // Elementwise: one flop per output element.
  if (one_of(base, {"add", "sub", "mul", "div", "truediv", "neg", "pow", "exp", "log", "sqrt", "rsqrt",
                    "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
                    "where", "bernoulli", "ReLU", "ReLU6", "GELU", "SiLU", "Sigmoid", "Tanh",
                    "Hardswish", "Hardsigmoid"})) {
    return {numel, io_bytes, "elementwise " + key + ": flops = numel(out)"};
  }
  if (one_of(base, {"BatchNorm2d", "BatchNorm1d", "native_batch_norm"})) {
    return {2 * numel, io_bytes, "batch norm (inference): flops = 2*numel(out) (folded scale, shift)"};
  }
  if (one_of(base, {"LayerNorm", "native_layer_norm", "layer_norm"})) {
    return {5 * numel, io_bytes, "layer norm: flops = 5*numel(out) (mean, centre, variance, normalise, affine)"};
  }
  if (one_of(base, {"_softmax", "softmax", "Softmax"})) {
    return {5 * numel, io_bytes, "softmax: flops = 5*numel(out) (max, subtract, exp, sum, divide)"};
  }
  if (one_of(base, {"AdaptiveAvgPool2d", "adaptive_avg_pool2d", "mean"})) {
    if (in.empty()) return unknown(key + ": input shape missing");
    return {in.front().numel(), io_bytes, key + ": flops = numel(input) (one add per input element)"};
  }
  if (one_of(base, {"Linear"})) {
    if (in.empty() || in.front().shape.empty()) return unknown("Linear: input shape missing");
    const std::int64_t k = in.front().shape.back();
    return {2 * numel * k, io_bytes,
            "Linear: flops = 2*numel(out)*in_features; bias add and weights not in fx metadata"};
  }
  if (base == "addmm" || base == "mm" || base == "bmm" || base == "matmul") {
    // addmm(bias, a, b); mm(a, b); bmm(a, b): K is a's last dimension.
    const std::size_t a = base == "addmm" ? 1 : 0;
    if (in.size() <= a || in[a].shape.empty()) return unknown(key + ": operand shape missing");
    const std::int64_t k = in[a].shape.back();
    const std::int64_t extra = base == "addmm" ? numel : 0;
    return {2 * numel * k + extra, io_bytes,
            key + ": flops = 2*numel(out)*K" + (base == "addmm" ? " + numel(out) (bias)" : "")};
  }
  if (base == "convolution") {
    // convolution(x, weight[, bias]): weight is [C_out, C_in/groups, k...].
    if (in.size() < 2 || in[1].shape.size() < 3) return unknown("convolution: weight shape missing");
    const auto& w = in[1].shape;
    const std::int64_t per_out = std::accumulate(w.begin() + 1, w.end(), std::int64_t{1}, std::multiplies<>());
    const std::int64_t bias = in.size() >= 3 ? numel : 0;
    return {2 * numel * per_out + bias, io_bytes,
            "convolution: flops = 2*numel(out)*C_in/groups*prod(kernel)" +
                std::string(bias ? " + numel(out) (bias)" : "")};
  }
  if (base == "MultiheadAttention") {
    if (in.empty() || in.front().shape.size() != 3) return unknown("MultiheadAttention: query shape missing");
    const std::int64_t nb = in.front().shape[0], l = in.front().shape[1], e = in.front().shape[2];
    return {8 * nb * l * e * e + 4 * nb * l * l * e, io_bytes,
            "MultiheadAttention (batch_first [N, L, E], self-attention): flops = 8*N*L*E^2 + 4*N*L^2*E"};
  }
  if (one_of(base, {"Conv2d", "Conv1d", "Conv3d"})) {
    return unknown(key + ": kernel size and groups are not in fx call_module metadata");
  }
  if (one_of(base, {"MaxPool2d", "AvgPool2d", "max_pool2d", "avg_pool2d"})) {
    return unknown(key + ": kernel size is not in the node metadata");
  }
  return unknown("no cost formula for " + key);
}

}  // namespace nodemeta::passes
