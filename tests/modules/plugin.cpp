// tests/modules/plugin.cpp: a plugin that links nodemeta::nodemeta, built twice (plugin_a,
// plugin_b; NODEMETA_TEST_PLUGIN names it). The test dlopens both with RTLD_LOCAL and checks
// that a key, the default store and the intern table are one in the whole process.
#include <algorithm>
#include <cstring>
#include <string_view>

#include <nodemeta/nodemeta.h>

#include "plugin_api.h"

#ifndef NODEMETA_TEST_PLUGIN
#error "NODEMETA_TEST_PLUGIN must name the plugin (plugin_a or plugin_b)"
#endif
#define NODEMETA_TEST_STR2(x) #x
#define NODEMETA_TEST_STR(x) NODEMETA_TEST_STR2(x)
#define NODEMETA_TEST_CAT2(a, b) a##b
#define NODEMETA_TEST_CAT(a, b) NODEMETA_TEST_CAT2(a, b)

namespace {

using nodemeta::Key;
using nodemeta::MetadataStore;
using nodemeta::NodeMetadata;

void copy_name(std::string_view name, char* out) {
  const std::size_t n = std::min(name.size(), std::size_t{63});
  std::memcpy(out, name.data(), n);
  out[n] = '\0';
}

NodeMetadata& node_of(void* node) { return *static_cast<NodeMetadata*>(node); }

const NodemetaTestPlugin kPlugin{
    NODEMETA_TEST_STR(NODEMETA_TEST_PLUGIN),
    []() -> void* { return new MetadataStore(); },
    [](void* store) { delete static_cast<MetadataStore*>(store); },
    [](void* store, const char* first_key) -> void* {
      NodeMetadata node = store == nullptr ? NodeMetadata({{Key(first_key), 1}})
                                           : static_cast<MetadataStore*>(store)->create({{Key(first_key), 1}});
      return new NodeMetadata(std::move(node));
    },
    [](void* node) { delete static_cast<NodeMetadata*>(node); },
    [](void* node, const char* key, std::int64_t value) -> std::uint32_t {
      const Key k(key);
      node_of(node).set(k, value);
      return k.id();
    },
    [](void* node, const char* key) -> NodemetaTestKeyInfo {
      const Key k(key);
      NodemetaTestKeyInfo info{k.id(), {}, false, 0};
      copy_name(k.name(), info.name);
      if (const auto value = node_of(node).get(k)) {
        info.found = true;
        info.value = value->as<std::int64_t>();
      }
      return info;
    },
    [](const char* key) -> std::uint32_t { return Key(key).id(); },
    [](std::uint32_t id, char* out) -> bool {
      // Ids run from 1 (0 is the invalid Key) to interned_count(): the table only grows.
      if (id == 0 || id > Key::interned_count()) return false;
      copy_name(nodemeta::detail::key_name(id), out);
      return true;
    },
    []() -> const void* { return &MetadataStore::default_store(); },
    [](void* node) -> const void* { return &node_of(node).store(); },
    []() -> std::size_t { return Key::interned_count(); },
};

}  // namespace

extern "C" const NodemetaTestPlugin* NODEMETA_TEST_CAT(NODEMETA_TEST_PLUGIN, _api)() { return &kPlugin; }
