// Links against the installed nodemeta and checks the original's contract end to end.
#include <nodemeta/nodemeta.h>

#include <cstdio>

int main() {
  nodemeta::MetadataStore store;
  {
    nodemeta::NodeMetadata node = store.create({{"val", 3}, {"stack_trace", "File \"m.py\", line 3"}});
    node.set("custom", nodemeta::Value::list({1, 2}));
    bool rejected = false;
    try {
      node.set("val", 4);
    } catch (const nodemeta::ProtectedKeyError& e) {
      rejected = std::string(e.what()) == "Could not override node key: val";
    }
    if (!rejected || node["val"].as<std::int64_t>() != 3 || node.size() != 3 ||
        store.node_count() != 1) {
      std::puts("consumer: FAILED");
      return 1;
    }
  }
  std::puts(store.node_count() == 0 ? "consumer: ok" : "consumer: FAILED (node leaked)");
  return store.node_count() == 0 ? 0 : 1;
}
