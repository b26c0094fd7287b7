// nodemeta/value.h: Value, the immutable, cheaply copied value of one metadata key.
//
// A Value holds one of: none, bool, a 64-bit integer, a double, a string, a list of
// Values, an insertion-ordered dict from string to Value, or a user object (a class type T,
// built in place by Value::make<T>). Scalars live inline (16 bytes, no allocation);
// strings, lists, dicts and user objects live in one shared, reference-counted, immutable
// box, so copying a Value never copies its contents.
//
// References: at(), find(), get_if() and as() on an lvalue Value return references and
// pointers into its box, valid while that Value (or a copy sharing the box) lives. On an
// rvalue, such as the copy NodeMetadata's operator[] returns, at() and as() return copies,
// find() a std::optional<Value>, and get_if() does not compile. Through a pointer the Value
// is an lvalue: `node.get(k)->at(0)` refers into the std::optional that dies at the end of
// the full expression; write `*node.get(k)` (an rvalue: copies) or name the optional.
//
// Thread safety: a Value is immutable, so any number of threads may read the same Value,
// and copy or destroy their own copies, at once (the reference count is atomic). A user
// type stored with make<T> is read through `const T&` from many threads: its const member
// functions must be safe to call concurrently.
//
// Limits:
// - integers are std::int64_t: every standard integer type converts, but an unsigned value
//   above INT64_MAX throws std::overflow_error, and __int128 does not compile;
// - doubles are IEEE binary64: float converts exactly, long double is rounded (to +-inf
//   beyond double's range); every NaN is held as the one quiet NaN;
// - strings, lists and dicts hold as much as std::string and std::vector do (max_size();
//   beyond it, or out of memory, the standard library's std::length_error or
//   std::bad_alloc); dict() checks key uniqueness in O(n^2) and at(key)/find() scan
//   linearly: dicts are for small records, not large maps;
// - nesting: destruction, == and repr() recurse once per level, so nesting is bounded by
//   the thread's stack: 10,000 levels are fine on an 8 MiB stack, some tens of thousands
//   overflow it (fewer on small thread stacks or in sanitizer builds);
// - a box is shared by any number of Values: its reference count is 64-bit and cannot wrap.
//
// Differences from Python values: kinds never compare equal across kinds (1 != 1.0 != True),
// == is an equivalence relation (NaN == NaN, 0.0 != -0.0: see operator==), integers are
// 64-bit (building a Value from an unsigned integer above INT64_MAX throws
// std::overflow_error), and dicts are keyed by strings only.
#ifndef NODEMETA_VALUE_H_
#define NODEMETA_VALUE_H_

#include <atomic>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "nodemeta/errors.h"
#include "nodemeta/export.h"

namespace nodemeta {

class Value;

namespace detail {

// The shared, immutable box behind a string, list, dict or user-object Value.
class NODEMETA_API ValueBox {
 public:
  ValueBox() = default;
  ValueBox(const ValueBox&) = delete;
  ValueBox& operator=(const ValueBox&) = delete;
  virtual ~ValueBox() = default;

  virtual const std::type_info& type() const noexcept = 0;
  virtual std::string type_name() const = 0;
  // Deep equality for built-in kinds; operator== of T for user types that have a usable one
  // (kDeepEqualityComparable), identity otherwise.
  virtual bool equals(const ValueBox& other) const = 0;
  virtual std::string repr() const = 0;
  // The object of another language this value was converted from, or nullptr. A language
  // binding derives its own boxes from ObjectBox<T> (T a built-in boxed kind, so C++ reads
  // the value natively) or from ValueBox (an opaque object) and overrides this, so that
  // values it stored come back to it as the very object it was given. The core never
  // calls it; its destructor must be safe on whichever thread releases the value.
  virtual void* foreign() const noexcept { return nullptr; }

  // 64-bit, so the count cannot wrap: 2^64 references cannot exist at once (2^32 could, in
  // 64 GiB of Values). On 64-bit targets the box header stays 16 bytes (vptr + count).
  using RefCount = std::uint64_t;
  void add_ref() const noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
  void release() const noexcept {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }
  // How many Values share this box right now (a relaxed load: exact only if no other
  // thread copies or drops one meanwhile). For a binding's garbage-collector support,
  // which must know whether one holder owns the box alone.
  RefCount use_count() const noexcept { return refs_.load(std::memory_order_relaxed); }

 private:
  mutable std::atomic<RefCount> refs_{1};
};

NODEMETA_API std::string demangle(const std::type_info& type);

template <class T>
class NODEMETA_API ObjectBox;

struct ValueAccess;  // the store's access to a Value's representation

// The argument types (after decay) that Value's converting constructors take. Every other
// type meets the deleted catch-all constructor instead of a standard conversion to bool.
template <class T>
inline constexpr bool kValueInteger =
    std::is_same_v<T, short> || std::is_same_v<T, unsigned short> || std::is_same_v<T, int> ||
    std::is_same_v<T, unsigned> || std::is_same_v<T, long> || std::is_same_v<T, unsigned long> ||
    std::is_same_v<T, long long> || std::is_same_v<T, unsigned long long>;
template <class T>
inline constexpr bool kValueFloat =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, long double>;
// A class type that converts to std::string_view or std::string (std::pmr::string, a user
// string class) reaches the string constructors.
template <class T>
struct ConvertsToString
    : std::bool_constant<std::is_class_v<T> && (std::is_convertible_v<T, std::string_view> ||
                                                std::is_convertible_v<T, std::string>)> {};
// The kinds a Value holds without make<T>: inline scalars, and the boxed built-ins.
template <class T>
inline constexpr bool kBuiltinScalar =
    std::is_same_v<T, bool> || std::is_same_v<T, std::int64_t> || std::is_same_v<T, double>;
template <class T>
inline constexpr bool kBuiltinBoxed =
    std::is_same_v<T, std::string> || std::is_same_v<T, std::vector<Value>> ||
    std::is_same_v<T, std::vector<std::pair<std::string, Value>>>;

#ifdef __SIZEOF_INT128__
__extension__ typedef __int128 Int128;  // __extension__: no -Wpedantic warning
__extension__ typedef unsigned __int128 UInt128;
template <class T>
inline constexpr bool kInt128 = std::is_same_v<T, Int128> || std::is_same_v<T, UInt128>;
#else
template <class T>
inline constexpr bool kInt128 = false;
#endif

// The parts of Value::kCanMake, one per static_assert message in make<T>.
template <class T>
inline constexpr bool kPlainType =
    !std::is_reference_v<T> && !std::is_const_v<T> && !std::is_volatile_v<T>;
template <class T>
inline constexpr bool kNumberOrChar = std::is_arithmetic_v<T> || kInt128<T>;
template <class T>
inline constexpr bool kRawPointer =
    std::is_pointer_v<T> || std::is_member_pointer_v<T> || std::is_null_pointer_v<T>;
template <class T>
inline constexpr bool kMakeable =
    kPlainType<T> && std::is_object_v<T> && !kNumberOrChar<T> && !std::is_enum_v<T> &&
    !kRawPointer<T> && !std::is_array_v<T> && !std::is_same_v<T, std::string_view> &&
    !kBuiltinScalar<T> && !kBuiltinBoxed<T> && !std::is_same_v<T, Value>;

// (std::disjunction: ConvertsToString<Value> is never asked, Value may still be incomplete.)
template <class T>
inline constexpr bool kValueArgument = std::disjunction_v<
    std::bool_constant<std::is_same_v<T, Value> || std::is_same_v<T, bool> || kValueInteger<T> ||
                       kValueFloat<T> || std::is_same_v<T, const char*> ||
                       std::is_same_v<T, char*>>,
    ConvertsToString<T>>;

}  // namespace detail

class NODEMETA_API Value {
 public:
  enum class Kind : std::uint8_t { kNone, kBool, kInt, kDouble, kString, kList, kDict, kObject };
  using List = std::vector<Value>;
  using Dict = std::vector<std::pair<std::string, Value>>;  // insertion-ordered, unique keys

  // Construction. None by default. Implicit from bool, from the standard integer types
  // (short to unsigned long long; an unsigned value above INT64_MAX throws
  // std::overflow_error), from float, double and long double (held as double), and from
  // strings: const char* (nullptr throws std::invalid_argument), string literals,
  // std::string, std::string_view, or a class type that converts to one of the last two.
  // Lists and dicts come from list() and dict(), user types from make<T>().
  constexpr Value() noexcept : int_(0), kind_(Kind::kNone) {}
  Value(bool b) noexcept : int_(0), kind_(Kind::kBool) { bool_ = b; }  // NOLINT
  template <class T>
    requires detail::kValueInteger<T>
  Value(T i) : int_(checked_int(i)), kind_(Kind::kInt) {}  // NOLINT
  template <class T>
    requires detail::kValueFloat<T>
  Value(T d) noexcept  // NOLINT
      : double_(canonical_double(static_cast<double>(d))), kind_(Kind::kDouble) {}
  Value(const char* s);         // NOLINT; throws std::invalid_argument on nullptr
  Value(std::string_view s);    // NOLINT
  Value(const std::string& s);  // NOLINT
  Value(std::string&& s);       // NOLINT
  // Everything else does not compile (as in Abseil, a deleted catch-all), where it would
  // otherwise become a bool through a standard conversion: char and the other character
  // types (also signed/unsigned char, so std::int8_t/std::uint8_t: write Value(int{c})),
  // pointers other than char* (Value(&x) was true), std::nullptr_t (use Value() for None),
  // enums (Value(kGreen) was true: convert to an integer or a name), __int128, proxies
  // such as std::vector<bool>::reference (write Value(bool(bits[i]))), List and Dict.
  template <class T>
    requires(!detail::kValueArgument<std::decay_t<T>>)
  Value(T) = delete;  // NOLINT

  static Value none() noexcept { return Value(); }
  static Value list(std::initializer_list<Value> items);
  static Value list(List items);
  // Throws std::invalid_argument naming the key if a key repeats.
  static Value dict(std::initializer_list<std::pair<std::string, Value>> items);
  static Value dict(Dict items);
  // A user object: T built in place from args (T need not be copyable or movable), read
  // back with get_if<T>/as<T>. T is a class type (or a union), not cv-qualified; make<T>
  // is a compile error, with a static_assert saying what to do instead, for types a Value
  // holds on its own (bool, integers, floating point, std::string, List, Dict, Value) or
  // could not hand back as that T, and for types it should not own: the other arithmetic
  // and character types (make<int> could never be read as an int or compare equal to
  // Value(1)), enums (store the integer or the name), raw pointers, std::nullptr_t and
  // member pointers (wrap them in a struct, or use std::shared_ptr), built-in arrays (use
  // std::array) and std::string_view (it would not own its characters).
  template <class T, class... Args>
  static Value make(Args&&... args);
  // Whether make<T> compiles, for generic code.
  template <class T>
  static constexpr bool kCanMake = detail::kMakeable<T>;

  Value(const Value& other) noexcept : int_(other.int_), kind_(other.kind_) {
    if (boxed()) box_->add_ref();
  }
  Value(Value&& other) noexcept : int_(other.int_), kind_(other.kind_) {
    other.kind_ = Kind::kNone;
  }
  Value& operator=(const Value& other) noexcept {
    Value(other).swap(*this);
    return *this;
  }
  Value& operator=(Value&& other) noexcept {
    Value(std::move(other)).swap(*this);
    return *this;
  }
  ~Value() {
    if (boxed()) box_->release();
  }
  void swap(Value& other) noexcept {
    std::swap(int_, other.int_);
    std::swap(kind_, other.kind_);
  }

  // Inspection.
  Kind kind() const noexcept { return kind_; }
  bool is_none() const noexcept { return kind_ == Kind::kNone; }
  // "none", "bool", "std::int64_t", "double", "std::string", "nodemeta::Value::List",
  // "nodemeta::Value::Dict", or the demangled name of a user type.
  std::string type_name() const;

  // A pointer to the held T, or nullptr if the Value holds something else. T is one of
  // bool, std::int64_t, double, std::string, List, Dict, or a user type given to make<T>.
  // Deleted on an rvalue: the pointer would outlive the temporary's box. Name the Value
  // first (`const Value v = node["k"]; v.get_if<T>()`), or use as<T>() on the rvalue.
  template <class T>
  const T* get_if() const& noexcept;
  template <class T>
  const T* get_if() const&& = delete;
  // The held T; throws BadValueCast naming the held and the requested type. On an rvalue
  // (const or not) it returns a copy, so `const auto& s = node["k"].as<std::string>();`
  // does not dangle. For a T that cannot be copied (std::unique_ptr<U>, std::mutex) the
  // rvalue overload is deleted: name the Value first (`const Value v = node["k"];`) and
  // read it through `v.as<T>()`, a const T&.
  template <class T>
  const T& as() const&;
  template <class T>
    requires std::copy_constructible<T>
  T as() const&&;
  template <class T>
    requires(!std::copy_constructible<T>)
  T as() const&& = delete;

  // Containers. size(): elements of a list, entries of a dict, 0 otherwise.
  std::size_t size() const noexcept;
  // List element; std::out_of_range naming the index and size; BadValueCast if not a list.
  // On an rvalue it returns a copy (the box may die with the temporary), so
  // `const Value& e = node["shape"].at(0);` does not dangle.
  const Value& at(std::size_t index) const&;
  Value at(std::size_t index) const&&;
  // Dict entry; KeyError naming the key if absent; BadValueCast if not a dict. On an rvalue
  // it returns a copy, as at(index) does.
  const Value& at(std::string_view key) const&;
  Value at(std::string_view key) const&&;
  // Dict entry or nullptr (also nullptr when this is not a dict). On an rvalue it returns a
  // copy in a std::optional (empty where the lvalue overload returns nullptr), so
  // `if (auto e = node["attrs"].find("k")) use(*e);` reads the same and does not dangle.
  const Value* find(std::string_view key) const& noexcept;
  std::optional<Value> find(std::string_view key) const&& noexcept;

  // Python-like text: None, True, 3, 2.5, 'text', [1, 2], {'k': 1}, <T object>.
  std::string repr() const;

  // Equality: two Values are equal iff they are indistinguishable, so == is an equivalence
  // relation (reflexive, symmetric, transitive), as snapshots and round trips need:
  // - kinds never compare equal across kinds (1 != 1.0 != True, 0 != None);
  // - doubles compare by bit pattern after every NaN became the one NaN (see Value(T d)):
  //   NaN == NaN, and 0.0 != -0.0 (their reprs differ); unlike Python's float ==;
  // - strings, lists, dicts compare deeply by these rules, dicts ignoring insertion order
  //   (as Python's do), whether or not the two sides share boxes;
  // - user objects compare with T's operator== where it is usable (see
  //   detail::kDeepEqualityComparable), by identity (the same make<T> call) otherwise.
  //   T's operator== must be an equivalence relation, as std::equality_comparable requires:
  //   a Value compares equal to its copies (the same box) without calling it, so a T whose
  //   == is not reflexive (std::vector<double> holding a NaN) gets answers that depend on
  //   sharing.
  friend NODEMETA_API bool operator==(const Value& a, const Value& b);

 private:
  friend struct detail::ValueAccess;

  template <std::integral T>
  static std::int64_t checked_int(T i) {
    if constexpr (std::is_unsigned_v<T> && sizeof(T) >= sizeof(std::int64_t)) {
      if (i > static_cast<T>(INT64_MAX)) throw_int_overflow(static_cast<std::uint64_t>(i));
    }
    return static_cast<std::int64_t>(i);
  }
  // Every NaN (any sign, payload, quiet or signalling) becomes the one quiet NaN, so equal
  // doubles have equal bits. Bitwise, so that -ffast-math cannot fold the test away.
  static constexpr double canonical_double(double d) noexcept {
    constexpr std::uint64_t kExponent = 0x7ff0000000000000;
    constexpr std::uint64_t kQuietNaN = 0x7ff8000000000000;
    const std::uint64_t magnitude = std::bit_cast<std::uint64_t>(d) & ~(std::uint64_t{1} << 63);
    return magnitude > kExponent ? std::bit_cast<double>(kQuietNaN) : d;
  }
  [[noreturn]] static void throw_int_overflow(std::uint64_t i);
  [[noreturn]] void throw_bad_cast(std::string requested) const;

  Value(Kind kind, detail::ValueBox* box) noexcept : box_(box), kind_(kind) {}
  bool boxed() const noexcept { return kind_ >= Kind::kString; }

  union {
    bool bool_;
    std::int64_t int_;
    double double_;
    detail::ValueBox* box_;
  };
  Kind kind_;
};

// Writes v.repr() (so GoogleTest and logs print Values readably).
NODEMETA_API std::ostream& operator<<(std::ostream& os, const Value& v);

namespace detail {

// Whether ObjectBox<T>::equals may call T's operator==. std::equality_comparable is not
// enough: the standard library's element-wise comparisons (vector, map, pair, tuple,
// optional, variant, ...) declare an operator== for any element type, which fails to compile
// only when instantiated. So look through them: a range (value_type), a container adaptor
// (container_type), a tuple-like type (pair, tuple, array), an optional-like type
// (value_type, has_value()) or a variant-like type (index(), valueless_by_exception())
// compares by value only if its elements do. A user type of one of these shapes whose own
// operator== ignores such elements compares by identity: conservative, never an error.
template <class T>
consteval bool deep_equality_comparable();
template <class T>
inline constexpr bool kDeepEqualityComparable = deep_equality_comparable<std::remove_cv_t<T>>();

template <class T>
struct AlternativesEqualityComparable : std::true_type {};
template <template <class...> class V, class... Ts>
struct AlternativesEqualityComparable<V<Ts...>>
    : std::bool_constant<(kDeepEqualityComparable<Ts> && ...)> {};

template <class T>
consteval bool deep_equality_comparable() {
  if constexpr (!std::equality_comparable<T>) {
    return false;
  } else if constexpr (requires { typename T::container_type; }) {
    return kDeepEqualityComparable<typename T::container_type>;
  } else if constexpr (requires(const T& t) {
                         typename T::value_type;
                         t.begin();
                         t.end();
                       }) {
    if constexpr (std::is_same_v<std::remove_cv_t<typename T::value_type>, T>) {
      return true;  // a range of itself (a JSON value type): nothing more to look through
    } else {
      return kDeepEqualityComparable<typename T::value_type>;
    }
  } else if constexpr (requires { std::tuple_size<T>::value; }) {
    return []<std::size_t... I>(std::index_sequence<I...>) {
      return (kDeepEqualityComparable<std::tuple_element_t<I, T>> && ...);
    }(std::make_index_sequence<std::tuple_size<T>::value>{});
  } else if constexpr (requires(const T& t) {
                         typename T::value_type;
                         t.has_value();
                       }) {
    return kDeepEqualityComparable<typename T::value_type>;
  } else if constexpr (requires(const T& t) {
                         t.index();
                         t.valueless_by_exception();
                       }) {
    return AlternativesEqualityComparable<T>::value;
  } else {
    return true;
  }
}

template <class T>
class NODEMETA_API ObjectBox : public ValueBox {
 public:
  template <class... Args>
  explicit ObjectBox(Args&&... args) : value(std::forward<Args>(args)...) {}
  const std::type_info& type() const noexcept override { return typeid(T); }
  std::string type_name() const override;
  bool equals(const ValueBox& other) const override {
    if (other.type() != typeid(T)) return false;
    if constexpr (kDeepEqualityComparable<T>) {
      return value == static_cast<const ObjectBox&>(other).value;
    } else {
      return this == &other;
    }
  }
  std::string repr() const override;

  const T value;
};

template <class T>
std::string type_name_of();

// The built-in boxed kinds: deep equality and Python-like repr (defined in value.cpp).
template <>
NODEMETA_API bool ObjectBox<std::string>::equals(const ValueBox& other) const;
template <>
NODEMETA_API std::string ObjectBox<std::string>::repr() const;
template <>
NODEMETA_API bool ObjectBox<std::vector<Value>>::equals(const ValueBox& other) const;
template <>
NODEMETA_API std::string ObjectBox<std::vector<Value>>::repr() const;
template <>
NODEMETA_API bool ObjectBox<std::vector<std::pair<std::string, Value>>>::equals(
    const ValueBox& other) const;
template <>
NODEMETA_API std::string ObjectBox<std::vector<std::pair<std::string, Value>>>::repr() const;

}  // namespace detail

template <class T, class... Args>
Value Value::make(Args&&... args) {
  static_assert(detail::kPlainType<T>,
                "make<T>: T must be a plain type (no reference, const or volatile)");
  static_assert(!detail::kPlainType<T> || std::is_object_v<T>,
                "make<T>: T must be an object type");
  static_assert(!std::is_object_v<T> || std::is_nothrow_destructible_v<T>,
                "make<T>: T's destructor must not throw (values are released by whichever "
                "thread collects them, where an exception could not be reported)");
  static_assert(!detail::kNumberOrChar<T> || detail::kBuiltinScalar<T>,
                "make<T>: bool, integers, floating point and characters are built with Value(x) "
                "(held as bool, std::int64_t or double; a character as a string): make<int> "
                "could never be read back as an int. Wrap the number in a struct to keep its "
                "type.");
  static_assert(!std::is_enum_v<T>,
                "make<T>: an enum is stored as its integer "
                "(Value(static_cast<std::int64_t>(e))) or its name (Value(\"kGreen\")); wrap "
                "it in a struct to keep its type.");
  static_assert(!detail::kRawPointer<T>,
                "make<T>: a raw pointer (or nullptr_t, or member pointer) is not stored: the "
                "Value cannot keep the pointee alive, and every reader would share it mutably. "
                "Wrap it in a struct that states who owns the pointee, or store a "
                "std::shared_ptr<const U>.");
  static_assert(!std::is_array_v<T>,
                "make<T>: a built-in array is not stored: use std::array<U, N>");
  static_assert(!std::is_same_v<T, std::string_view>,
                "make<T>: std::string_view does not own its characters: use Value(sv), a string");
  static_assert(
      !detail::kBuiltinScalar<T> && !detail::kBuiltinBoxed<T> && !std::is_same_v<T, Value>,
      "make<T>: build built-in kinds with Value's constructors, list() or dict()");
  if constexpr (kCanMake<T>) {
    return Value(Kind::kObject, new detail::ObjectBox<T>(std::forward<Args>(args)...));
  } else {
    return Value();  // unreachable: a static_assert above failed
  }
}

template <class T>
const T* Value::get_if() const& noexcept {
  static_assert(!std::is_reference_v<T> && !std::is_const_v<T>, "get_if<T>: T must be a plain type");
  static_assert(!(std::is_arithmetic_v<T> && !detail::kBuiltinScalar<T>),
                "get_if<T>/as<T>: integers are held as std::int64_t and floating point as double");
  static_assert(std::is_reference_v<T> || std::is_const_v<T> || std::is_arithmetic_v<T> ||
                    detail::kBuiltinScalar<T> || detail::kBuiltinBoxed<T> || kCanMake<T>,
                "get_if<T>/as<T>: no Value holds a T (make<T> rejects it)");
  if constexpr (std::is_same_v<T, bool>) {
    return kind_ == Kind::kBool ? &bool_ : nullptr;
  } else if constexpr (std::is_same_v<T, std::int64_t>) {
    return kind_ == Kind::kInt ? &int_ : nullptr;
  } else if constexpr (std::is_same_v<T, double>) {
    return kind_ == Kind::kDouble ? &double_ : nullptr;
  } else if constexpr (std::is_same_v<T, std::string>) {
    return kind_ == Kind::kString ? &static_cast<const detail::ObjectBox<T>*>(box_)->value : nullptr;
  } else if constexpr (std::is_same_v<T, List>) {
    return kind_ == Kind::kList ? &static_cast<const detail::ObjectBox<T>*>(box_)->value : nullptr;
  } else if constexpr (std::is_same_v<T, Dict>) {
    return kind_ == Kind::kDict ? &static_cast<const detail::ObjectBox<T>*>(box_)->value : nullptr;
  } else {
    if (kind_ != Kind::kObject || box_->type() != typeid(T)) return nullptr;
    return &static_cast<const detail::ObjectBox<T>*>(box_)->value;
  }
}

template <class T>
const T& Value::as() const& {
  if (const T* p = get_if<T>()) return *p;
  throw_bad_cast(detail::type_name_of<T>());
}

template <class T>
  requires std::copy_constructible<T>
T Value::as() const&& {
  if (const T* p = get_if<T>()) return *p;
  throw_bad_cast(detail::type_name_of<T>());
}

namespace detail {

template <class T>
std::string type_name_of() {
  if constexpr (std::is_same_v<T, bool>) {
    return "bool";
  } else if constexpr (std::is_same_v<T, std::int64_t>) {
    return "std::int64_t";
  } else if constexpr (std::is_same_v<T, double>) {
    return "double";
  } else if constexpr (std::is_same_v<T, std::string>) {
    return "std::string";
  } else if constexpr (std::is_same_v<T, Value::List>) {
    return "nodemeta::Value::List";
  } else if constexpr (std::is_same_v<T, Value::Dict>) {
    return "nodemeta::Value::Dict";
  } else {
    return demangle(typeid(T));
  }
}

template <class T>
std::string ObjectBox<T>::type_name() const {
  return type_name_of<T>();
}

template <class T>
std::string ObjectBox<T>::repr() const {
  return "<" + type_name_of<T>() + " object>";
}

// How the store packs a Value into a 16-byte slot and back, without touching the
// reference count unless asked to.
struct ValueAccess {
  struct Rep {
    std::int64_t bits;
    Value::Kind kind;
  };
  static Rep release(Value&& v) noexcept {
    Rep r{v.int_, v.kind_};
    v.kind_ = Value::Kind::kNone;
    return r;
  }
  static Value copy(std::int64_t bits, Value::Kind kind) noexcept {
    Value v;
    v.int_ = bits;
    v.kind_ = kind;
    if (v.boxed()) v.box_->add_ref();
    return v;
  }
  // A Value that takes over the reference the representation holds (no count change).
  static Value adopt(std::int64_t bits, Value::Kind kind) noexcept {
    Value v;
    v.int_ = bits;
    v.kind_ = kind;
    return v;
  }
  // The representation of `v`, which keeps it (no reference count change).
  static Rep peek(const Value& v) noexcept { return Rep{v.int_, v.kind_}; }
  // The box behind a boxed value, or nullptr; no reference count change.
  static const ValueBox* box_of(const Value& v) noexcept { return v.boxed() ? v.box_ : nullptr; }
  static void add_ref(std::int64_t bits, Value::Kind kind) noexcept {
    if (kind >= Value::Kind::kString) reinterpret_cast<ValueBox*>(bits)->add_ref();
  }
  static void drop(std::int64_t bits, Value::Kind kind) noexcept {
    if (kind >= Value::Kind::kString) reinterpret_cast<ValueBox*>(bits)->release();
  }
};

}  // namespace detail

}  // namespace nodemeta

#endif  // NODEMETA_VALUE_H_
