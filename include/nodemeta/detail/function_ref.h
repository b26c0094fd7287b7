// nodemeta/detail/function_ref.h: a non-owning reference to a callable (llvm::function_ref),
// so that template members can hand callbacks to non-template code in the library.
// Internal: no stability promise.
#ifndef NODEMETA_DETAIL_FUNCTION_REF_H_
#define NODEMETA_DETAIL_FUNCTION_REF_H_

#include <memory>
#include <type_traits>
#include <utility>

namespace nodemeta::detail {

template <class Signature>
class FunctionRef;

template <class R, class... Args>
class FunctionRef<R(Args...)> {
 public:
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef> &&
             std::is_invocable_r_v<R, F&, Args...>)
  FunctionRef(F&& f) noexcept  // NOLINT(google-explicit-constructor)
      : object_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* object, Args... args) -> R {
          return std::invoke(*static_cast<std::remove_reference_t<F>*>(object),
                             std::forward<Args>(args)...);
        }) {}

  R operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

 private:
  void* object_;
  R (*call_)(void*, Args...);
};

}  // namespace nodemeta::detail

#endif  // NODEMETA_DETAIL_FUNCTION_REF_H_
