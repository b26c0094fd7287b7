// tests/fuzz/differential_fuzzer.cpp: libFuzzer harness. Decodes the input into a sequence
// of public operations (node create/destroy/copy/move, every single-node read and write
// on protected and plain keys, update with normal, throwing and re-entrant callbacks,
// edit with caught and uncaught protected writes and throwing callbacks, store.protect,
// is_protected, protected_keys, node_count) and applies each one to nodemeta and to the
// single-threaded reference model of tests/support/node_ops.h. Every outcome (result or
// exception) and the final state of every node must agree; a divergence prints the
// operations so far and aborts, so libFuzzer saves the input. Built and run by run.sh.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nodemeta/nodemeta.h>

#include "support/keys.h"
#include "support/node_ops.h"

using namespace nodemeta;
using namespace nodemeta::test;

namespace {

class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  std::uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  int below(int n) { return byte() % n; }
  std::int64_t i64() {
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | byte();
    return static_cast<std::int64_t>(v);
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

constexpr int kSlots = 4;
std::vector<std::string>& key_pool() {
  static std::vector<std::string> pool = [] {
    // Five default-protected keys, two plain ones, and one whose id is past the protected
    // set's first word, which exercises the large-id part of the set.
    return std::vector<std::string>{"val", "stack_trace", "nn_module_stack", "debug_handle", "tensor_meta",
                                    "a", "b", std::string(large_id_key("fuzz_high").name())};
  }();
  return pool;
}
const std::string& key(Reader& in) { return key_pool()[static_cast<std::size_t>(in.below(8))]; }

Value value(Reader& in, int depth = 0) {
  switch (in.below(depth == 0 ? 8 : 6)) {
    case 0: return Value();
    case 1: return Value(in.byte() % 2 == 0);
    case 2: return Value(static_cast<std::int64_t>(in.below(7)) - 3);
    case 3: return Value(in.i64());
    case 4: return Value(static_cast<double>(static_cast<std::int8_t>(in.byte())) / 4.0);  // never NaN
    case 5: return Value("s" + std::to_string(in.below(4)));
    case 6: {
      Value::List items;
      for (int n = in.below(3); n > 0; --n) items.push_back(value(in, depth + 1));
      return Value::list(std::move(items));
    }
    default: {
      Value::Dict items;
      for (int n = in.below(3), k = 0; k < n; ++k) items.emplace_back("k" + std::to_string(k), value(in, depth + 1));
      return Value::dict(std::move(items));
    }
  }
}

Op node_op(Reader& in) {
  Op op;
  op.key = key(in);
  switch (in.below(14)) {
    case 0: op.kind = OpKind::kGet; break;
    case 1: op.kind = OpKind::kAt; break;
    case 2: op.kind = OpKind::kContains; break;
    case 3: op.kind = OpKind::kSize; break;
    case 4: op.kind = OpKind::kItems; break;
    case 5: op.kind = OpKind::kSet; op.value = value(in); break;
    case 6: op.kind = OpKind::kTrySet; op.value = value(in); break;
    case 7: op.kind = OpKind::kSetOnce; op.value = value(in); break;
    case 8: op.kind = OpKind::kErase; break;
    case 9: op.kind = OpKind::kUpdateAdd; op.delta = in.below(5) - 2; break;
    case 10: op.kind = OpKind::kUpdateThrow; break;
    case 11: op.kind = OpKind::kUpdateReenter; break;
    default: {
      op.kind = OpKind::kEdit;
      for (int n = in.below(5); n > 0; --n) {
        EditStep s{static_cast<EditStep::Kind>(in.below(5)), key(in), Value(), false};
        if (s.kind != EditStep::Kind::kGet && s.kind != EditStep::Kind::kErase) s.value = value(in);
        s.catch_errors = in.below(2) == 0;
        op.steps.push_back(std::move(s));
      }
      op.throw_at_end = in.below(4) == 0;
      break;
    }
  }
  return op;
}

// Messages of logic errors (moved-from handles) are not part of the contract: compare types.
std::string normalise(std::string outcome) {
  if (outcome.rfind("throw std::logic_error", 0) == 0) return "throw std::logic_error";
  return outcome;
}

struct ModelSlot {
  enum class State { kEmpty, kLive, kMovedFrom } state = State::kEmpty;
  ModelNode node;
};

struct Harness {
  std::vector<std::string> log;

  [[noreturn]] void diverge(const std::string& what) {
    std::fprintf(stderr, "DIVERGENCE: %s\noperations:\n", what.c_str());
    for (const auto& l : log) std::fprintf(stderr, "  %s\n", l.c_str());
    std::fflush(stderr);
    std::abort();
  }
  void expect(const std::string& real, const std::string& model, const std::string& what) {
    log.push_back(what + " -> " + real);
    if (normalise(real) != normalise(model)) diverge(what + ": nodemeta says " + real + ", the model says " + model);
  }
};

void run(const std::uint8_t* data, std::size_t size) {
  Reader in(data, size);
  Harness h;
  // The store: default protection, or a fuzzed set of the pool's keys.
  StoreOptions options;
  ModelStore model_store;
  if (in.below(2) == 1) {
    const int mask = in.byte();
    options.protected_keys.clear();
    model_store.protected_keys.clear();
    for (int k = 0; k < 8; ++k) {
      if ((mask >> k) & 1) {
        options.protected_keys.emplace_back(key_pool()[static_cast<std::size_t>(k)]);
        model_store.protected_keys.insert(key_pool()[static_cast<std::size_t>(k)]);
      }
    }
  }
  options.expected_nodes = static_cast<std::size_t>(in.below(4));
  MetadataStore store(options);
  std::optional<NodeMetadata> real[kSlots];
  ModelSlot model[kSlots];
  auto live_count = [&] {
    std::size_t n = 0;
    for (const auto& m : model) n += m.state == ModelSlot::State::kLive;
    return n;
  };
  // Copying slot `from` into slot `to` (copy() or copy assignment), on each side: the
  // outcome, "ok" or the std::logic_error a moved-from source throws.
  auto real_copy = [&](auto copy) -> std::string {
    try {
      copy();
    } catch (const std::logic_error& e) {
      return std::string("throw std::logic_error ") + e.what();
    }
    return "ok";
  };
  auto model_copy = [&](int from, int to) -> std::string {
    if (model[from].state != ModelSlot::State::kLive) return "throw std::logic_error";
    model[to] = model[from];
    return "ok";
  };
  auto check_slot = [&](int s, const std::string& what) {
    const bool has = real[s].has_value();
    const bool valid = has && real[s]->valid();
    const auto st = model[s].state;
    if (has != (st != ModelSlot::State::kEmpty) || valid != (st == ModelSlot::State::kLive)) {
      h.diverge(what + ": slot " + std::to_string(s) + " has the wrong state");
    }
    if (valid && real_items(*real[s]) != model_items(model[s].node)) {
      h.diverge(what + ": slot " + std::to_string(s) + " is " + real_items(*real[s]) + ", the model says " +
                model_items(model[s].node));
    }
  };

  for (int step = 0; step < 256 && !in.empty(); ++step) {
    const int s = in.below(kSlots), d = in.below(kSlots);
    const std::string at = "#" + std::to_string(step) + " slot " + std::to_string(s) + ": ";
    switch (in.below(12)) {
      case 0: {  // create with initial items (protected keys allowed; repeats rejected)
        std::vector<KeyValue> items;
        std::vector<std::pair<std::string, Value>> model_items_in;
        std::string desc = "create(";
        for (int n = in.below(4); n > 0; --n) {
          const std::string& k = key(in);
          Value v = value(in);
          desc += k + "=" + v.repr() + " ";
          items.emplace_back(Key(k), v);
          model_items_in.emplace_back(k, v);
        }
        // The contract: std::invalid_argument naming the (first) repeated key.
        std::string model_out = "ok", repeated;
        ModelNode fresh;
        for (const auto& [k, v] : model_items_in) {
          if (!fresh.kv.emplace(k, v).second) {
            repeated = "'" + k + "'";
            model_out = "throw std::invalid_argument naming " + repeated;
            break;
          }
        }
        if (model_out == "ok") model[s] = {ModelSlot::State::kLive, std::move(fresh)};
        std::string real_out = "ok";
        try {
          NodeMetadata n = store.create(std::span<const KeyValue>(items));
          real[s] = std::move(n);
        } catch (const std::invalid_argument& e) {
          const std::string what = e.what();
          real_out = !repeated.empty() && what.find(repeated) != std::string::npos
                         ? "throw std::invalid_argument naming " + repeated
                         : "throw std::invalid_argument " + what;
        }
        h.expect(real_out, model_out, at + desc + ")");
        check_slot(s, at);
        break;
      }
      case 1:  // destroy
        real[s].reset();
        model[s] = {};
        h.log.push_back(at + "destroy");
        break;
      case 2: {  // d = s.copy()
        if (!real[s]) break;
        const std::string real_out = real_copy([&] {
          NodeMetadata c = real[s]->copy();
          real[d] = std::move(c);
        });
        h.expect(real_out, model_copy(s, d), at + "copy() into slot " + std::to_string(d));
        check_slot(d, at);
        break;
      }
      case 3: {  // *d = *s (copy assignment)
        if (!real[s] || !real[d]) break;
        const std::string real_out = real_copy([&] { *real[d] = *real[s]; });
        // Self-assignment does nothing, even from a moved-from handle.
        h.expect(real_out, s != d ? model_copy(s, d) : "ok", at + "copy-assign into slot " + std::to_string(d));
        check_slot(s, at);
        check_slot(d, at);
        break;
      }
      case 4:  // *d = std::move(*s)
        if (!real[s] || !real[d]) break;
        *real[d] = std::move(*real[s]);
        if (s != d) {
          model[d] = model[s];
          model[s] = {ModelSlot::State::kMovedFrom, {}};
        }
        h.log.push_back(at + "move-assign into slot " + std::to_string(d));
        check_slot(s, at);
        check_slot(d, at);
        break;
      case 5: {  // protect a key of the pool
        Op op;
        op.kind = in.below(2) ? OpKind::kProtect : OpKind::kIsProtected;
        op.key = key(in);
        ModelNode unused;
        NodeMetadata* any = nullptr;
        for (auto& r : real) {
          if (r && r->valid()) any = &*r;
        }
        if (any == nullptr) {  // apply_real needs a node; protection does not touch it
          if (op.kind == OpKind::kProtect) {
            store.protect(Key(op.key));
            model_store.protected_keys.insert(op.key);
            h.log.push_back(at + describe(op));
          }
          break;
        }
        h.expect(apply_real(store, *any, op), apply_model(model_store, unused, op), at + describe(op));
        break;
      }
      case 6: {  // store-level reads
        std::string names;
        for (const auto& n : store.protected_keys()) names += n + ",";
        std::string model_names;
        for (const auto& n : model_store.protected_keys) model_names += n + ",";  // std::set: sorted
        h.expect(names, model_names, at + "protected_keys()");
        h.expect(std::to_string(store.node_count()), std::to_string(live_count()), at + "node_count()");
        break;
      }
      default: {  // a node operation
        if (!real[s]) break;
        const Op op = node_op(in);
        std::string model_out;
        if (model[s].state == ModelSlot::State::kLive) {
          model_out = apply_model(model_store, model[s].node, op);
        } else {
          model_out = "throw std::logic_error";
        }
        h.expect(apply_real(store, *real[s], op), model_out, at + describe(op));
        check_slot(s, at);
        break;
      }
    }
  }
  for (int s = 0; s < kSlots; ++s) check_slot(s, "final state");
  h.expect(std::to_string(store.node_count()), std::to_string(live_count()), "final node_count()");
  for (auto& r : real) r.reset();  // the store must outlive its nodes
  h.expect(std::to_string(store.node_count()), "0", "node_count() after destroying every node");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)key_pool();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  run(data, size);
  return 0;
}
