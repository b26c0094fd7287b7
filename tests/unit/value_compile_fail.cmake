# value_compile_fail.cmake: what value.h must reject at compile time, with which message.
#
# Each case is one statement inside a function that includes nodemeta/value.h; it must fail
# to compile and the compiler's output must contain the expected text (the static_assert's
# message, or the deleted overload). A control case must compile, so that a broken include
# path or compiler cannot pass the check. Run as a script:
#   cmake -DCXX=<c++ compiler> -DINCLUDE_DIR=<repo>/include [-DWORK_DIR=<scratch dir>]
#         -P tests/unit/value_compile_fail.cmake
# Register with ctest (label unit) from tests/CMakeLists.txt:
#   add_test(NAME value_compile_fail
#            COMMAND ${CMAKE_COMMAND} -DCXX=${CMAKE_CXX_COMPILER}
#                    -DINCLUDE_DIR=${PROJECT_SOURCE_DIR}/include
#                    -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/value_compile_fail
#                    -P ${CMAKE_CURRENT_SOURCE_DIR}/unit/value_compile_fail.cmake)
#   set_tests_properties(value_compile_fail PROPERTIES LABELS unit)
cmake_minimum_required(VERSION 3.20)
if(NOT CXX OR NOT INCLUDE_DIR)
  message(FATAL_ERROR "usage: cmake -DCXX=<compiler> -DINCLUDE_DIR=<dir> -P <this file>")
endif()
if(NOT WORK_DIR)
  set(WORK_DIR ${CMAKE_CURRENT_BINARY_DIR}/value_compile_fail)
endif()
file(MAKE_DIRECTORY ${WORK_DIR})

set(prologue [=[
#include "nodemeta/value.h"

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

enum class Color { kRed, kGreen };
enum Unscoped { kUnscoped };
struct Opaque { int x = 0; };

void check() {
  using nodemeta::Value;
]=])
set(failures 0)

# compile_case(<name> <expect: "ok" or a regex the diagnostics must match> <statement>)
function(compile_case name expect statement)
  set(source ${WORK_DIR}/${name}.cpp)
  file(WRITE ${source} "${prologue}  ${statement};\n}\n")
  execute_process(COMMAND ${CXX} -std=c++20 -fsyntax-only -I${INCLUDE_DIR} ${source}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(expect STREQUAL "ok")
    if(NOT rc EQUAL 0)
      message(SEND_ERROR "${name}: expected to compile:\n${out}")
      math(EXPR failures "${failures} + 1")
    endif()
  elseif(rc EQUAL 0)
    message(SEND_ERROR "${name}: compiled, but must be rejected (${expect}): ${statement}")
    math(EXPR failures "${failures} + 1")
  elseif(NOT out MATCHES "${expect}")
    message(SEND_ERROR "${name}: rejected, but without '${expect}':\n${out}")
    math(EXPR failures "${failures} + 1")
  else()
    message(STATUS "${name}: rejected as expected")
  endif()
  set(failures ${failures} PARENT_SCOPE)
endfunction()

compile_case(control ok
  "Value v = Value::make<std::vector<int>>(3) ; (void)v.as<std::vector<int>>()")
compile_case(control_move_only ok
  "const Value v = Value::make<std::unique_ptr<int>>(new int(1)) ;
   (void)*v.as<std::unique_ptr<int>>()")
compile_case(control_no_equality ok
  "(void)(Value::make<std::vector<Opaque>>() == Value::make<std::map<int, Opaque>>())")

# make<T> of a type a Value could never hand back as that T (item: make rejects).
compile_case(make_int "make<T>: bool, integers, floating point and characters"
  "(void)Value::make<int>(1)")
compile_case(make_long_long "make<T>: bool, integers, floating point and characters"
  "(void)Value::make<long long>(1)")
compile_case(make_float "make<T>: bool, integers, floating point and characters"
  "(void)Value::make<float>(1.0f)")
compile_case(make_char "make<T>: bool, integers, floating point and characters"
  "(void)Value::make<char>('c')")
compile_case(make_int128 "make<T>: bool, integers, floating point and characters"
  "__extension__ typedef __int128 I128 ; (void)Value::make<I128>(1)")
compile_case(make_enum "make<T>: an enum" "(void)Value::make<Color>(Color::kRed)")
compile_case(make_unscoped_enum "make<T>: an enum" "(void)Value::make<Unscoped>(kUnscoped)")
compile_case(make_pointer "make<T>: a raw pointer" "(void)Value::make<int*>(nullptr)")
compile_case(make_const_pointer "make<T>: a raw pointer"
  "(void)Value::make<const Opaque*>(nullptr)")
compile_case(make_nullptr "make<T>: a raw pointer" "(void)Value::make<std::nullptr_t>()")
compile_case(make_member_pointer "make<T>: a raw pointer"
  "(void)Value::make<int Opaque::*>(&Opaque::x)")
compile_case(make_array "make<T>: a built-in array" "(void)Value::make<int[3]>()")
compile_case(make_string_view "make<T>: std::string_view"
  "(void)Value::make<std::string_view>(\"x\")")
compile_case(make_string "make<T>: build built-in kinds" "(void)Value::make<std::string>(\"x\")")
compile_case(make_const "make<T>: T must be a plain type" "(void)Value::make<const Opaque>()")

# get_if<T>/as<T> of a type no Value holds.
compile_case(get_if_int "integers are held as std::int64_t" "const Value v ; (void)v.get_if<int>()")
compile_case(as_enum "no Value holds" "const Value v ; (void)v.as<Color>()")
compile_case(get_if_pointer "no Value holds" "const Value v ; (void)v.get_if<Opaque*>()")

# Deleted overloads (value_test.cpp checks these with requires-expressions too). gcc says
# "use of deleted function 'nodemeta::Value::Value(T)'"; clang "call to deleted constructor"
# or "conversion function from 'E' to 'nodemeta::Value' invokes a deleted function".
set(deleted_ctor "deleted (constructor|function[^\n]*Value::Value)|invokes a deleted function")
compile_case(char_to_value "${deleted_ctor}" "Value v(',')")
compile_case(pointer_to_value "${deleted_ctor}" "int x = 0 ; Value v(&x)")
compile_case(nullptr_to_value "${deleted_ctor}" "Value v(nullptr)")
compile_case(enum_to_value "${deleted_ctor}" "Value v = kUnscoped")
compile_case(as_move_only_on_rvalue "deleted (member )?function[^\n]*(::|')as[(']"
  "(void)Value::make<std::unique_ptr<int>>(new int(1)).as<std::unique_ptr<int>>()")
compile_case(get_if_on_rvalue "deleted (member )?function[^\n]*(::|')get_if[(']"
  "(void)Value(1).get_if<std::int64_t>()")

if(failures GREATER 0)
  message(FATAL_ERROR "${failures} compile-fail case(s) did not behave")
endif()
