// python/src/module.cpp: nodemeta._core, the extension behind the `nodemeta` package.
//
// NodeMetadataBase is a CPython type written against the C API: its mapping slots
// (md[k], md[k] = v, k in md) are called by the interpreter directly, with no binding
// dispatch in between, and string keys reach a Key through the str's cached UTF-8 and
// the lock-free intern table. The rest (MetadataStore, WriteResult, run_passes) uses
// pybind11. The Python class nodemeta.NodeMetadata derives from NodeMetadataBase and
// collections.abc.MutableMapping (python/nodemeta/__init__.py).
//
// Thread safety: every method holds the GIL while it converts values and calls the store;
// the store's operations are short and never wait for the GIL, so holding it cannot
// deadlock. run_passes releases the GIL while the C++ passes run.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <structmember.h>

#include <oneapi/tbb/task_arena.h>

#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
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
  }
  explicit PyStore(MetadataStore& borrowed) : store_(&borrowed) {}
  MetadataStore& store() const noexcept { return *store_; }
  bool is_default() const noexcept { return owned_ == nullptr; }
  // run_passes calls on this store in flight (changed only with the GIL held).
  int passes_in_flight = 0;

 private:
  std::unique_ptr<MetadataStore> owned_;
  MetadataStore* store_;
};

// --- the NodeMetadata type ------------------------------------------------------------

struct PyNode {
  PyObject_HEAD
  NodeMetadata md;
  PyObject* store;  // the PyStore object: keeps the C++ store alive while this node lives
  PyObject* weakrefs;
};

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
PyObject* g_views = nullptr;  // (KeysView, ValuesView, ItemsView) classes

bool is_node(PyObject* o) { return PyObject_TypeCheck(o, g_base_type); }
NodeMetadata& md_of(PyObject* self) { return reinterpret_cast<PyNode*>(self)->md; }

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

// A new Python node of type `tp` owning `md`, in the store `store_obj`.
PyObject* new_node(PyTypeObject* tp, NodeMetadata md, PyObject* store_obj) {
  PyObject* self = tp->tp_alloc(tp, 0);
  if (self == nullptr) return nullptr;
  auto* node = reinterpret_cast<PyNode*>(self);
  new (&node->md) NodeMetadata(std::move(md));
  Py_INCREF(store_obj);
  node->store = store_obj;
  node->weakrefs = nullptr;
  return self;
}

PyTypeObject* node_type() { return g_node_type != nullptr ? g_node_type : g_base_type; }

// (key, value) pairs of a mapping, converted for a store (keys interned).
bool mapping_items(PyObject* data, std::vector<KeyValue>& out) {
  if (data == nullptr) return true;
  if (is_node(data)) {
    try {
      for (auto& [k, v] : md_of(data).items()) out.emplace_back(Key(k), std::move(v));
    } catch (...) {
      set_python_error();
      return false;
    }
    return true;
  }
  py::object dict;
  if (PyDict_Check(data)) {
    dict = py::reinterpret_borrow<py::object>(data);
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

PyObject* create_in(PyTypeObject* tp, PyObject* store_obj, PyObject* data) {
  std::vector<KeyValue> items;
  if (!mapping_items(data, items)) return nullptr;
  try {
    MetadataStore& store = py::cast<PyStore&>(py::handle(store_obj)).store();
    return new_node(tp, store.create(std::span<const KeyValue>(items)), store_obj);
  } catch (...) {
    set_python_error();
    return nullptr;
  }
}

// NodeMetadata.__new__(*args, **kw): an empty node of the default store (arguments are
// __init__'s, so a subclass may give __init__ a signature of its own).
PyObject* md_new(PyTypeObject* tp, PyObject*, PyObject*) { return create_in(tp, g_default_store, nullptr); }

// NodeMetadata.__init__(data=None): the node holds a copy of data, and nothing else (so
// calling __init__ again resets it, as the original's self.data = data.copy() does).
int md_init(PyObject* self, PyObject* args, PyObject* kwds) {
  static const char* kwlist[] = {"data", nullptr};
  PyObject* data = nullptr;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:NodeMetadata", const_cast<char**>(kwlist), &data)) {
    return -1;
  }
  if (data == Py_None) data = nullptr;
  std::vector<KeyValue> items;
  if (!mapping_items(data, items)) return -1;
  auto* node = reinterpret_cast<PyNode*>(self);
  try {
    if (node->md.size() == 0) {  // a new node (from __new__): filled in place
      for (const auto& [k, v] : items) {
        if (!node->md.set_once(k, v)) (void)node->md.try_set(k, v);
      }
      return 0;
    }
    // Calling __init__ again: the node is replaced by a new one holding data alone. Not
    // while run_passes runs on this store: its passes may be reading the old node.
    if (py::cast<PyStore&>(py::handle(node->store)).passes_in_flight > 0) {
      PyErr_SetString(PyExc_RuntimeError,
                      "NodeMetadata.__init__: cannot reset a node while nodemeta.fx.run_passes runs on its store");
      return -1;
    }
    NodeMetadata fresh = node->md.store().create(std::span<const KeyValue>(items));
    node->md = std::move(fresh);  // the old node dies here (its values are released)
  } catch (...) {
    set_python_error();
    return -1;
  }
  return 0;
}

// --- the cycle collector ---
//
// A node's Python values can refer back to it (a value holding its fx Node, an instance of a
// class whose module holds the graph), so the node takes part in garbage collection. A
// value's Python object is held by its box, and a box may be shared by several holders
// (copy() shares values; so do C++ copies), while the collector must see each reference
// once: so a node visits the objects of the boxes it alone holds (use_count 2: its slot and
// the snapshot taken here), and, inside those, of nested boxes held once. A shared box's
// object is never visited: cycles through it are not collected (conservative: never a
// live object collected). C++ threads copying a value meanwhile only make a box look
// shared.
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
  auto* node = reinterpret_cast<PyNode*>(self);
  Py_VISIT(Py_TYPE(self));  // a heap type's instances own a reference to it
  Py_VISIT(node->store);
  // While C++ runs without the GIL, box counts may change during this collection, and a
  // box visited in one of its passes but not the next would make a live object look
  // unreachable: show no values then (conservative).
  if (!node->md.valid() || g_cpp_active > 0) return 0;
  Items items;
  try {
    items = node->md.items();
  } catch (...) {
    return 0;  // out of memory: visit nothing (conservative)
  }
  for (const auto& [k, v] : items) {
    if (int rc = visit_value(v, 2, 0, visit, arg)) return rc;
  }
  return 0;
}

// Breaks a garbage cycle: the node is replaced by an empty one (protected keys cannot be
// erased, but a node nobody can reach may be dropped whole).
int md_gc_clear(PyObject* self) {
  auto* node = reinterpret_cast<PyNode*>(self);
  if (!node->md.valid()) return 0;
  try {
    NodeMetadata empty = node->md.store().create();
    node->md = std::move(empty);  // the old node's values are released here
  } catch (...) {
  }
  return 0;
}

void md_dealloc(PyObject* self) {
  PyTypeObject* tp = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  auto* node = reinterpret_cast<PyNode*>(self);
  if (node->weakrefs != nullptr) PyObject_ClearWeakRefs(self);
  node->md.~NodeMetadata();  // may release values: Python code can run
  Py_XDECREF(node->store);
  tp->tp_free(self);
  Py_DECREF(tp);
}

// --- reads ---

// md[key]'s value as a new reference; `absent` (borrowed, returned as a new reference)
// when the key is not there, or nullptr with KeyError set when `absent` is nullptr.
PyObject* lookup(PyObject* self, PyObject* key, PyObject* absent) {
  std::optional<Key> k;
  if (!read_key(key, k)) return nullptr;
  if (k) {
    std::optional<Value> v;
    try {
      v = md_of(self).get(*k);
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

PyObject* md_subscript(PyObject* self, PyObject* key) {
  return lookup(self, key, nullptr);
}

int md_contains(PyObject* self, PyObject* key) {
  std::optional<Key> k;
  if (!read_key(key, k)) return -1;
  if (!k) return 0;
  try {
    return md_of(self).contains(*k) ? 1 : 0;
  } catch (...) {
    set_python_error();
    return -1;
  }
}

Py_ssize_t md_length(PyObject* self) {
  try {
    return static_cast<Py_ssize_t>(md_of(self).size());
  } catch (...) {
    set_python_error();
    return -1;
  }
}

// The node's consistent snapshot; false with a Python exception set.
bool snapshot(PyObject* self, Items& items) {
  try {
    items = md_of(self).items();
    return true;
  } catch (...) {
    set_python_error();
    return false;
  }
}

// A key name as a str (surrogateescape: a name C++ wrote that is not UTF-8 round-trips).
PyObject* key_object(std::string_view name) {
  return PyUnicode_DecodeUTF8(name.data(), static_cast<Py_ssize_t>(name.size()), "surrogateescape");
}

// A consistent snapshot as a list: of (key, value) tuples, or of keys alone.
PyObject* snapshot_list(PyObject* self, bool values) {
  Items items;
  if (!snapshot(self, items)) return nullptr;
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
  PyObject* items = md_items_list(self);
  if (items == nullptr) return nullptr;
  PyObject* dict = PyDict_New();
  if (dict != nullptr && PyDict_MergeFromSeq2(dict, items, 1) != 0) Py_CLEAR(dict);
  Py_DECREF(items);
  return dict;
}

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

PyObject* md_iter(PyObject* self) {
  PyObject* keys = md_keys_list(self);
  if (keys == nullptr) return nullptr;
  PyObject* it = PyObject_GetIter(keys);
  Py_DECREF(keys);
  return it;
}

PyObject* md_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (!arity("get", nargs, 1, 2)) return nullptr;
  return lookup(self, args[0], nargs == 2 ? args[1] : Py_None);
}

// --- writes ---

int md_ass_subscript(PyObject* self, PyObject* key, PyObject* value) {
  drain_pending();  // references oneTBB workers handed over (usually none: one load)
  NodeMetadata& md = md_of(self);
  if (value == nullptr) {  // del md[key]
    std::optional<Key> k;
    if (!read_key(key, k)) return -1;
    if (!PyUnicode_Check(key)) {
      set_key_error(key);
      return -1;
    }
    try {
      if (k && md.store().is_protected(*k)) {
        set_protected_error(key);
        return -1;
      }
      if (k && md.erase(*k)) return 0;
    } catch (...) {
      set_python_error();
      return -1;
    }
    set_key_error(key);
    return -1;
  }
  Key k = keys::val;  // overwritten
  if (!write_key(key, k)) return -1;
  if (md.store().is_protected(k)) {  // before converting: a refused write costs no allocation
    set_protected_error(key);
    return -1;
  }
  Value v;
  if (!to_value(value, v)) return -1;
  try {
    if (md.try_set(k, std::move(v)) == WriteResult::kRejectedProtected) {
      set_protected_error(key);  // protected by another thread since the check above
      return -1;
    }
  } catch (...) {
    set_python_error();
    return -1;
  }
  return 0;
}

PyObject* md_try_set(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (!arity("try_set", nargs, 2, 2)) return nullptr;
  drain_pending();
  NodeMetadata& md = md_of(self);
  Key k = keys::val;  // overwritten
  if (!write_key(args[0], k)) return nullptr;
  WriteResult r = WriteResult::kRejectedProtected;
  if (!md.store().is_protected(k)) {
    Value v;
    if (!to_value(args[1], v)) return nullptr;
    try {
      r = md.try_set(k, std::move(v));
    } catch (...) {
      set_python_error();
      return nullptr;
    }
  }
  PyObject* result = g_write_results[static_cast<int>(r)];
  Py_INCREF(result);
  return result;
}

PyObject* md_set_once(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (!arity("set_once", nargs, 2, 2)) return nullptr;
  Key k = keys::val;  // overwritten
  if (!write_key(args[0], k)) return nullptr;
  Value v;
  if (!to_value(args[1], v)) return nullptr;
  try {
    return PyBool_FromLong(md_of(self).set_once(k, std::move(v)));
  } catch (...) {
    set_python_error();
    return nullptr;
  }
}

// One atomic edit of the node; false with the Python error set (a protected `key`:
// ProtectedKeyError naming it as Python spelled it).
template <class F>
bool edit_node(PyObject* self, PyObject* key, F&& fn) {
  try {
    md_of(self).edit(std::forward<F>(fn));
    return true;
  } catch (const ProtectedKeyError&) {
    set_protected_error(key);
  } catch (...) {
    set_python_error();
  }
  return false;
}

// pop(key[, default]): atomic (one edit); a protected key present raises.
PyObject* md_pop(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (!arity("pop", nargs, 1, 2)) return nullptr;
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

// update(other=(), **kw): all or nothing; any protected key raises before anything is written.
PyObject* md_update(PyObject* self, PyObject* args, PyObject* kwds) {
  PyObject* other = nullptr;
  if (!PyArg_UnpackTuple(args, "update", 0, 1, &other)) return nullptr;
  std::vector<KeyValue> items;
  if (!mapping_items(other, items) || !mapping_items(kwds, items)) return nullptr;
  NodeMetadata& md = md_of(self);
  for (const auto& [k, v] : items) {
    if (md.store().is_protected(k)) {
      py::str name(std::string(k.name()));
      set_protected_error(name.ptr());
      return nullptr;
    }
  }
  try {
    md.edit([&](NodeEditor& e) {
      for (const auto& [k, v] : items) e.set(k, v);
    });
  } catch (...) {
    set_python_error();
    return nullptr;
  }
  Py_RETURN_NONE;
}

// clear(): all or nothing; a node holding a protected key raises.
PyObject* md_clear(PyObject* self, PyObject*) {
  try {
    md_of(self).edit([&](NodeEditor& e) {
      for (const auto& [name, v] : e.items()) e.erase(Key(name));
    });
  } catch (...) {
    set_python_error();
    return nullptr;
  }
  Py_RETURN_NONE;
}

// popitem(): removes and returns the last (key, value) in iteration order whose key is not
// protected; KeyError when empty, ProtectedKeyError when every key left is protected.
PyObject* md_popitem(PyObject* self, PyObject*) {
  std::optional<std::pair<std::string, Value>> popped;
  std::optional<std::string> blocked;
  try {
    NodeMetadata& md = md_of(self);
    md.edit([&](NodeEditor& e) {
      popped.reset();
      blocked.reset();
      Items items = e.items();
      for (auto it = items.rbegin(); it != items.rend(); ++it) {
        const Key k(it->first);
        if (md.store().is_protected(k)) {
          if (!blocked) blocked = it->first;
          continue;
        }
        e.erase(k);
        popped.emplace(std::move(*it));
        return;
      }
    });
  } catch (...) {
    set_python_error();
    return nullptr;
  }
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

PyObject* md_copy(PyObject* self, PyObject* = nullptr) {
  auto* node = reinterpret_cast<PyNode*>(self);
  try {
    return new_node(Py_TYPE(self), node->md.copy(), node->store);
  } catch (...) {
    set_python_error();
    return nullptr;
  }
}

PyObject* md_deepcopy(PyObject* self, PyObject* memo) {
  auto* node = reinterpret_cast<PyNode*>(self);
  PyObject* result = nullptr;
  try {
    result = new_node(Py_TYPE(self), node->md.store().create(), node->store);
  } catch (...) {
    set_python_error();
    return nullptr;
  }
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
    NodeMetadata& target = md_of(result);
    for (py::handle item : items) {
      py::tuple pair = py::reinterpret_borrow<py::tuple>(item);
      py::object copied = deepcopy(pair[1], py_memo);
      Value v;
      if (!to_value(copied.ptr(), v)) throw py::error_already_set();
      target.set_once(Key(py::cast<std::string>(pair[0])), std::move(v));
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
  std::vector<KeyValue> items;
  if (!PyDict_Check(state)) {
    PyErr_SetString(PyExc_TypeError, "NodeMetadata.__setstate__ expects a dict");
    return nullptr;
  }
  if (!mapping_items(state, items)) return nullptr;
  try {
    NodeMetadata& md = md_of(self);
    for (auto& [k, v] : items) {
      if (!md.set_once(k, v) && md.try_set(k, v) == WriteResult::kRejectedProtected) {
        py::str name(std::string(k.name()));
        set_protected_error(name.ptr());
        return nullptr;
      }
    }
  } catch (...) {
    set_python_error();
    return nullptr;
  }
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

PyObject* make_view(PyObject* self, int which) {
  if (g_views == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "nodemeta: views not initialised (import nodemeta)");
    return nullptr;
  }
  return PyObject_CallOneArg(PyTuple_GET_ITEM(g_views, which), self);
}
PyObject* md_keys(PyObject* self, PyObject*) { return make_view(self, 0); }
PyObject* md_values(PyObject* self, PyObject*) { return make_view(self, 1); }
PyObject* md_items(PyObject* self, PyObject*) { return make_view(self, 2); }

PyObject* md_get_store(PyObject* self, void*) {
  PyObject* s = reinterpret_cast<PyNode*>(self)->store;
  Py_INCREF(s);
  return s;
}
PyObject* md_get_id(PyObject* self, void*) {
  return PyLong_FromUnsignedLongLong(md_of(self).id());
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
  graph::Graph g = graph::Graph::over(store);
  std::vector<graph::Node> gnodes;
  gnodes.reserve(nodes.size());
  for (FxNode& n : nodes) {
    if (!is_node(n.meta.ptr())) {
      throw std::invalid_argument("run_passes: node '" + n.name + "' has no nodemeta.NodeMetadata (attach the graph first)");
    }
    NodeMetadata& md = md_of(n.meta.ptr());
    if (&md.store() != &store) {
      throw std::invalid_argument("run_passes: node '" + n.name + "' lives in another MetadataStore");
    }
    gnodes.push_back(graph::Node{std::move(n.name), std::move(n.op), std::move(n.target),
                                 std::move(n.inputs), md.view()});
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
    PyStore& py_store = py::cast<PyStore&>(store_obj);
    ++g_cpp_active;
    ++py_store.passes_in_flight;
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
    --py_store.passes_in_flight;
    --g_cpp_active;
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
             PyObject* r = create_in(node_type(), self.ptr(), data.ptr());
             if (r == nullptr) throw py::error_already_set();
             return py::reinterpret_steal<py::object>(r);
           },
           py::arg("data") = py::none(), "A new node in this store holding a copy of data (protected keys allowed).")
      .def("protect", [](PyStore& s, const std::string& k) { s.store().protect(Key(k)); }, py::arg("key"),
           "Protect key from now on, in every node of this store.")
      .def("is_protected",
           [](PyStore& s, py::handle key) {
             std::optional<Key> k;
             if (!read_key(key.ptr(), k)) throw py::error_already_set();
             return k.has_value() && s.store().is_protected(*k);
           },
           py::arg("key"))
      .def_property_readonly("node_count", [](PyStore& s) { return s.store().node_count(); })
      .def_property_readonly("protected_keys", [](PyStore& s) { return s.store().protected_keys(); })
      .def("__repr__", [](PyStore& s) {
        return std::string(s.is_default() ? "<nodemeta default MetadataStore" : "<nodemeta MetadataStore") +
               ", " + std::to_string(s.store().node_count()) + " nodes>";
      });

  py::object default_store = py::cast(PyStore(MetadataStore::default_store()));
  g_default_store = default_store.release().ptr();
  m.attr("default_store") = py::handle(g_default_store);

  PyObject* base = PyType_FromSpec(&g_spec);
  if (base == nullptr) throw py::error_already_set();
  g_base_type = reinterpret_cast<PyTypeObject*>(base);
  m.attr("NodeMetadataBase") = py::handle(base);

  m.def("_set_node_type", [](py::object tp, py::tuple views) {
    if (!PyType_Check(tp.ptr()) || !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(tp.ptr()), g_base_type)) {
      throw py::type_error("_set_node_type: not a NodeMetadataBase subclass");
    }
    Py_INCREF(tp.ptr());
    g_node_type = reinterpret_cast<PyTypeObject*>(tp.ptr());
    Py_INCREF(views.ptr());
    Py_XSETREF(g_views, views.ptr());
  });
  // An empty node of type tp (a NodeMetadataBase subclass) in store, __init__ not called
  // (what unpickling a NodeMetadata builds before its entries are set).
  m.def("_new_in", [](py::handle tp, py::handle store) {
    if (!PyType_Check(tp.ptr()) || !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(tp.ptr()), g_base_type)) {
      throw py::type_error("_new_in: not a NodeMetadataBase subclass");
    }
    if (!py::isinstance<PyStore>(store)) throw py::type_error("_new_in: not a MetadataStore");
    PyObject* r = create_in(reinterpret_cast<PyTypeObject*>(tp.ptr()), store.ptr(), nullptr);
    if (r == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(r);
  });
  m.def("_set_converter_hook", [](py::object fn) { set_converter_hook(fn.ptr()); });
  m.def("_shutdown", [] {
    clear_caches();
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
    const Value v = md_of(md.ptr()).at(Key(key));
    static const char* const kKinds[] = {"none", "bool", "int", "double", "string", "list", "dict", "object"};
    return py::make_tuple(kKinds[static_cast<int>(v.kind())], v.type_name(), v.repr());
  });
  // v.as<T>() from C++, T in int, double, bool, str: BadValueCast becomes TypeError.
  m.def("_cpp_as", [](py::handle md, const std::string& key, const std::string& type) -> py::object {
    if (!is_node(md.ptr())) throw py::type_error("_cpp_as: not a NodeMetadata");
    const Value v = md_of(md.ptr()).at(Key(key));
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
