// python/src/values.h: Python objects as nodemeta Values and back (the binding layer only).
//
// A Python value written through nodemeta.NodeMetadata is stored as a Value C++ can read
// natively, which still holds the very object it came from, so Python gets that object back
// (`md[k] is v`):
//   None, True, False           the inline None/bool (singletons: identity holds anyway)
//   int (exact, fits int64)     the inline int64 (a new int object comes back: small ints
//   float (exact)               and the inline double  are cached by CPython, others equal)
//   str (exact, valid UTF-8)    a PyTwin<std::string>: a string box holding the str too
//   list, tuple (exact)         a PyTwin<Value::List>, elements converted structurally
//   dict (exact, str keys)      a PyTwin<Value::Dict>
//   a type with a converter     (nodemeta.fx registers TensorMetadata, torch.Size, dtypes,
//                               tensors, ...) a twin of what the converter returns
//   anything else               a PyOpaque box (Kind::kObject): as<T> throws BadValueCast
//                               naming the Python type; == compares identity
// Inside containers the same rules apply without twins (a nested str is a plain string;
// a nested unconvertible object is a PyOpaque). Containers are converted when written: C++
// readers see the contents as of the write (Python readers get the live object).
//
// Threads: conversion in either direction needs the GIL. A box's Python reference is
// dropped by whichever thread releases the box if it holds the GIL; a thread without it (a
// oneTBB worker) hands the reference over, and a thread holding the GIL drops it soon after
// (a pending call; the next write from Python; the end of run_passes). No thread ever waits
// for the GIL while releasing a value. After nodemeta's atexit hook, references handed
// over are leaked (the process is ending); those dropped with the GIL are still dropped.
#ifndef NODEMETA_PYTHON_VALUES_H_
#define NODEMETA_PYTHON_VALUES_H_

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "nodemeta/value.h"

namespace nodemeta::python {

// False once the interpreter is shutting down (set by an atexit hook).
extern std::atomic<bool> g_python_alive;

// Drops one reference to `o` from any thread (see above).
void release_object(PyObject* o) noexcept;
// Drops the references threads without the GIL handed over. GIL held. Inline: every Python
// write calls it, and nearly always there is nothing to drop (one load).
extern std::atomic<std::size_t> g_pending_count;
void drain_pending_slow() noexcept;
inline void drain_pending() noexcept {
  if (g_pending_count.load(std::memory_order_acquire) != 0) drain_pending_slow();
}
// How many references were handed over so far (tests).
std::uint64_t handed_over_count() noexcept;
// From nodemeta's atexit hook (GIL held): no thread calls Py_AddPendingCall after this
// returns; references handed over before are dropped, later ones leaked.
void shut_down_handover() noexcept;

// Test hooks for the hand-over: the next one stops after queuing its reference, before it
// schedules the pending call, until resume_handover() or timeout_s; and its state.
void pause_next_handover(double timeout_s) noexcept;
void resume_handover() noexcept;
struct HandoverState {
  std::size_t pending = 0;        // references waiting for a drain
  bool call_scheduled = false;    // a pending call is queued and has not started
  std::uint64_t late_calls = 0;   // Py_AddPendingCall made after shut_down_handover (0)
};
HandoverState handover_state() noexcept;  // waits while a paused hand-over holds the lock
bool handover_paused() noexcept;           // never waits

// A built-in boxed kind (string, list, dict) that remembers the Python object it was
// converted from.
template <class T>
class PyTwin final : public detail::ObjectBox<T> {
 public:
  PyTwin(PyObject* o, T v) : detail::ObjectBox<T>(std::move(v)), object_(o) {
    Py_INCREF(o);
  }
  ~PyTwin() override { release_object(object_); }
  void* foreign() const noexcept override { return object_; }

 private:
  PyObject* object_;
};

// A Python object C++ cannot read (Kind::kObject).
class PyOpaque final : public detail::ValueBox {
 public:
  explicit PyOpaque(PyObject* o);
  ~PyOpaque() override { release_object(object_); }
  const std::type_info& type() const noexcept override { return typeid(PyOpaque); }
  std::string type_name() const override { return "Python " + type_name_; }
  bool equals(const detail::ValueBox& other) const override {
    return other.type() == typeid(PyOpaque) &&
           static_cast<const PyOpaque&>(other).object_ == object_;
  }
  std::string repr() const override { return "<Python " + type_name_ + " object>"; }
  void* foreign() const noexcept override { return object_; }

 private:
  PyObject* object_;
  std::string type_name_;  // copied under the GIL: C++ threads read it without one
};

// Python -> Value (GIL held). Returns false with a Python exception set on failure.
// `twin`: keep the object itself for Python readers (top-level values).
bool to_value(PyObject* o, Value& out);

// Value -> Python (GIL held): the stored object where the value holds one, else a new
// plain object (a C++ user type comes back as a nodemeta.CppValue wrapper). New reference,
// or nullptr with an exception set.
PyObject* to_python(const Value& v);

// The converter hook (nodemeta.fx installs one): converter_for(type) -> callable or None.
void set_converter_hook(PyObject* converter_for);
// Drops the conversion caches (the converter per type, the twins of recent strings); at
// shutdown, so that no Python object outlives the interpreter in them. GIL held.
void clear_caches();

// Wraps / unwraps C++ user objects that have no Python form.
PyObject* wrap_cpp_value(const Value& v);
bool unwrap_cpp_value(PyObject* o, Value& out);
PyTypeObject* cpp_value_type();

}  // namespace nodemeta::python

#endif  // NODEMETA_PYTHON_VALUES_H_
