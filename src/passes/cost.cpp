// The cost model behind the cost pass. Formulas and what each operator family calls unknown:
// docs/passes.md ("cost"). benchmarks/python_passes.py is a line-by-line port of this file:
// change both together (its --check mode compares them on every shared graph).
//
// The model never guesses: an operand without usable metadata, a shape that does not fit the
// operator, a count past int64, or a fact the graph does not record (the training mode, an
// attention layout) makes the node unknown, with the reason in cost_rule. Where part of the
// count is certain, flops_lower_bound keeps it.
#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nodemeta/passes/passes.h"
#include "internal.h"

namespace nodemeta::passes {
namespace {

using Count = std::optional<std::int64_t>;  // nullopt: past int64

// Non-negative counts that report overflow instead of wrapping. A product with a zero factor
// is 0, whatever the other factors (so every partial result is at most the final one, and an
// overflow here means the exact count is past int64).
Count product(std::initializer_list<std::int64_t> factors) {
  for (std::int64_t f : factors) {
    if (f == 0) return 0;
  }
  std::int64_t p = 1;
  for (std::int64_t f : factors) {
    if (__builtin_mul_overflow(p, f, &p)) return std::nullopt;
  }
  return p;
}

Count sum(std::initializer_list<Count> terms) {
  std::int64_t s = 0;
  for (const Count& t : terms) {
    if (!t || __builtin_add_overflow(s, *t, &s)) return std::nullopt;
  }
  return s;
}

struct Tensor {
  std::vector<std::int64_t> shape;
  std::int64_t numel = 0;  // fits int64 (checked)
  std::int64_t bytes = 0;  // fits int64 (checked)
  std::int64_t dim(std::size_t k) const { return shape[k]; }
  std::size_t rank() const { return shape.size(); }
};

std::string shape_text(const Value& shape) {
  std::string s = "[";
  if (const auto* dims = shape.get_if<Value::List>()) {
    for (std::size_t i = 0; i < dims->size(); ++i) {
      if (i) s += ", ";
      const auto* d = (*dims)[i].get_if<std::int64_t>();
      s += d ? std::to_string(*d) : "?";
    }
  }
  return s + "]";
}

// A value is a tensor description if it is a dict with "shape" and "dtype". Returns false
// with `why` if it is one the model cannot count (malformed, negative dimension, unknown
// dtype, size past int64).
bool parse_tensor(const Value& v, Tensor& t, std::string& why) {
  const Value* shape = v.find("shape");
  const Value* dtype = v.find("dtype");
  const auto* dims = shape->get_if<Value::List>();
  const auto* dt = dtype->get_if<std::string>();
  if (!dims || !dt) {
    why = "a tensor whose shape is not a list or whose dtype is not a string";
    return false;
  }
  for (const Value& d : *dims) {
    const auto* n = d.get_if<std::int64_t>();
    if (!n) {
      why = "a tensor whose shape holds a non-integer";
      return false;
    }
    if (*n < 0) {
      why = "a tensor of shape " + shape_text(*shape) + " (negative dimension)";
      return false;
    }
    t.shape.push_back(*n);
  }
  const std::int64_t elem = detail::dtype_bytes(*dt);
  if (elem == 0) {
    why = "a tensor of dtype " + *dt + ", whose element size the model does not know";
    return false;
  }
  Count numel = 1;  // 0 with a zero dimension, whatever the others
  if (std::find(t.shape.begin(), t.shape.end(), 0) != t.shape.end()) {
    numel = 0;
  } else {
    for (std::int64_t d : t.shape) numel = numel ? product({*numel, d}) : numel;
  }
  const Count bytes = numel ? product({*numel, elem}) : std::nullopt;
  if (!bytes) {
    why = "a tensor of shape " + shape_text(*shape) + " whose size does not fit int64";
    return false;
  }
  t.numel = *numel;
  t.bytes = *bytes;
  return true;
}

bool is_tensor_value(const Value& v) { return v.find("shape") != nullptr && v.find("dtype") != nullptr; }

// Appends the tensors in `v` (a tensor, or lists holding tensors at any depth: an LSTM's
// (out, (h, c))) to `out`. Other entries are skipped. False, with `why`, on a tensor the
// model cannot count.
bool collect_tensors(const Value& v, std::vector<Tensor>& out, std::string& why) {
  if (v.kind() == Value::Kind::kDict && is_tensor_value(v)) {
    Tensor t;
    if (!parse_tensor(v, t, why)) return false;
    out.push_back(std::move(t));
    return true;
  }
  if (const auto* list = v.get_if<Value::List>()) {
    for (const Value& e : *list) {
      if (!collect_tensors(e, out, why)) return false;
    }
  }
  return true;
}

bool scalar_leaves(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kNone:
    case Value::Kind::kBool:
    case Value::Kind::kInt:
    case Value::Kind::kDouble:
    case Value::Kind::kString:
      return true;
    case Value::Kind::kList: {
      const auto& l = v.as<Value::List>();
      return std::all_of(l.begin(), l.end(), scalar_leaves);
    }
    default:
      return false;
  }
}

const Key& type_key() {
  static const Key k{"type"};
  return k;
}

bool one_of(std::string_view k, std::span<const std::string_view> names) {
  return std::find(names.begin(), names.end(), k) != names.end();
}
bool one_of(std::string_view k, std::initializer_list<std::string_view> names) {
  return one_of(k, std::span<const std::string_view>(names.begin(), names.size()));
}

// What a node produces, as the cost model sees it.
struct Result {
  enum class Kind { kTensors, kNonTensor, kUnknown };
  Kind kind = Kind::kUnknown;
  std::vector<Tensor> tensors;  // kTensors: every tensor, nested tuples flattened, in order
  std::int64_t bytes = 0;       // kTensors: their bytes together (fits int64)
  std::string why;              // kUnknown: what is missing
};

// From tensor_meta (ShapeProp), else val (FakeTensorProp). Without a tensor in either, the
// result is a non-tensor only where the metadata says so: a scalar `type` (builtins.int,
// torch.Size, ...), or a val of plain scalars; anything else (a torch.Tensor whose shapes
// are null) is unknown.
Result node_result(const graph::Node& n) {
  Result r;
  for (const Key& k : {keys::tensor_meta, keys::val}) {
    const std::optional<Value> v = n.meta.get(k);
    if (!v) continue;
    std::string why;
    if (!collect_tensors(*v, r.tensors, why)) {
      r.why = "has " + std::string(k.name()) + " holding " + why;
      r.tensors.clear();
      return r;
    }
    if (r.tensors.empty()) continue;
    Count bytes = 0;
    for (const Tensor& t : r.tensors) bytes = sum({bytes, t.bytes});
    if (!bytes) {
      r.why = "has tensors whose bytes together do not fit int64";
      r.tensors.clear();
      return r;
    }
    r.kind = Result::Kind::kTensors;
    r.bytes = *bytes;
    return r;
  }
  const std::optional<Value> type = n.meta.get(type_key());
  const std::optional<Value> val = n.meta.get(keys::val);
  const bool plain_val = val && !val->is_none() && scalar_leaves(*val);
  bool non_tensor = plain_val;
  std::string type_name;
  if (type && type->kind() == Value::Kind::kString) {
    type_name = type->as<std::string>();
    non_tensor = one_of(type_name, {"builtins.int", "builtins.float", "builtins.bool", "builtins.complex",
                                    "builtins.str", "builtins.NoneType", "torch.Size", "torch.dtype",
                                    "torch.device", "torch.layout", "torch.memory_format"}) ||
                 (one_of(type_name, {"builtins.tuple", "builtins.list"}) && plain_val);
  }
  if (non_tensor) {
    r.kind = Result::Kind::kNonTensor;
    return r;
  }
  r.why = "has no tensor shape in tensor_meta/val" + (type_name.empty() ? "" : " (type " + type_name + ")");
  return r;
}

std::string last_component(std::string_view s) {
  const auto dot = s.rfind('.');
  return std::string(dot == std::string_view::npos ? s : s.substr(dot + 1));
}

// A short op name: "module:Conv2d", "aten.convolution", "add", "method:mean". Module
// formulas are for torch.nn's own classes only: another module's key is its qualified type
// ("module:__main__.Conv2d", "module:torch.ao.nn.quantized.modules.conv.Conv2d"), which
// no formula matches.
// Where nn_module_stack names no type (torch 1.13's symbolic_trace records no stack), the
// graph's "modules" entry for the target does.
std::string op_key(const graph::Node& n, const Value* module) {
  if (n.op == "call_module") {
    std::string type = detail::module_type(n);
    if (type.empty() && module) {
      const Value* t = module->find("type");
      if (const auto* s = t ? t->get_if<std::string>() : nullptr) type = *s;
    }
    if (type.empty()) return "module:" + n.target + " (no type in nn_module_stack or the graph's modules table)";
    if (type.rfind("torch.nn.modules.", 0) == 0) return "module:" + last_component(type);
    return "module:" + type;
  }
  if (n.op == "call_method") return "method:" + n.target;
  if (n.op != "call_function") return n.op;
  std::string_view t = n.target;
  if (t.rfind("torch.ops.aten.", 0) == 0) {
    t.remove_prefix(15);
    return "aten." + std::string(t.substr(0, t.find('.')));  // drop the overload
  }
  for (std::string_view prefix : {"_operator.", "torch.nn.functional.", "torch._C._nn.", "torch.functional.", "torch."}) {
    if (t.rfind(prefix, 0) == 0 && t.find('.', prefix.size()) == std::string_view::npos) {
      return std::string(t.substr(prefix.size()));
    }
  }
  return std::string(t);
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

// The innermost module on the node's nn_module_stack (the module whose code made it), or "".
std::string innermost_module(const graph::Node& n) {
  const std::optional<Value> stack = n.meta.get(keys::nn_module_stack);
  const auto* d = stack ? stack->get_if<Value::Dict>() : nullptr;
  if (!d || d->empty()) return {};
  const auto* s = d->back().second.get_if<std::string>();
  return s ? *s : std::string();
}

}  // namespace

std::optional<bool> training_mode(const graph::Graph& graph) {
  for (const auto& [name, value] : graph.attrs()) {
    if (name == graph_attrs::kTraining) {
      if (const auto* b = value.get_if<bool>()) return *b;
      return std::nullopt;
    }
  }
  return std::nullopt;
}

std::optional<std::int64_t> result_bytes(const graph::Node& node) {
  const Result r = node_result(node);
  if (r.kind == Result::Kind::kUnknown) return std::nullopt;
  return r.bytes;
}


namespace {

// The estimate of one node: what the formulas below share.
class Estimator {
 public:
  Estimator(const graph::Graph& graph, const graph::Node& n, const Value* module, const Value* call,
            const detail::EntryIndex* modules)
      : Estimator(graph, n, module, call, modules, op_key(n, module)) {}

  // `key`: the op the node is costed as (a fused node's part: "module:Conv2d"), `path` the
  // module path messages name (a fused node's part: the module it replaced).
  Estimator(const graph::Graph& graph, const graph::Node& n, const Value* module, const Value* call,
            const detail::EntryIndex* modules, std::string key,
            std::optional<std::string_view> path = std::nullopt)
      : graph_(graph),
        n_(n),
        module_(module),
        call_(call),
        modules_(modules),
        key_(std::move(key)),
        base_(base_name(key_)),
        module_path_(path ? *path : std::string_view(n.target)),
        training_(training_mode(graph)) {}

  CostEstimate run() {
    if (one_of(n_.op, detail::kNoComputation)) {
      return {0, 0, "no computation (" + n_.op + ")", std::nullopt};
    }
    // Views and metadata ops: no arithmetic, no copy.
    if (one_of(base_, detail::kViewOps)) {
      return {0, 0, "view/metadata op " + key_ + ": no arithmetic, no copy", std::nullopt};
    }
    out_ = node_result(n_);
    if (out_.kind == Result::Kind::kNonTensor) {
      if (one_of(base_, detail::kScalarOps)) {
        return {0, 0, "scalar op " + key_ + " (non-tensor result)", std::nullopt};
      }
      return unknown(key_ + " has a non-tensor result and no cost formula");
    }
    if (out_.kind == Result::Kind::kUnknown) return unknown(key_ + ": the result " + out_.why);
    // Operands by position: inputs[k] is the k-th distinct node the op reads (torch.fx's
    // all_input_nodes), so each position a formula reads must be known.
    // A fused node goes on without one (fused(): its parts that need no operand are still
    // counted, as its members were, so fusing never drops them from the critical path).
    const bool fused_node = key_.rfind("nodemeta.fused.", 0) == 0;
    in_.reserve(n_.inputs.size());
    for (std::size_t k = 0; k < n_.inputs.size(); ++k) {
      in_.push_back(node_result(graph_.node(n_.inputs[k])));
      if (in_.back().kind == Result::Kind::kUnknown) {
        const std::string why = key_ + ": operand " + std::to_string(k) + " " + in_.back().why;
        if (!fused_node) return unknown(why);
        if (operand_why_.empty()) operand_why_ = why;
      }
    }
    y_ = &out_.tensors.front();
    numel_ = y_->numel;
    io_bytes_ = out_.bytes;
    for (const Result& r : in_) {
      io_bytes_ = r.kind == Result::Kind::kUnknown ? Count() : sum({io_bytes_, r.bytes});
    }
    return formulas();
  }

 private:
  CostEstimate unknown(const std::string& why, Count lower_bound = std::nullopt) const {
    CostEstimate c{std::nullopt, std::nullopt, "unknown: " + why, std::nullopt};
    if (lower_bound && *lower_bound > 0) c.flops_lower_bound = lower_bound;
    return c;
  }
  // A formula's result: a count past int64 is unknown, never a wrapped number.
  CostEstimate known(Count flops, Count bytes, const std::string& rule) const {
    if (!flops || !bytes) return unknown(key_ + ": the count does not fit int64 (" + rule + ")");
    return {flops, bytes, rule, std::nullopt};
  }
  // The operand at position k if it is one tensor; else nullptr, and why_ says why.
  const Tensor* operand(std::size_t k) {
    if (k >= in_.size()) {
      why_ = key_ + ": no operand " + std::to_string(k) + " (the inputs list each node once)";
      return nullptr;
    }
    if (in_[k].kind != Result::Kind::kTensors || in_[k].tensors.size() != 1) {
      why_ = key_ + ": operand " + std::to_string(k) + " is not one tensor";
      return nullptr;
    }
    return &in_[k].tensors.front();
  }
  // ---- The call_module node's "modules" entry (module_ is nullptr without one) -----------

  // An attribute of the module ("kernel_size"), or nullptr.
  const Value* attribute(std::string_view name) const {
    const Value* a = module_ ? module_->find("attributes") : nullptr;
    return a ? a->find(name) : nullptr;
  }
  // A parameter of the module as the entry records it: kTensor (t is its shape), kNone (the
  // module has none: bias=False), kMissing (not recorded or unusable; why_ says which).
  enum class Param { kTensor, kNone, kMissing };
  Param parameter(std::string_view name, Tensor& t) {
    const Value* ps = module_ ? module_->find("parameters") : nullptr;
    const Value* p = ps ? ps->find(name) : nullptr;
    if (p && p->is_none()) return Param::kNone;
    if (!p || p->kind() != Value::Kind::kDict || !is_tensor_value(*p)) {
      why_ = key_ + ": the graph's modules table records no " + std::string(name) + " shape for " + std::string(module_path_);
      return Param::kMissing;
    }
    std::string why;
    if (!parse_tensor(*p, t, why)) {
      why_ = key_ + ": the modules table's " + std::string(name) + " is " + why;
      return Param::kMissing;
    }
    return Param::kTensor;
  }
  // The module's weight and optional bias: false (why_ set) unless the weight is a tensor
  // and the bias a tensor or None.
  bool weight_and_bias(Tensor& w, std::optional<Tensor>& bias) {
    if (parameter("weight", w) != Param::kTensor) {
      if (why_.empty()) why_ = key_ + ": the module has no weight";
      return false;
    }
    Tensor b;
    switch (parameter("bias", b)) {
      case Param::kTensor: bias = std::move(b); return true;
      case Param::kNone: return true;
      case Param::kMissing: return false;
    }
    return false;
  }
  // ---- The call_function / call_method node's "calls" entry (call_ is nullptr without one) --

  // The call's argument at position `pos`, else its keyword `name`, or nullptr.
  const Value* argument(std::size_t pos, std::string_view name) const {
    if (!call_) return nullptr;
    const Value* args = call_->find("args");
    if (const auto* l = args ? args->get_if<Value::List>() : nullptr; l && pos < l->size()) return &(*l)[pos];
    const Value* kwargs = call_->find("kwargs");
    return kwargs ? kwargs->find(name) : nullptr;
  }
  // The node a node argument ({"node": name}) names, or nullptr (absent, None, not a node).
  const graph::Node* node_argument(std::size_t pos, std::string_view name) const {
    return node_ref(argument(pos, name));
  }
  const graph::Node* node_ref(const Value* a) const {
    const Value* ref = a && a->kind() == Value::Kind::kDict ? a->find("node") : nullptr;
    const auto* s = ref ? ref->get_if<std::string>() : nullptr;
    const std::optional<std::size_t> i = s ? graph_.find(*s) : std::nullopt;
    return i ? &graph_.node(*i) : nullptr;
  }
  // A list of `n` integers >= 0, or nullopt.
  static std::optional<std::vector<std::int64_t>> ints(const Value* v, std::size_t n) {
    const auto* l = v ? v->get_if<Value::List>() : nullptr;
    if (!l || l->size() != n) return std::nullopt;
    std::vector<std::int64_t> out;
    for (const Value& e : *l) {
      const auto* i = e.get_if<std::int64_t>();
      if (!i || *i < 0) return std::nullopt;
      out.push_back(*i);
    }
    return out;
  }
  // A number argument as a double (an int or a float), or nullopt.
  static std::optional<double> number(const Value* v) {
    if (const auto* i = v ? v->get_if<std::int64_t>() : nullptr) return static_cast<double>(*i);
    if (const auto* d = v ? v->get_if<double>() : nullptr) return *d;
    return std::nullopt;
  }

  // "(weight shape from the graph's modules table)" and the like share this.
  static constexpr std::string_view kFromTable = "; weight shape from the graph's modules table";

  std::string mode_unknown() const {
    return "the graph does not say whether it was traced in training mode (graph attribute 'training')";
  }

  CostEstimate formulas() {
    if (key_.rfind("nodemeta.fused.", 0) == 0) return fused(key_.substr(15));
    if (one_of(base_, detail::kDropout) && call_) {  // stochastic_depth(input, p, mode, training)
      const Value* t = argument(3, "training");
      const std::optional<double> p = number(argument(1, "p"));
      if (const auto* b = t ? t->get_if<bool>() : nullptr; b && p) {
        if (!*b || *p == 0.0) return {0, 0, key_ + " (training=False or p=0 in the call): identity", std::nullopt};
        return known(numel_, io_bytes_, key_ + " (training=True in the call): flops = numel(out) (mask and scale)");
      }
    }
    if (one_of(base_, detail::kDropout)) {
      if (!training_) return unknown(key_ + ": identity in eval mode, elementwise in training mode; " + mode_unknown());
      if (!*training_) return {0, 0, "Dropout (eval mode): identity", std::nullopt};
      return known(numel_, io_bytes_, "Dropout (training mode): flops = numel(out) (mask and scale)");
    }
    if (one_of(base_, detail::kCopies)) return known(0, io_bytes_, key_ + ": copy, 0 flops; bytes = read + write");
    if (one_of(base_, detail::kAllocations)) {
      return known(0, out_.bytes, key_ + ": allocation/fill, 0 flops; bytes = output written");
    }
    if (one_of(base_, detail::kConcatenation)) return known(0, io_bytes_, "cat: 0 flops; bytes = inputs read + output written");
    if (one_of(base_, detail::kEmbedding) && n_.op == "call_module") return embedding_module();
    if (one_of(base_, detail::kEmbedding)) {  // embedding(weight, indices)
      const Tensor* indices = operand(0) ? operand(1) : nullptr;
      if (!indices) return unknown(why_);
      return known(0, sum({product({2, y_->bytes}), indices->bytes}),
                   "embedding: gather, 0 flops; bytes = rows read + output written + indices");
    }
    // Elementwise: one flop per output element.
    if (one_of(base_, detail::kElementwise)) {
      return known(numel_, io_bytes_, "elementwise " + key_ + ": flops = numel(out)");
    }
    if (one_of(base_, detail::kBatchNorm)) return batch_norm();
    if (one_of(base_, detail::kLayerNorm)) {
      return known(product({5, numel_}), io_bytes_,
                   "layer norm: flops = 5*numel(out) (mean, centre, variance, normalise, affine)");
    }
    if (one_of(base_, detail::kGroupNorm)) {
      return known(product({5, numel_}), io_bytes_,
                   "group/instance norm: flops = 5*numel(out) (mean, centre, variance, normalise, affine)");
    }
    if (one_of(base_, detail::kSoftmax)) {
      return known(product({5, numel_}), io_bytes_, "softmax: flops = 5*numel(out) (max, subtract, exp, sum, divide)");
    }
    if (one_of(base_, detail::kMean)) {
      const Tensor* x = operand(0);
      if (!x) return unknown(why_);
      return known(x->numel, io_bytes_, key_ + ": flops = numel(input) (one add per input element)");
    }
    if (one_of(base_, detail::kAdaptiveMaxPool)) {
      const Tensor* x = operand(0);
      if (!x) return unknown(why_);
      return known(x->numel, io_bytes_, key_ + ": flops = numel(input) (one compare per input element)");
    }
    if (one_of(base_, detail::kLinearLayer) && module_) return linear_module();
    if (one_of(base_, detail::kLinearLayer)) {
      const Count flops = linear();
      if (!flops_ok_) return unknown(why_);
      return known(flops, io_bytes_, "Linear: flops = 2*numel(out)*in_features; bias add and weights not in fx metadata");
    }
    if (one_of(base_, detail::kMatrixProduct) || one_of(base_, detail::kMatrixProductWithBias)) {
      return matrix_product();
    }
    if (one_of(base_, detail::kEinsum)) return einsum();
    if (one_of(base_, detail::kConvolution)) return convolution();
    if (one_of(base_, detail::kAttention)) return attention();
    if (one_of(base_, detail::kConvModules)) {
      if (module_) return conv_module();
      return unknown(key_ + ": kernel size and groups are not in fx call_module metadata");
    }
    if (one_of(base_, detail::kPooling)) {
      if (module_ && n_.op == "call_module") return pool(attribute("kernel_size"), "modules");
      if (call_ && n_.op != "call_module") return pool(argument(1, "kernel_size"), "calls");
      return unknown(key_ + ": kernel size is not in the node metadata");
    }
    if (one_of(base_, detail::kWindowAttention)) return window_attention();
    return unknown("no cost formula for " + key_);
  }

  // A Conv*d / ConvTranspose*d module, its weight's shape from the modules table:
  //   forward:    weight [C_out, C_in/g, k...], flops = 2*numel(out)*prod(weight[1:])
  //   transposed: weight [C_in, C_out/g, k...], flops = 2*numel(in)*prod(weight[1:])
  // + numel(out) with a bias; bytes = input + output + weight (+ bias). The input may be
  // unbatched ([C, spatial...]).
  CostEstimate conv_module() {
    Tensor w;
    std::optional<Tensor> bias;
    if (!weight_and_bias(w, bias)) return unknown(why_);
    if (in_.size() != 1) return unknown(key_ + ": expects the input as its only operand");
    const Tensor* x = operand(0);
    if (!x) return unknown(why_);
    const Tensor& y = *y_;
    const std::size_t r = w.rank();
    if (r < 3 || x->rank() != y.rank() || (x->rank() != r && x->rank() != r - 1)) {
      return unknown(key_ + ": input, weight and output are not [N, C, spatial...] (or [C, spatial...]) tensors of the weight's rank");
    }
    const std::size_t c = x->rank() == r ? 1 : 0;  // the channel dimension
    const bool transposed = base_.rfind("ConvTranspose", 0) == 0;
    const std::int64_t cin = x->dim(c), cout = y.dim(c), w0 = w.dim(0), w1 = w.dim(1);
    const Value* g_attr = attribute("groups");
    const std::int64_t* groups = g_attr ? g_attr->get_if<std::int64_t>() : nullptr;
    bool fits = (c == 0 || x->dim(0) == y.dim(0)) && w1 > 0;
    const Count grouped = groups ? product({*groups, w1}) : Count();  // groups * w1, unless past int64
    if (!transposed) {  // C_out = w0 and C_in = groups * w1
      fits = fits && cout == w0 && cin % w1 == 0 && (!groups || grouped == cin);
    } else {  // C_in = w0 and C_out = groups * w1
      fits = fits && cin == w0 && cout % w1 == 0 && (!groups || grouped == cout);
    }
    if (!fits) return unknown(key_ + ": the input, output and weight shapes do not fit the module");
    Count per = 1;  // prod(weight[1:])
    for (std::size_t d = 1; d < r; ++d) per = per ? product({*per, w.dim(d)}) : per;
    if (!per) return unknown(key_ + ": the count does not fit int64");
    const Count flops =
        sum({product({2, transposed ? x->numel : numel_, *per}), bias ? Count(numel_) : Count(0)});
    const Count bytes = sum({io_bytes_, w.bytes, bias ? Count(bias->bytes) : Count(0)});
    const std::string bias_rule = bias ? " + numel(out) (bias)" : "";
    const std::string rule = transposed ? key_ + ": flops = 2*numel(in)*C_out/groups*prod(kernel)" + bias_rule
                                        : key_ + ": flops = 2*numel(out)*C_in/groups*prod(kernel)" + bias_rule;
    return known(flops, bytes, rule + "; bytes = in + out + weight" + (bias ? " + bias" : "") + std::string(kFromTable));
  }

  // A Linear module with its weight [out_features, in_features] from the modules table.
  CostEstimate linear_module() {
    Tensor w;
    std::optional<Tensor> bias;
    if (!weight_and_bias(w, bias)) return unknown(why_);
    const Count flops = linear();
    if (!flops_ok_) return unknown(why_);
    if (w.rank() != 2 || w.dim(1) != operand(0)->shape.back() || w.dim(0) != y_->shape.back()) {
      return unknown(key_ + ": the weight's shape does not fit [..., in_features] -> [..., out_features]");
    }
    return known(sum({flops, bias ? Count(numel_) : Count(0)}),
                 sum({io_bytes_, w.bytes, bias ? Count(bias->bytes) : Count(0)}),
                 std::string("Linear: flops = 2*numel(out)*in_features") + (bias ? " + numel(out) (bias)" : "") +
                     "; bytes = in + out + weight" + (bias ? " + bias" : "") + std::string(kFromTable));
  }

  // An Embedding module(indices): a gather, as aten embedding(weight, indices).
  CostEstimate embedding_module() {
    Tensor w;
    if (parameter("weight", w) != Param::kTensor) {
      return unknown(why_.empty() ? key_ + ": the module has no weight" : why_);
    }
    const Tensor* indices = operand(0);
    if (!indices) return unknown(why_);
    if (w.rank() != 2 || y_->rank() == 0 || y_->shape.back() != w.dim(1)) {
      return unknown(key_ + ": the output's last dimension is not the weight's embedding_dim");
    }
    return known(0, sum({product({2, y_->bytes}), indices->bytes}),
                 "Embedding: gather, 0 flops; bytes = rows read + output written + indices");
  }

  // MaxPool*d / AvgPool*d modules and max_pool*d / avg_pool*d calls: one compare or add per
  // window element of each output, kernel_size (an int, or one per spatial dimension) from
  // the graph's `table` ("modules": the module's attribute; "calls": the call's argument).
  CostEstimate pool(const Value* k, const std::string& table) {
    const std::size_t dims = static_cast<std::size_t>(base_[base_.size() - 2] - '0');  // "MaxPool2d": 2
    Count window = 1;
    if (const auto* ki = k ? k->get_if<std::int64_t>() : nullptr) {
      for (std::size_t d = 0; d < dims && window; ++d) window = *ki < 0 ? std::nullopt : product({*window, *ki});
    } else if (const auto* kl = k ? k->get_if<Value::List>() : nullptr; kl && kl->size() == dims) {
      for (const Value& e : *kl) {
        const auto* kd = e.get_if<std::int64_t>();
        window = (!kd || *kd < 0 || !window) ? std::nullopt : product({*window, *kd});
      }
    } else {
      return unknown(key_ + ": the graph's " + table + " table records no kernel_size (an int or " +
                     std::to_string(dims) + " ints) for " + (table == "calls" ? n_.name : std::string(module_path_)));
    }
    if (!window) return unknown(key_ + ": kernel_size is negative or its product does not fit int64");
    const bool max = base_.rfind("Max", 0) == 0;
    return known(product({numel_, *window}), io_bytes_,
                 key_ + ": flops = numel(out)*prod(kernel_size) (one " + (max ? "compare" : "add") +
                     " per window element); kernel_size from the graph's " + table + " table");
  }

  // torchvision's shifted_window_attention(input [B, H, W, C], qkv_weight [O, C], proj_weight
  // [C, C], relative_position_bias [1, h, L, L], window_size [a, b], num_heads h,
  // shift_size, attention_dropout, dropout, qkv_bias, proj_bias, logit_scale), from the
  // "calls" table: the input is padded to Hp x Wp (multiples of the window), T = B*Hp*Wp
  // tokens in windows of L = a*b; the shift applies where the window is smaller than the
  // padded map. Counted (the code's own steps): qkv and proj projections 2*T*C*O + 2*T*C*C,
  // QK^T and AV 4*T*L*C, bias add and softmax 6*T*h*L, the shift mask add T*h*L, q's scaling
  // T*C (v1) or the cosine attention's normalisation of q and k 4*T*C and logit scale
  // T*h*L (v2, with logit_scale), the biases T*O + T*C, dropouts with p > 0 (F.dropout
  // there drops in both modes) T*h*L + T*C. Bytes: every operand and the output.
  CostEstimate window_attention() {
    if (!call_) return unknown(key_ + ": the window size and head count are not in the node metadata (no calls table)");
    const graph::Node* nodes[] = {node_argument(0, "input"), node_argument(1, "qkv_weight"),
                                  node_argument(2, "proj_weight")};
    const std::optional<std::vector<std::int64_t>> window = ints(argument(4, "window_size"), 2);
    const std::optional<std::vector<std::int64_t>> shift = ints(argument(6, "shift_size"), 2);
    const Value* heads_v = argument(5, "num_heads");
    const auto* heads = heads_v ? heads_v->get_if<std::int64_t>() : nullptr;
    if (!nodes[0] || !nodes[1] || !nodes[2] || !window || !shift || !heads || *heads <= 0 || (*window)[0] <= 0 ||
        (*window)[1] <= 0) {
      return unknown(key_ + ": the calls table does not record input, qkv_weight, proj_weight, window_size, "
                            "num_heads and shift_size as the function takes them");
    }
    std::vector<Tensor> t[3];
    for (int k = 0; k < 3; ++k) {
      Result r = node_result(*nodes[k]);
      if (r.kind != Result::Kind::kTensors || r.tensors.size() != 1) {
        return unknown(key_ + ": argument " + std::to_string(k) + " is not one tensor with a shape");
      }
      t[k] = std::move(r.tensors);
    }
    const Tensor &x = t[0][0], &qkv_w = t[1][0], &proj_w = t[2][0];
    if (x.rank() != 4 || y_->shape != x.shape || qkv_w.rank() != 2 || proj_w.rank() != 2 ||
        qkv_w.dim(1) != x.dim(3) || proj_w.dim(0) != x.dim(3) || proj_w.dim(1) != x.dim(3) ||
        x.dim(3) % *heads != 0) {
      return unknown(key_ + ": the input [B, H, W, C], weights [O, C] and [C, C], output and num_heads do not fit");
    }
    auto has = [&](std::size_t pos, std::string_view name) {
      const Value* a = argument(pos, name);
      return a && !a->is_none();
    };
    const bool qkv_bias = has(9, "qkv_bias"), proj_bias = has(10, "proj_bias"), cosine = has(11, "logit_scale");
    const std::optional<double> attn_p = number(argument(7, "attention_dropout"));
    const std::optional<double> out_p = number(argument(8, "dropout"));
    if ((has(7, "attention_dropout") && !attn_p) || (has(8, "dropout") && !out_p)) {
      return unknown(key_ + ": a dropout probability in the calls table is not a number");
    }
    const std::int64_t a = (*window)[0], b = (*window)[1], c = x.dim(3), o = qkv_w.dim(0), h = *heads;
    const std::int64_t hp = (x.dim(1) + a - 1) / a * a, wp = (x.dim(2) + b - 1) / b * b;
    const bool shifted = (a < hp && (*shift)[0] > 0) || (b < wp && (*shift)[1] > 0);
    const Count tokens = product({x.dim(0), hp, wp});
    if (!tokens) return unknown(key_ + ": the count does not fit int64");
    const std::int64_t n = *tokens, l = a * b;
    std::string rule = key_ + ": flops = 2*T*C*O + 2*T*C*C (qkv, proj) + 4*T*L*C (QK^T, AV) + 6*T*h*L (bias add, softmax)";
    Count flops = sum({product({2, n, c, o}), product({2, n, c, c}), product({4, n, l, c}), product({6, n, h, l})});
    if (shifted) {
      flops = sum({flops, product({n, h, l})});
      rule += " + T*h*L (shift mask)";
    }
    if (cosine) {
      flops = sum({flops, product({4, n, c}), product({n, h, l})});
      rule += " + 4*T*C + T*h*L (cosine attention)";
    } else {
      flops = sum({flops, product({n, c})});
      rule += " + T*C (q scale)";
    }
    if (qkv_bias || proj_bias) {
      flops = sum({flops, qkv_bias ? product({n, o}) : Count(0), proj_bias ? product({n, c}) : Count(0)});
      rule += " + biases";
    }
    if ((attn_p && *attn_p != 0.0) || (out_p && *out_p != 0.0)) {
      flops = sum({flops, attn_p && *attn_p != 0.0 ? product({n, h, l}) : Count(0),
                   out_p && *out_p != 0.0 ? product({n, c}) : Count(0)});
      rule += " + dropout";
    }
    return known(flops, io_bytes_,
                 rule + "; T = B*Hp*Wp = " + std::to_string(n) + " tokens (padded), L = " + std::to_string(l) +
                     " (window " + std::to_string(a) + "x" + std::to_string(b) + "), h = " + std::to_string(h) +
                     " from the graph's calls table");
  }

  // einsum(equation, a, b) with two operands and no ellipsis: every combination of the
  // indices is one multiply and one add, flops = 2*prod(size of each distinct index) (the
  // same whatever the output keeps). Sizes from the operands' shapes (1 broadcasts).
  CostEstimate einsum() {
    const Value* eq_v = argument(0, "equation");
    const auto* eq = eq_v ? eq_v->get_if<std::string>() : nullptr;
    if (!eq) return unknown(key_ + ": the equation is not in the node metadata (no calls table entry)");
    std::string e;
    for (char ch : *eq) {
      if (ch != ' ') e += ch;
    }
    const std::string lhs = e.substr(0, e.find("->"));
    const std::size_t comma = lhs.find(',');
    if (comma == std::string::npos || lhs.find(',', comma + 1) != std::string::npos || e.find('.') != std::string::npos) {
      return unknown(key_ + ": only two operands without an ellipsis are costed (equation '" + *eq + "')");
    }
    const std::string terms[2] = {lhs.substr(0, comma), lhs.substr(comma + 1)};
    // The operands: einsum(eq, a, b) or einsum(eq, [a, b]).
    const Value* listed = argument(1, "operands");
    const auto* list = listed ? listed->get_if<Value::List>() : nullptr;
    std::array<std::int64_t, 128> size;  // per index letter; -1: not seen
    size.fill(-1);
    for (std::size_t k = 0; k < 2; ++k) {
      const graph::Node* node = list ? node_ref(list->size() == 2 ? &(*list)[k] : nullptr) : node_argument(k + 1, "");
      Result r = node ? node_result(*node) : Result{};
      if (r.kind != Result::Kind::kTensors || r.tensors.size() != 1) {
        return unknown(key_ + ": operand " + std::to_string(k) + " is not one tensor with a shape");
      }
      const Tensor& t = r.tensors.front();
      if (t.rank() != terms[k].size()) return unknown(key_ + ": operand " + std::to_string(k) + "'s rank does not fit '" + *eq + "'");
      for (std::size_t d = 0; d < t.rank(); ++d) {
        const unsigned char c = static_cast<unsigned char>(terms[k][d]);
        if (c >= 128 || !std::isalpha(c)) return unknown(key_ + ": equation '" + *eq + "' is not letters, ',' and '->'");
        std::int64_t& s = size[c];
        if (s == -1 || s == 1) {
          s = std::max(s, t.dim(d));
        } else if (t.dim(d) != s && t.dim(d) != 1) {
          return unknown(key_ + ": index '" + std::string(1, static_cast<char>(c)) + "' has sizes " + std::to_string(s) +
                         " and " + std::to_string(t.dim(d)));
        }
      }
    }
    Count flops = 2;
    for (std::int64_t s : size) {
      if (s >= 0 && flops) flops = product({*flops, s});
    }
    return known(flops, io_bytes_, key_ + ": flops = 2*prod(size of each index) (one multiply-add per combination); "
                                          "equation from the graph's calls table");
  }

  // Batch norm: the rate depends on the mode; without it, the eval count is a lower bound.
  CostEstimate batch_norm() const {
    if (!training_) {
      return unknown(key_ + ": 2*numel(out) in eval mode, 5*numel(out) in training mode; " + mode_unknown() +
                         "; flops_lower_bound = 2*numel(out)",
                     product({2, numel_}));
    }
    if (!*training_) {
      return known(product({2, numel_}), io_bytes_, "batch norm (eval mode): flops = 2*numel(out) (folded scale, shift)");
    }
    return known(product({5, numel_}), io_bytes_,
                 "batch norm (training mode): flops = 5*numel(out) (batch mean, centre, variance, normalise, affine)");
  }

  // Linear's 2*numel(out)*in_features; flops_ok_ false (why_ set) if the shapes do not fit.
  Count linear() {
    flops_ok_ = false;
    const Tensor* x = operand(0);
    if (!x) return std::nullopt;
    if (x->rank() == 0 || x->rank() != y_->rank() ||
        !std::equal(x->shape.begin(), x->shape.end() - 1, y_->shape.begin())) {
      why_ = key_ + ": input and output shapes do not fit [..., in_features] -> [..., out_features]";
      return std::nullopt;
    }
    flops_ok_ = true;
    return product({2, numel_, x->shape.back()});
  }

  // addmm(bias, a, b); mm(a, b); bmm(a, b); matmul(a, b): K is a's last dimension, and b's
  // contracted one.
  CostEstimate matrix_product() {
    const bool addmm = one_of(base_, detail::kMatrixProductWithBias);
    const std::size_t first = addmm ? 1 : 0;
    if (addmm && !operand(0)) return unknown(why_);
    const Tensor* a = operand(first);
    const Tensor* b = a ? operand(first + 1) : nullptr;
    if (!b) return unknown(why_);
    const Tensor& y = *y_;
    bool fits = false;
    if (base_ == "mm" || addmm) {
      fits = a->rank() == 2 && b->rank() == 2 && y.rank() == 2 && a->dim(1) == b->dim(0) &&
             y.dim(0) == a->dim(0) && y.dim(1) == b->dim(1);
    } else if (base_ == "bmm") {
      fits = a->rank() == 3 && b->rank() == 3 && y.rank() == 3 && a->dim(0) == b->dim(0) &&
             a->dim(2) == b->dim(1) && y.dim(0) == a->dim(0) && y.dim(1) == a->dim(1) && y.dim(2) == b->dim(2);
    } else {  // matmul: b's contracted dimension is its second-to-last (its only one if 1-D)
      fits = a->rank() >= 1 && b->rank() >= 1 && a->shape.back() == b->dim(b->rank() >= 2 ? b->rank() - 2 : 0);
    }
    if (!fits) return unknown(key_ + ": operand shapes do not fit a matrix product");
    const std::int64_t k = a->shape.back();
    if (addmm) {
      return known(sum({product({2, numel_, k}), numel_}), io_bytes_,
                   key_ + ": flops = 2*numel(out)*K + numel(out) (bias)");
    }
    return known(product({2, numel_, k}), io_bytes_, key_ + ": flops = 2*numel(out)*K");
  }

  // aten.convolution(x, weight[, bias]). The file does not record `transposed`: the shapes
  // and the module that made the node decide it.
  //   forward:    weight [C_out, C_in/g, k...], flops = 2*numel(out)*prod(weight[1:])
  //   transposed: weight [C_in, C_out/g, k...], flops = 2*numel(in)*prod(weight[1:])
  // (+ numel(out) with a bias). The innermost module torch.nn.Conv*d or ConvTranspose*d
  // decides; otherwise the shapes, if they fit only one kind or both give the same count.
  CostEstimate convolution() {
    if (in_.size() < 2 || in_.size() > 3) return unknown(key_ + ": expects input, weight[, bias] as operands");
    const Tensor* x = operand(0);
    const Tensor* w = x ? operand(1) : nullptr;
    const Tensor* bias = (w && in_.size() == 3) ? operand(2) : nullptr;
    if (!w || (in_.size() == 3 && !bias)) return unknown(why_);
    const Tensor& y = *y_;
    const std::size_t r = w->rank();
    if (r < 3 || x->rank() != r || y.rank() != r) {
      return unknown(key_ + ": input, weight and output are not [N, C, spatial...] tensors of one rank");
    }
    Count per = 1;  // prod(weight[1:]): C/groups * prod(kernel)
    if (std::find(w->shape.begin() + 1, w->shape.end(), 0) != w->shape.end()) {
      per = 0;
    } else {
      for (std::size_t d = 1; d < r; ++d) per = per ? product({*per, w->dim(d)}) : per;
    }
    const std::int64_t cin = x->dim(1), cout = y.dim(1), w0 = w->dim(0), w1 = w->dim(1);
    const bool batch = y.dim(0) == x->dim(0);
    // forward: groups = C_in / w1, and C_out = w0 a multiple of it
    const bool forward_fits = batch && cout == w0 && w1 > 0 && cin > 0 && cin % w1 == 0 && cout % (cin / w1) == 0;
    // transposed: C_in = w0, groups = C_out / w1, and C_in a multiple of it
    const bool transposed_fits = batch && cin == w0 && w1 > 0 && cout > 0 && cout % w1 == 0 && cin % (cout / w1) == 0;
    const Count bias_flops = bias ? numel_ : 0;
    const Count forward = per ? sum({product({2, numel_, *per}), bias_flops}) : std::nullopt;
    const Count transposed = per ? sum({product({2, x->numel, *per}), bias_flops}) : std::nullopt;
    const std::string bias_rule = bias ? " + numel(out) (bias)" : "";
    const std::string forward_rule = "convolution: flops = 2*numel(out)*C_in/groups*prod(kernel)" + bias_rule;
    const std::string transposed_rule = "convolution (transposed): flops = 2*numel(in)*C_out/groups*prod(kernel)" + bias_rule;
    const std::string module = innermost_module(n_);
    const bool conv_module = one_of(module, {"torch.nn.modules.conv.Conv1d", "torch.nn.modules.conv.Conv2d",
                                             "torch.nn.modules.conv.Conv3d"});
    const bool transposed_module =
        one_of(module, {"torch.nn.modules.conv.ConvTranspose1d", "torch.nn.modules.conv.ConvTranspose2d",
                        "torch.nn.modules.conv.ConvTranspose3d"});
    if (conv_module || transposed_module) {
      const bool fits = conv_module ? forward_fits : transposed_fits;
      if (!fits) return unknown(key_ + ": the shapes do not fit the " + module + " that made the node");
      return conv_module ? known(forward, io_bytes_, forward_rule + " (" + last_component(module) + ")")
                         : known(transposed, io_bytes_, transposed_rule + " (" + last_component(module) + ")");
    }
    if (forward_fits && !transposed_fits) return known(forward, io_bytes_, forward_rule);
    if (transposed_fits && !forward_fits) return known(transposed, io_bytes_, transposed_rule);
    if (!forward_fits) return unknown(key_ + ": the shapes fit neither a forward nor a transposed convolution");
    if (!forward || !transposed) return known(std::nullopt, io_bytes_, forward_rule);
    if (*forward == *transposed) {
      return known(forward, io_bytes_, forward_rule + " (a transposed convolution gives the same count)");
    }
    return unknown(key_ + ": the shapes fit a forward and a transposed convolution, and the graph does not say "
                          "which; flops_lower_bound = the smaller count",
                   std::min(*forward, *transposed));
  }

  // MultiheadAttention(query, key, value): inputs [q] (self-attention: fx lists a node
  // once), [q, kv] (key is value) or [q, k, v]; a mask among them is not costed. With
  // E = q's last dimension, kdim/vdim k's and v's, L the query length and S the key length:
  //   flops = 4*N*L*E^2 (q, out projections) + 2*N*S*E*(kdim + vdim) (k, v projections)
  //         + 4*N*L*S*E (QK^T, AV)
  // batch_first ([N, L, E]) or not ([L, N, E]) is a module attribute the graph does not
  // record: the shapes decide when they fit only one layout or both give the same count.
  CostEstimate attention() {
    if (in_.empty() || in_.size() > 3) {
      return unknown(key_ + ": expects query[, key][, value] as its only operands (masks are not costed)");
    }
    const Tensor* q = operand(0);
    const Tensor* k = q ? operand(in_.size() == 3 ? 1 : in_.size() - 1) : nullptr;
    const Tensor* v = k ? operand(in_.size() - 1) : nullptr;
    if (!v) return unknown(why_);
    const std::size_t r = q->rank();
    if ((r != 2 && r != 3) || k->rank() != r || v->rank() != r) {
      return unknown(key_ + ": query, key and value are not all [L, E] or all 3-D");
    }
    if (y_->shape != q->shape) return unknown(key_ + ": the output's shape is not the query's");
    const std::int64_t e = q->shape.back(), kdim = k->shape.back(), vdim = v->shape.back();
    if (in_.size() == 2 && kdim != e) {
      return unknown(key_ + ": with two operands the second may be the key, the value or both, which "
                            "differ when its last dimension is not the query's");
    }
    auto flops = [&](std::int64_t nb, std::int64_t l, std::int64_t s) {
      return sum({product({4, nb, l, e, e}), product({2, nb, s, e, kdim}), product({2, nb, s, e, vdim}),
                  product({4, nb, l, s, e})});
    };
    const std::string formula = "flops = 4*N*L*E^2 + 2*N*S*E*(kdim + vdim) + 4*N*L*S*E";
    if (r == 2) {  // unbatched: [L, E], [S, kdim], [S, vdim]
      if (k->dim(0) != v->dim(0)) return unknown(key_ + ": key and value lengths differ");
      return known(flops(1, q->dim(0), k->dim(0)), io_bytes_, "MultiheadAttention (unbatched): " + formula);
    }
    const bool batch_first = q->dim(0) == k->dim(0) && k->dim(0) == v->dim(0) && k->dim(1) == v->dim(1);
    const bool seq_first = q->dim(1) == k->dim(1) && k->dim(1) == v->dim(1) && k->dim(0) == v->dim(0);
    const Count bf = flops(q->dim(0), q->dim(1), k->dim(1));
    const Count sf = flops(q->dim(1), q->dim(0), k->dim(0));
    const Value* bf_attr = attribute("batch_first");
    if (const auto* b = bf_attr ? bf_attr->get_if<bool>() : nullptr) {  // the modules table says
      if (!(*b ? batch_first : seq_first)) {
        return unknown(key_ + ": the shapes do not fit the module's layout (batch_first " + (*b ? "true" : "false") + ")");
      }
      return known(*b ? bf : sf, io_bytes_,
                   std::string("MultiheadAttention (") + (*b ? "batch_first [N, L, E]" : "[L, N, E]") +
                       ", batch_first from the graph's modules table): " + formula);
    }
    if (batch_first && !seq_first) return known(bf, io_bytes_, "MultiheadAttention (batch_first [N, L, E]): " + formula);
    if (seq_first && !batch_first) return known(sf, io_bytes_, "MultiheadAttention ([L, N, E]): " + formula);
    if (!batch_first) return unknown(key_ + ": query, key and value shapes fit neither [N, L, E] nor [L, N, E]");
    if (!bf || !sf) return known(std::nullopt, io_bytes_, "MultiheadAttention: " + formula);
    if (*bf == *sf) {
      return known(bf, io_bytes_, "MultiheadAttention ([N, L, E] and [L, N, E] give the same count): " + formula);
    }
    return unknown(key_ + ": the shapes fit [N, L, E] and [L, N, E], and batch_first is not in the metadata; "
                          "flops_lower_bound = the smaller count (" + formula + ")",
                   std::min(*bf, *sf));
  }

  // The call_module sources of a fused node, from its from_node in order: each with its
  // module path, its type (the node's merged nn_module_stack entry for the path if it names
  // one, else the graph's modules table's: the rule fuse and op_key follow) and its table
  // entry (nullptr: none). Read once per node: linear in from_node and the stack.
  struct Source {
    std::string target;
    std::string type;
    const Value* entry;
  };
  std::vector<Source> fused_sources() const {
    static const Key from_node_key{pass_keys::kFromNode};
    std::vector<Source> out;
    const std::optional<Value> chain = n_.meta.get(from_node_key);
    const auto* sources = chain ? chain->get_if<Value::List>() : nullptr;
    if (!sources) return out;
    const std::optional<Value> stack = n_.meta.get(keys::nn_module_stack);
    detail::EntryIndex stack_types;  // path -> its type's Value (first of duplicates, as find)
    if (const auto* d = stack ? stack->get_if<Value::Dict>() : nullptr) {
      for (const auto& [path, type] : *d) stack_types.emplace(path, &type);
    }
    for (const Value& source : *sources) {
      const Value* op = source.find("op");
      const Value* target = source.find("target");
      const auto* op_s = op ? op->get_if<std::string>() : nullptr;
      const auto* target_s = target ? target->get_if<std::string>() : nullptr;
      if (!op_s || *op_s != "call_module" || !target_s) continue;
      const Value* entry =
          modules_ ? detail::find_entry(*modules_, *target_s) : detail::module_entry(graph_, *target_s);
      const Value* stack_type = detail::find_entry(stack_types, *target_s);
      const auto* stack_s = stack_type ? stack_type->get_if<std::string>() : nullptr;
      std::string type = stack_s ? *stack_s : std::string();
      if (type.empty()) type = detail::entry_type(entry);
      out.push_back(Source{*target_s, std::move(type), entry});
    }
    return out;
  }

  // A fused node's conv or linear part, costed as the module it replaced (`type`, costed as
  // `key`): the next source of `sources` from `*next` on whose type is `type` (each part
  // takes its own: a pattern with two convs costs two modules), with its modules-table
  // entry (the weight's shape, groups, the bias); the node's input and output are the
  // part's own (fuse chains only members with the same result). nullopt: no such source
  // has a table entry (a graph whose nn_module_stack names the types records no weights);
  // the caller then costs the part as before.
  std::optional<CostEstimate> fused_module(const std::vector<Source>& sources, std::size_t* next,
                                           std::string_view type, const std::string& key) {
    for (; *next < sources.size(); ++*next) {
      const Source& s = sources[*next];
      if (s.type != type) continue;
      ++*next;
      if (!s.entry) return std::nullopt;
      return Estimator(graph_, n_, s.entry, nullptr, modules_, key, s.target).run();
    }
    return std::nullopt;
  }

  // The formula of a module rule ("module:Conv2d: flops = F; bytes = ..." gives F).
  static std::string formula_of(const std::string& rule) {
    const std::size_t at = rule.find("flops = ");
    return at == std::string::npos ? rule : rule.substr(at + 8, rule.find(';', at) - at - 8);
  }

  // A node made by the fuse pass ("nodemeta.fused.conv_bn_relu"): the sum of its parts,
  // each costed as the module it replaced; every intermediate result has the output's shape
  // and stays on chip, so bytes = inputs + output. Unknown if a part is, keeping the known
  // parts (and a part's own lower bound) in flops_lower_bound.
  CostEstimate fused(const std::string& pattern) {
    Count total = 0, lower = 0;
    Count weight_bytes = 0;  // the conv or linear part's weight (and bias), read from memory
    std::optional<std::vector<Source>> sources;  // read when a conv or linear part needs them
    std::size_t next_conv = 0, next_linear = 0;  // the sources each kind of part takes next
    std::vector<std::string> terms, lower_terms, unknown_parts;  // lower_terms: what flops_lower_bound adds
    // A part whose count is known: it adds to the total and to the lower bound.
    auto add_known = [&](Count flops, std::string term) {
      total = total ? sum({total, flops}) : total;
      lower = sum({lower, flops});
      terms.push_back(term);
      lower_terms.push_back(std::move(term));
    };
    std::size_t start = 0;
    while (start <= pattern.size()) {
      const std::size_t end = std::min(pattern.find('_', start), pattern.size());
      const std::string part = pattern.substr(start, end - start);
      start = end + 1;
      if (part == detail::kConvPart || part == detail::kLinearPart) {
        const bool conv = part == detail::kConvPart;
        if (!sources) sources = fused_sources();
        const std::optional<CostEstimate> c =
            conv ? fused_module(*sources, &next_conv, detail::kConv2dModule, "module:Conv2d")
                 : fused_module(*sources, &next_linear, detail::kLinearModule, "module:Linear");
        if (c && c->flops) {
          add_known(*c->flops, formula_of(c->rule) + " (" + part + ", weight shape from the graph's modules table)");
          if (c->bytes && io_bytes_) weight_bytes = sum({weight_bytes, *c->bytes - *io_bytes_});
        } else if (c) {
          unknown_parts.push_back(part + " (" + c->rule + ")");
          total = std::nullopt;
          if (c->flops_lower_bound) {
            lower = sum({lower, *c->flops_lower_bound});
            lower_terms.push_back("the " + part + "'s lower bound");
          }
        } else if (conv) {
          unknown_parts.push_back("conv (kernel size and groups are not in fx call_module metadata)");
          total = std::nullopt;
        } else {
          const Count f = linear();
          if (flops_ok_) {
            add_known(f, "2*numel(out)*in_features (linear)");
          } else {  // an unknown part: the others are still the lower bound
            unknown_parts.push_back("linear (" + why_ + ")");
            total = std::nullopt;
          }
        }
      } else if (part == detail::kBatchNormPart) {
        if (training_) {
          add_known(product({*training_ ? 5 : 2, numel_}),
                    *training_ ? "5*numel(out) (bn, training mode)" : "2*numel(out) (bn, eval mode)");
        } else {
          unknown_parts.push_back("bn (" + mode_unknown() + ")");
          total = std::nullopt;
          lower = sum({lower, product({2, numel_})});
          lower_terms.push_back("2*numel(out) (bn at the eval-mode rate)");
        }
      } else if (detail::is_activation_part(part)) {
        add_known(numel_, "numel(out) (" + part + ")");
      } else {
        return unknown("no cost formula for " + key_ + " (unknown part '" + part + "')");
      }
    }
    auto joined = [](const std::vector<std::string>& ts) {
      std::string text;
      for (const std::string& t : ts) text += (text.empty() ? "" : " + ") + t;
      return text;
    };
    const std::string sum_text = joined(terms);
    if (unknown_parts.empty() && !io_bytes_) {  // every part known, but an operand is not
      if (!lower) return unknown(key_ + ": the known parts do not fit int64");
      return unknown("fused " + pattern + ": flops = " + sum_text + " as a lower bound; the bytes are unknown: " +
                         (operand_why_.empty() ? std::string("they do not fit int64") : operand_why_),
                     lower);
    }
    if (unknown_parts.empty()) {
      const bool weight = weight_bytes && *weight_bytes > 0;
      return known(total, weight ? sum({io_bytes_, weight_bytes}) : io_bytes_,
                   "fused " + pattern + ": flops = " + sum_text + "; bytes = inputs + output" +
                       (weight ? " + weights" : "") + " (intermediates stay on chip)");
    }
    std::string parts;
    for (const std::string& p : unknown_parts) parts += (parts.empty() ? "" : ", ") + p;
    if (!lower) return unknown(key_ + ": unknown parts: " + parts + "; the known parts do not fit int64");
    const std::string lower_text = joined(lower_terms);
    return unknown("fused " + pattern + ": unknown parts: " + parts +
                       (lower_text.empty() ? "" : "; flops_lower_bound = " + lower_text),
                   lower);
  }

  const graph::Graph& graph_;
  const graph::Node& n_;
  const Value* module_;  // the node's "modules" entry, or nullptr
  const Value* call_;    // the node's "calls" entry, or nullptr
  const detail::EntryIndex* modules_;  // the graph's modules table indexed, or nullptr
  const std::string key_;
  const std::string base_;
  const std::string_view module_path_;  // the module path messages name
  const std::optional<bool> training_;
  Result out_;
  std::vector<Result> in_;
  const Tensor* y_ = nullptr;
  std::int64_t numel_ = 0;
  Count io_bytes_;
  std::string why_;       // why operand() or linear() failed
  std::string operand_why_;  // a fused node's first unknown operand, or ""
  bool flops_ok_ = false;  // linear() succeeded
};

}  // namespace

CostEstimate estimate_cost(const graph::Graph& graph, std::size_t index) {
  const graph::Node& node = graph.node(index);
  return Estimator(graph, node, detail::module_entry(graph, node), detail::call_entry(graph, node), nullptr).run();
}

CostEstimate estimate_cost(const graph::Graph& graph, const graph::Node& node) {
  return Estimator(graph, node, detail::module_entry(graph, node), detail::call_entry(graph, node), nullptr).run();
}

bool detail::same_result(const graph::Node& a, const graph::Node& b) {
  const Result ra = node_result(a), rb = node_result(b);
  if (ra.kind != Result::Kind::kTensors || rb.kind != Result::Kind::kTensors) {
    return ra.kind != Result::Kind::kTensors && rb.kind != Result::Kind::kTensors;
  }
  if (ra.tensors.size() != rb.tensors.size()) return false;
  for (std::size_t i = 0; i < ra.tensors.size(); ++i) {
    if (ra.tensors[i].shape != rb.tensors[i].shape || ra.tensors[i].bytes != rb.tensors[i].bytes) return false;
  }
  return true;
}

CostEstimate detail::estimate_cost(const graph::Graph& graph, const graph::Node& node, const Value* module,
                                   const Value* call, const EntryIndex* modules) {
  return Estimator(graph, node, module, call, modules).run();
}

}  // namespace nodemeta::passes
