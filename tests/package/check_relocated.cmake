# Copies an installed nodemeta prefix elsewhere and runs the installed `nodemeta` command
# there without LD_LIBRARY_PATH: the command and the libraries must find each other through
# their $ORIGIN-relative RPATHs (cmake/InstallRpath.cmake), never through the build tree or
# the prefix they were installed to.
#   cmake -DPREFIX=<installed prefix> -DCOPY=<scratch dir> -DBINDIR=bin -DLIBDIR=lib
#         -DSHARED=<1 if the core is a shared library> [-DVERSION=<x.y.z>] -P check_relocated.cmake
foreach(_var PREFIX COPY BINDIR LIBDIR SHARED)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "check_relocated.cmake: -D${_var}= is required")
  endif()
endforeach()
file(REMOVE_RECURSE ${COPY})
file(COPY ${PREFIX}/ DESTINATION ${COPY})  # keeps the libraries' SONAME symlinks
set(_exe ${COPY}/${BINDIR}/nodemeta)

# Every nodemeta library the command loads must resolve inside the copy.
file(GET_RUNTIME_DEPENDENCIES EXECUTABLES ${_exe}
     RESOLVED_DEPENDENCIES_VAR _resolved UNRESOLVED_DEPENDENCIES_VAR _unresolved)
if(_unresolved)
  message(FATAL_ERROR "${_exe}: unresolved libraries: ${_unresolved}")
endif()
set(_ours "")
foreach(_lib IN LISTS _resolved)
  get_filename_component(_name ${_lib} NAME)
  if(_name MATCHES "^libnodemeta")
    list(APPEND _ours ${_name})
    file(REAL_PATH ${_lib} _real)
    file(REAL_PATH ${COPY}/${LIBDIR} _libdir)
    string(FIND "${_real}" "${_libdir}/" _at)
    if(NOT _at EQUAL 0)
      message(FATAL_ERROR "${_exe} loads ${_lib}, not the copy in ${COPY}/${LIBDIR}")
    endif()
  endif()
endforeach()
if(SHARED AND NOT _ours MATCHES "libnodemeta\\.so\\.0")
  message(FATAL_ERROR "${_exe}: expected libnodemeta.so.0 among its libraries, found: ${_resolved}")
endif()

# And it runs: the bundled graph, found next to the binary (../share), verifies clean.
execute_process(COMMAND ${CMAKE_COMMAND} -E env --unset=LD_LIBRARY_PATH ${_exe} run --threads 2
                RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
if(NOT _rc EQUAL 0 OR NOT _out MATCHES "mlp_mixer_s16, 137 nodes.*verify: clean")
  message(FATAL_ERROR "${_exe} run: exit ${_rc}\n${_out}${_err}")
endif()
if(DEFINED VERSION)
  execute_process(COMMAND ${CMAKE_COMMAND} -E env --unset=LD_LIBRARY_PATH ${_exe} --version
                  RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
  if(NOT _rc EQUAL 0 OR NOT _out STREQUAL "nodemeta ${VERSION}\n")
    message(FATAL_ERROR "${_exe} --version: exit ${_rc}, expected 'nodemeta ${VERSION}'\n${_out}${_err}")
  endif()
endif()
list(JOIN _ours ", " _ours)
message(STATUS "relocated ${_exe}: runs, verify clean; nodemeta libraries from the copy: ${_ours}")
