// python/src/values.cpp: Python objects as nodemeta Values and back. values.h has the rules.
#include "values.h"

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace nodemeta::python {

std::atomic<bool> g_python_alive{true};

void release_object(PyObject* o) noexcept {
  if (!g_python_alive.load(std::memory_order_acquire) || !Py_IsInitialized()) return;
  if (PyGILState_Check()) {
    Py_DECREF(o);
    return;
  }
  if (_Py_IsFinalizing()) return;  // a thread taking the GIL now would be stopped for good
  const PyGILState_STATE state = PyGILState_Ensure();
  Py_DECREF(o);
  PyGILState_Release(state);
}

PyOpaque::PyOpaque(PyObject* o) : object_(o) {
  PyTypeObject* tp = Py_TYPE(o);
  PyObject* module = PyObject_GetAttrString(reinterpret_cast<PyObject*>(tp), "__module__");
  if (module != nullptr && PyUnicode_Check(module) &&
      PyUnicode_CompareWithASCIIString(module, "builtins") != 0) {
    if (const char* m = PyUnicode_AsUTF8(module)) type_name_ = std::string(m) + ".";
  }
  Py_XDECREF(module);
  PyErr_Clear();
  type_name_ += tp->tp_name;
  Py_INCREF(o);
}

namespace {

PyObject* g_converter_for = nullptr;  // callable(type) -> callable or None
PyObject* g_converters = nullptr;     // dict: type -> converter or None (cache)

// Containers deeper than this become opaque at that level (bounded recursion; also ends
// a self-containing list).
constexpr int kMaxDepth = 100;

// The twins of recently written short str objects, by address: writing the same str object
// again (a constant such as "conv2d" written to every node) shares its box instead of
// allocating and copying, as the graph loader shares equal strings. An entry holds a
// reference to its str, so the address cannot be reused while it is cached. Only touched
// with the GIL held. Long strings are not cached (the cache would keep them alive).
constexpr std::size_t kStringCacheSlots = 256;
constexpr std::size_t kStringCacheMaxBytes = 256;
struct StringCacheEntry {
  PyObject* object = nullptr;
  Value twin;
};
StringCacheEntry* g_string_cache = nullptr;  // allocated on first use, freed by clear_caches()

std::size_t string_cache_slot(PyObject* o) {
  const auto a = reinterpret_cast<std::uintptr_t>(o);
  return ((a >> 4) ^ (a >> 12)) & (kStringCacheSlots - 1);
}

Value* string_cache_find(PyObject* o, std::size_t size) {
  if (g_string_cache == nullptr || size > kStringCacheMaxBytes) return nullptr;
  StringCacheEntry& e = g_string_cache[string_cache_slot(o)];
  return e.object == o ? &e.twin : nullptr;
}

void string_cache_put(PyObject* o, std::size_t size, const Value& twin) {
  if (size > kStringCacheMaxBytes) return;
  if (g_string_cache == nullptr) g_string_cache = new StringCacheEntry[kStringCacheSlots];
  StringCacheEntry& e = g_string_cache[string_cache_slot(o)];
  e.object = o;
  e.twin = twin;  // the evicted twin (if any) is released here, with the GIL held
}

struct Converter {
  // Converter results are kept alive until the conversion ends: the memo is keyed by
  // address, which a freed temporary could hand to the next one.
  std::vector<py::object> temporaries;
  // Containers met more than once inside one value (a DAG) are converted once.
  std::unordered_map<PyObject*, Value> memo;

  bool convert(PyObject* o, Value& out, bool twin, int depth);
  bool mapping(PyObject* o, Value& out, int depth);
  bool by_converter(PyObject* o, Value& out, bool twin, int depth, bool& handled);
};

Value box_value(Value::Kind kind, detail::ValueBox* box) {
  return detail::ValueAccess::adopt(reinterpret_cast<std::int64_t>(box), kind);
}

Value opaque(PyObject* o) { return box_value(Value::Kind::kObject, new PyOpaque(o)); }

// A twin of `native` (a string, list or dict) holding `o`; scalars stay as they are.
Value twin_of(PyObject* o, Value native) {
  switch (native.kind()) {
    case Value::Kind::kString:
      return box_value(Value::Kind::kString, new PyTwin<std::string>(o, native.as<std::string>()));
    case Value::Kind::kList:
      return box_value(Value::Kind::kList, new PyTwin<Value::List>(o, native.as<Value::List>()));
    case Value::Kind::kDict:
      return box_value(Value::Kind::kDict, new PyTwin<Value::Dict>(o, native.as<Value::Dict>()));
    default:
      return native;
  }
}

bool Converter::mapping(PyObject* o, Value& out, int depth) {
  Value::Dict entries;
  entries.reserve(static_cast<std::size_t>(PyDict_Size(o)));
  Py_ssize_t pos = 0;
  PyObject* key;
  PyObject* value;
  // No snapshot (as for lists): a value's converter may run Python code that changes the
  // dict; PyDict_Next stays memory-safe then, and key and value are held while converted.
  // Should the dict change, a key may come twice: Value::dict refuses that (an error).
  while (PyDict_Next(o, &pos, &key, &value)) {
    Py_ssize_t size = 0;
    const char* s = PyUnicode_Check(key) ? PyUnicode_AsUTF8AndSize(key, &size) : nullptr;
    if (s == nullptr) {  // a non-str key (or one that is not valid UTF-8): C++ cannot key it
      PyErr_Clear();
      out = Value();
      return false;
    }
    entries.emplace_back(std::string(s, static_cast<std::size_t>(size)), Value());
    Py_INCREF(value);
    const bool ok = convert(value, entries.back().second, false, depth + 1);
    Py_DECREF(value);
    if (!ok) return false;
  }
  out = Value::dict(std::move(entries));  // throws std::invalid_argument on a repeated key
  return true;
}

bool Converter::by_converter(PyObject* o, Value& out, bool twin, int depth, bool& handled) {
  handled = false;
  if (g_converter_for == nullptr || g_converters == nullptr) return true;
  PyObject* tp = reinterpret_cast<PyObject*>(Py_TYPE(o));
  PyObject* fn = PyDict_GetItemWithError(g_converters, tp);  // borrowed
  if (fn == nullptr) {
    if (PyErr_Occurred()) return false;
    py::object found = py::reinterpret_steal<py::object>(PyObject_CallOneArg(g_converter_for, tp));
    if (!found) return false;
    if (PyDict_Size(g_converters) >= 4096) PyDict_Clear(g_converters);  // per-instance classes
    if (PyDict_SetItem(g_converters, tp, found.ptr()) != 0) return false;
    fn = PyDict_GetItemWithError(g_converters, tp);
    if (fn == nullptr) return false;
  }
  if (fn == Py_None) return true;
  py::object plain = py::reinterpret_steal<py::object>(PyObject_CallOneArg(fn, o));
  if (!plain) return false;
  temporaries.push_back(plain);
  Value native;
  if (!convert(plain.ptr(), native, false, depth + 1)) return false;
  handled = true;
  out = twin ? twin_of(o, std::move(native)) : std::move(native);
  return true;
}

bool Converter::convert(PyObject* o, Value& out, bool twin, int depth) {
  if (o == Py_None) {
    out = Value();
    return true;
  }
  if (o == Py_True || o == Py_False) {
    out = Value(o == Py_True);
    return true;
  }
  PyTypeObject* tp = Py_TYPE(o);
  if (tp == &PyLong_Type) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow != 0) {
      out = opaque(o);  // beyond int64: C++ cannot hold it
      return true;
    }
    if (v == -1 && PyErr_Occurred()) return false;
    out = Value(static_cast<std::int64_t>(v));
    return true;
  }
  if (tp == &PyFloat_Type) {
    out = Value(PyFloat_AS_DOUBLE(o));
    return true;
  }
  if (tp == &PyUnicode_Type) {
    Py_ssize_t size = 0;
    const char* s = PyUnicode_AsUTF8AndSize(o, &size);
    if (s == nullptr) {  // lone surrogates: not UTF-8, C++ sees an opaque object
      PyErr_Clear();
      out = opaque(o);
      return true;
    }
    const std::string_view text(s, static_cast<std::size_t>(size));
    if (!twin) {
      out = Value(text);
    } else if (Value* cached = string_cache_find(o, text.size())) {
      out = *cached;
    } else {
      out = box_value(Value::Kind::kString, new PyTwin<std::string>(o, std::string(text)));
      string_cache_put(o, text.size(), out);
    }
    return true;
  }
  if (depth >= kMaxDepth) {
    out = opaque(o);
    return true;
  }
  if (tp == &PyList_Type || tp == &PyTuple_Type) {
    const bool memoize = !twin && Py_SIZE(o) >= 2;
    if (memoize) {
      if (auto it = memo.find(o); it != memo.end()) {
        out = it->second;
        return true;
      }
    }
    Value::List elements;
    elements.reserve(static_cast<std::size_t>(Py_SIZE(o)));
    // No snapshot: an element's converter may run Python code that changes a list, so
    // the size is read again on every step and each element is held while converted
    // (never a dangling reference; the result is some state the list passed through).
    for (Py_ssize_t i = 0; i < Py_SIZE(o); ++i) {
      PyObject* e = tp == &PyList_Type ? PyList_GET_ITEM(o, i) : PyTuple_GET_ITEM(o, i);
      Py_INCREF(e);
      elements.emplace_back();
      const bool ok = convert(e, elements.back(), false, depth + 1);
      Py_DECREF(e);
      if (!ok) return false;
    }
    if (twin) {
      out = box_value(Value::Kind::kList, new PyTwin<Value::List>(o, std::move(elements)));
    } else {
      out = Value::list(std::move(elements));
      if (memoize) memo.emplace(o, out);
    }
    return true;
  }
  if (tp == &PyDict_Type) {
    const bool memoize = !twin && PyDict_Size(o) >= 2;
    if (memoize) {
      if (auto it = memo.find(o); it != memo.end()) {
        out = it->second;
        return true;
      }
    }
    Value native;
    if (!mapping(o, native, depth)) {
      if (PyErr_Occurred()) return false;
      out = opaque(o);  // a key C++ cannot hold
    } else {
      out = twin ? twin_of(o, std::move(native)) : std::move(native);
    }
    if (memoize) memo.emplace(o, out);
    return true;
  }
  if (unwrap_cpp_value(o, out)) return true;
  bool handled = false;
  if (!by_converter(o, out, twin, depth, handled)) return false;
  if (!handled) out = opaque(o);
  return true;
}

}  // namespace

bool to_value(PyObject* o, Value& out) {
  Converter c;
  try {
    return c.convert(o, out, true, 0);
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const py::error_already_set& e) {
    // Leave the Python error set.
    const_cast<py::error_already_set&>(e).restore();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  }
  return false;
}

PyObject* to_python(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kNone:
      Py_RETURN_NONE;
    case Value::Kind::kBool:
      return PyBool_FromLong(*v.get_if<bool>());
    case Value::Kind::kInt:
      return PyLong_FromLongLong(*v.get_if<std::int64_t>());
    case Value::Kind::kDouble:
      return PyFloat_FromDouble(*v.get_if<double>());
    default:
      break;
  }
  const detail::ValueBox* box = detail::ValueAccess::box_of(v);
  if (void* o = box->foreign()) {
    Py_INCREF(static_cast<PyObject*>(o));
    return static_cast<PyObject*>(o);
  }
  if (Py_EnterRecursiveCall(" while converting a nodemeta value to Python") != 0) return nullptr;
  PyObject* result = nullptr;
  if (const std::string* s = v.get_if<std::string>()) {
    result = PyUnicode_DecodeUTF8(s->data(), static_cast<Py_ssize_t>(s->size()), "surrogateescape");
  } else if (const Value::List* l = v.get_if<Value::List>()) {
    result = PyList_New(static_cast<Py_ssize_t>(l->size()));
    for (std::size_t i = 0; result != nullptr && i < l->size(); ++i) {
      PyObject* e = to_python((*l)[i]);
      if (e == nullptr) {
        Py_CLEAR(result);
        break;
      }
      PyList_SET_ITEM(result, static_cast<Py_ssize_t>(i), e);
    }
  } else if (const Value::Dict* d = v.get_if<Value::Dict>()) {
    result = PyDict_New();
    for (const auto& [k, e] : *d) {
      if (result == nullptr) break;
      PyObject* key = PyUnicode_DecodeUTF8(k.data(), static_cast<Py_ssize_t>(k.size()), "surrogateescape");
      PyObject* val = key != nullptr ? to_python(e) : nullptr;
      if (val == nullptr || PyDict_SetItem(result, key, val) != 0) Py_CLEAR(result);
      Py_XDECREF(key);
      Py_XDECREF(val);
    }
  } else {
    result = wrap_cpp_value(v);
  }
  Py_LeaveRecursiveCall();
  return result;
}

void clear_caches() {
  StringCacheEntry* cache = std::exchange(g_string_cache, nullptr);
  delete[] cache;
  Py_CLEAR(g_converters);
}

void set_converter_hook(PyObject* converter_for) {
  Py_XINCREF(converter_for);
  Py_XSETREF(g_converter_for, converter_for == Py_None ? (Py_XDECREF(converter_for), nullptr)
                                                       : converter_for);
  Py_XSETREF(g_converters, PyDict_New());
}

}  // namespace nodemeta::python
