# nodemeta_install_pkgconfig(<name>): generates <name>.pc from cmake/pkgconfig/<name>.pc.in
# and installs it to <libdir>/pkgconfig, beside the CMake package files' <libdir>/cmake.
#
# Paths in the files are relative to the file itself (${pcfiledir}), so an installed tree
# works where it was installed, after it was moved, and unpacked from the .deb into any root.
# Flags follow the build: a static build's Cflags define NODEMETA_STATIC (nodemeta/export.h)
# and its graph library names simdjson and zlib in Requires.private (`pkg-config --static`);
# a shared one keeps them out (libnodemeta_graph.so loads them itself).
function(nodemeta_install_pkgconfig name)
  set(_pcdir ${CMAKE_INSTALL_FULL_LIBDIR}/pkgconfig)
  file(RELATIVE_PATH _to_prefix ${_pcdir} ${CMAKE_INSTALL_PREFIX})
  string(REGEX REPLACE "/$" "" _to_prefix "${_to_prefix}")
  file(RELATIVE_PATH _to_libdir ${CMAKE_INSTALL_PREFIX} ${CMAKE_INSTALL_FULL_LIBDIR})
  file(RELATIVE_PATH _to_includedir ${CMAKE_INSTALL_PREFIX} ${CMAKE_INSTALL_FULL_INCLUDEDIR})
  set(NODEMETA_PC_PREFIX "\${pcfiledir}/${_to_prefix}")
  set(NODEMETA_PC_LIBDIR "\${prefix}/${_to_libdir}")
  set(NODEMETA_PC_INCLUDEDIR "\${prefix}/${_to_includedir}")

  # The core's PUBLIC compile definitions, as nodemeta::nodemeta carries them.
  set(NODEMETA_PC_CFLAGS "")
  set(NODEMETA_PC_GRAPH_REQUIRES_PRIVATE "")
  if(NOT BUILD_SHARED_LIBS)
    string(APPEND NODEMETA_PC_CFLAGS " -DNODEMETA_STATIC")
    set(NODEMETA_PC_GRAPH_REQUIRES_PRIVATE "Requires.private: simdjson zlib libdeflate")
  endif()
  if(NODEMETA_STD_ALLOCATOR)
    string(APPEND NODEMETA_PC_CFLAGS " -DNODEMETA_STD_ALLOCATOR=1")
  endif()
  if(NODEMETA_ENABLE_ASSERTS)
    string(APPEND NODEMETA_PC_CFLAGS " -DNODEMETA_ENABLE_ASSERTS=1")
  endif()
  if(NODEMETA_FAULT_INJECTION)  # changes detail::Allocator: consumers must see it too
    string(APPEND NODEMETA_PC_CFLAGS " -DNODEMETA_FAULT_INJECTION=1")
  endif()

  configure_file(${PROJECT_SOURCE_DIR}/cmake/pkgconfig/${name}.pc.in
                 ${PROJECT_BINARY_DIR}/pkgconfig/${name}.pc @ONLY)
  install(FILES ${PROJECT_BINARY_DIR}/pkgconfig/${name}.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig
          COMPONENT dev)
endfunction()
