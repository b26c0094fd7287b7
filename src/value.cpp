#include "nodemeta/value.h"

#include <cxxabi.h>

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <ostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_set>

namespace nodemeta {
namespace detail {

std::string demangle(const std::type_info& type) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> name(
      abi::__cxa_demangle(type.name(), nullptr, nullptr, &status), std::free);
  return status == 0 && name ? std::string(name.get()) : std::string(type.name());
}

namespace {

std::string quote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out += '\'';
  for (char c : s) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\'': out += "\\'"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          static constexpr char kHex[] = "0123456789abcdef";
          out += "\\x";
          out += kHex[(static_cast<unsigned char>(c) >> 4) & 0xf];
          out += kHex[static_cast<unsigned char>(c) & 0xf];
        } else {
          out += c;
        }
    }
  }
  out += '\'';
  return out;
}

}  // namespace

// The built-in boxes: the same ObjectBox template, with deep equality and Python-like repr.
template <>
bool ObjectBox<std::string>::equals(const ValueBox& other) const {
  return other.type() == typeid(std::string) &&
         value == static_cast<const ObjectBox<std::string>&>(other).value;
}
template <>
std::string ObjectBox<std::string>::repr() const {
  return quote(value);
}

template <>
bool ObjectBox<Value::List>::equals(const ValueBox& other) const {
  return other.type() == typeid(Value::List) &&
         value == static_cast<const ObjectBox<Value::List>&>(other).value;
}
template <>
std::string ObjectBox<Value::List>::repr() const {
  std::string out = "[";
  for (std::size_t i = 0; i < value.size(); ++i) {
    if (i != 0) out += ", ";
    out += value[i].repr();
  }
  return out + "]";
}

template <>
bool ObjectBox<Value::Dict>::equals(const ValueBox& other) const {
  if (other.type() != typeid(Value::Dict)) return false;
  const Value::Dict& b = static_cast<const ObjectBox<Value::Dict>&>(other).value;
  if (value.size() != b.size()) return false;
  // Keys are unique on both sides, so "every entry of a has an equal entry in b" suffices.
  // (No structured binding here: clang before 16 cannot capture one in a lambda.)
  for (const auto& entry : value) {
    const std::string& key = entry.first;
    auto it = std::find_if(b.begin(), b.end(), [&](const auto& e) { return e.first == key; });
    if (it == b.end() || !(it->second == entry.second)) return false;
  }
  return true;
}
template <>
std::string ObjectBox<Value::Dict>::repr() const {
  std::string out = "{";
  for (std::size_t i = 0; i < value.size(); ++i) {
    if (i != 0) out += ", ";
    out += quote(value[i].first);
    out += ": ";
    out += value[i].second.repr();
  }
  return out + "}";
}

}  // namespace detail

namespace {

// Linear in the number of keys: a scan for small dicts, a hash set for large ones (a
// quadratic check took seconds on a loaded dict of 50,000 keys).
void check_unique_keys(const Value::Dict& items) {
  auto duplicate = [](const std::string& k) {
    throw std::invalid_argument("nodemeta::Value::dict: duplicate key '" + k + "'");
  };
  constexpr std::size_t kScan = 16;
  if (items.size() <= kScan) {
    for (std::size_t i = 1; i < items.size(); ++i) {
      for (std::size_t j = 0; j < i; ++j) {
        if (items[i].first == items[j].first) duplicate(items[i].first);
      }
    }
    return;
  }
  std::unordered_set<std::string_view> seen;
  seen.reserve(items.size());
  for (const auto& [k, v] : items) {
    if (!seen.insert(k).second) duplicate(k);
  }
}

}  // namespace

Value::Value(const char* s) : Value(std::string_view(s == nullptr ? "" : s)) {
  if (s == nullptr) throw std::invalid_argument("nodemeta::Value: null const char*");
}
Value::Value(std::string_view s) : Value(std::string(s)) {}
Value::Value(const std::string& s) : Value(std::string(s)) {}
Value::Value(std::string&& s)
    : box_(new detail::ObjectBox<std::string>(std::move(s))), kind_(Kind::kString) {}

Value Value::list(std::initializer_list<Value> items) { return list(List(items)); }
Value Value::list(List items) {
  return Value(Kind::kList, new detail::ObjectBox<List>(std::move(items)));
}
Value Value::dict(std::initializer_list<std::pair<std::string, Value>> items) {
  return dict(Dict(items));
}
Value Value::dict(Dict items) {
  check_unique_keys(items);
  return Value(Kind::kDict, new detail::ObjectBox<Dict>(std::move(items)));
}

void Value::throw_int_overflow(std::uint64_t i) {
  throw std::overflow_error("nodemeta::Value: integer " + std::to_string(i) +
                            " does not fit std::int64_t");
}

void Value::throw_bad_cast(std::string requested) const {
  throw BadValueCast(type_name(), std::move(requested));
}

std::string Value::type_name() const {
  switch (kind_) {
    case Kind::kNone: return "none";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "std::int64_t";
    case Kind::kDouble: return "double";
    default: return box_->type_name();
  }
}

std::size_t Value::size() const noexcept {
  if (const List* l = get_if<List>()) return l->size();
  if (const Dict* d = get_if<Dict>()) return d->size();
  return 0;
}

const Value& Value::at(std::size_t index) const& {
  const List& l = as<List>();
  if (index >= l.size()) {
    throw std::out_of_range("nodemeta::Value: list index " + std::to_string(index) +
                            " out of range for a list of " + std::to_string(l.size()));
  }
  return l[index];
}

const Value& Value::at(std::string_view key) const& {
  const Dict& d = as<Dict>();
  for (const auto& [k, v] : d) {
    if (k == key) return v;
  }
  throw KeyError(key);
}

const Value* Value::find(std::string_view key) const& noexcept {
  if (const Dict* d = get_if<Dict>()) {
    for (const auto& [k, v] : *d) {
      if (k == key) return &v;
    }
  }
  return nullptr;
}

// The rvalue overloads copy out of the box before the temporary (and maybe the box) dies;
// inside them *this is an lvalue, so these calls reach the const& overloads.
Value Value::at(std::size_t index) const&& { return at(index); }
Value Value::at(std::string_view key) const&& { return at(key); }
std::optional<Value> Value::find(std::string_view key) const&& noexcept {
  if (const Value* v = find(key)) return *v;
  return std::nullopt;
}

std::string Value::repr() const {
  switch (kind_) {
    case Kind::kNone: return "None";
    case Kind::kBool: return bool_ ? "True" : "False";
    case Kind::kInt: return std::to_string(int_);
    case Kind::kDouble: {
      if (std::isnan(double_)) return "nan";
      if (std::isinf(double_)) return double_ > 0 ? "inf" : "-inf";
      char buf[64];
      auto [end, ec] = std::to_chars(buf, buf + sizeof buf, double_);
      std::string s(buf, end);
      if (s.find_first_of(".eE") == std::string::npos) s += ".0";
      return s;
    }
    default: return box_->repr();
  }
}

std::ostream& operator<<(std::ostream& os, const Value& v) { return os << v.repr(); }

bool operator==(const Value& a, const Value& b) {
  if (a.kind_ != b.kind_) return false;
  switch (a.kind_) {
    case Value::Kind::kNone: return true;
    case Value::Kind::kBool: return a.bool_ == b.bool_;
    case Value::Kind::kInt: return a.int_ == b.int_;
    case Value::Kind::kDouble: {
      // Bitwise, so 0.0 != -0.0, after making every NaN the one NaN (the constructor did;
      // doing it again here covers bits that reached a Value through detail::ValueAccess).
      const double x = Value::canonical_double(a.double_);
      const double y = Value::canonical_double(b.double_);
      return std::bit_cast<std::uint64_t>(x) == std::bit_cast<std::uint64_t>(y);
    }
    default: return a.box_ == b.box_ || a.box_->equals(*b.box_);
  }
}

}  // namespace nodemeta
