# nodemeta_sanitizers: compile and link flags for NODEMETA_SANITIZER (linked PRIVATE by
# every nodemeta target, so the library, tests and tools are instrumented alike).
#   address -> AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer)
#   thread  -> ThreadSanitizer
add_library(nodemeta_sanitizers INTERFACE)
if(NODEMETA_SANITIZER STREQUAL "address")
  set(_nodemeta_san -fsanitize=address,undefined -fno-sanitize-recover=undefined)
elseif(NODEMETA_SANITIZER STREQUAL "thread")
  set(_nodemeta_san -fsanitize=thread)
elseif(NOT NODEMETA_SANITIZER STREQUAL "")
  message(FATAL_ERROR "NODEMETA_SANITIZER must be '', address or thread, not '${NODEMETA_SANITIZER}'")
endif()
if(_nodemeta_san)
  target_compile_options(nodemeta_sanitizers INTERFACE ${_nodemeta_san} -fno-omit-frame-pointer -g)
  target_link_options(nodemeta_sanitizers INTERFACE ${_nodemeta_san})
endif()
