// src/passes/internal.h: what cost.cpp and passes.cpp share, private to nodemeta_passes
// (never installed). The tables are the operator families, dtypes and fusable activations
// docs/passes.md lists: tests/graph/passes_docs_test.cpp reads that page and compares it
// with these tables both ways, so change the page with them.
#ifndef NODEMETA_SRC_PASSES_INTERNAL_H_
#define NODEMETA_SRC_PASSES_INTERNAL_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>

#include "nodemeta/graph/graph.h"
#include "nodemeta/key.h"
#include "nodemeta/passes/passes.h"
#include "nodemeta/value.h"

namespace nodemeta::passes::detail {

// ---- The cost model's operator families (docs/passes.md, "cost": the family column) -------
// Names are base names (cost.cpp's base_name: "aten.relu_", "relu" and "module:ReLU" give
// "relu", "relu" and "ReLU"), except kNoComputation, which lists fx op codes.

inline constexpr std::string_view kNoComputation[] = {"placeholder", "get_attr", "output"};
inline constexpr std::string_view kViewOps[] = {
    "view",     "_unsafe_view", "_reshape_alias", "reshape", "permute",   "transpose",
    "t",        "expand",       "slice",          "split",   "unsqueeze", "squeeze",
    "flatten",  "getitem",      "getattr",        "detach",  "dim",       "size",
    "Identity", "Flatten",      "_assert",        "chunk",   "unbind",    "swapaxes",
    "swapdims", "narrow",       "select",         "movedim", "unflatten"};
inline constexpr std::string_view kScalarOps[] = {"eq", "floordiv", "mul", "add", "sub", "truediv"};
inline constexpr std::string_view kDropout[] = {"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
                                                "torchvision.ops.stochastic_depth.stochastic_depth"};
// torchvision's swin helpers (torch.fx.wrap'ed, one call_function node each) only move data:
// _patch_merging_pad pads and regroups, _get_relative_position_bias gathers the bias rows.
inline constexpr std::string_view kCopies[] = {"clone", "contiguous",
                                               "torchvision.models.swin_transformer._patch_merging_pad",
                                               "torchvision.models.swin_transformer._get_relative_position_bias"};
inline constexpr std::string_view kAllocations[] = {"empty",  "empty_like", "full",
                                                    "arange", "zeros",      "ones"};
inline constexpr std::string_view kConcatenation[] = {"cat"};
inline constexpr std::string_view kEmbedding[] = {"embedding", "Embedding"};
inline constexpr std::string_view kElementwise[] = {
    "add",  "sub",       "mul",         "div",       "truediv",    "neg",  "pow",   "exp",
    "log",  "sqrt",      "rsqrt",       "relu",      "relu6",      "gelu", "silu",  "sigmoid",
    "tanh", "hardswish", "hardsigmoid", "where",     "bernoulli",  "ReLU", "ReLU6", "GELU",
    "SiLU", "Sigmoid",   "Tanh",        "Hardswish", "Hardsigmoid", "leaky_relu", "elu", "hardtanh",
    "mish", "LeakyReLU", "ELU", "Hardtanh", "Mish", "PReLU"};
inline constexpr std::string_view kBatchNorm[] = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
                                                  "native_batch_norm", "batch_norm"};
inline constexpr std::string_view kLayerNorm[] = {"LayerNorm", "native_layer_norm", "layer_norm"};
inline constexpr std::string_view kGroupNorm[] = {"GroupNorm",      "InstanceNorm1d", "InstanceNorm2d",
                                                  "InstanceNorm3d", "group_norm",     "instance_norm"};
inline constexpr std::string_view kSoftmax[] = {"_softmax", "softmax", "Softmax"};
inline constexpr std::string_view kMean[] = {"AdaptiveAvgPool1d",   "AdaptiveAvgPool2d",   "AdaptiveAvgPool3d",
                                             "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
                                             "mean"};
inline constexpr std::string_view kAdaptiveMaxPool[] = {
    "AdaptiveMaxPool1d",   "AdaptiveMaxPool2d",   "AdaptiveMaxPool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"};
inline constexpr std::string_view kLinearLayer[] = {"Linear"};
inline constexpr std::string_view kMatrixProduct[] = {"mm", "bmm", "matmul"};
inline constexpr std::string_view kMatrixProductWithBias[] = {"addmm"};
// einsum(equation, a, b): the equation from the graph's "calls" table.
inline constexpr std::string_view kEinsum[] = {"einsum"};
inline constexpr std::string_view kConvolution[] = {"convolution"};
inline constexpr std::string_view kAttention[] = {"MultiheadAttention"};
// torchvision's swin attention (torch.fx.wrap'ed: one call_function node), costed from its
// operands and the window size and head count of the graph's "calls" table.
inline constexpr std::string_view kWindowAttention[] = {"torchvision.models.swin_transformer.shifted_window_attention"};
// Known from the graph's "modules" table (the weight's shape, the kernel size); unknown
// without it, and always for the functional pools, whose kernel size is an argument.
inline constexpr std::string_view kConvModules[] = {
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"};
inline constexpr std::string_view kPooling[] = {"MaxPool1d",  "MaxPool2d",  "MaxPool3d",
                                                "AvgPool1d",  "AvgPool2d",  "AvgPool3d",
                                                "max_pool1d", "max_pool2d", "max_pool3d",
                                                "avg_pool1d", "avg_pool2d", "avg_pool3d"};

// ---- fuse's chains, and the parts of a fused node's pattern that cost reads ---------------

// The torch.nn classes fuse matches, qualified as nn_module_stack records them.
inline constexpr std::string_view kConv2dModule = "torch.nn.modules.conv.Conv2d";
inline constexpr std::string_view kBatchNorm2dModule = "torch.nn.modules.batchnorm.BatchNorm2d";
inline constexpr std::string_view kLinearModule = "torch.nn.modules.linear.Linear";

// The activation modules that end a chain, and each one's part of the pattern name.
struct FuseActivation {
  std::string_view module;
  std::string_view part;
};
inline constexpr FuseActivation kFuseActivations[] = {
    {"torch.nn.modules.activation.ReLU", "relu"},
    {"torch.nn.modules.activation.ReLU6", "relu6"},
    {"torch.nn.modules.activation.GELU", "gelu"},
    {"torch.nn.modules.activation.SiLU", "silu"},
    {"torch.nn.modules.activation.Hardswish", "hardswish"}};

// A pattern ("conv_bn_relu") joins its parts with '_'.
inline constexpr std::string_view kConvPart = "conv";
inline constexpr std::string_view kBatchNormPart = "bn";
inline constexpr std::string_view kLinearPart = "linear";
// Every part cost knows: the three above, then the activations'.
inline constexpr auto kFusedParts = [] {
  std::array<std::string_view, 3 + std::size(kFuseActivations)> parts{kConvPart, kBatchNormPart,
                                                                      kLinearPart};
  for (std::size_t i = 0; i < std::size(kFuseActivations); ++i)
    parts[3 + i] = kFuseActivations[i].part;
  return parts;
}();

// The pattern part of an activation module's qualified type ("relu" for ReLU), or "" for
// any other type.
constexpr std::string_view activation_part(std::string_view module) {
  for (const auto& [m, part] : kFuseActivations) {
    if (module == m) return part;
  }
  return {};
}

// True if `part` is an activation's part of a pattern ("relu").
constexpr bool is_activation_part(std::string_view part) {
  for (const auto& a : kFuseActivations) {
    if (part == a.part) return true;
  }
  return false;
}

// ---- Every family, by the label its row has in docs/passes.md ------------------------------

struct OpFamily {
  std::string_view label;
  std::span<const std::string_view> ops;
};
inline constexpr OpFamily kOpFamilies[] = {
    {"no computation", kNoComputation},
    {"views and metadata", kViewOps},
    {"scalar Python ops", kScalarOps},
    {"dropout", kDropout},
    {"copies", kCopies},
    {"allocation", kAllocations},
    {"concatenation", kConcatenation},
    {"embedding", kEmbedding},
    {"elementwise", kElementwise},
    {"batch norm", kBatchNorm},
    {"layer norm", kLayerNorm},
    {"group and instance norm", kGroupNorm},
    {"softmax", kSoftmax},
    {"mean", kMean},
    {"adaptive max pooling", kAdaptiveMaxPool},
    {"linear layer", kLinearLayer},
    {"matrix product", kMatrixProduct},
    {"matrix product with bias", kMatrixProductWithBias},
    {"einsum", kEinsum},
    {"convolution", kConvolution},
    {"attention", kAttention},
    {"windowed attention", kWindowAttention},
    {"fused nodes", kFusedParts},
    {"conv modules", kConvModules},
    {"pooling", kPooling},
};

// ---- Element sizes (docs/passes.md, "cost": the element size table) -------------------------

struct DtypeSize {
  std::string_view dtype;
  std::int64_t bytes;
};
inline constexpr DtypeSize kDtypeSizes[] = {
    {"torch.bool", 1},     {"torch.uint8", 1}, {"torch.int8", 1},      {"torch.float16", 2},
    {"torch.bfloat16", 2}, {"torch.int16", 2}, {"torch.float32", 4},   {"torch.int32", 4},
    {"torch.float64", 8},  {"torch.int64", 8}, {"torch.complex64", 8}, {"torch.complex128", 16}};

// The element size of a dtype ("torch.float32": 4), or 0 where the model does not know it.
constexpr std::int64_t dtype_bytes(std::string_view dtype) {
  for (const auto& [name, bytes] : kDtypeSizes) {
    if (dtype == name) return bytes;
  }
  return 0;
}

// ---- Node helpers ------------------------------------------------------------------------------

// The graph attributes (a file's top-level fields) nodemeta.fx writes: passes.h's
// graph_attrs::kModules and kCalls. Absent in files that predate them: nodes are then
// costed as before.
inline constexpr std::string_view kModulesAttr = graph_attrs::kModules;
inline constexpr std::string_view kCallsAttr = graph_attrs::kCalls;

// The "modules" entry (a dict) of a module path, or of a call_module node's target; nullptr:
// another op, no table, no entry, or an entry that is not a dict. Linear in the table's size.
inline const Value* module_entry(const graph::Graph& g, std::string_view path) {
  for (const auto& [name, value] : g.attrs()) {
    if (name != kModulesAttr) continue;
    const Value* e = value.find(path);
    return e && e->kind() == Value::Kind::kDict ? e : nullptr;
  }
  return nullptr;
}
inline const Value* module_entry(const graph::Graph& g, const graph::Node& n) {
  return n.op == "call_module" ? module_entry(g, std::string_view(n.target)) : nullptr;
}

// The type of a call_module node's module as its nn_module_stack entry records it,
// qualified ("torch.nn.modules.conv.Conv2d"), or "" (another op, or no such entry).
inline std::string module_type(const graph::Node& n) {
  if (n.op != "call_module") return {};
  const std::optional<Value> stack = n.meta.get(keys::nn_module_stack);
  const Value* t = stack ? stack->find(n.target) : nullptr;
  const auto* s = t ? t->get_if<std::string>() : nullptr;
  return s ? *s : std::string();
}

// The "type" a modules-table entry records (qualified), or "".
inline std::string entry_type(const Value* entry) {
  const Value* t = entry ? entry->find("type") : nullptr;
  const auto* s = t ? t->get_if<std::string>() : nullptr;
  return s ? *s : std::string();
}

// A call_module node's type: its nn_module_stack entry's, else its modules-table entry's
// (`entry`: module_entry's, or nullptr), else "". torch 1.13's symbolic_trace records no
// stack, so the table is where such graphs say what each module is.
inline std::string module_type(const graph::Node& n, const Value* entry) {
  std::string type = module_type(n);
  if (type.empty() && n.op == "call_module") type = entry_type(entry);
  return type;
}

// The entries of the graph attribute `attr` (a dict of dicts: kModulesAttr by module path,
// kCallsAttr by node name) by key, for O(1) lookups; the first of duplicate keys, as
// Value::find. The views point into the graph's attributes: valid while they are unchanged.
using EntryIndex = std::unordered_map<std::string_view, const Value*>;

inline EntryIndex entry_index(const graph::Graph& g, std::string_view attr) {
  EntryIndex table;
  for (const auto& [name, value] : g.attrs()) {
    if (name != attr) continue;
    if (const auto* d = value.get_if<Value::Dict>()) {
      for (const auto& [key, entry] : *d) {
        if (entry.kind() == Value::Kind::kDict) table.emplace(key, &entry);
      }
    }
    break;
  }
  return table;
}

inline const Value* find_entry(const EntryIndex& table, std::string_view key) {
  const auto it = table.find(key);
  return it == table.end() ? nullptr : it->second;
}

// The "calls" entry (a dict) of a call_function / call_method node, or nullptr. Linear in
// the table's size.
inline const Value* call_entry(const graph::Graph& g, const graph::Node& n) {
  if (n.op != "call_function" && n.op != "call_method") return nullptr;
  for (const auto& [name, value] : g.attrs()) {
    if (name != kCallsAttr) continue;
    const Value* e = value.find(n.name);
    return e && e->kind() == Value::Kind::kDict ? e : nullptr;
  }
  return nullptr;
}

// The cost of `node` (in `graph`, or a new node whose inputs are `graph`'s indices), with
// `module` its "modules" entry (module_entry, or nullptr) and `call` its "calls" entry
// (call_entry, or nullptr): what estimate_cost() computes, for callers that look the
// entries up once per graph (the cost and fuse passes). `modules`: the graph's modules
// table indexed (entry_index), which a fused node's conv part is looked up in; nullptr:
// looked up in the table itself (linear in its size).
CostEstimate estimate_cost(const graph::Graph& graph, const graph::Node& node, const Value* module,
                           const Value* call, const EntryIndex* modules = nullptr);

// Whether two nodes' metadata record the same result as the cost model reads it (the same
// tensors: shapes and sizes), or neither records a tensor: what fuse asks of a chain's
// members, whose fused node's parts are all costed at its one output.
bool same_result(const graph::Node& a, const graph::Node& b);

}  // namespace nodemeta::passes::detail

#endif  // NODEMETA_SRC_PASSES_INTERNAL_H_
