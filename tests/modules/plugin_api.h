// tests/modules/plugin_api.h: what each test plugin (plugin_a, plugin_b: one source,
// tests/modules/plugin.cpp, built twice as MODULE libraries) exports, as plain C so the
// test reaches it with dlsym. Only opaque pointers and plain values cross the boundary, as
// between two real plugins or a plugin and a Python extension that each link nodemeta.
#ifndef NODEMETA_TESTS_MODULES_PLUGIN_API_H_
#define NODEMETA_TESTS_MODULES_PLUGIN_API_H_

#include <cstddef>
#include <cstdint>

extern "C" {

// A key as one module sees it.
struct NodemetaTestKeyInfo {
  std::uint32_t id;    // the id this module interns the name to
  char name[64];       // the name this module's table gives that id
  bool found;          // whether the node holds the key
  std::int64_t value;  // its value, when found
};

struct NodemetaTestPlugin {
  const char* name;  // "plugin_a" or "plugin_b"
  // A new nodemeta::MetadataStore (default options), and its destruction.
  void* (*create_store)();
  void (*destroy_store)(void* store);
  // A new node (a heap nodemeta::NodeMetadata) in `store` (a MetadataStore*), or a
  // standalone one in MetadataStore::default_store() when `store` is null. Holds
  // `first_key` = 1, interned by this module.
  void* (*create_node)(void* store, const char* first_key);
  void (*destroy_node)(void* node);
  // Interns `key` in this module and sets it on `node` (a NodeMetadata*); returns its id.
  std::uint32_t (*set)(void* node, const char* key, std::int64_t value);
  // Interns `key` in this module and reads it from `node`.
  NodemetaTestKeyInfo (*get)(void* node, const char* key);
  // Interns `key` in this module; returns its id.
  std::uint32_t (*intern)(const char* key);
  // Copies the name this module gives `id` into `out` (64 bytes); false when this module
  // has no such id (it would read past the end of its names).
  bool (*name_of)(std::uint32_t id, char* out);
  // The address of MetadataStore::default_store() as this module sees it.
  const void* (*default_store)();
  // The address of the store `node` belongs to.
  const void* (*node_store)(void* node);
  // Key::interned_count() as this module sees it.
  std::size_t (*interned_count)();
};

// Each plugin exports one function, named after it: plugin_a_api, plugin_b_api.
using NodemetaTestPluginEntry = const NodemetaTestPlugin* (*)();

}  // extern "C"

#endif  // NODEMETA_TESTS_MODULES_PLUGIN_API_H_
