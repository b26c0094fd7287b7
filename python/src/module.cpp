// python/src/module.cpp: nodemeta._core, the extension behind the `nodemeta` package.
//
// NodeMetadataBase is a CPython type written against the C API: its mapping slots
// (md[k], md[k] = v, k in md) are called by the interpreter directly, with no binding
// dispatch in between, and string keys reach a Key through the str's cached UTF-8 and
// the lock-free intern table. The rest (MetadataStore, WriteResult, run_passes) uses
// pybind11. The Python class nodemeta.NodeMetadata derives from NodeMetadataBase and is
// registered as a collections.abc.MutableMapping (python/nodemeta/__init__.py).
//
// Thread safety: every method holds the GIL while it converts values and calls the store;
// the store's operations are short and never wait for the GIL, so holding it cannot
// deadlock. run_passes releases the GIL while the C++ passes run.
#include <Python.h>
// The node cache reads CPython 3.11's dict internals (python/CMakeLists.txt checks too).
#if PY_VERSION_HEX < 0x030B0000 || PY_VERSION_HEX >= 0x030C0000
#error "nodemeta's Python module is written for CPython 3.11 (its node cache uses 3.11's dict internals)"
#endif
// The keys table's layout, for the initial-metadata key check (keys_known_valid below),
// and the GC header, for the node free list (alloc_node).
#define Py_BUILD_CORE 1
#include <internal/pycore_dict.h>
#include <internal/pycore_gc.h>
#undef Py_BUILD_CORE
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <structmember.h>

#include <oneapi/tbb/task_arena.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "nodemeta/graph/graph.h"
#include "nodemeta/metadata_store.h"
#include "nodemeta/node_metadata.h"
#include "nodemeta/passes/driver.h"
#include "nodemeta/passes/passes.h"
#include "nodemeta/version.h"
#include "values.h"

namespace py = pybind11;

namespace nodemeta::python {
namespace {

// --- the Python-side store -------------------------------------------------------------

struct PyNode;

class PyStore {
 public:
  explicit PyStore(py::object protected_keys) {
    StoreOptions options;
    if (!protected_keys.is_none()) {
      if (PyUnicode_Check(protected_keys.ptr())) {
        throw py::type_error("MetadataStore: protected_keys is an iterable of str, not a str");
      }
      options.protected_keys.clear();
      for (py::handle k : protected_keys) {
        if (!PyUnicode_Check(k.ptr())) {
          throw py::type_error("MetadataStore: protected keys must be str, not " +
                               std::string(Py_TYPE(k.ptr())->tp_name));
        }
        options.protected_keys.emplace_back(py::cast<std::string>(k));
      }
    }
    owned_ = std::make_unique<MetadataStore>(std::move(options));
    store_ = owned_.get();
    refresh_protected_names();
  }
  explicit PyStore(MetadataStore& borrowed) : store_(&borrowed) { refresh_protected_names(); }
  MetadataStore& store() const noexcept { return *store_; }
  bool is_default() const noexcept { return owned_ == nullptr; }
  // The protected keys' names as a frozenset of str, for Python writes to check without
  // making a Key (kept up to date by MetadataStore.protect, the only way Python protects).
  PyObject* protected_names() const noexcept { return protected_names_.ptr(); }
  void refresh_protected_names() {
    std::vector<std::string> keys = store_->protected_keys();
    install_protected_names(names_of(keys));
  }
  // Protects `key` in the C++ store and in the names Python writes check, with no Python
  // code in between: a cache write that checked the names before this returns was made
  // before the protection (flushed by protect(), which C++ accepts), and one that checks
  // after it is refused. The names are built first (allocations may run the collector, so
  // other threads, so other protect() calls: built again if one ran meanwhile).
  void protect(Key key) {
    for (;;) {
      std::vector<std::string> keys = store_->protected_keys();
      const std::vector<std::string> before = keys;
      if (std::find(keys.begin(), keys.end(), key.name()) == keys.end()) keys.emplace_back(key.name());
      std::pair<py::object, std::uint64_t> names = names_of(keys);
      if (store_->protected_keys() != before) continue;
      store_->protect(key);
      install_protected_names(std::move(names));
      return;
    }
  }
  // Whether the exact str `key` is protected: 1, 0, -1 error. A 64-bit filter of the names'
  // hashes answers most keys without a set lookup.
  int is_protected_name(PyObject* key) const {
    const Py_hash_t h = reinterpret_cast<PyASCIIObject*>(key)->hash;
    if (h != -1 && (protected_mask_ & (std::uint64_t{1} << (static_cast<std::uint64_t>(h) & 63))) == 0) return 0;
    return PySet_Contains(protected_names_.ptr(), key);
  }
  // run_passes calls on this store in flight (changed only with the GIL held).
  int passes_in_flight = 0;
  // While > 0 (run_passes, protect, and the multi-key operations that write the C++ node
  // directly), Python writes to this store's nodes go to the C++ store at once instead of
  // to their caches (changed only with the GIL held).
  int write_through = 0;
  // The nodes whose cache holds writes the C++ store has not seen yet (GIL held).
  PyNode* dirty_head = nullptr;

 private:
  std::unique_ptr<MetadataStore> owned_;
  MetadataStore* store_;
  py::object protected_names_;
  std::uint64_t protected_mask_ = 0;

  // The frozenset of `keys` and the filter of their hashes.
  static std::pair<py::object, std::uint64_t> names_of(const std::vector<std::string>& keys) {
    py::list names = py::cast(keys);
    PyObject* set = PyFrozenSet_New(names.ptr());
    if (set == nullptr) throw py::error_already_set();
    std::uint64_t mask = 0;
    for (py::handle name : names) mask |= std::uint64_t{1} << (static_cast<std::uint64_t>(PyObject_Hash(name.ptr())) & 63);
    return {py::reinterpret_steal<py::object>(set), mask};
  }
  // Runs no Python code (the old frozenset holds only str).
  void install_protected_names(std::pair<py::object, std::uint64_t> names) {
    protected_names_ = std::move(names.first);
    protected_mask_ = names.second;
  }
};

// --- the NodeMetadata type ------------------------------------------------------------
//
// The cache. Each node keeps a dict of its keys' Python objects (`cache`), which the hot
// methods read and write with CPython's own dict calls. The C++ node stays the store of
// record for the C++ passes and for protection; the two are kept coherent so that every
// operation is linearizable:
//   clean: the cache mirrors the C++ node as of `cache_version` (the node's version, see
//          NodeMetadata::version()). A read first compares the node's version with it: a
//          C++ write since (a pass) changed the version, so the read rebuilds the cache
//          from a consistent C++ snapshot (validated by the version) before it answers.
//   dirty: the node holds Python writes the C++ node has not seen: the cache is the truth.
//          Only Python writes a dirty node (C++ code reaches these nodes only through
//          run_passes, which first flushes them), so reads need no validation. A node not
//          yet in the C++ store (`md` empty: made by Python and not yet needed by C++) is
//          dirty. Dirty nodes are linked in their store's list.
// Writes. A Python write to a clean or dirty node goes to the cache (the key's protection is
// checked against the store's protected names, again after the last step that may run
// Python code, and MetadataStore.protect updates them as C++ protects, so the flush never
// meets a protected key the cache changed) and makes the node dirty; the value
// is converted for C++ later, when the node is flushed: before run_passes hands it to C++,
// before protect(), node_count, id, the C++ views of the test hooks, and the operations that
// work on the C++ node directly. While the store's write_through count is above zero
// (run_passes or protect in flight, or one of those operations), Python writes instead
// flush the node and go to the C++ store at once (the cache is then stale and rebuilt by
// the next read), so C++ threads running at that time see each Python write when it
// returns, and a dirty node is never written by C++.
// Threads. Everything here runs with the GIL held. Any call that may run Python code
// (a converter, a __del__, an allocation that starts the cycle collector) may let other
// threads run: so each step that depends on the cache's state checks it again after such
// a call (flush's commit compares the cache with the snapshot it converted; writes check
// the write_through count and copy-on-write again right before they store).
// Iteration. An iterator holds the cache dict itself; a write finds its reference count
// above one and replaces the cache by a copy first (copy-on-write), so iterators see the
// node as of their start. copy() shares the dict the same way. The cache is kept in key-name
// order for iteration (a new key marks it unsorted; the next iteration sorts it once).

constexpr std::uint64_t kStale = ~std::uint64_t{0};  // never a node version (odd)

struct PyNode {
  PyObject_HEAD
  std::optional<NodeMetadata> md;  // empty: not yet in the C++ store (then dirty)
  PyObject* store;    // the PyStore object: keeps the C++ store alive while this node lives
  PyStore* pystore;   // its C++ object
  PyObject* cache;    // dict: key -> object (nullptr: empty if dirty, else stale)
  std::uint64_t cache_version;
  PyNode* dirty_prev;
  PyNode* dirty_next;
  bool dirty;
  bool unsorted;  // the cache's order is not key-name order
  std::uint8_t stale_ops;  // operations answered by C++ since the cache went stale
  PyObject* weakrefs;
};

// A node C++ has just written is read and written through C++ for its first few operations
// (a Python pass that reads one key and writes one on each node after run_passes pays what
// a direct C++ access costs), and its cache is rebuilt from a snapshot only once it is used
// more (a rebuild is a sorted snapshot of the whole node).
constexpr std::uint8_t kStaleOpsBeforeRefresh = 2;

// Calls that run C++ on Python's values with the GIL released (run_passes,
// release_retired_values) in flight: while there are any, other threads may copy and drop
// values, so the cycle collector is shown no values (see md_traverse). Changed only with
// the GIL held, so it cannot change during a collection.
int g_cpp_active = 0;

PyTypeObject* g_base_type = nullptr;  // NodeMetadataBase
PyTypeObject* g_node_type = nullptr;  // nodemeta.NodeMetadata (set by __init__.py)
PyObject* g_protected_error = nullptr;
PyObject* g_write_results[3] = {nullptr, nullptr, nullptr};
PyObject* g_default_store = nullptr;
PyStore* g_default_pystore = nullptr;
PyObject* g_views = nullptr;  // (KeysView, ValuesView, ItemsView) classes

bool is_node(PyObject* o) { return PyObject_TypeCheck(o, g_base_type); }
PyNode* node_of(PyObject* self) { return reinterpret_cast<PyNode*>(self); }

// Translates the C++ exception in flight into a Python one.
void set_python_error() {
  try {
    throw;
  } catch (const py::error_already_set& e) {
    const_cast<py::error_already_set&>(e).restore();
  } catch (const ProtectedKeyError& e) {
    PyErr_SetString(g_protected_error, e.what());
  } catch (const KeyError& e) {
    py::str key(e.key());
    PyErr_SetObject(PyExc_KeyError, key.ptr());
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::invalid_argument& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::length_error& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  } catch (...) {
    PyErr_SetString(PyExc_RuntimeError, "nodemeta: unknown C++ exception");
  }
}

void set_key_error(PyObject* key) {
  PyObject* tuple = PyTuple_Pack(1, key);  // KeyError((1, 2)) must keep the tuple whole
  if (tuple != nullptr) {
    PyErr_SetObject(PyExc_KeyError, tuple);
    Py_DECREF(tuple);
  }
}

void set_protected_error(PyObject* key) {
  PyObject* msg = PyUnicode_FromFormat("Could not override node key: %S", key);
  if (msg != nullptr) {
    PyErr_SetObject(g_protected_error, msg);
    Py_DECREF(msg);
  }
}

// A key for a read: the Key if some node could hold it, else nullopt (never interns).
// Returns false with an exception set only for a str that cannot be encoded.
bool read_key(PyObject* key, std::optional<Key>& out) {
  out.reset();
  if (!PyUnicode_Check(key)) {  // not a str: never present; unhashable: TypeError, as dict
    return PyObject_Hash(key) != -1;
  }
  Py_ssize_t n = 0;
  const char* s = PyUnicode_AsUTF8AndSize(key, &n);
  if (s == nullptr) {
    PyErr_Clear();  // lone surrogates: no stored key can equal it
    return true;
  }
  out = Key::find(std::string_view(s, static_cast<std::size_t>(n)));
  return true;
}

// A key for a write (interned). False with TypeError/ValueError set.
bool write_key(PyObject* key, Key& out) {
  if (!PyUnicode_Check(key)) {
    PyErr_Format(PyExc_TypeError, "NodeMetadata keys must be str, not %.200s", Py_TYPE(key)->tp_name);
    return false;
  }
  Py_ssize_t n = 0;
  const char* s = PyUnicode_AsUTF8AndSize(key, &n);
  if (s == nullptr) return false;
  try {
    out = Key(std::string_view(s, static_cast<std::size_t>(n)));
  } catch (...) {
    set_python_error();
    return false;
  }
  return true;
}

// Whether an exact str may be a key (what Key() accepts); false with the error Key() gives
// (ValueError for a NUL, UnicodeEncodeError for lone surrogates). Short ASCII names are
// checked in place; others are interned, as any written key is.
// The str objects last found valid, by address (each held, so the address is not reused
// while cached): the same key objects come back again and again (literals, interned names).
constexpr std::size_t kValidKeySlots = 256;
PyObject* g_valid_keys[kValidKeySlots] = {};

std::size_t valid_key_slot(PyObject* o) {
  const auto a = reinterpret_cast<std::uintptr_t>(o);
  return ((a >> 4) ^ (a >> 12)) & (kValidKeySlots - 1);
}

void clear_valid_keys() {
  for (PyObject*& o : g_valid_keys) Py_CLEAR(o);
}

// Whether `key` passed valid_key before and is remembered (a str object is immutable).
inline bool known_valid_key(PyObject* key) { return g_valid_keys[valid_key_slot(key)] == key; }

bool valid_key(PyObject* key) {
  PyObject*& cached = g_valid_keys[valid_key_slot(key)];
  if (cached == key) return true;
  bool ok = false;
  if (PyUnicode_IS_COMPACT_ASCII(key) && PyUnicode_GET_LENGTH(key) <= 4096) {
    const char* s = static_cast<const char*>(PyUnicode_DATA(key));
    ok = std::memchr(s, 0, static_cast<std::size_t>(PyUnicode_GET_LENGTH(key))) == nullptr;
  }
  if (!ok) {
    Key k = keys::val;  // overwritten
    if (!write_key(key, k)) return false;
  }
  Py_INCREF(key);
  Py_XSETREF(cached, key);
  return true;
}

// The exact str a write stores under (new reference): `key` itself, or a str subclass's
// text; nullptr with TypeError for a key that is not a str.
PyObject* exact_key(PyObject* key) {
  if (PyUnicode_CheckExact(key)) {
    Py_INCREF(key);
    return key;
  }
  if (!PyUnicode_Check(key)) {
    PyErr_Format(PyExc_TypeError, "NodeMetadata keys must be str, not %.200s", Py_TYPE(key)->tp_name);
    return nullptr;
  }
  return PyUnicode_FromObject(key);
}

// A key name as a str (surrogateescape: a name C++ wrote that is not UTF-8 round-trips).
PyObject* key_object(std::string_view name) {
  return PyUnicode_DecodeUTF8(name.data(), static_cast<Py_ssize_t>(name.size()), "surrogateescape");
}

Py_ssize_t dict_size(PyObject* d) { return reinterpret_cast<PyDictObject*>(d)->ma_used; }

// The cache's reads: a node's cache is a dict of exact str keys, a combined table (of the
// str kind, or of the general kind when it was presized: a rebuilt or sorted cache), and
// its keys are the interned key names the reader passes. So a read probes the table itself,
// as CPython 3.11's lookups do, but compares identities only: a hit is the same str object;
// the probe ends at an empty slot (the key is absent: an equal str would be in the chain),
// and any slot holding a str of the same hash that is not `key` (maybe an equal str that is
// another object) answers kUnsure, as does a split table or a str with no cached hash;
// dict_get_str then asks CPython. This is what md[k] and md.get(k) cost beyond a dict's own
// BINARY_SUBSCR_DICT and dict.get: the call into CPython's lookup and, for a miss,
// PyErr_Occurred. Reads only, GIL held.
enum class Probe { kHit, kMiss, kUnsure };

template <typename Index, typename Entry>
[[gnu::always_inline]] inline Probe probe_table(const PyDictKeysObject* dk, const Entry* entries, PyObject* key,
                                                Py_hash_t h, PyObject** value) {
  const auto* indices = reinterpret_cast<const Index*>(dk->dk_indices);
  const std::size_t mask = (std::size_t{1} << dk->dk_log2_size) - 1;
  std::size_t perturb = static_cast<std::size_t>(h);
  std::size_t i = static_cast<std::size_t>(h) & mask;
  for (;;) {
    const Py_ssize_t ix = indices[i];
    if (ix >= 0) {
      const Entry& e = entries[ix];
      if (e.me_key == key) {
        *value = e.me_value;
        return Probe::kHit;
      }
      if constexpr (std::is_same_v<Entry, PyDictKeyEntry>) {
        if (e.me_hash == h) return Probe::kUnsure;  // maybe an equal str
      } else {
        if (reinterpret_cast<PyASCIIObject*>(e.me_key)->hash == h) return Probe::kUnsure;
      }
    } else if (ix == DKIX_EMPTY) {
      return Probe::kMiss;
    }
    perturb >>= 5;  // PERTURB_SHIFT
    i = mask & (i * 5 + perturb + 1);
  }
}

// dictkeys_get_index: the width of an index follows the table's size.
template <typename Entry>
[[gnu::always_inline]] inline Probe probe_entries(const PyDictKeysObject* dk, const std::int8_t* entries,
                                                  PyObject* key, Py_hash_t h, PyObject** value) {
  const auto* e = reinterpret_cast<const Entry*>(entries);
  const unsigned log2size = dk->dk_log2_size;
  if (log2size < 8) return probe_table<std::int8_t>(dk, e, key, h, value);
  if (log2size < 16) return probe_table<std::int16_t>(dk, e, key, h, value);
  if (log2size < 32) return probe_table<std::int32_t>(dk, e, key, h, value);
  return probe_table<std::int64_t>(dk, e, key, h, value);
}

[[gnu::always_inline]] inline Probe probe_str(PyObject* d, PyObject* key, PyObject** value) {
  const auto* dict = reinterpret_cast<const PyDictObject*>(d);
  const PyDictKeysObject* dk = dict->ma_keys;
  const Py_hash_t h = reinterpret_cast<PyASCIIObject*>(key)->hash;
  if (dict->ma_values != nullptr || h == -1) return Probe::kUnsure;
  const std::int8_t* entries =
      &reinterpret_cast<const std::int8_t*>(dk->dk_indices)[std::size_t{1} << dk->dk_log2_index_bytes];
  if (dk->dk_kind == DICT_KEYS_UNICODE) return probe_entries<PyDictUnicodeEntry>(dk, entries, key, h, value);
  if (dk->dk_kind == DICT_KEYS_GENERAL) return probe_entries<PyDictKeyEntry>(dk, entries, key, h, value);
  return Probe::kUnsure;
}

// CPython's own lookup of an exact str key, with the str's cached hash when it has one.
inline PyObject* cpython_get_str(PyObject* d, PyObject* key) {
  const Py_hash_t h = reinterpret_cast<PyASCIIObject*>(key)->hash;
  return h != -1 ? _PyDict_GetItem_KnownHash(d, key, h) : PyDict_GetItemWithError(d, key);
}

// d[key] for an exact str key (borrowed; nullptr: absent, or an error if PyErr_Occurred()).
inline PyObject* dict_get_str(PyObject* d, PyObject* key) {
  PyObject* v = nullptr;
  switch (probe_str(d, key, &v)) {
    case Probe::kHit: return v;
    case Probe::kMiss: return nullptr;
    case Probe::kUnsure: break;
  }
  return cpython_get_str(d, key);
}

// As dict_get_str, with no error check to make after a miss: nullptr and *failed false:
// absent; nullptr and *failed true: an error is set.
inline PyObject* dict_get_str(PyObject* d, PyObject* key, bool* failed) {
  PyObject* v = nullptr;
  switch (probe_str(d, key, &v)) {
    case Probe::kHit: *failed = false; return v;
    case Probe::kMiss: *failed = false; return nullptr;
    case Probe::kUnsure: break;
  }
  v = cpython_get_str(d, key);  // (not dict_get_str: the table was probed already)
  *failed = v == nullptr && PyErr_Occurred() != nullptr;
  return v;
}

std::uint64_t dict_tag(PyObject* d) {
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wdeprecated-declarations\"")
  return reinterpret_cast<PyDictObject*>(d)->ma_version_tag;
  _Pragma("GCC diagnostic pop")
}

// The interned str of each key name a refresh met (key names are a small, fixed
// vocabulary: docs/python.md), so a rebuilt cache reuses the key objects. GIL held.
std::unordered_map<std::string, PyObject*>* g_key_objects = nullptr;

// A new reference to the interned str of `name`; nullptr with an error set.
PyObject* key_object_cached(std::string_view name) {
  if (g_key_objects == nullptr) g_key_objects = new std::unordered_map<std::string, PyObject*>();
  if (auto it = g_key_objects->find(std::string(name)); it != g_key_objects->end()) {
    Py_INCREF(it->second);
    return it->second;
  }
  PyObject* k = key_object(name);
  if (k == nullptr) return nullptr;
  PyUnicode_InternInPlace(&k);  // literal keys in code then match by identity
  if (g_key_objects->size() >= 65536) {
    for (auto& [n, o] : *g_key_objects) Py_DECREF(o);
    g_key_objects->clear();
  }
  try {
    g_key_objects->emplace(std::string(name), k);
    Py_INCREF(k);
  } catch (...) {  // out of memory: not cached
  }
  return k;
}

void clear_key_objects() {
  if (g_key_objects == nullptr) return;
  for (auto& [n, o] : *g_key_objects) Py_DECREF(o);
  g_key_objects->clear();
}

// --- the dirty list and the cache's states ---

void link_dirty(PyNode* n) {
  if (n->dirty) return;
  n->dirty = true;
  PyStore* s = n->pystore;
  n->dirty_prev = nullptr;
  n->dirty_next = s->dirty_head;
  if (s->dirty_head != nullptr) s->dirty_head->dirty_prev = n;
  s->dirty_head = n;
}

void unlink_dirty(PyNode* n) {
  if (!n->dirty) return;
  n->dirty = false;
  if (n->dirty_prev != nullptr) {
    n->dirty_prev->dirty_next = n->dirty_next;
  } else {
    n->pystore->dirty_head = n->dirty_next;
  }
  if (n->dirty_next != nullptr) n->dirty_next->dirty_prev = n->dirty_prev;
  n->dirty_prev = n->dirty_next = nullptr;
}

// Whether the cache answers reads now: dirty (the truth), or clean and no C++ write since.
inline bool cache_fresh(const PyNode* n) {
  return n->dirty || (n->cache != nullptr && n->md->version() == n->cache_version);
}

// After a C++ write the cache did not see: the cache is dropped (the objects the write
// replaced must not outlive it there) and the next read rebuilds it. Clean nodes only.
void mark_stale(PyNode* n) {
  if (n->dirty) return;
  n->cache_version = kStale;
  Py_CLEAR(n->cache);  // may run __del__: the state is consistent already
}

// Rebuilds a clean node's cache from a consistent C++ snapshot. 1: done; 0: C++ writers
// kept changing the node (the caller reads C++ directly); -1: error set.
int refresh(PyNode* n) {
  for (int attempt = 0; attempt < 8 && !n->dirty; ++attempt) {
    const std::uint64_t v1 = n->md->version();
    if ((v1 & detail::NodeState::kWriting) != 0) continue;
    Items items;
    try {
      items = n->md->items();
    } catch (...) {
      set_python_error();
      return -1;
    }
    if (n->md->version() != v1) continue;
    PyObject* d = _PyDict_NewPresized(static_cast<Py_ssize_t>(items.size()));
    if (d == nullptr) return -1;
    for (const auto& [name, v] : items) {
      PyObject* k = key_object_cached(name);
      if (k == nullptr) {
        Py_DECREF(d);
        return -1;
      }
      PyObject* o = to_python(v);
      const int rc = o != nullptr ? PyDict_SetItem(d, k, o) : -1;
      Py_DECREF(k);
      Py_XDECREF(o);
      if (rc != 0) {
        Py_DECREF(d);
        return -1;
      }
    }
    // Allocations above may have run the collector, so other threads: the node may have
    // been written (dirty: its writer refreshed first) or rebuilt since.
    if (n->dirty) {
      Py_DECREF(d);
      return 1;
    }
    PyObject* old = n->cache;
    n->cache = d;
    n->cache_version = v1;
    n->unsorted = false;
    n->stale_ops = 0;
    Py_XDECREF(old);  // may run __del__: the state above is already consistent
    return 1;
  }
  return n->dirty ? 1 : 0;
}

// Makes the cache answer reads: 1 it does, 0 read C++ directly, -1 error.
inline int fresh(PyNode* n) {
  if (cache_fresh(n)) return 1;
  if (n->stale_ops < kStaleOpsBeforeRefresh) {
    ++n->stale_ops;
    return 0;
  }
  return refresh(n);
}

// Whether `cache` (a node's, maybe nullptr) holds exactly the objects of `snap`.
bool cache_matches(PyObject* cache, PyObject* snap) {
  const Py_ssize_t size = cache != nullptr ? dict_size(cache) : 0;
  if (size != dict_size(snap)) return false;
  Py_ssize_t pos = 0;
  PyObject* k;
  PyObject* o;
  while (PyDict_Next(snap, &pos, &k, &o)) {
    if (PyDict_GetItemWithError(cache, k) != o) return false;  // str keys: never raises
  }
  return true;
}

// Whether the Python object `o` is what the C++ value `v` already holds: 1, 0, -1 error.
int same_value(PyObject* o, const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kNone:
      return o == Py_None ? 1 : 0;
    case Value::Kind::kBool:
      return o == (*v.get_if<bool>() ? Py_True : Py_False) ? 1 : 0;
    case Value::Kind::kInt: {
      if (!PyLong_CheckExact(o)) return 0;
      int overflow = 0;
      const long long x = PyLong_AsLongLongAndOverflow(o, &overflow);
      if (x == -1 && PyErr_Occurred()) return -1;
      return overflow == 0 && x == *v.get_if<std::int64_t>() ? 1 : 0;
    }
    case Value::Kind::kDouble: {
      if (!PyFloat_CheckExact(o)) return 0;
      const double a = PyFloat_AS_DOUBLE(o);
      const double b = *v.get_if<double>();
      return std::memcmp(&a, &b, sizeof a) == 0 ? 1 : 0;
    }
    default:
      break;
  }
  const detail::ValueBox* box = detail::ValueAccess::box_of(v);
  if (void* f = box->foreign()) {
    if (f != o) return 0;
    // The same object: unchanged unless it is a container C++ holds converted contents of,
    // which may have been changed in place since (a list appended to, then written back):
    // those are compared as C++ would see them now.
    if (!PyList_Check(o) && !PyDict_Check(o) && !PyTuple_Check(o)) return 1;
  }
  // A value C++ wrote (no Python object of its own): `o` was built from it by a refresh,
  // or written since. Compare as C++ would see `o`.
  Value mine;
  if (!to_value(o, mine)) return -1;
  return mine == v ? 1 : 0;
}

// Writes a dirty node's cache into the C++ store (creating the C++ node if it has none),
// so that C++ sees every Python write made so far. The writes the snapshot differs by are
// converted first (Python code may run, so other threads), then committed in one edit()
// only if the cache still holds what was converted; otherwise it starts again. Afterwards
// the node is clean. False with a Python error set (the node stays dirty).
bool flush(PyNode* n) {
  while (n->dirty) {
    PyObject* snap = n->cache != nullptr ? PyDict_Copy(n->cache) : PyDict_New();
    if (snap == nullptr) return false;
    py::object snap_guard = py::reinterpret_steal<py::object>(snap);
    const bool lazy = !n->md.has_value();
    Items current;  // sorted by name
    if (!lazy) {
      try {
        current = n->md->items();
      } catch (...) {
        set_python_error();
        return false;
      }
    }
    std::vector<char> seen(current.size(), 0);
    std::vector<KeyValue> writes;
    // A protected key C++ holds that the cache holds another object for (or lacks): a write
    // protection refuses. The Python writes that check the store's protected names cannot
    // make one (MetadataStore.protect installs the names as C++ protects, and writes check
    // them after the last step that may run Python code), so this is defensive: C++ keeps
    // its value, the rest is committed, the cache is rebuilt from C++, and the flush raises
    // ProtectedKeyError naming the key.
    std::optional<std::string> refused;
    std::optional<std::string> late;  // the same, found by the commit
    const MetadataStore* st = lazy ? nullptr : &n->md->store();
    Py_ssize_t pos = 0;
    PyObject* k;
    PyObject* o;
    while (PyDict_Next(snap, &pos, &k, &o)) {  // snap is this call's own: nobody changes it
      Py_ssize_t len = 0;
      const char* s = PyUnicode_AsUTF8AndSize(k, &len);
      if (s == nullptr) return false;
      const std::string_view name(s, static_cast<std::size_t>(len));
      auto it = std::lower_bound(current.begin(), current.end(), name,
                                 [](const auto& item, std::string_view x) { return item.first < x; });
      if (it != current.end() && it->first == name) {
        seen[static_cast<std::size_t>(it - current.begin())] = 1;
        const int same = same_value(o, it->second);
        if (same < 0) return false;
        if (same == 1) continue;
      }
      Key key = keys::val;  // overwritten
      if (!write_key(k, key)) return false;
      if (it != current.end() && it->first == name && st->is_protected(key)) {
        // The very object C++ holds, changed in place since (a list appended to): protected
        // values never change in C++, so C++ keeps it as it was set. Not a write.
        const detail::ValueBox* box = detail::ValueAccess::box_of(it->second);
        if (box == nullptr || box->foreign() != o) {
          if (!refused) refused.emplace(name);
        }
        continue;
      }
      Value v;
      if (!to_value(o, v)) return false;  // may run Python code
      writes.emplace_back(key, std::move(v));
    }
    std::vector<Key> erases;
    for (std::size_t i = 0; i < current.size(); ++i) {
      if (seen[i] != 0) continue;
      const Key key(current[i].first);
      if (st->is_protected(key)) {
        if (!refused) refused.emplace(current[i].first);
        continue;
      }
      erases.push_back(key);
    }
    // Commit only what the cache still holds (nothing between this check and the commit
    // runs Python code).
    if (!n->dirty) return true;
    if (!cache_matches(n->cache, snap) || lazy != !n->md.has_value()) continue;
    try {
      if (lazy) {
        n->md.emplace(n->pystore->store().create(std::span<const KeyValue>(writes)));
      } else if (!writes.empty() || !erases.empty()) {
        n->md->edit([&](NodeEditor& e) {
          late.reset();
          for (Key key : erases) e.erase(key);
          for (const auto& [key, v] : writes) {
            if (st->is_protected(key)) {
              // set_once of an absent protected key, from Python (present: refused, above)
              if (!e.set_once(key, v) && !late) late.emplace(key.name());
            } else {
              e.set(key, v);
            }
          }
        });
      }
    } catch (...) {
      set_python_error();
      return false;
    }
    if (!refused) refused = std::move(late);
    // Released values' destructors may have run Python code since the commit.
    if (n->dirty && cache_matches(n->cache, snap)) {
      unlink_dirty(n);
      const std::uint64_t v = n->md->version();
      if (refused || n->pystore->write_through > 0 || (v & detail::NodeState::kWriting) != 0) {
        mark_stale(n);  // C++ may write it now (run_passes): rebuilt by the next read
      } else {
        n->cache_version = v;
      }
      if (refused) {
        PyObject* key = key_object(*refused);
        if (key != nullptr) {
          set_protected_error(key);
          Py_DECREF(key);
        }
        return false;
      }
    }
  }
  return true;
}

// Flushes every dirty node of the store (those dirty when it starts). False: error set.
bool flush_all(PyStore* s) {
  std::vector<py::object> nodes;
  for (PyNode* n = s->dirty_head; n != nullptr; n = n->dirty_next) {
    // A node being deallocated (a subclass's dealloc clears its __slots__, whose __del__
    // may run this, before md_dealloc unlinks it): its writes die with it, and taking a
    // reference to it would deallocate it twice.
    if (Py_REFCNT(reinterpret_cast<PyObject*>(n)) == 0) continue;
    nodes.push_back(py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(n)));
  }
  for (const py::object& o : nodes) {
    if (!flush(node_of(o.ptr()))) return false;
  }
  return true;
}

// While alive, Python writes to the store's nodes go to C++ at once (GIL held).
class WriteThrough {
 public:
  explicit WriteThrough(PyStore* s) : s_(s) { ++s_->write_through; }
  ~WriteThrough() { --s_->write_through; }
  WriteThrough(const WriteThrough&) = delete;
  WriteThrough& operator=(const WriteThrough&) = delete;

 private:
  PyStore* s_;
};

// The C++ node, with every Python write in it (flushed); nullptr with an error set.
NodeMetadata* synced(PyObject* self) {
  PyNode* n = node_of(self);
  if (!flush(n)) return nullptr;
  return &*n->md;
}

enum class Prepared { kCache, kWriteThrough, kError };

// Before a write to the cache: the cache is fresh, the node dirty, and the cache a dict of
// this node's own (copied if an iterator or a copy shares it). kWriteThrough: the write
// must go to C++ instead (the store's write_through count is up, or C++ writers keep the
// node changing). Nothing the caller does between this and its store may run Python code.
Prepared prepare_write(PyNode* n) {
  for (;;) {
    if (n->pystore->write_through > 0) return Prepared::kWriteThrough;
    if (!n->dirty) {
      if (!cache_fresh(n)) {
        if (n->stale_ops < kStaleOpsBeforeRefresh) {
          ++n->stale_ops;
          return Prepared::kWriteThrough;
        }
        const int r = refresh(n);
        if (r < 0) return Prepared::kError;
        if (r == 0) return Prepared::kWriteThrough;
        continue;  // refresh may have let other threads run
      }
      link_dirty(n);
    }
    if (n->cache == nullptr) {
      PyObject* d = PyDict_New();
      if (d == nullptr) return Prepared::kError;
      if (n->cache != nullptr || !n->dirty) {
        Py_DECREF(d);
        continue;
      }
      n->cache = d;
      n->unsorted = false;
      continue;
    }
    if (Py_REFCNT(n->cache) > 1) {  // shared with an iterator or a copy: copy on write
      PyObject* orig = n->cache;
      const std::uint64_t tag = dict_tag(orig);
      Py_INCREF(orig);
      PyObject* copy = PyDict_Copy(orig);
      if (copy == nullptr) {
        Py_DECREF(orig);
        return Prepared::kError;
      }
      if (n->cache != orig || dict_tag(orig) != tag || !n->dirty) {
        Py_DECREF(copy);
        Py_DECREF(orig);
        continue;
      }
      n->cache = copy;
      Py_DECREF(orig);  // the node's reference
      Py_DECREF(orig);  // ours (the sharer keeps it alive)
      continue;         // the DECREFs cannot free it, but loop to check again anyway
    }
    return Prepared::kCache;
  }
}

// Stores `value` under the exact str `key` in a prepared cache; a new key is checked
// (valid_key) after the store and taken out again if it is not valid.
int cache_store(PyNode* n, PyObject* key, PyObject* value) {
  PyObject* d = n->cache;
  const Py_ssize_t before = dict_size(d);
  const Py_hash_t h = reinterpret_cast<PyASCIIObject*>(key)->hash;
  // may run __del__ of the old value
  if ((h != -1 ? _PyDict_SetItem_KnownHash(d, key, value, h) : PyDict_SetItem(d, key, value)) != 0) return -1;
  if (n->cache == d && dict_size(d) > before) {
    if (!valid_key(key)) {
      PyObject* type;
      PyObject* error;
      PyObject* tb;
      PyErr_Fetch(&type, &error, &tb);
      (void)PyDict_DelItem(d, key);
      PyErr_Restore(type, error, tb);
      return -1;
    }
    if (before > 0) n->unsorted = true;
  }
  return 0;
}

// --- making nodes ---

// A new Python node of type `tp` in the store `store_obj` (its PyStore `ps`): owning the C++
// node `md`, or, with none, not yet in the C++ store, holding `cache` (stolen; nullptr:
// empty).
// A free list of nodes of exactly nodemeta.NodeMetadata, as CPython keeps for dict, list
// and tuple (a node's GC allocation and free were a third of what creating an empty one
// cost): md_dealloc keeps up to kFreeNodes of them, untracked and emptied, linked through
// dirty_next, and new_node takes them back with PyObject_Init (which takes the new
// reference to the type) before it tracks them again. GIL held throughout; emptied by
// _shutdown. Only for a type whose instances are exactly a PyNode allocated by CPython's
// generic allocator (checked by _set_node_type); subclasses allocate as before.
constexpr int kFreeNodes = 80;
PyNode* g_free_nodes = nullptr;
int g_free_count = 0;
bool g_free_list_ok = false;  // g_node_type qualifies

PyObject* alloc_node(PyTypeObject* tp) {
  if (tp == g_node_type && g_free_nodes != nullptr) {
    PyNode* n = g_free_nodes;
    g_free_nodes = n->dirty_next;
    --g_free_count;
    PyObject* self = PyObject_Init(reinterpret_cast<PyObject*>(n), tp);
    // A new object's GC header, as _PyObject_GC_Link leaves it: not tracked and not
    // finalized (a node finalized in an earlier life must have its __del__ run again).
    _Py_AS_GC(self)->_gc_next = 0;
    _Py_AS_GC(self)->_gc_prev = 0;
    PyObject_GC_Track(self);
    return self;
  }
  return tp->tp_alloc(tp, 0);
}

// Frees the kept nodes (their memory only: they are not objects any more).
void clear_free_nodes() {
  while (g_free_nodes != nullptr) {
    PyNode* n = g_free_nodes;
    g_free_nodes = n->dirty_next;
    PyObject_GC_Del(n);
  }
  g_free_count = 0;
}

PyObject* new_node(PyTypeObject* tp, PyObject* store_obj, PyStore* ps, std::optional<NodeMetadata> md,
                   PyObject* cache, bool unsorted) {
  PyObject* self = alloc_node(tp);
  if (self == nullptr) {
    Py_XDECREF(cache);
    return nullptr;
  }
  PyNode* n = node_of(self);
  new (&n->md) std::optional<NodeMetadata>(std::move(md));
  Py_INCREF(store_obj);
  n->store = store_obj;
  n->pystore = ps;
  n->cache = cache;
  n->cache_version = kStale;
  n->dirty_prev = n->dirty_next = nullptr;
  n->dirty = false;
  n->unsorted = unsorted;
  n->stale_ops = kStaleOpsBeforeRefresh;  // a node that goes stale before any refresh: rebuilt
  n->weakrefs = nullptr;
  if (!n->md) link_dirty(n);
  return self;
}

PyTypeObject* node_type() { return g_node_type != nullptr ? g_node_type : g_base_type; }

// A node's entries as a new dict (a copy of its fresh cache, or of its C++ snapshot).
PyObject* node_dict(PyObject* self);

// Whether every key of `d` is an exact str valid_key remembers, read straight from a
// combined table of str keys (which holds exact str only: CPython converts the table to the
// general kind when any other key goes in). false: not known, check the keys one by one.
// This is the cost of checking a node's initial keys (6 keys: about 3 ns here, against
// about 30 through PyDict_Next and a call per key).
bool keys_known_valid(PyObject* d) {
  const auto* dict = reinterpret_cast<PyDictObject*>(d);
  const PyDictKeysObject* keys = dict->ma_keys;
  if (dict->ma_values != nullptr || keys->dk_kind != DICT_KEYS_UNICODE) return false;
  const PyDictUnicodeEntry* entries = DK_UNICODE_ENTRIES(keys);
  for (Py_ssize_t i = 0; i < keys->dk_nentries; ++i) {
    // A deleted entry's key is NULL.
    if (entries[i].me_value != nullptr && !known_valid_key(entries[i].me_key)) return false;
  }
  return true;
}

// A new dict holding `data` (a dict, a mapping, an iterable of pairs, a node; nullptr:
// empty) under exact, valid str keys, for a node's cache; nullptr with an error set.
// Protected keys are allowed (the node is being built).
PyObject* cache_from(PyObject* data) {
  if (data == nullptr) return PyDict_New();
  PyObject* d = nullptr;
  if (is_node(data)) {
    d = node_dict(data);
  } else if (PyDict_CheckExact(data)) {
    d = PyDict_Copy(data);
  } else {
    d = PyDict_New();
    if (d != nullptr) {
      const int has_keys = PyObject_HasAttrString(data, "keys");
      const int rc = has_keys ? PyDict_Merge(d, data, 1) : PyDict_MergeFromSeq2(d, data, 1);
      if (rc != 0) Py_CLEAR(d);
    }
  }
  if (d == nullptr) return nullptr;
  if (keys_known_valid(d)) return d;
  // Check the keys; str subclasses are stored under their text.
  bool exact = true;
  Py_ssize_t pos = 0;
  PyObject* k;
  PyObject* v;
  while (PyDict_Next(d, &pos, &k, &v)) {
    if (!PyUnicode_CheckExact(k)) {
      exact = false;
      if (!PyUnicode_Check(k)) {
        PyErr_Format(PyExc_TypeError, "NodeMetadata keys must be str, not %.200s", Py_TYPE(k)->tp_name);
        Py_DECREF(d);
        return nullptr;
      }
    }
    if (!valid_key(k)) {
      Py_DECREF(d);
      return nullptr;
    }
  }
  if (exact) return d;
  PyObject* fixed = PyDict_New();
  pos = 0;
  while (fixed != nullptr && PyDict_Next(d, &pos, &k, &v)) {
    PyObject* e = PyUnicode_FromObject(k);
    int rc = e != nullptr ? PyDict_Contains(fixed, e) : -1;
    if (rc == 1) {
      Py_ssize_t n = 0;
      const char* s = PyUnicode_AsUTF8AndSize(e, &n);
      PyErr_Format(PyExc_ValueError, "nodemeta: duplicate key '%s' in a node's initial metadata", s ? s : "?");
      rc = -1;
    } else if (rc == 0) {
      rc = PyDict_SetItem(fixed, e, v);
    }
    Py_XDECREF(e);
    if (rc != 0) Py_CLEAR(fixed);
  }
  Py_DECREF(d);
  return fixed;
}

PyObject* create_in(PyTypeObject* tp, PyObject* store_obj, PyStore* ps, PyObject* data) {
  PyObject* cache = cache_from(data);
  if (cache == nullptr) return nullptr;
  const bool unsorted = dict_size(cache) > 1;
  return new_node(tp, store_obj, ps, std::nullopt, cache, unsorted);
}

// NodeMetadata.__new__(*args, **kw): an empty node of the default store (arguments are
// __init__'s, so a subclass may give __init__ a signature of its own).
PyObject* md_new(PyTypeObject* tp, PyObject*, PyObject*) {
  return new_node(tp, g_default_store, g_default_pystore, std::nullopt, nullptr, false);
}

// NodeMetadata.__init__(data=None): the node holds a copy of data, and nothing else (so
// calling __init__ again resets it, as the original's self.data = data.copy() does).
int md_init(PyObject* self, PyObject* args, PyObject* kwds) {
  PyObject* data = nullptr;
  if (kwds == nullptr && PyTuple_GET_SIZE(args) <= 1) {
    if (PyTuple_GET_SIZE(args) == 1) data = PyTuple_GET_ITEM(args, 0);
  } else {
    static const char* kwlist[] = {"data", nullptr};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:NodeMetadata", const_cast<char**>(kwlist), &data)) {
      return -1;
    }
  }
  if (data == Py_None) data = nullptr;
  PyNode* n = node_of(self);
  const bool fresh_node = !n->md && n->cache == nullptr;
  if (fresh_node && data == nullptr) return 0;
  PyObject* cache = cache_from(data);
  if (cache == nullptr) return -1;
  if (!fresh_node || n->cache != nullptr) {
    // Calling __init__ again: the node is replaced by a new one holding data alone. Not
    // while run_passes runs on this store: its passes may be reading the old node.
    if (n->pystore->passes_in_flight > 0) {
      Py_DECREF(cache);
      PyErr_SetString(PyExc_RuntimeError,
                      "NodeMetadata.__init__: cannot reset a node while nodemeta.fx.run_passes runs on its store");
      return -1;
    }
  }
  std::optional<NodeMetadata> old_md = std::exchange(n->md, std::nullopt);
  PyObject* old_cache = n->cache;
  n->cache = cache;
  n->unsorted = dict_size(cache) > 1;
  n->cache_version = kStale;
  link_dirty(n);
  Py_XDECREF(old_cache);
  old_md.reset();  // the old C++ node dies here (its values are released)
  return 0;
}

// --- the cycle collector ---
//
// A node's Python values can refer back to it (a value holding its fx Node, an instance of a
// class whose module holds the graph), so the node takes part in garbage collection. The
// cache dict is visited (it holds a reference to each value; copies share it, and the dict
// is then visited once per holder, as it should be). A C++ value's Python object is held by
// its box, and a box may be shared by several holders (C++ copies share values), while the
// collector must see each reference once: so a node visits the objects of the boxes it
// alone holds (use_count 2: its slot and the snapshot taken here), and, inside those, of
// nested boxes held once. A shared box's object is never visited: cycles through it are not
// collected (conservative: never a live object collected). C++ threads copying a value
// meanwhile only make a box look shared.
constexpr int kTraverseDepth = 64;

int visit_value(const Value& v, std::uint64_t alone, int depth, visitproc visit, void* arg) {
  const detail::ValueBox* box = detail::ValueAccess::box_of(v);
  if (box == nullptr || box->use_count() != alone || depth > kTraverseDepth) return 0;
  if (void* o = box->foreign()) Py_VISIT(static_cast<PyObject*>(o));
  if (const Value::List* l = v.get_if<Value::List>()) {
    for (const Value& e : *l) {
      if (int rc = visit_value(e, 1, depth + 1, visit, arg)) return rc;
    }
  } else if (const Value::Dict* d = v.get_if<Value::Dict>()) {
    for (const auto& [k, e] : *d) {
      if (int rc = visit_value(e, 1, depth + 1, visit, arg)) return rc;
    }
  }
  return 0;
}

int md_traverse(PyObject* self, visitproc visit, void* arg) {
  PyNode* node = node_of(self);
  Py_VISIT(Py_TYPE(self));  // a heap type's instances own a reference to it
  Py_VISIT(node->store);
  Py_VISIT(node->cache);
  // While C++ runs without the GIL, box counts may change during this collection, and a
  // box visited in one of its passes but not the next would make a live object look
  // unreachable: show no values then (conservative).
  if (!node->md || !node->md->valid() || g_cpp_active > 0) return 0;
  Items items;
  try {
    items = node->md->items();
  } catch (...) {
    return 0;  // out of memory: visit nothing (conservative)
  }
  for (const auto& [k, v] : items) {
    if (int rc = visit_value(v, 2, 0, visit, arg)) return rc;
  }
  return 0;
}

// Breaks a garbage cycle: the node is emptied (protected keys cannot be erased, but a node
// nobody can reach may be dropped whole).
int md_gc_clear(PyObject* self) {
  PyNode* n = node_of(self);
  std::optional<NodeMetadata> old_md = std::exchange(n->md, std::nullopt);
  PyObject* old_cache = n->cache;
  n->cache = nullptr;
  link_dirty(n);  // an empty node not in the C++ store
  Py_XDECREF(old_cache);
  old_md.reset();  // the old node's values are released here
  return 0;
}

void md_dealloc(PyObject* self) {
  PyTypeObject* tp = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  PyNode* n = node_of(self);
  // Out of the dirty list before any Python code can run here (weakref callbacks, and the
  // values' __del__ below): a flush of the store from one of them must not find this node.
  unlink_dirty(n);
  if (n->weakrefs != nullptr) PyObject_ClearWeakRefs(self);
  Py_CLEAR(n->cache);
  n->md.~optional();  // may release values: Python code can run
  Py_XDECREF(n->store);
  if (tp == g_node_type && g_free_list_ok && g_free_count < kFreeNodes && tp->tp_finalize == nullptr &&
      tp->tp_del == nullptr) {  // (a __del__ assigned to the class later: objects die as usual)
    n->dirty_next = g_free_nodes;  // untracked, and no field holds a reference any more
    g_free_nodes = n;
    ++g_free_count;
  } else {
    tp->tp_free(self);
  }
  Py_DECREF(tp);
}

// --- reads ---

// md[key] read from the C++ node (when the cache cannot answer): a new reference; `absent`
// (borrowed, returned as a new reference) when the key is not there, or nullptr with
// KeyError set when `absent` is nullptr.
PyObject* lookup_cpp(PyNode* n, PyObject* key, PyObject* absent) {
  std::optional<Key> k;
  if (!read_key(key, k)) return nullptr;
  if (k) {
    std::optional<Value> v;
    try {
      v = n->md->get(*k);
    } catch (...) {
      set_python_error();
      return nullptr;
    }
    if (v) return to_python(*v);
  }
  if (absent == nullptr) {
    set_key_error(key);
    return nullptr;
  }
  Py_INCREF(absent);
  return absent;
}

// md[key] (absent: see lookup_cpp).
PyObject* lookup(PyObject* self, PyObject* key, PyObject* absent) {
  PyNode* n = node_of(self);
  if (PyUnicode_CheckExact(key)) {
    const int f = fresh(n);
    if (f < 0) return nullptr;
    if (f > 0) {
      PyObject* v = n->cache != nullptr ? PyDict_GetItemWithError(n->cache, key) : nullptr;
      if (v != nullptr) {
        Py_INCREF(v);
        return v;
      }
      if (PyErr_Occurred()) return nullptr;
      if (absent == nullptr) {
        set_key_error(key);
        return nullptr;
      }
      Py_INCREF(absent);
      return absent;
    }
    return lookup_cpp(n, key, absent);
  }
  if (!PyUnicode_Check(key)) {  // not a str: never present; unhashable: TypeError, as dict
    if (PyObject_Hash(key) == -1) return nullptr;
    if (absent == nullptr) {
      set_key_error(key);
      return nullptr;
    }
    Py_INCREF(absent);
    return absent;
  }
  PyObject* text = PyUnicode_FromObject(key);  // a str subclass: looked up by its text
  if (text == nullptr) return nullptr;
  PyObject* r = lookup(self, text, nullptr);
  Py_DECREF(text);
  if (r == nullptr && absent != nullptr && PyErr_ExceptionMatches(PyExc_KeyError)) {
    PyErr_Clear();
    Py_INCREF(absent);
    return absent;
  }
  if (r == nullptr && absent == nullptr && PyErr_ExceptionMatches(PyExc_KeyError)) {
    PyErr_Clear();
    set_key_error(key);
  }
  return r;
}

PyObject* md_subscript(PyObject* self, PyObject* key) {
  PyNode* n = node_of(self);
  if (PyUnicode_CheckExact(key) && cache_fresh(n) && n->cache != nullptr) {  // the hot path
    PyObject* v = dict_get_str(n->cache, key);
    if (v != nullptr) {
      Py_INCREF(v);
      return v;
    }
    if (!PyErr_Occurred()) set_key_error(key);
    return nullptr;
  }
  return lookup(self, key, nullptr);
}

int md_contains(PyObject* self, PyObject* key) {
  PyNode* n = node_of(self);
  if (!PyUnicode_CheckExact(key)) {
    if (!PyUnicode_Check(key)) return PyObject_Hash(key) == -1 ? -1 : 0;
    PyObject* text = PyUnicode_FromObject(key);
    if (text == nullptr) return -1;
    const int r = md_contains(self, text);
    Py_DECREF(text);
    return r;
  }
  const int f = fresh(n);
  if (f < 0) return -1;
  if (f > 0) {
    if (n->cache == nullptr) return 0;
    bool failed;
    if (dict_get_str(n->cache, key, &failed) != nullptr) return 1;
    return failed ? -1 : 0;
  }
  std::optional<Key> k;
  if (!read_key(key, k)) return -1;
  if (!k) return 0;
  try {
    return n->md->contains(*k) ? 1 : 0;
  } catch (...) {
    set_python_error();
    return -1;
  }
}

Py_ssize_t md_length(PyObject* self) {
  PyNode* n = node_of(self);
  const int f = fresh(n);
  if (f < 0) return -1;
  if (f > 0) return n->cache != nullptr ? dict_size(n->cache) : 0;
  try {
    return static_cast<Py_ssize_t>(n->md->size());
  } catch (...) {
    set_python_error();
    return -1;
  }
}

// Puts a fresh cache in key-name order (a new dict, so iterators of the old one go on).
// False with an error set.
bool sort_cache(PyNode* n) {
  while (n->unsorted && n->cache != nullptr) {
    PyObject* orig = n->cache;
    const std::uint64_t tag = dict_tag(orig);
    Py_INCREF(orig);
    PyObject* keys = PyDict_Keys(orig);
    PyObject* sorted = nullptr;
    if (keys != nullptr && PyList_Sort(keys) == 0) {  // exact str keys: no Python code
      sorted = _PyDict_NewPresized(PyList_GET_SIZE(keys));
      for (Py_ssize_t i = 0; sorted != nullptr && i < PyList_GET_SIZE(keys); ++i) {
        PyObject* k = PyList_GET_ITEM(keys, i);
        PyObject* v = PyDict_GetItemWithError(orig, k);
        if (v == nullptr || PyDict_SetItem(sorted, k, v) != 0) Py_CLEAR(sorted);
      }
    }
    Py_XDECREF(keys);
    if (sorted == nullptr) {
      Py_DECREF(orig);
      if (!PyErr_Occurred()) continue;  // changed meanwhile
      return false;
    }
    if (n->cache == orig && dict_tag(orig) == tag) {
      n->cache = sorted;
      n->unsorted = false;
      Py_DECREF(orig);  // the node's reference
    } else {
      Py_DECREF(sorted);
    }
    Py_DECREF(orig);
  }
  return true;
}

// The node's entries, fresh and in key-name order, as a dict that stays as it is (the cache
// itself, a new reference: writes copy it first); or nullptr with no error set when the
// cache cannot answer (read C++ directly), or with an error set.
PyObject* iteration_dict(PyNode* n) {
  for (;;) {
    const int f = fresh(n);
    if (f <= 0) return nullptr;
    if (n->cache == nullptr) {
      if (!n->dirty) continue;
      return PyDict_New();
    }
    if (!sort_cache(n)) return nullptr;
    if (!cache_fresh(n) || n->cache == nullptr) continue;
    Py_INCREF(n->cache);
    return n->cache;
  }
}

// The C++ node's consistent snapshot; false with a Python exception set.
bool snapshot(PyNode* n, Items& items) {
  try {
    items = n->md->items();
    return true;
  } catch (...) {
    set_python_error();
    return false;
  }
}

// A consistent snapshot as a list: of (key, value) tuples, or of keys alone.
PyObject* snapshot_list(PyObject* self, bool values) {
  PyNode* n = node_of(self);
  PyObject* d = iteration_dict(n);
  if (d != nullptr) {
    PyObject* r = values ? PyDict_Items(d) : PyDict_Keys(d);
    Py_DECREF(d);
    return r;
  }
  if (PyErr_Occurred()) return nullptr;
  Items items;
  if (!snapshot(n, items)) return nullptr;
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(items.size()));
  if (list == nullptr) return nullptr;
  for (std::size_t i = 0; i < items.size(); ++i) {
    PyObject* element = key_object(items[i].first);
    if (element != nullptr && values) {
      PyObject* v = to_python(items[i].second);
      PyObject* pair = v != nullptr ? PyTuple_Pack(2, element, v) : nullptr;
      Py_DECREF(element);
      Py_XDECREF(v);
      element = pair;
    }
    if (element == nullptr) {
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), element);
  }
  return list;
}

PyObject* md_items_list(PyObject* self, PyObject* = nullptr) { return snapshot_list(self, true); }

// The snapshot as a new dict.
PyObject* md_dict(PyObject* self, PyObject* = nullptr) {
  PyNode* n = node_of(self);
  PyObject* d = iteration_dict(n);
  if (d != nullptr) {
    PyObject* copy = PyDict_Copy(d);
    Py_DECREF(d);
    return copy;
  }
  if (PyErr_Occurred()) return nullptr;
  PyObject* items = md_items_list(self);
  if (items == nullptr) return nullptr;
  PyObject* dict = PyDict_New();
  if (dict != nullptr && PyDict_MergeFromSeq2(dict, items, 1) != 0) Py_CLEAR(dict);
  Py_DECREF(items);
  return dict;
}

PyObject* node_dict(PyObject* self) { return md_dict(self); }

PyObject* md_keys_list(PyObject* self, PyObject* = nullptr) { return snapshot_list(self, false); }

// Whether a METH_FASTCALL method got between lo and hi arguments; TypeError if not.
bool arity(const char* name, Py_ssize_t nargs, Py_ssize_t lo, Py_ssize_t hi) {
  if (nargs >= lo && nargs <= hi) return true;
  if (lo == hi) {
    PyErr_Format(PyExc_TypeError, "%s expected %zd arguments, got %zd", name, lo, nargs);
  } else {
    PyErr_Format(PyExc_TypeError, "%s expected %zd or %zd arguments, got %zd", name, lo, hi, nargs);
  }
  return false;
}

// An iterator over a dict view of the node's entries (which: 0 keys, 1 values, 2 items), in
// key-name order, of the node as it is now (later writes copy the cache first).
PyObject* view_iter(PyObject* self, int which) {
  PyNode* n = node_of(self);
  PyObject* d = iteration_dict(n);
  if (d == nullptr) {
    if (PyErr_Occurred()) return nullptr;
    PyObject* list = which == 0 ? md_keys_list(self) : md_items_list(self);
    if (list == nullptr) return nullptr;
    if (which == 1) {  // values of the (key, value) pairs
      for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); ++i) {
        PyObject* pair = PyList_GET_ITEM(list, i);
        PyObject* v = PyTuple_GET_ITEM(pair, 1);
        Py_INCREF(v);
        PyList_SET_ITEM(list, i, v);
        Py_DECREF(pair);
      }
    }
    PyObject* it = PyObject_GetIter(list);
    Py_DECREF(list);
    return it;
  }
  PyObject* it = nullptr;
  if (which == 0) {
    it = PyObject_GetIter(d);
  } else {
    PyObject* view = _PyDictView_New(d, which == 1 ? &PyDictValues_Type : &PyDictItems_Type);
    if (view != nullptr) {
      it = PyObject_GetIter(view);
      Py_DECREF(view);
    }
  }
  Py_DECREF(d);
  return it;
}

PyObject* md_iter(PyObject* self) { return view_iter(self, 0); }
PyObject* md_iter_values(PyObject* self, PyObject*) { return view_iter(self, 1); }
PyObject* md_iter_items(PyObject* self, PyObject*) { return view_iter(self, 2); }

PyObject* md_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs == 1 && PyUnicode_CheckExact(args[0])) {  // the hot path
    PyNode* n = node_of(self);
    if (cache_fresh(n) && n->cache != nullptr) {
      bool failed;
      PyObject* v = dict_get_str(n->cache, args[0], &failed);
      if (v == nullptr) {
        if (failed) return nullptr;
        v = Py_None;
      }
      Py_INCREF(v);
      return v;
    }
  }
  if (!arity("get", nargs, 1, 2)) return nullptr;
  return lookup(self, args[0], nargs == 2 ? args[1] : Py_None);
}

// --- writes ---

// md[key] = value straight into the C++ node (the store's write_through count is up, or C++
// writers keep the node changing): the node is flushed first, so Python's writes reach C++
// in order. `mode`: 0 md[k] = v (protected: ProtectedKeyError), 1 try_set (returns the
// WriteResult in *result), 2 set_once (*result: 1 inserted, 0 not).
int write_cpp(PyNode* n, PyObject* key, PyObject* value, int mode, int* result) {
  Key k = keys::val;  // overwritten
  if (!write_key(key, k)) return -1;
  if (mode != 2 && n->pystore->store().is_protected(k)) {  // before converting
    if (mode == 1) {
      *result = static_cast<int>(WriteResult::kRejectedProtected);
      return 0;
    }
    set_protected_error(key);
    return -1;
  }
  Value v;
  if (!to_value(value, v)) return -1;  // may run Python code
  // Flushed right before the C++ write, with no Python code in between: C++ never writes
  // a dirty node.
  while (n->dirty) {
    if (!flush(n)) return -1;
  }
  try {
    if (mode == 2) {
      *result = n->md->set_once(k, std::move(v)) ? 1 : 0;
    } else {
      const WriteResult r = n->md->try_set(k, std::move(v));
      if (mode == 1) {
        *result = static_cast<int>(r);
      } else if (r == WriteResult::kRejectedProtected) {
        mark_stale(n);
        set_protected_error(key);  // protected by another thread since the check above
        return -1;
      }
    }
  } catch (...) {
    set_python_error();
    return -1;
  }
  mark_stale(n);
  return 0;
}

// del md[key] in the C++ node (see write_cpp).
int erase_cpp(PyNode* n, PyObject* key) {
  while (n->dirty) {
    if (!flush(n)) return -1;
  }
  std::optional<Key> k;
  if (!read_key(key, k)) return -1;
  try {
    if (k && n->md->store().is_protected(*k)) {
      set_protected_error(key);
      return -1;
    }
    if (k && n->md->erase(*k)) {
      mark_stale(n);
      return 0;
    }
  } catch (...) {
    set_python_error();
    return -1;
  }
  set_key_error(key);
  return -1;
}

int md_ass_subscript(PyObject* self, PyObject* key, PyObject* value) {
  drain_pending();  // references oneTBB workers handed over (usually none: one load)
  PyNode* n = node_of(self);
  // The hot path: md[k] = v on a dirty node whose cache is its own. prepare_write would
  // return kCache at once without running Python code, so one protection check suffices.
  if (value != nullptr && PyUnicode_CheckExact(key) && n->dirty && n->cache != nullptr &&
      Py_REFCNT(n->cache) == 1 && n->pystore->write_through == 0) {
    const int p = n->pystore->is_protected_name(key);
    if (p == 0) return cache_store(n, key, value);
    if (p > 0) set_protected_error(key);
    return -1;
  }
  if (!PyUnicode_CheckExact(key)) {
    if (value == nullptr && !PyUnicode_Check(key)) {
      if (PyObject_Hash(key) == -1) return -1;
      set_key_error(key);
      return -1;
    }
    PyObject* text = exact_key(key);
    if (text == nullptr) return -1;
    const int r = md_ass_subscript(self, text, value);
    Py_DECREF(text);
    return r;
  }
  const int p = n->pystore->is_protected_name(key);
  if (p != 0) {  // as the original: whether or not the key is present
    if (p > 0) set_protected_error(key);
    return -1;
  }
  switch (prepare_write(n)) {
    case Prepared::kError:
      return -1;
    case Prepared::kWriteThrough: {
      int unused = 0;
      return value != nullptr ? write_cpp(n, key, value, 0, &unused) : erase_cpp(n, key);
    }
    case Prepared::kCache:
      break;
  }
  // Again: prepare_write may have run Python code (a copy or a refresh that starts the
  // collector), so MetadataStore.protect(key) may have run since the check above.
  if (const int q = n->pystore->is_protected_name(key); q != 0) {
    if (q > 0) set_protected_error(key);
    return -1;
  }
  if (value == nullptr) return PyDict_DelItem(n->cache, key);  // KeyError(key) if absent
  return cache_store(n, key, value);
}

PyObject* md_try_set(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (!arity("try_set", nargs, 2, 2)) return nullptr;
  drain_pending();
  PyNode* n = node_of(self);
  py::object key = py::reinterpret_steal<py::object>(exact_key(args[0]));
  if (!key) return nullptr;
  const int p = n->pystore->is_protected_name(key.ptr());
  if (p < 0) return nullptr;
  int r = static_cast<int>(WriteResult::kRejectedProtected);
  if (p == 0) {
    switch (prepare_write(n)) {
      case Prepared::kError:
        return nullptr;
      case Prepared::kWriteThrough:
        if (write_cpp(n, key.ptr(), args[1], 1, &r) != 0) return nullptr;
        break;
      case Prepared::kCache: {
        const int q = n->pystore->is_protected_name(key.ptr());  // again: see md_ass_subscript
        if (q < 0) return nullptr;
        if (q > 0) break;  // kRejectedProtected
        const int present = PyDict_Contains(n->cache, key.ptr());
        if (present < 0 || cache_store(n, key.ptr(), args[1]) != 0) return nullptr;
        r = static_cast<int>(present ? WriteResult::kUpdated : WriteResult::kInserted);
        break;
      }
    }
  }
  PyObject* result = g_write_results[r];
  Py_INCREF(result);
  return result;
}

PyObject* md_set_once(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (!arity("set_once", nargs, 2, 2)) return nullptr;
  PyNode* n = node_of(self);
  py::object key = py::reinterpret_steal<py::object>(exact_key(args[0]));
  if (!key) return nullptr;
  int inserted = 0;
  switch (prepare_write(n)) {
    case Prepared::kError:
      return nullptr;
    case Prepared::kWriteThrough:
      if (write_cpp(n, key.ptr(), args[1], 2, &inserted) != 0) return nullptr;
      break;
    case Prepared::kCache: {
      const int present = PyDict_Contains(n->cache, key.ptr());
      if (present < 0) return nullptr;
      if (present == 0) {
        if (cache_store(n, key.ptr(), args[1]) != 0) return nullptr;
        inserted = 1;
      }
      break;
    }
  }
  return PyBool_FromLong(inserted);
}

// One atomic edit of the C++ node, the node flushed first and Python writes to its store
// sent to C++ meanwhile; false with the Python error set (a protected `key`:
// ProtectedKeyError naming it as Python spelled it).
template <class F>
bool edit_node(PyObject* self, PyObject* key, F&& fn) {
  PyNode* n = node_of(self);
  WriteThrough scope(n->pystore);
  NodeMetadata* md = synced(self);
  if (md == nullptr) return false;
  try {
    md->edit(std::forward<F>(fn));
    mark_stale(n);
    return true;
  } catch (const ProtectedKeyError&) {
    set_protected_error(key);
  } catch (...) {
    set_python_error();
  }
  mark_stale(n);
  return false;
}

// pop(key[, default]): atomic; a protected key present raises.
PyObject* md_pop(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (!arity("pop", nargs, 1, 2)) return nullptr;
  PyNode* n = node_of(self);
  if (PyUnicode_CheckExact(args[0]) && n->pystore->write_through == 0) {
    const int f = fresh(n);
    if (f < 0) return nullptr;
    if (f > 0) {
      PyObject* v = n->cache != nullptr ? PyDict_GetItemWithError(n->cache, args[0]) : nullptr;
      if (v == nullptr) {
        if (PyErr_Occurred()) return nullptr;
        if (nargs == 2) {
          Py_INCREF(args[1]);
          return args[1];
        }
        set_key_error(args[0]);
        return nullptr;
      }
      const int p = n->pystore->is_protected_name(args[0]);
      if (p != 0) {
        if (p > 0) set_protected_error(args[0]);
        return nullptr;
      }
      if (prepare_write(n) == Prepared::kCache) {
        if (const int q = n->pystore->is_protected_name(args[0]); q != 0) {  // again
          if (q > 0) set_protected_error(args[0]);
          return nullptr;
        }
        PyObject* found = PyDict_GetItemWithError(n->cache, args[0]);
        if (found != nullptr) {
          Py_INCREF(found);
          if (PyDict_DelItem(n->cache, args[0]) != 0) {
            Py_DECREF(found);
            return nullptr;
          }
          return found;
        }
        if (PyErr_Occurred()) return nullptr;
      }
      if (PyErr_Occurred()) return nullptr;
    }
  }
  std::optional<Key> k;
  if (!read_key(args[0], k)) return nullptr;
  std::optional<Value> old;
  if (k && !edit_node(self, args[0], [&](NodeEditor& e) {
        old = e.get(*k);
        if (old) e.erase(*k);
      })) {
    return nullptr;
  }
  if (old) return to_python(*old);
  if (nargs == 2) {
    Py_INCREF(args[1]);
    return args[1];
  }
  set_key_error(args[0]);
  return nullptr;
}

// setdefault(key, default=None): atomic; inserting a protected key raises.
PyObject* md_setdefault(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (!arity("setdefault", nargs, 1, 2)) return nullptr;
  PyObject* dflt = nargs == 2 ? args[1] : Py_None;
  PyNode* n = node_of(self);
  if (PyUnicode_CheckExact(args[0]) && n->pystore->write_through == 0) {
    const int f = fresh(n);
    if (f < 0) return nullptr;
    if (f > 0) {
      PyObject* v = n->cache != nullptr ? PyDict_GetItemWithError(n->cache, args[0]) : nullptr;
      if (v != nullptr) {
        Py_INCREF(v);
        return v;
      }
      if (PyErr_Occurred()) return nullptr;
      const int p = n->pystore->is_protected_name(args[0]);
      if (p != 0) {
        if (p > 0) set_protected_error(args[0]);
        return nullptr;
      }
      if (prepare_write(n) == Prepared::kCache) {
        v = PyDict_GetItemWithError(n->cache, args[0]);
        if (v == nullptr && !PyErr_Occurred()) {
          if (const int q = n->pystore->is_protected_name(args[0]); q != 0) {  // again
            if (q > 0) set_protected_error(args[0]);
            return nullptr;
          }
        }
        if (v == nullptr && !PyErr_Occurred() && cache_store(n, args[0], dflt) == 0) v = dflt;
        if (v == nullptr) return nullptr;
        Py_INCREF(v);
        return v;
      }
      if (PyErr_Occurred()) return nullptr;
    }
  }
  Key k = keys::val;  // overwritten
  if (!write_key(args[0], k)) return nullptr;
  Value v;
  if (!to_value(dflt, v)) return nullptr;
  std::optional<Value> present;
  if (!edit_node(self, args[0], [&](NodeEditor& e) {
        present = e.get(k);
        if (!present) e.set(k, v);
      })) {
    return nullptr;
  }
  if (present) return to_python(*present);
  Py_INCREF(dflt);
  return dflt;
}

// (key, value) pairs of a mapping, converted for a store (keys interned).
bool mapping_items(PyObject* data, std::vector<KeyValue>& out) {
  if (data == nullptr) return true;
  py::object dict;
  if (PyDict_Check(data)) {
    dict = py::reinterpret_borrow<py::object>(data);
  } else if (is_node(data)) {
    dict = py::reinterpret_steal<py::object>(md_dict(data));
    if (!dict) return false;
  } else {
    dict = py::reinterpret_steal<py::object>(PyDict_New());
    if (!dict) return false;
    const int rc = PyObject_HasAttrString(data, "keys") ? PyDict_Merge(dict.ptr(), data, 1)
                                                         : PyDict_MergeFromSeq2(dict.ptr(), data, 1);
    if (rc != 0) return false;
  }
  Py_ssize_t pos = 0;
  PyObject* k;
  PyObject* v;
  out.reserve(out.size() + static_cast<std::size_t>(PyDict_Size(dict.ptr())));
  while (PyDict_Next(dict.ptr(), &pos, &k, &v)) {
    Key key = keys::val;  // overwritten
    if (!write_key(k, key)) return false;
    Value value;
    if (!to_value(v, value)) return false;
    out.emplace_back(key, std::move(value));
  }
  return true;
}

// update(other=(), **kw): all or nothing; any protected key raises before anything is written.
PyObject* md_update(PyObject* self, PyObject* args, PyObject* kwds) {
  PyObject* other = nullptr;
  if (!PyArg_UnpackTuple(args, "update", 0, 1, &other)) return nullptr;
  PyNode* n = node_of(self);
  if (n->pystore->write_through == 0) {
    // Into the cache: the new entries checked first, then stored with no Python code between
    // (so all or nothing).
    py::object entries = py::reinterpret_steal<py::object>(cache_from(other));
    if (!entries) return nullptr;
    if (kwds != nullptr && PyDict_Merge(entries.ptr(), kwds, 1) != 0) return nullptr;
    Py_ssize_t pos = 0;
    PyObject* k;
    PyObject* v;
    while (PyDict_Next(entries.ptr(), &pos, &k, &v)) {
      const int p = n->pystore->is_protected_name(k);
      if (p != 0) {
        if (p > 0) set_protected_error(k);
        return nullptr;
      }
      if (!PyUnicode_CheckExact(k) || !valid_key(k)) {  // kwds keys (always str)
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "NodeMetadata keys must be str");
        return nullptr;
      }
    }
    switch (prepare_write(n)) {
      case Prepared::kError:
        return nullptr;
      case Prepared::kCache: {
        // The values replaced are released after the whole update, so no __del__ runs (and
        // lets another thread see the node) halfway through it.
        py::list replaced;
        pos = 0;
        while (PyDict_Next(entries.ptr(), &pos, &k, &v)) {
          PyObject* old = dict_get_str(n->cache, k);
          if (old != nullptr && PyList_Append(replaced.ptr(), old) != 0) return nullptr;
        }
        if (prepare_write(n) != Prepared::kCache) {  // the appends may have run the collector
          if (PyErr_Occurred()) return nullptr;
          break;
        }
        pos = 0;
        while (PyDict_Next(entries.ptr(), &pos, &k, &v)) {  // protect() may have run meanwhile
          const int q = n->pystore->is_protected_name(k);
          if (q != 0) {
            if (q > 0) set_protected_error(k);
            return nullptr;
          }
        }
        const Py_ssize_t before = dict_size(n->cache);
        if (PyDict_Update(n->cache, entries.ptr()) != 0) return nullptr;
        if (dict_size(n->cache) > before && before > 0) n->unsorted = true;
        if (before == 0 && dict_size(entries.ptr()) > 1) n->unsorted = true;
        Py_RETURN_NONE;
      }
      case Prepared::kWriteThrough:
        break;
    }
  }
  WriteThrough scope(n->pystore);
  std::vector<KeyValue> items;
  if (!mapping_items(other, items) || !mapping_items(kwds, items)) return nullptr;
  NodeMetadata* md = synced(self);
  if (md == nullptr) return nullptr;
  for (const auto& [k, v] : items) {
    if (md->store().is_protected(k)) {
      py::str name(std::string(k.name()));
      set_protected_error(name.ptr());
      return nullptr;
    }
  }
  try {
    md->edit([&](NodeEditor& e) {
      for (const auto& [k, v] : items) e.set(k, v);
    });
  } catch (...) {
    mark_stale(n);
    set_python_error();
    return nullptr;
  }
  mark_stale(n);
  Py_RETURN_NONE;
}

// clear(): all or nothing; a node holding a protected key raises.
PyObject* md_clear(PyObject* self, PyObject*) {
  PyNode* n = node_of(self);
  WriteThrough scope(n->pystore);
  NodeMetadata* md = synced(self);
  if (md == nullptr) return nullptr;
  try {
    md->edit([&](NodeEditor& e) {
      for (const auto& [name, v] : e.items()) e.erase(Key(name));
    });
  } catch (...) {
    mark_stale(n);
    set_python_error();
    return nullptr;
  }
  mark_stale(n);
  Py_RETURN_NONE;
}

// popitem(): removes and returns the last (key, value) in iteration order whose key is not
// protected; KeyError when empty, ProtectedKeyError when every key left is protected.
PyObject* md_popitem(PyObject* self, PyObject*) {
  PyNode* n = node_of(self);
  WriteThrough scope(n->pystore);
  NodeMetadata* md = synced(self);
  if (md == nullptr) return nullptr;
  std::optional<std::pair<std::string, Value>> popped;
  std::optional<std::string> blocked;
  try {
    md->edit([&](NodeEditor& e) {
      popped.reset();
      blocked.reset();
      Items items = e.items();
      for (auto it = items.rbegin(); it != items.rend(); ++it) {
        const Key k(it->first);
        if (md->store().is_protected(k)) {
          if (!blocked) blocked = it->first;
          continue;
        }
        e.erase(k);
        popped.emplace(std::move(*it));
        return;
      }
    });
  } catch (...) {
    mark_stale(n);
    set_python_error();
    return nullptr;
  }
  mark_stale(n);
  if (!popped) {
    if (blocked) {
      py::str name(*blocked);
      set_protected_error(name.ptr());
    } else {
      PyErr_SetString(PyExc_KeyError, "popitem(): NodeMetadata is empty");
    }
    return nullptr;
  }
  PyObject* k = key_object(popped->first);
  PyObject* v = k != nullptr ? to_python(popped->second) : nullptr;
  PyObject* pair = v != nullptr ? PyTuple_Pack(2, k, v) : nullptr;
  Py_XDECREF(k);
  Py_XDECREF(v);
  return pair;
}

// --- copies, comparison, repr, pickle ---

// copy(): a new node of the same store sharing this one's cache dict (either copies it
// before its first write); in the C++ store once C++ needs it.
PyObject* md_copy(PyObject* self, PyObject* = nullptr) {
  PyNode* n = node_of(self);
  const int f = fresh(n);
  if (f < 0) return nullptr;
  if (f > 0) {
    PyObject* cache = n->cache;
    Py_XINCREF(cache);
    return new_node(Py_TYPE(self), n->store, n->pystore, std::nullopt, cache, n->unsorted);
  }
  try {
    return new_node(Py_TYPE(self), n->store, n->pystore, n->md->copy(), nullptr, false);
  } catch (...) {
    set_python_error();
    return nullptr;
  }
}

PyObject* md_deepcopy(PyObject* self, PyObject* memo) {
  PyNode* node = node_of(self);
  PyObject* result = new_node(Py_TYPE(self), node->store, node->pystore, std::nullopt, nullptr, false);
  if (result == nullptr) return nullptr;
  py::object guard = py::reinterpret_steal<py::object>(result);
  try {
    py::object copy_module = py::module_::import("copy");
    py::object deepcopy = copy_module.attr("deepcopy");
    py::object py_memo = py::reinterpret_borrow<py::object>(memo);
    if (!py_memo.is_none()) {
      // Registered before the values are copied, so a value that refers back to this node
      // gets the copy (as dict's deepcopy does).
      py_memo[py::int_(reinterpret_cast<std::uintptr_t>(self))] = guard;
    }
    py::list items = py::reinterpret_steal<py::list>(md_items_list(self));
    if (!items) throw py::error_already_set();
    py::dict entries;
    for (py::handle item : items) {
      py::tuple pair = py::reinterpret_borrow<py::tuple>(item);
      entries[pair[0]] = deepcopy(pair[1], py_memo);
    }
    // The copy is new and not in the C++ store: its entries (protected ones too) are its cache.
    PyNode* target = node_of(result);
    PyObject* cache = cache_from(entries.ptr());
    if (cache == nullptr) throw py::error_already_set();
    if (target->cache == nullptr && !target->md) {
      target->cache = cache;
      target->unsorted = false;
    } else {
      Py_DECREF(cache);
      for (auto [k, v] : entries) guard.attr("set_once")(k, v);  // written meanwhile (rare)
    }
  } catch (...) {
    set_python_error();
    return nullptr;
  }
  return guard.release().ptr();
}

// Pickled as (type, (), entries) (nodemeta.NodeMetadata overrides it with __reduce_ex__, to
// keep a subclass's state and not call __init__): the node is memoized before its entries
// are pickled, so a node holding itself round-trips. It unpickles into the default store.
PyObject* md_reduce(PyObject* self, PyObject*) {
  PyObject* data = md_dict(self);
  if (data == nullptr) return nullptr;
  return Py_BuildValue("(O()N)", reinterpret_cast<PyObject*>(Py_TYPE(self)), data);
}

// __setstate__(entries): every entry added (protected ones included: the node is being
// built), replacing the value of a key already present unless that key is protected.
PyObject* md_setstate(PyObject* self, PyObject* state) {
  if (!PyDict_Check(state)) {
    PyErr_SetString(PyExc_TypeError, "NodeMetadata.__setstate__ expects a dict");
    return nullptr;
  }
  PyNode* n = node_of(self);
  auto empty_new = [n] { return !n->md && (n->cache == nullptr || dict_size(n->cache) == 0); };
  if (empty_new()) {  // a new node (as unpickling makes): its cache
    PyObject* cache = cache_from(state);
    if (cache == nullptr) return nullptr;
    if (empty_new()) {
      PyObject* old = n->cache;
      n->cache = cache;
      n->unsorted = dict_size(cache) > 1;
      Py_XDECREF(old);
      Py_RETURN_NONE;
    }
    Py_DECREF(cache);
  }
  WriteThrough scope(n->pystore);
  std::vector<KeyValue> items;
  if (!mapping_items(state, items)) return nullptr;
  try {
    for (auto& [k, v] : items) {
      NodeMetadata* md = synced(self);  // again each time: a write may run Python code
      if (md == nullptr) return nullptr;
      if (!md->set_once(k, v) && md->try_set(k, v) == WriteResult::kRejectedProtected) {
        mark_stale(n);
        py::str name(std::string(k.name()));
        set_protected_error(name.ptr());
        return nullptr;
      }
    }
  } catch (...) {
    mark_stale(n);
    set_python_error();
    return nullptr;
  }
  mark_stale(n);
  Py_RETURN_NONE;
}

PyObject* md_reversed(PyObject* self, PyObject*) {
  PyObject* keys = md_keys_list(self);
  if (keys == nullptr) return nullptr;
  if (PyList_Reverse(keys) != 0) {
    Py_DECREF(keys);
    return nullptr;
  }
  PyObject* it = PyObject_GetIter(keys);
  Py_DECREF(keys);
  return it;
}

PyObject* md_richcompare(PyObject* self, PyObject* other, int op) {
  if (op != Py_EQ && op != Py_NE) Py_RETURN_NOTIMPLEMENTED;
  py::object mine = py::reinterpret_steal<py::object>(md_dict(self));
  if (!mine) return nullptr;
  py::object theirs;
  if (PyDict_Check(other)) {
    theirs = py::reinterpret_borrow<py::object>(other);
  } else if (is_node(other)) {
    theirs = py::reinterpret_steal<py::object>(md_dict(other));
    if (!theirs) return nullptr;
  } else {
    try {
      py::object mapping = py::module_::import("collections.abc").attr("Mapping");
      if (!py::isinstance(py::handle(other), mapping)) Py_RETURN_NOTIMPLEMENTED;
      theirs = py::dict(py::reinterpret_borrow<py::object>(other));
    } catch (...) {
      set_python_error();
      return nullptr;
    }
  }
  return PyObject_RichCompare(mine.ptr(), theirs.ptr(), op);
}

PyObject* md_repr(PyObject* self) {
  const int rc = Py_ReprEnter(self);
  if (rc != 0) return rc > 0 ? PyUnicode_FromFormat("%s(...)", _PyType_Name(Py_TYPE(self))) : nullptr;
  PyObject* d = md_dict(self);
  PyObject* result = d != nullptr ? PyUnicode_FromFormat("%s(%R)", _PyType_Name(Py_TYPE(self)), d) : nullptr;
  Py_XDECREF(d);
  Py_ReprLeave(self);
  return result;
}

// The views (nodemeta's KeysView, ValuesView, ItemsView subclasses) are made here without
// calling their Python __init__: the mapping goes straight into MappingView's `_mapping`
// slot (its offset read from the slot's descriptor by _set_node_type).
Py_ssize_t g_mapping_offset = 0;

PyObject* make_view(PyObject* self, int which) {
  if (g_views == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "nodemeta: views not initialised (import nodemeta)");
    return nullptr;
  }
  auto* tp = reinterpret_cast<PyTypeObject*>(PyTuple_GET_ITEM(g_views, which));
  if (g_mapping_offset <= 0) return PyObject_CallOneArg(reinterpret_cast<PyObject*>(tp), self);
  PyObject* view = tp->tp_alloc(tp, 0);
  if (view == nullptr) return nullptr;
  Py_INCREF(self);
  *reinterpret_cast<PyObject**>(reinterpret_cast<char*>(view) + g_mapping_offset) = self;
  return view;
}

// tp_iter of the views' C bases: the node's own iterators (keys, values, items).
template <int Which>
PyObject* view_type_iter(PyObject* view) {
  PyObject* m = g_mapping_offset > 0
                    ? *reinterpret_cast<PyObject**>(reinterpret_cast<char*>(view) + g_mapping_offset)
                    : nullptr;
  if (m == nullptr || !is_node(m)) {
    PyErr_SetString(PyExc_TypeError, "nodemeta view: not a view of a NodeMetadata");
    return nullptr;
  }
  return view_iter(m, Which);
}

PyType_Slot g_keys_iter_slots[] = {{Py_tp_iter, reinterpret_cast<void*>(view_type_iter<0>)}, {0, nullptr}};
PyType_Slot g_values_iter_slots[] = {{Py_tp_iter, reinterpret_cast<void*>(view_type_iter<1>)}, {0, nullptr}};
PyType_Slot g_items_iter_slots[] = {{Py_tp_iter, reinterpret_cast<void*>(view_type_iter<2>)}, {0, nullptr}};
PyType_Spec g_view_specs[] = {
    {"nodemeta._core._KeysIter", sizeof(PyObject), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, g_keys_iter_slots},
    {"nodemeta._core._ValuesIter", sizeof(PyObject), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, g_values_iter_slots},
    {"nodemeta._core._ItemsIter", sizeof(PyObject), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, g_items_iter_slots},
};

// NodeMetadata(data=None) called with at most one positional argument: made here, without
// the argument tuple type_call builds (set as nodemeta.NodeMetadata's tp_vectorcall).
PyObject* md_vectorcall(PyObject* callable, PyObject* const* args, std::size_t nargsf, PyObject* kwnames) {
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  auto* tp = reinterpret_cast<PyTypeObject*>(callable);
  if (kwnames != nullptr || nargs > 1 || tp->tp_init != md_init || tp->tp_new != md_new) {
    PyObject* tuple = PyTuple_New(nargs);
    if (tuple == nullptr) return nullptr;
    for (Py_ssize_t i = 0; i < nargs; ++i) {
      Py_INCREF(args[i]);
      PyTuple_SET_ITEM(tuple, i, args[i]);
    }
    PyObject* kw = nullptr;
    if (kwnames != nullptr) {
      kw = PyDict_New();
      for (Py_ssize_t i = 0; kw != nullptr && i < PyTuple_GET_SIZE(kwnames); ++i) {
        if (PyDict_SetItem(kw, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) != 0) Py_CLEAR(kw);
      }
      if (kw == nullptr) {
        Py_DECREF(tuple);
        return nullptr;
      }
    }
    PyObject* r = PyType_Type.tp_call(callable, tuple, kw);
    Py_DECREF(tuple);
    Py_XDECREF(kw);
    return r;
  }
  PyObject* data = nargs == 1 && args[0] != Py_None ? args[0] : nullptr;
  PyObject* cache = nullptr;
  if (data != nullptr) {
    cache = cache_from(data);
    if (cache == nullptr) return nullptr;
  }
  const bool unsorted = cache != nullptr && dict_size(cache) > 1;
  return new_node(tp, g_default_store, g_default_pystore, std::nullopt, cache, unsorted);
}
PyObject* md_keys(PyObject* self, PyObject*) { return make_view(self, 0); }
PyObject* md_values(PyObject* self, PyObject*) { return make_view(self, 1); }
PyObject* md_items(PyObject* self, PyObject*) { return make_view(self, 2); }

PyObject* md_get_store(PyObject* self, void*) {
  PyObject* s = node_of(self)->store;
  Py_INCREF(s);
  return s;
}
PyObject* md_get_id(PyObject* self, void*) {
  NodeMetadata* md = synced(self);  // a node gets its id when it enters the C++ store
  if (md == nullptr) return nullptr;
  return PyLong_FromUnsignedLongLong(md->id());
}

PyMethodDef g_methods[] = {
    {"get", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(md_get)), METH_FASTCALL,
     "get(key, default=None): the value of key, or default."},
    {"pop", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(md_pop)), METH_FASTCALL,
     "pop(key[, default]): remove key and return its value (atomic). A protected key raises."},
    {"setdefault", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(md_setdefault)),
     METH_FASTCALL, "setdefault(key, default=None): the value of key, inserting default if absent (atomic)."},
    {"update", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(md_update)),
     METH_VARARGS | METH_KEYWORDS,
     "update(other=(), **kw): set every pair at once; a protected key raises and writes nothing."},
    {"clear", md_clear, METH_NOARGS, "clear(): remove every key (all or nothing; protected keys raise)."},
    {"popitem", md_popitem, METH_NOARGS, "popitem(): remove and return the last unprotected (key, value)."},
    {"keys", md_keys, METH_NOARGS, "A view of the keys."},
    {"values", md_values, METH_NOARGS, "A view of the values."},
    {"items", md_items, METH_NOARGS, "A view of the (key, value) pairs."},
    {"copy", md_copy, METH_NOARGS, "copy(): a new, independent node in the same store (shallow, like dict.copy)."},
    {"__copy__", md_copy, METH_NOARGS, nullptr},
    {"__deepcopy__", md_deepcopy, METH_O, nullptr},
    {"__reduce__", md_reduce, METH_NOARGS, nullptr},
    {"__setstate__", md_setstate, METH_O, nullptr},
    {"__reversed__", md_reversed, METH_NOARGS, nullptr},
    {"try_set", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(md_try_set)), METH_FASTCALL,
     "try_set(key, value) -> WriteResult: write unless key is protected; never raises for protection."},
    {"set_once", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(md_set_once)), METH_FASTCALL,
     "set_once(key, value) -> bool: insert only if absent (also a protected key); True iff inserted."},
    {"_items", md_items_list, METH_NOARGS, "A consistent snapshot: a list of (key, value) pairs."},
    {"_dict", md_dict, METH_NOARGS, "A consistent snapshot as a new dict."},
    {"_iter_values", md_iter_values, METH_NOARGS, "An iterator over the values (iteration order)."},
    {"_iter_items", md_iter_items, METH_NOARGS, "An iterator over the (key, value) pairs (iteration order)."},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef g_getset[] = {
    {"store", md_get_store, nullptr, "The MetadataStore this node lives in.", nullptr},
    {"id", md_get_id, nullptr, "The node's id in its store.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyMemberDef g_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(PyNode, weakrefs), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr}};

PyType_Slot g_slots[] = {
    {Py_tp_new, reinterpret_cast<void*>(md_new)},
    {Py_tp_init, reinterpret_cast<void*>(md_init)},
    {Py_tp_members, g_members},
    {Py_tp_dealloc, reinterpret_cast<void*>(md_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(md_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(md_gc_clear)},
    {Py_mp_subscript, reinterpret_cast<void*>(md_subscript)},
    {Py_mp_ass_subscript, reinterpret_cast<void*>(md_ass_subscript)},
    {Py_mp_length, reinterpret_cast<void*>(md_length)},
    {Py_sq_contains, reinterpret_cast<void*>(md_contains)},
    {Py_tp_iter, reinterpret_cast<void*>(md_iter)},
    {Py_tp_richcompare, reinterpret_cast<void*>(md_richcompare)},
    {Py_tp_hash, reinterpret_cast<void*>(PyObject_HashNotImplemented)},
    {Py_tp_repr, reinterpret_cast<void*>(md_repr)},
    {Py_tp_methods, g_methods},
    {Py_tp_getset, g_getset},
    {Py_tp_doc, const_cast<char*>("The C implementation behind nodemeta.NodeMetadata.")},
    {0, nullptr}};

PyType_Spec g_spec = {"nodemeta._core.NodeMetadataBase", sizeof(PyNode), 0,
                      Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, g_slots};

// --- run_passes ------------------------------------------------------------------------

struct FxNode {
  std::string name, op, target;
  std::vector<std::size_t> inputs;
  py::object meta;
};

py::list run_passes(py::object store_obj, std::vector<FxNode> nodes, std::vector<std::string> names,
                    std::optional<int> threads, std::optional<bool> training, py::dict attrs) {
  MetadataStore& store = py::cast<PyStore&>(store_obj).store();
  for (const std::string& n : names) {
    if (n == "fuse") {
      throw std::invalid_argument(
          "run_passes: 'fuse' rewrites the graph and is not supported on torch.fx graphs "
          "(run it with the nodemeta command on a saved graph file)");
    }
    (void)passes::make_pass(n);  // unknown names: std::invalid_argument listing the valid ones
  }
  if (threads && *threads < 1) throw std::invalid_argument("run_passes: threads must be >= 1");
  PyStore& py_store = py::cast<PyStore&>(store_obj);
  for (FxNode& n : nodes) {
    if (!is_node(n.meta.ptr())) {
      throw std::invalid_argument("run_passes: node '" + n.name + "' has no nodemeta.NodeMetadata (attach the graph first)");
    }
    if (node_of(n.meta.ptr())->pystore != &py_store) {
      throw std::invalid_argument("run_passes: node '" + n.name + "' lives in another MetadataStore");
    }
  }
  // From here until the passes end, Python writes to this store go to C++ at once; the
  // nodes' earlier Python writes are flushed into C++ first (a flush may run Python code, so
  // other threads, whose writes then go to C++ too).
  // passes_in_flight is counted from here too: no node is reset (__init__) meanwhile.
  WriteThrough scope(&py_store);
  struct InFlight {
    PyStore& s;
    explicit InFlight(PyStore& store) : s(store) { ++s.passes_in_flight; }
    ~InFlight() { --s.passes_in_flight; }
  } in_flight(py_store);
  graph::Graph g = graph::Graph::over(store);
  std::vector<graph::Node> gnodes;
  gnodes.reserve(nodes.size());
  for (bool again = true; again;) {  // until none is dirty (none should be after one round)
    again = false;
    for (FxNode& n : nodes) {
      if (synced(n.meta.ptr()) == nullptr) throw py::error_already_set();
    }
    for (FxNode& n : nodes) again = again || node_of(n.meta.ptr())->dirty;
  }
  for (FxNode& n : nodes) {
    PyNode* pn = node_of(n.meta.ptr());
    gnodes.push_back(graph::Node{std::move(n.name), std::move(n.op), std::move(n.target),
                                 std::move(n.inputs), pn->md->view()});
  }
  g.replace_nodes(std::move(gnodes));
  if (training) g.attrs().emplace_back(std::string(passes::graph_attrs::kTraining), Value(*training));
  for (auto [k, v] : attrs) {  // further graph attributes ("modules", "calls"), as a file's top-level fields
    Value value;
    if (!to_value(v.ptr(), value)) throw py::error_already_set();
    g.attrs().emplace_back(py::cast<std::string>(k), std::move(value));
  }
  std::vector<passes::PassStats> stats;
  {
    // `nodes` keeps every NodeMetadata object (so every viewed node) alive meanwhile. The GIL
    // is released and taken back here, not by a destructor: a daemon thread that takes it
    // back while the interpreter finalizes is stopped by a forced unwind, which must not
    // meet a noexcept frame.
    std::exception_ptr error;
    ++g_cpp_active;
    PyThreadState* saved = PyEval_SaveThread();
    try {
      tbb::task_arena arena(threads ? *threads : tbb::task_arena::automatic);
      arena.execute([&] {
        std::optional<passes::Baseline> baseline;
        baseline.emplace(g);
        for (const std::string& n : names) {
          auto pass = passes::make_pass(n);
          stats.push_back(passes::run_pass(*pass, g, &*baseline));
        }
      });
    } catch (...) {
      error = std::current_exception();
    }
    PyEval_RestoreThread(saved);
    --g_cpp_active;
    // The caches of nodes the passes changed would keep the objects they replaced alive
    // until the next read: dropped now.
    for (const FxNode& n : nodes) {
      PyNode* pn = node_of(n.meta.ptr());
      if (!pn->dirty && pn->md->version() != pn->cache_version) {
        mark_stale(pn);
        pn->stale_ops = 0;  // C++ wrote it: the next operations go through C++
      }
    }
    drain_pending();
    if (error) std::rethrow_exception(error);
  }
  py::list out;
  for (const passes::PassStats& s : stats) {
    py::dict d;
    d["name"] = s.name;
    d["nodes_touched"] = s.nodes_touched;
    d["rejected_protected"] = s.rejected_protected;
    d["nodes_before"] = s.nodes_before;
    d["nodes_after"] = s.nodes_after;
    d["seconds"] = s.seconds;
    d["summary"] = s.summary;
    d["problems"] = s.problems;
    out.append(d);
  }
  return out;
}

// release_retired_values() with the GIL released (it waits for reads in flight), taken back
// in the function body (see run_passes), then the references it handed over dropped.
std::size_t release_without_gil() {
  ++g_cpp_active;
  PyThreadState* saved = PyEval_SaveThread();
  std::size_t n = 0;
  try {
    n = release_retired_values();
  } catch (...) {
    PyEval_RestoreThread(saved);
    --g_cpp_active;
    throw;
  }
  PyEval_RestoreThread(saved);
  --g_cpp_active;
  drain_pending();
  return n;
}

// --- C++ user objects ------------------------------------------------------------------

struct CppValue {
  Value value;
};

}  // namespace

PyObject* wrap_cpp_value(const Value& v) {
  try {
    return py::cast(CppValue{v}).release().ptr();
  } catch (...) {
    set_python_error();
    return nullptr;
  }
}

bool unwrap_cpp_value(PyObject* o, Value& out) {
  static PyTypeObject* tp = nullptr;
  if (tp == nullptr) {
    py::handle h = py::detail::get_type_handle(typeid(CppValue), false);
    if (!h) return false;
    tp = reinterpret_cast<PyTypeObject*>(h.ptr());
  }
  if (Py_TYPE(o) != tp) return false;
  out = py::cast<const CppValue&>(py::handle(o)).value;
  return true;
}

}  // namespace nodemeta::python

PYBIND11_MODULE(_core, m) {
  using namespace nodemeta;
  using namespace nodemeta::python;
  m.doc() = "nodemeta's C++ core (use the nodemeta package).";
  m.attr("__version__") = NODEMETA_VERSION_STRING;

  py::object runtime_error = py::reinterpret_borrow<py::object>(PyExc_RuntimeError);
  g_protected_error = PyErr_NewExceptionWithDoc(
      "nodemeta.ProtectedKeyError",
      "A write to a protected key (a RuntimeError, as PyTorch's NodeMetadata raises).",
      PyExc_RuntimeError, nullptr);
  if (g_protected_error == nullptr) throw py::error_already_set();
  m.attr("ProtectedKeyError") = py::handle(g_protected_error);

  py::enum_<WriteResult> wr(m, "WriteResult", "What try_set did.");
  wr.value("INSERTED", WriteResult::kInserted)
      .value("UPDATED", WriteResult::kUpdated)
      .value("REJECTED_PROTECTED", WriteResult::kRejectedProtected);
  g_write_results[0] = wr.attr("INSERTED").ptr();
  g_write_results[1] = wr.attr("UPDATED").ptr();
  g_write_results[2] = wr.attr("REJECTED_PROTECTED").ptr();
  for (PyObject* r : g_write_results) Py_INCREF(r);

  py::class_<CppValue>(m, "CppValue", "A C++ object stored by C++ code; stored back, it is the same value.")
      .def_property_readonly("type_name", [](const CppValue& v) { return v.value.type_name(); })
      .def("__repr__", [](const CppValue& v) { return v.value.repr(); })
      .def("__eq__", [](const CppValue& a, const CppValue& b) { return a.value == b.value; });

  py::class_<PyStore>(m, "MetadataStore",
                      "A store of node metadata: MetadataStore(protected_keys=None). None means "
                      "PyTorch's five (val, stack_trace, nn_module_stack, debug_handle, tensor_meta).")
      .def(py::init<py::object>(), py::arg("protected_keys") = py::none())
      .def("create",
           [](py::object self, py::object data) {
             PyObject* r = create_in(node_type(), self.ptr(), &py::cast<PyStore&>(self), data.ptr());
             if (r == nullptr) throw py::error_already_set();
             return py::reinterpret_steal<py::object>(r);
           },
           py::arg("data") = py::none(), "A new node in this store holding a copy of data (protected keys allowed).")
      .def("protect",
           [](PyStore& s, const std::string& k) {
             // Python writes made so far reach the C++ nodes before the key is protected
             // (they happened before it), and writes made meanwhile go to C++ at once.
             WriteThrough scope(&s);
             if (!flush_all(&s)) throw py::error_already_set();
             s.protect(Key(k));
           },
           py::arg("key"),
           "Protect key from now on, in every node of this store.")
      .def("is_protected",
           [](PyStore& s, py::handle key) {
             std::optional<Key> k;
             if (!read_key(key.ptr(), k)) throw py::error_already_set();
             return k.has_value() && s.store().is_protected(*k);
           },
           py::arg("key"))
      .def_property_readonly("node_count",
                             [](PyStore& s) {
                               if (!flush_all(&s)) throw py::error_already_set();  // nodes Python made
                               return s.store().node_count();
                             })
      .def_property_readonly("protected_keys", [](PyStore& s) { return s.store().protected_keys(); })
      .def("__repr__", [](PyStore& s) {
        return std::string(s.is_default() ? "<nodemeta default MetadataStore" : "<nodemeta MetadataStore") +
               ", " + std::to_string(s.store().node_count()) + " nodes>";
      });

  py::object default_store = py::cast(PyStore(MetadataStore::default_store()));
  g_default_pystore = &py::cast<PyStore&>(default_store);
  g_default_store = default_store.release().ptr();
  m.attr("default_store") = py::handle(g_default_store);

  PyObject* base = PyType_FromSpec(&g_spec);
  if (base == nullptr) throw py::error_already_set();
  g_base_type = reinterpret_cast<PyTypeObject*>(base);
  m.attr("NodeMetadataBase") = py::handle(base);
  m.attr("_KeysIter") = py::reinterpret_steal<py::object>(PyType_FromSpec(&g_view_specs[0]));
  m.attr("_ValuesIter") = py::reinterpret_steal<py::object>(PyType_FromSpec(&g_view_specs[1]));
  m.attr("_ItemsIter") = py::reinterpret_steal<py::object>(PyType_FromSpec(&g_view_specs[2]));

  m.def("_set_node_type", [](py::object tp, py::tuple views) {
    if (!PyType_Check(tp.ptr()) || !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(tp.ptr()), g_base_type)) {
      throw py::type_error("_set_node_type: not a NodeMetadataBase subclass");
    }
    Py_INCREF(tp.ptr());
    g_node_type = reinterpret_cast<PyTypeObject*>(tp.ptr());
    // NodeMetadata(...) without type_call's argument tuple (tp_vectorcall is what calling a
    // class whose metaclass is `type` uses when set; never inherited by subclasses).
    if (Py_TYPE(tp.ptr()) == &PyType_Type) g_node_type->tp_vectorcall = md_vectorcall;
    clear_free_nodes();
    g_free_list_ok = g_node_type->tp_basicsize == static_cast<Py_ssize_t>(sizeof(PyNode)) &&
                     g_node_type->tp_itemsize == 0 && g_node_type->tp_dictoffset == 0 &&
                     (g_node_type->tp_flags & Py_TPFLAGS_MANAGED_DICT) == 0 &&
                     g_node_type->tp_alloc == PyType_GenericAlloc && g_node_type->tp_free == PyObject_GC_Del;
    // The methods again, as descriptors of this class: CPython 3.11 specializes a call of a
    // C method (PRECALL_NO_KW_METHOD_DESCRIPTOR_*) only when the instance's type is exactly
    // the descriptor's, so md.get(k) on a NodeMetadata took the generic call through the
    // base's descriptor (5-9 ns more). Methods the class defines itself are left alone;
    // instances of further subclasses take the generic path, as before.
    for (PyMethodDef* def = g_methods; def->ml_name != nullptr; ++def) {
      // Only where the class would find this very C method (the base's descriptor, or one
      // bound here to a class above): not one the class or a class between defines.
      py::object name = py::reinterpret_steal<py::object>(PyUnicode_InternFromString(def->ml_name));
      if (!name) throw py::error_already_set();
      PyObject* found = _PyType_Lookup(g_node_type, name.ptr());
      if (found == nullptr || !Py_IS_TYPE(found, &PyMethodDescr_Type) ||
          reinterpret_cast<PyMethodDescrObject*>(found)->d_method != def) {
        continue;
      }
      py::object descr = py::reinterpret_steal<py::object>(PyDescr_NewMethod(g_node_type, def));
      if (!descr || PyObject_SetAttrString(tp.ptr(), def->ml_name, descr.ptr()) != 0) {
        throw py::error_already_set();
      }
    }
    Py_INCREF(views.ptr());
    Py_XSETREF(g_views, views.ptr());
    py::object slot = py::module_::import("collections.abc").attr("MappingView").attr("__dict__")["_mapping"];
    if (Py_TYPE(slot.ptr()) == &PyMemberDescr_Type) {
      const PyMemberDef* member = reinterpret_cast<PyMemberDescrObject*>(slot.ptr())->d_member;
      if (member->type == T_OBJECT_EX) g_mapping_offset = member->offset;
    }
  });
  // An empty node of type tp (a NodeMetadataBase subclass) in store, __init__ not called
  // (what unpickling a NodeMetadata builds before its entries are set).
  m.def("_new_in", [](py::handle tp, py::handle store) {
    if (!PyType_Check(tp.ptr()) || !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(tp.ptr()), g_base_type)) {
      throw py::type_error("_new_in: not a NodeMetadataBase subclass");
    }
    if (!py::isinstance<PyStore>(store)) throw py::type_error("_new_in: not a MetadataStore");
    PyObject* r = create_in(reinterpret_cast<PyTypeObject*>(tp.ptr()), store.ptr(), &py::cast<PyStore&>(store), nullptr);
    if (r == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(r);
  });
  m.def("_free_node_count", [] { return g_free_count; }, "How many nodes the free list keeps (for tests).");
  m.def("_set_converter_hook", [](py::object fn) { set_converter_hook(fn.ptr()); });
  m.def("_shutdown", [] {
    clear_caches();
    clear_free_nodes();
    clear_valid_keys();
    clear_key_objects();
    release_without_gil();
    shut_down_handover();
  });
  m.def("release_retired_values", &release_without_gil,
        "Release every value that writes replaced or erased (they are released in batches "
        "otherwise); returns how many.");
  m.def("_handed_over", &handed_over_count,
        "How many Python references threads without the GIL have handed over so far (tests).");
  // The hand-over's test hooks (tests/python/test_handover.py).
  m.def("_pause_next_handover", &pause_next_handover, py::arg("timeout_s"),
        "The next hand-over stops after queuing its reference, before scheduling the pending "
        "call, until _resume_handover() or timeout_s (tests).");
  m.def("_resume_handover", &resume_handover);
  m.def("_handover_paused", &handover_paused);
  m.def("_handover_state", [] {
    HandoverState st;
    {
      py::gil_scoped_release unlocked;  // a paused hand-over holds its lock meanwhile
      st = handover_state();
    }
    py::dict d;
    d["pending"] = st.pending;
    d["call_scheduled"] = st.call_scheduled;
    d["late_calls"] = st.late_calls;
    return d;
  });

  // What C++ code sees of a stored value (for tests and debugging): kind, type_name, repr.
  m.def("_cpp_view", [](py::handle md, const std::string& key) {
    if (!is_node(md.ptr())) throw py::type_error("_cpp_view: not a NodeMetadata");
    NodeMetadata* node = synced(md.ptr());
    if (node == nullptr) throw py::error_already_set();
    const Value v = node->at(Key(key));
    static const char* const kKinds[] = {"none", "bool", "int", "double", "string", "list", "dict", "object"};
    return py::make_tuple(kKinds[static_cast<int>(v.kind())], v.type_name(), v.repr());
  });
  // Protects key in the C++ store only, leaving the names Python writes check as they were
  // (tests: what C++ code protecting a key on its own would do; see flush()).
  m.def("_protect_cpp_only", [](PyStore& s, const std::string& key) { s.store().protect(Key(key)); });
  // v.as<T>() from C++, T in int, double, bool, str: BadValueCast becomes TypeError.
  m.def("_cpp_as", [](py::handle md, const std::string& key, const std::string& type) -> py::object {
    if (!is_node(md.ptr())) throw py::type_error("_cpp_as: not a NodeMetadata");
    NodeMetadata* node = synced(md.ptr());
    if (node == nullptr) throw py::error_already_set();
    const Value v = node->at(Key(key));
    if (type == "int") return py::int_(v.as<std::int64_t>());
    if (type == "double") return py::float_(v.as<double>());
    if (type == "bool") return py::bool_(v.as<bool>());
    if (type == "str") return py::str(v.as<std::string>());
    throw std::invalid_argument("_cpp_as: type must be int, double, bool or str");
  });
  m.def("_run_passes",
        [](py::object store, py::list nodes, std::vector<std::string> names, std::optional<int> threads,
           std::optional<bool> training, py::dict attrs) {
          std::vector<FxNode> fx;
          fx.reserve(nodes.size());
          for (py::handle h : nodes) {
            py::tuple t = py::reinterpret_borrow<py::tuple>(h);
            fx.push_back(FxNode{py::cast<std::string>(t[0]), py::cast<std::string>(t[1]),
                                py::cast<std::string>(t[2]), py::cast<std::vector<std::size_t>>(t[3]),
                                py::reinterpret_borrow<py::object>(t[4])});
          }
          return run_passes(store, std::move(fx), std::move(names), threads, training, std::move(attrs));
        },
        py::arg("store"), py::arg("nodes"), py::arg("names"), py::arg("threads") = py::none(),
        py::arg("training") = py::none(), py::arg("attrs") = py::dict());
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ProtectedKeyError& e) {
      PyErr_SetString(g_protected_error, e.what());
    } catch (const BadValueCast& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const KeyError& e) {
      py::str key(e.key());
      PyErr_SetObject(PyExc_KeyError, key.ptr());
    } catch (const graph::GraphError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const std::invalid_argument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
}
