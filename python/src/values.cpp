// python/src/values.cpp: Python objects as nodemeta Values and back. values.h has the rules.
#include "values.h"

#include <pybind11/pybind11.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace nodemeta::python {

std::atomic<bool> g_python_alive{true};

std::atomic<std::size_t> g_pending_count{0};  // g_pending's size, read without the lock as a hint

namespace {

// References dropped by threads without the GIL, waiting for a thread that has it. Never
// destroyed (usable until the process ends). g_pending_mutex guards g_pending, the
// "call scheduled" flag and the liveness check with the Py_AddPendingCall made under it
// (see release_object and shut_down_handover for why the call is made under the lock).
std::mutex g_pending_mutex;
std::vector<PyObject*>* const g_pending = new std::vector<PyObject*>();
bool g_pending_call_scheduled = false;        // a drain_pending_call is queued and has not started
std::atomic<std::uint64_t> g_handed_over{0};
std::atomic<std::uint64_t> g_late_calls{0};   // Py_AddPendingCall made after shutdown (tests: 0)

// Test hook: the next hand-over stops between queuing its reference and scheduling the
// pending call, until resumed or for at most g_pause_timeout (so a thread that needs
// g_pending_mutex meanwhile waits a bounded time).
std::mutex g_pause_mutex;
std::condition_variable g_pause_cv;
bool g_pause_armed = false;
bool g_paused = false;
bool g_pause_released = false;
std::chrono::milliseconds g_pause_timeout{0};

void maybe_pause() noexcept {
  std::unique_lock<std::mutex> lock(g_pause_mutex);
  if (!g_pause_armed) return;
  g_pause_armed = false;
  g_paused = true;
  g_pause_cv.notify_all();
  g_pause_cv.wait_for(lock, g_pause_timeout, [] { return g_pause_released; });
  g_paused = false;
}

// The pending call. It clears the flag first, whatever it then finds: a reference queued
// after this point schedules a new call (its thread takes g_pending_mutex after this one
// and sees the flag false), one queued before is in the batch taken below or was taken by
// an earlier drain. So a reference never waits on a flag left set by a call that ran.
int drain_pending_call(void*) {
  std::vector<PyObject*> batch;
  {
    std::lock_guard<std::mutex> lock(g_pending_mutex);
    g_pending_call_scheduled = false;
    batch.swap(*g_pending);
    g_pending_count.store(0, std::memory_order_relaxed);
  }
  for (PyObject* o : batch) Py_DECREF(o);  // may run __del__: no lock is held here
  return 0;
}

}  // namespace

// The other drain points (a write from Python, the end of run_passes, ...). They leave the
// flag alone: a call still queued finds an empty batch and clears it, so at most one
// drain_pending_call of nodemeta's is ever in CPython's small pending-call queue.
void drain_pending_slow() noexcept {
  std::vector<PyObject*> batch;
  {
    std::lock_guard<std::mutex> lock(g_pending_mutex);
    batch.swap(*g_pending);
    g_pending_count.store(0, std::memory_order_relaxed);
  }
  for (PyObject* o : batch) Py_DECREF(o);  // may run __del__: no lock is held here
}

std::uint64_t handed_over_count() noexcept { return g_handed_over.load(std::memory_order_relaxed); }

void shut_down_handover() noexcept {
  {
    // Waits for a thread between its liveness check and its Py_AddPendingCall (both under
    // this lock): after this block no thread calls into the interpreter, which may then be
    // torn down. Such a thread never waits for the GIL, so this wait is short.
    std::lock_guard<std::mutex> lock(g_pending_mutex);
    g_python_alive.store(false, std::memory_order_release);
  }
  drain_pending();  // what was handed over before: dropped here, with the GIL
}

void pause_next_handover(double timeout_s) noexcept {
  std::lock_guard<std::mutex> lock(g_pause_mutex);
  g_pause_armed = true;
  g_pause_released = false;
  g_pause_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(timeout_s * 1000));
}

void resume_handover() noexcept {
  std::lock_guard<std::mutex> lock(g_pause_mutex);
  g_pause_armed = false;
  g_pause_released = true;
  g_pause_cv.notify_all();
}

HandoverState handover_state() noexcept {
  HandoverState st;
  std::lock_guard<std::mutex> lock(g_pending_mutex);
  st.pending = g_pending->size();
  st.call_scheduled = g_pending_call_scheduled;
  st.late_calls = g_late_calls.load(std::memory_order_relaxed);
  return st;
}

bool handover_paused() noexcept {
  std::lock_guard<std::mutex> lock(g_pause_mutex);
  return g_paused;
}

// Whether this thread holds the GIL: its own thread state is the current one. Not
// PyGILState_Check(), which answers yes on every thread once a sub-interpreter was created
// (its check is then disabled) and after the interpreter deleted its thread-state key.
bool holds_gil() noexcept {
  PyThreadState* current = _PyThreadState_UncheckedGet();
  return current != nullptr && current == PyGILState_GetThisThreadState();
}

// With the GIL (any Python thread, or the interpreter finalizing on the main thread): drop
// it now. Without (a oneTBB worker, or a Python thread inside run_passes): hand it to the
// interpreter, which drops it on the next drain (a pending call, the next write from
// Python, the end of run_passes, release_retired_values()). A thread without the GIL never
// waits for it: a thread blocked on the GIL when the interpreter starts finalizing is
// stopped for good (pthread_exit), which would unwind through noexcept frames.
//
// The liveness check and Py_AddPendingCall are made under g_pending_mutex, which
// shut_down_handover (nodemeta's atexit hook, before the interpreter is torn down) takes to
// clear g_python_alive: so no thread can pass the check, be preempted, and call
// Py_AddPendingCall on an interpreter whose pending-call lock Py_FinalizeEx has freed.
// Py_AddPendingCall needs neither the GIL nor a thread state, and the interpreter holds its
// own lock only to pop a call (never while taking ours), so calling it under the lock
// cannot deadlock.
void release_object(PyObject* o) noexcept {
  // Holding the GIL: drop it now, even while the interpreter finalizes (Py_IsInitialized()
  // is already false while modules are torn down, and their values must still die).
  if (holds_gil()) {
    Py_DECREF(o);
    return;
  }
  std::lock_guard<std::mutex> lock(g_pending_mutex);
  if (!g_python_alive.load(std::memory_order_relaxed) || !Py_IsInitialized()) return;  // leaked
  try {
    g_pending->push_back(o);
  } catch (...) {
    return;  // out of memory: leaked rather than touched without the GIL
  }
  g_pending_count.fetch_add(1, std::memory_order_release);
  g_handed_over.fetch_add(1, std::memory_order_relaxed);
  maybe_pause();
  if (!g_pending_call_scheduled) {
    if (!g_python_alive.load(std::memory_order_relaxed)) g_late_calls.fetch_add(1, std::memory_order_relaxed);
    // Fails only when CPython's queue is full; the next hand-over tries again, and the
    // other drain points take these meanwhile.
    g_pending_call_scheduled = Py_AddPendingCall(drain_pending_call, nullptr) == 0;
  }
}

PyOpaque::PyOpaque(PyObject* o) : object_(o) {
  // module.qualname, as Python names the type ("numpy.ndarray", "collections.deque");
  // builtins without their module ("object", "int").
  PyObject* tp = reinterpret_cast<PyObject*>(Py_TYPE(o));
  PyObject* module = PyObject_GetAttrString(tp, "__module__");
  PyObject* qualname = PyObject_GetAttrString(tp, "__qualname__");
  const char* m = module != nullptr && PyUnicode_Check(module) ? PyUnicode_AsUTF8(module) : nullptr;
  const char* q = qualname != nullptr && PyUnicode_Check(qualname) ? PyUnicode_AsUTF8(qualname) : nullptr;
  if (m != nullptr && std::string_view(m) != "builtins") type_name_ = std::string(m) + ".";
  type_name_ += q != nullptr ? q : Py_TYPE(o)->tp_name;
  Py_XDECREF(module);
  Py_XDECREF(qualname);
  PyErr_Clear();
  Py_INCREF(o);
}

namespace {

PyObject* g_converter_for = nullptr;  // callable(type) -> callable or None

// converter_for's answers by type. An entry holds a weak reference to its type (a cached
// class must not keep itself, and its module's globals, alive) and a strong one to the
// converter (a function of nodemeta._fxjson). A dead or reused address is asked again.
// GIL held.
struct ConverterEntry {
  PyObject* type_ref;   // weakref to the type
  PyObject* converter;  // Py_None: not converted
};
std::unordered_map<PyTypeObject*, ConverterEntry>* g_converters = nullptr;

void clear_converters() {
  if (g_converters == nullptr) return;
  for (auto& [tp, e] : *g_converters) {
    Py_DECREF(e.type_ref);
    Py_DECREF(e.converter);
  }
  g_converters->clear();
}

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
  // Memoizes o's conversion, holding o: a container freed while converting (a converter may
  // run Python code) must not lend its address to the next one.
  void remember(PyObject* o, const Value& v) {
    temporaries.push_back(py::reinterpret_borrow<py::object>(o));
    memo.emplace(o, v);
  }
};

Value box_value(Value::Kind kind, detail::ValueBox* box) {
  return detail::ValueAccess::adopt(reinterpret_cast<std::int64_t>(box), kind);
}

Value opaque(PyObject* o) { return box_value(Value::Kind::kObject, new PyOpaque(o)); }

// A twin of `native` (a string, list or dict) holding `o`. A converter's scalar or opaque
// result (an int subclass such as numpy.int64, a dict subclass with int keys) cannot hold
// `o`: then `o` is stored opaque, so Python still gets it back (with its type).
Value twin_of(PyObject* o, Value native) {
  switch (native.kind()) {
    case Value::Kind::kString:
      return box_value(Value::Kind::kString, new PyTwin<std::string>(o, native.as<std::string>()));
    case Value::Kind::kList:
      return box_value(Value::Kind::kList, new PyTwin<Value::List>(o, native.as<Value::List>()));
    case Value::Kind::kDict:
      return box_value(Value::Kind::kDict, new PyTwin<Value::Dict>(o, native.as<Value::Dict>()));
    default:
      return opaque(o);
  }
}

// Whether a failure to convert may fall back to storing the object opaque: ordinary
// exceptions (a converter that raises, a __hash__ that raises) yes; MemoryError and
// non-Exception errors (KeyboardInterrupt) no.
bool recoverable() {
  return PyErr_ExceptionMatches(PyExc_Exception) && !PyErr_ExceptionMatches(PyExc_MemoryError);
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
  PyTypeObject* tp = Py_TYPE(o);
  PyObject* fn = nullptr;  // borrowed from the cache
  if (auto it = g_converters->find(tp); it != g_converters->end()) {
    if (PyWeakref_GetObject(it->second.type_ref) == reinterpret_cast<PyObject*>(tp)) {
      fn = it->second.converter;
    } else {  // the type died and another took its address
      Py_DECREF(it->second.type_ref);
      Py_DECREF(it->second.converter);
      g_converters->erase(it);
    }
  }
  if (fn == nullptr) {
    py::object found = py::reinterpret_steal<py::object>(
        PyObject_CallOneArg(g_converter_for, reinterpret_cast<PyObject*>(tp)));
    if (!found) return false;
    PyObject* ref = PyWeakref_NewRef(reinterpret_cast<PyObject*>(tp), nullptr);
    if (ref == nullptr) return false;
    if (g_converters->size() >= 4096) clear_converters();  // per-instance classes
    g_converters->emplace(tp, ConverterEntry{ref, found.inc_ref().ptr()});
    fn = found.ptr();
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
      if (memoize) remember(o, out);
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
    bool converted = false;
    try {
      converted = mapping(o, native, depth);
    } catch (const std::invalid_argument&) {
      // Two keys with the same text (str subclasses with their own __eq__/__hash__).
    }
    if (!converted) {
      if (PyErr_Occurred()) return false;
      out = opaque(o);  // a key C++ cannot hold
    } else {
      out = twin ? twin_of(o, std::move(native)) : std::move(native);
    }
    if (memoize) remember(o, out);
    return true;
  }
  if (unwrap_cpp_value(o, out)) return true;
  bool handled = false;
  if (!by_converter(o, out, twin, depth, handled)) {
    if (!recoverable()) return false;
    PyErr_Clear();  // a converter that raised: the object is opaque to C++, still stored
    handled = false;
  }
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
  clear_converters();
}

void set_converter_hook(PyObject* converter_for) {
  Py_XINCREF(converter_for);
  Py_XSETREF(g_converter_for, converter_for == Py_None ? (Py_XDECREF(converter_for), nullptr)
                                                       : converter_for);
  if (g_converters == nullptr) g_converters = new std::unordered_map<PyTypeObject*, ConverterEntry>();
  clear_converters();
}

}  // namespace nodemeta::python
