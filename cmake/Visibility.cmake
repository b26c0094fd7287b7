# nodemeta_hide_symbols(<target>): compiles a nodemeta library with hidden symbol visibility,
# inline functions included, so a shared library exports only what nodemeta/export.h marks
# (NODEMETA_API, NODEMETA_GRAPH_API, NODEMETA_PASSES_API). A static library gets the same
# flags (its objects stay private to whatever module links them) and defines NODEMETA_STATIC
# for itself and its users, which empties the export macros. On ELF platforms a shared library
# also gets cmake/exports.map, which hides the standard library template instantiations that
# libstdc++ marks visible, so the library exports nodemeta's API and nothing else.
function(nodemeta_hide_symbols target)
  set_target_properties(${target} PROPERTIES CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
  get_target_property(_type ${target} TYPE)
  if(_type STREQUAL "STATIC_LIBRARY")
    target_compile_definitions(${target} PUBLIC NODEMETA_STATIC)
  elseif(_type STREQUAL "SHARED_LIBRARY" AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang" AND NOT APPLE)
    set(_map ${PROJECT_SOURCE_DIR}/cmake/exports.map)
    target_link_options(${target} PRIVATE "LINKER:--version-script=${_map}")
    set_property(TARGET ${target} APPEND PROPERTY LINK_DEPENDS ${_map})
  endif()
endfunction()
