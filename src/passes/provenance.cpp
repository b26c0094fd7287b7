#include "nodemeta/passes/provenance.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "nodemeta/key.h"

namespace nodemeta::passes {
namespace {

const Key& type_key() {
  static const Key k{"type"};
  return k;
}
const Key& from_node_key() {
  static const Key k{"from_node"};
  return k;
}

Value merged_module_stack(std::span<const SourceNode> sources) {
  Value::Dict merged;
  for (const SourceNode& s : sources) {
    const std::optional<Value> stack = s.meta->get(keys::nn_module_stack);
    if (!stack) continue;
    const auto* dict = stack->get_if<Value::Dict>();
    if (!dict) continue;
    for (const auto& [path, type] : *dict) {
      const bool seen = std::any_of(merged.begin(), merged.end(),
                                    [&](const auto& e) { return e.first == path; });
      if (!seen) merged.emplace_back(path, type);
    }
  }
  return Value::dict(std::move(merged));
}

void collect_names(const Value& chain, std::vector<std::string>& out) {
  const auto* list = chain.get_if<Value::List>();
  if (!list) return;
  for (const Value& entry : *list) {
    if (const Value* name = entry.find("name")) {
      if (const auto* s = name->get_if<std::string>()) out.push_back(*s);
    }
    if (const Value* nested = entry.find("from_node")) collect_names(*nested, out);
  }
}

}  // namespace

TransferResult transfer_provenance(std::span<const SourceNode> sources, NodeMetadata& target,
                                   std::string_view pass_name) {
  TransferResult result;
  if (sources.empty()) return result;
  const SourceNode& output = sources.back();
  auto put_once = [&](Key key, Value value) {
    if (target.set_once(key, std::move(value))) {
      ++result.copied;
    } else {
      ++result.kept;
    }
  };
  for (Key key : {keys::val, keys::tensor_meta, keys::debug_handle}) {
    if (std::optional<Value> v = output.meta->get(key)) put_once(key, std::move(*v));
  }
  Value trace;  // null unless some source has one
  for (auto it = sources.rbegin(); it != sources.rend(); ++it) {
    std::optional<Value> t = it->meta->get(keys::stack_trace);
    if (t && !t->is_none()) {
      trace = std::move(*t);
      break;
    }
  }
  put_once(keys::stack_trace, std::move(trace));
  put_once(keys::nn_module_stack, merged_module_stack(sources));
  if (std::optional<Value> type = output.meta->get(type_key())) {
    if (target.try_set(type_key(), std::move(*type)) != WriteResult::kRejectedProtected) {
      ++result.copied;
    } else {
      ++result.rejected;
    }
  }

  Value::List entries;
  entries.reserve(sources.size());
  for (const SourceNode& s : sources) {
    Value::Dict e;
    e.emplace_back("name", Value(s.name));
    e.emplace_back("op", Value(s.op));
    e.emplace_back("target", Value(s.target));
    e.emplace_back("pass_name", Value(pass_name));
    if (std::optional<Value> h = s.meta->get(keys::debug_handle)) e.emplace_back("debug_handle", std::move(*h));
    if (std::optional<Value> chain = s.meta->get(from_node_key())) e.emplace_back("from_node", std::move(*chain));
    entries.push_back(Value::dict(std::move(e)));
  }
  // Appends to an existing chain atomically (update is a read-modify-write on one key).
  target.update(from_node_key(), [&entries](std::optional<Value> old) {
    Value::List chain;
    if (old) {
      if (const auto* l = old->get_if<Value::List>()) chain = *l;
    }
    chain.insert(chain.end(), entries.begin(), entries.end());
    return Value::list(std::move(chain));
  });
  ++result.copied;
  return result;
}

std::vector<std::string> from_node_names(const Value& from_node) {
  std::vector<std::string> out;
  collect_names(from_node, out);
  return out;
}

}  // namespace nodemeta::passes
