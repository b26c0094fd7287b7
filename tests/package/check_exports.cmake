# What the shared libraries export and load (nodemeta/export.h, cmake/exports.map):
# - every exported symbol is in namespace nodemeta (its functions and variables, and the
#   type information and vtables of its classes): no standard-library instantiations, no
#   internals; the public API is there and the store's internals are not;
# - the core loads oneTBB and the C/C++ runtime, nothing else.
#   cmake -DCORE=<libnodemeta.so> -DLIBS=<lib.so,...> -P check_exports.cmake
foreach(_var CORE LIBS)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "check_exports.cmake: -D${_var}= is required")
  endif()
endforeach()
string(REPLACE "," ";" LIBS "${LIBS}")

function(exported lib out)
  execute_process(COMMAND readelf --dyn-syms -W ${lib} OUTPUT_VARIABLE _syms RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "readelf --dyn-syms ${lib}: exit ${_rc}")
  endif()
  string(REPLACE "\n" ";" _lines "${_syms}")
  set(_names "")
  foreach(_line IN LISTS _lines)
    # Num: Value Size Type Bind Vis Ndx Name; defined (Ndx not UND) global or weak symbols.
    if(_line MATCHES "^ *[0-9]+: +[0-9a-f]+ +[0-9]+ +[A-Z_]+ +(GLOBAL|WEAK|UNIQUE) +DEFAULT +([0-9]+|ABS) +([^ @]+)")
      list(APPEND _names ${CMAKE_MATCH_3})
    endif()
  endforeach()
  set(${out} ${_names} PARENT_SCOPE)
endfunction()

foreach(_lib ${CORE} ${LIBS})
  exported(${_lib} _names)
  list(LENGTH _names _count)
  set(_foreign "")
  foreach(_name IN LISTS _names)
    if(NOT _name MATCHES "^_Z(N[KRO]*|TIN|TSN|TVN)8nodemeta")
      list(APPEND _foreign ${_name})
    endif()
  endforeach()
  if(_foreign)
    execute_process(COMMAND c++filt ${_foreign} OUTPUT_VARIABLE _demangled)
    message(FATAL_ERROR "${_lib} exports symbols outside namespace nodemeta:\n${_demangled}")
  endif()
  message(STATUS "${_lib}: ${_count} exported symbols, all in namespace nodemeta")
endforeach()

# The API is exported; the internals (src/reclaim.h, the key table) are not.
exported(${CORE} _core)
execute_process(COMMAND c++filt ${_core} OUTPUT_VARIABLE _demangled)
foreach(_api "nodemeta::Key::find\\(" "nodemeta::MetadataStore::default_store\\(\\)"
             "nodemeta::NodeMetadata::set\\(" "nodemeta::release_retired_values\\(\\)"
             "typeinfo for nodemeta::ProtectedKeyError" "nodemeta::detail::intern_key\\(")
  if(NOT _demangled MATCHES "${_api}")
    message(FATAL_ERROR "${CORE} does not export ${_api}")
  endif()
endforeach()
foreach(_internal "nodemeta::detail::create_thread" "nodemeta::detail::collect\\(" "nodemeta::detail::tls_thread"
                  "anonymous namespace")
  if(_demangled MATCHES "${_internal}")
    message(FATAL_ERROR "${CORE} exports an internal symbol: ${_internal}")
  endif()
endforeach()

# The core depends on oneTBB alone (and the C/C++ runtime).
execute_process(COMMAND readelf -d ${CORE} OUTPUT_VARIABLE _dynamic)
string(REGEX MATCHALL "Shared library: \\[[^]]+\\]" _needed "${_dynamic}")
set(_loads "")
foreach(_lib IN LISTS _needed)
  string(REGEX REPLACE "Shared library: \\[([^]]+)\\]" "\\1" _lib "${_lib}")
  if(NOT _lib MATCHES "^lib(tbb|tbbmalloc|stdc\\+\\+|gcc_s|c|m)\\.so")
    message(FATAL_ERROR "${CORE} loads ${_lib}: the core must depend on oneTBB alone\n${_dynamic}")
  endif()
  list(APPEND _loads ${_lib})
endforeach()
if(NOT _loads MATCHES "libtbb\\.so")
  message(FATAL_ERROR "${CORE} does not load oneTBB: ${_loads}")
endif()
message(STATUS "${CORE} loads: ${_loads}")
