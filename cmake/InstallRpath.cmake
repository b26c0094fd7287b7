# nodemeta_set_install_rpath(<target>): where an installed nodemeta binary looks for the
# nodemeta libraries, relative to itself, so an installed tree works from any prefix (and
# after being moved) without LD_LIBRARY_PATH. Build-tree binaries keep CMake's build RPATH.
#   executables (bindir)          -> $ORIGIN/<bindir to libdir>, e.g. $ORIGIN/../lib
#   shared libraries (libdir)     -> $ORIGIN, where the other nodemeta libraries are
# Static libraries and static builds need none; oneTBB, nlohmann-json and zlib are found
# as the system finds them.
function(nodemeta_set_install_rpath target)
  get_target_property(_type ${target} TYPE)
  if(APPLE)
    set(_origin @loader_path)
  else()
    set(_origin $ORIGIN)
  endif()
  if(_type STREQUAL "EXECUTABLE")
    file(RELATIVE_PATH _rel ${CMAKE_INSTALL_FULL_BINDIR} ${CMAKE_INSTALL_FULL_LIBDIR})
    set_target_properties(${target} PROPERTIES INSTALL_RPATH "${_origin}/${_rel}")
  elseif(_type STREQUAL "SHARED_LIBRARY" OR _type STREQUAL "MODULE_LIBRARY")
    set_target_properties(${target} PROPERTIES INSTALL_RPATH "${_origin}")
  endif()
endfunction()
