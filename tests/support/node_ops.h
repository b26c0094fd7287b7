// tests/support/node_ops.h: one description of every single-node operation, applied either
// to nodemeta (apply_real) or to a single-threaded reference model written from the
// contract in node_metadata.h / metadata_store.h (apply_model). Both return the outcome as
// text ("ok ...", "throw <type> ..."), so a divergence is a string comparison and prints
// itself. Used by the differential fuzzer, the graph-scale oracle and the linearizability
// checker's sequential specification.
#ifndef NODEMETA_TESTS_SUPPORT_NODE_OPS_H_
#define NODEMETA_TESTS_SUPPORT_NODE_OPS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nodemeta/nodemeta.h>

namespace nodemeta::test {

enum class OpKind : std::uint8_t {
  kGet, kAt, kContains, kSize, kItems,          // reads
  kSet, kTrySet, kSetOnce, kErase,              // single-key writes
  kUpdateAdd,      // update(key, old int + delta, or delta when absent / not an int)
  kUpdateThrow,    // update(key, callback throws std::runtime_error)
  kUpdateReenter,  // update(key, callback reads, then writes key itself: ReentrancyError, its write stays)
  kEdit,           // edit(steps...), optionally throwing at the end
  kProtect,        // store.protect(key)
  kIsProtected,    // store.is_protected(key)
};

// One call made on the NodeEditor inside kEdit.
struct EditStep {
  enum class Kind : std::uint8_t { kGet, kSet, kTrySet, kSetOnce, kErase } kind;
  std::string key;
  Value value;
  bool catch_errors = false;  // the callback catches what this step throws, and goes on
};

struct Op {
  OpKind kind = OpKind::kGet;
  std::string key;
  Value value;                  // set / try_set / set_once
  std::int64_t delta = 0;       // kUpdateAdd
  std::vector<EditStep> steps;  // kEdit
  bool throw_at_end = false;    // kEdit: the callback throws after its steps
};

// The reference model of one node and its store's protected keys: the sequential
// specification nodemeta must agree with.
struct ModelNode {
  std::map<std::string, Value> kv;
};
struct ModelStore {
  std::set<std::string> protected_keys{"val", "stack_trace", "nn_module_stack", "debug_handle",
                                       "tensor_meta"};
  bool is_protected(const std::string& k) const { return protected_keys.count(k) != 0; }
};

namespace detail_ops {

inline std::string result_of(WriteResult r) { return std::string("ok ") + std::string(to_string(r)); }
inline std::string result_of(bool b) { return b ? "ok true" : "ok false"; }
inline std::string result_of(const Value& v) { return "ok " + v.repr(); }
inline std::string result_of(const std::optional<Value>& v) { return v ? "ok " + v->repr() : "ok nullopt"; }
inline std::string result_of(std::size_t n) { return "ok " + std::to_string(n); }
inline std::string items_text(const Items& items) {
  std::string out = "ok {";
  for (const auto& [k, v] : items) out += k + ": " + v.repr() + ", ";
  return out + "}";
}
inline std::string protected_error(const std::string& k) {
  return "throw ProtectedKeyError Could not override node key: " + k;
}
inline std::string key_error(const std::string& k) { return "throw KeyError key '" + k + "' not found"; }

inline Value add(const std::optional<Value>& old, std::int64_t delta) {
  if (old) {
    if (const auto* i = old->get_if<std::int64_t>()) return Value(*i + delta);
  }
  return Value(delta);
}

struct CallbackFailed : std::runtime_error {
  CallbackFailed() : std::runtime_error("callback failed") {}
};

}  // namespace detail_ops

// Applies `op` to the model; the outcome text. Strong guarantee like the real thing.
inline std::string apply_model(ModelStore& store, ModelNode& node, const Op& op) {
  using namespace detail_ops;
  auto& kv = node.kv;
  const bool prot = store.is_protected(op.key);
  switch (op.kind) {
    case OpKind::kGet: {
      auto it = kv.find(op.key);
      return it == kv.end() ? "ok nullopt" : result_of(it->second);
    }
    case OpKind::kAt: {
      auto it = kv.find(op.key);
      return it == kv.end() ? key_error(op.key) : result_of(it->second);
    }
    case OpKind::kContains: return result_of(kv.count(op.key) != 0);
    case OpKind::kSize: return result_of(kv.size());
    case OpKind::kItems: {
      Items items(kv.begin(), kv.end());
      return items_text(items);
    }
    case OpKind::kSet:
      if (prot) return protected_error(op.key);
      kv[op.key] = op.value;
      return "ok";
    case OpKind::kTrySet: {
      if (prot) return result_of(WriteResult::kRejectedProtected);
      const bool inserted = kv.insert_or_assign(op.key, op.value).second;
      return result_of(inserted ? WriteResult::kInserted : WriteResult::kUpdated);
    }
    case OpKind::kSetOnce: return result_of(kv.emplace(op.key, op.value).second);
    case OpKind::kErase:
      if (prot) return protected_error(op.key);
      return result_of(kv.erase(op.key) != 0);
    case OpKind::kUpdateAdd: {
      if (prot) return protected_error(op.key);
      auto it = kv.find(op.key);
      Value next = add(it == kv.end() ? std::nullopt : std::optional<Value>(it->second), op.delta);
      kv[op.key] = next;
      return result_of(next);
    }
    case OpKind::kUpdateThrow:
      if (prot) return protected_error(op.key);
      return "throw std::runtime_error callback failed";
    case OpKind::kUpdateReenter:
      if (prot) return protected_error(op.key);
      kv[op.key] = Value("reentered");  // the callback's own write stays
      return "throw ReentrancyError";
    case OpKind::kEdit: {
      std::map<std::string, Value> work = kv;
      std::string log = "ok [";
      for (const EditStep& s : op.steps) {
        const bool sp = store.is_protected(s.key);
        std::string r;
        switch (s.kind) {
          case EditStep::Kind::kGet: {
            auto it = work.find(s.key);
            r = it == work.end() ? "nullopt" : it->second.repr();
            break;
          }
          case EditStep::Kind::kSet:
            if (sp) {
              if (!s.catch_errors) return protected_error(s.key);
              r = "caught";
            } else {
              work[s.key] = s.value;
              r = "set";
            }
            break;
          case EditStep::Kind::kTrySet:
            if (sp) {
              r = "rejected_protected";
            } else {
              r = work.insert_or_assign(s.key, s.value).second ? "inserted" : "updated";
            }
            break;
          case EditStep::Kind::kSetOnce: r = work.emplace(s.key, s.value).second ? "true" : "false"; break;
          case EditStep::Kind::kErase:
            if (sp) {
              if (!s.catch_errors) return protected_error(s.key);
              r = "caught";
            } else {
              r = work.erase(s.key) != 0 ? "true" : "false";
            }
            break;
        }
        log += r + " ";
      }
      if (op.throw_at_end) return "throw std::runtime_error callback failed";
      kv = std::move(work);
      return log + "]";
    }
    case OpKind::kProtect: store.protected_keys.insert(op.key); return "ok";
    case OpKind::kIsProtected: return result_of(prot);
  }
  return "bad op";
}

// Applies `op` to a real node of `store`; the outcome text.
inline std::string apply_real(MetadataStore& store, NodeMetadata& node, const Op& op) {
  using namespace detail_ops;
  const Key key(op.key);
  try {
    switch (op.kind) {
      case OpKind::kGet: return result_of(node.get(key));
      case OpKind::kAt: return result_of(node.at(key));
      case OpKind::kContains: return result_of(node.contains(key));
      case OpKind::kSize: return result_of(node.size());
      case OpKind::kItems: return items_text(node.items());
      case OpKind::kSet: node.set(key, op.value); return "ok";
      case OpKind::kTrySet: return result_of(node.try_set(key, op.value));
      case OpKind::kSetOnce: return result_of(node.set_once(key, op.value));
      case OpKind::kErase: return result_of(node.erase(key));
      case OpKind::kUpdateAdd:
        return result_of(node.update(key, [&](std::optional<Value> old) { return add(old, op.delta); }));
      case OpKind::kUpdateThrow:
        return result_of(node.update(key, [](std::optional<Value>) -> Value { throw CallbackFailed(); }));
      case OpKind::kUpdateReenter:
        return result_of(node.update(key, [&](std::optional<Value> old) -> Value {
          (void)node.get(key);
          (void)node.try_set(key, Value("reentered"));  // invalidates what the update read
          return old.value_or(Value());
        }));
      case OpKind::kEdit:
        return node.edit([&](NodeEditor& e) {
          std::string log = "ok [";
          for (const EditStep& s : op.steps) {
            const Key k(s.key);
            std::string r;
            try {
              switch (s.kind) {
                case EditStep::Kind::kGet: {
                  auto v = e.get(k);
                  r = v ? v->repr() : "nullopt";
                  break;
                }
                case EditStep::Kind::kSet: e.set(k, s.value); r = "set"; break;
                case EditStep::Kind::kTrySet: r = std::string(to_string(e.try_set(k, s.value))); break;
                case EditStep::Kind::kSetOnce: r = e.set_once(k, s.value) ? "true" : "false"; break;
                case EditStep::Kind::kErase: r = e.erase(k) ? "true" : "false"; break;
              }
            } catch (const ProtectedKeyError&) {
              if (!s.catch_errors) throw;
              r = "caught";
            }
            log += r + " ";
          }
          if (op.throw_at_end) throw CallbackFailed();
          return log + "]";
        });
      case OpKind::kProtect: store.protect(key); return "ok";
      case OpKind::kIsProtected: return result_of(store.is_protected(key));
    }
  } catch (const ProtectedKeyError& e) {
    return std::string("throw ProtectedKeyError ") + e.what();
  } catch (const KeyError& e) {
    return std::string("throw KeyError ") + e.what();
  } catch (const ReentrancyError&) {
    return "throw ReentrancyError";
  } catch (const CallbackFailed& e) {
    return std::string("throw std::runtime_error ") + e.what();
  } catch (const std::logic_error& e) {
    return std::string("throw std::logic_error ") + e.what();
  }
  return "bad op";
}

inline std::string describe(const Op& op) {
  static const char* const kNames[] = {"get", "at", "contains", "size", "items", "set", "try_set",
                                       "set_once", "erase", "update_add", "update_throw",
                                       "update_reenter", "edit", "protect", "is_protected"};
  std::string out = kNames[static_cast<int>(op.kind)];
  out += "(" + op.key;
  switch (op.kind) {
    case OpKind::kSet:
    case OpKind::kTrySet:
    case OpKind::kSetOnce: out += ", " + op.value.repr(); break;
    case OpKind::kUpdateAdd: out += ", +" + std::to_string(op.delta); break;
    case OpKind::kEdit: {
      static const char* const kSteps[] = {"get", "set", "try_set", "set_once", "erase"};
      for (const EditStep& s : op.steps) {
        out += std::string(" ") + kSteps[static_cast<int>(s.kind)] + "(" + s.key;
        if (s.kind != EditStep::Kind::kGet && s.kind != EditStep::Kind::kErase) out += ", " + s.value.repr();
        out += s.catch_errors ? ")?" : ")";
      }
      if (op.throw_at_end) out += " throw";
      break;
    }
    default: break;
  }
  return out + ")";
}

// "{k: v, ...}" of a model node, in the same form as the real node's items().
inline std::string model_items(const ModelNode& node) {
  Items items(node.kv.begin(), node.kv.end());
  return detail_ops::items_text(items);
}
inline std::string real_items(const NodeMetadata& node) { return detail_ops::items_text(node.items()); }

}  // namespace nodemeta::test

#endif  // NODEMETA_TESTS_SUPPORT_NODE_OPS_H_
