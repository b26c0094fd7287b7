# Every way a user takes nodemeta, as a test (label package; included by tests/CMakeLists.txt).
# Nothing sets LD_LIBRARY_PATH: installed binaries find the shared libraries by their RPATH
# (cmake/InstallRpath.cmake), consumers by the RPATH their build gives them.
#
#   package.exports
#       the shared libraries export namespace nodemeta only; the core loads oneTBB alone
#   package.install, .consumer, .relocated_cli, .python, .pkgconfig
#       this build, installed into a scratch prefix: find_package(nodemeta 0.2 CONFIG), the
#       installed command run from a moved copy of the prefix, the installed Python package,
#       and plain `g++ $(pkg-config --cflags --libs nodemeta)`
#   package.other.install, .consumer, .relocated_cli, .pkgconfig
#       a second, small build of this source tree with the other BUILD_SHARED_LIBS (tests and
#       Python off), installed and consumed the same ways
#   package.add_subdirectory
#       a project that add_subdirectory()s this source tree (tests and install rules off, as
#       fmt's add-subdirectory-test)
#   package.deb.build, .find_package, .pkgconfig, .cli, .python
#       `cpack -G DEB`, the packages unpacked with dpkg-deb -x into a throwaway root, and used
#       from there with find_package, pkg-config, the nodemeta command and Python
set(_pkg_src ${CMAKE_CURRENT_SOURCE_DIR}/package)
set(_pkg_bin ${CMAKE_CURRENT_BINARY_DIR}/package)
get_target_property(_nodemeta_type nodemeta TYPE)
if(_nodemeta_type STREQUAL "SHARED_LIBRARY")
  set(_shared 1)
  set(_other_shared OFF)
  set(_other_type STATIC_LIBRARY)
else()
  set(_shared 0)
  set(_other_shared ON)
  set(_other_type SHARED_LIBRARY)
endif()
find_program(NODEMETA_PKG_CONFIG NAMES pkg-config pkgconf DOC "pkg-config, for the package tests")
if(NOT NODEMETA_PKG_CONFIG)
  message(WARNING "nodemeta: pkg-config not found: the package.*pkgconfig tests will fail (scripts/deps installs pkgconf)")
  set(NODEMETA_PKG_CONFIG pkg-config)
endif()

# package_consumer_test(<name> PREFIX <prefix> [TYPE <library type>] FIXTURE <fixture>):
# builds and runs tests/package against an installed nodemeta with find_package.
function(package_consumer_test name)
  cmake_parse_arguments(ARG "" "PREFIX;TYPE;FIXTURE" "" ${ARGN})
  set(_opts -DCMAKE_PREFIX_PATH=${ARG_PREFIX} -DCMAKE_BUILD_TYPE=$<CONFIG>
            -DNODEMETA_EXPECTED_PREFIX=${ARG_PREFIX} -DNODEMETA_EXPECTED_VERSION=${PROJECT_VERSION})
  if(ARG_TYPE)
    list(APPEND _opts -DNODEMETA_EXPECTED_TYPE=${ARG_TYPE})
  endif()
  add_test(NAME ${name}
           COMMAND ${CMAKE_COMMAND} -E env --unset=LD_LIBRARY_PATH ${CMAKE_CTEST_COMMAND}
             --build-and-test ${_pkg_src} ${_pkg_bin}/${name}
             --build-generator ${CMAKE_GENERATOR}
             --build-options ${_opts}
             --test-command ${CMAKE_CTEST_COMMAND} --output-on-failure)
  set_tests_properties(${name} PROPERTIES LABELS package FIXTURES_REQUIRED ${ARG_FIXTURE})
endfunction()

# package_pkgconfig_test(<name> PCDIR <dir> [STATIC] FIXTURE <fixture>)
function(package_pkgconfig_test name)
  cmake_parse_arguments(ARG "STATIC" "PCDIR;FIXTURE" "" ${ARGN})
  add_test(NAME ${name}
           COMMAND ${CMAKE_COMMAND} -DPKG_CONFIG=${NODEMETA_PKG_CONFIG} -DPCDIR=${ARG_PCDIR}
                   -DCXX=${CMAKE_CXX_COMPILER} -DSOURCE_DIR=${_pkg_src} -DWORK_DIR=${_pkg_bin}/${name}
                   -DVERSION=${PROJECT_VERSION} -DSTATIC=$<BOOL:${ARG_STATIC}>
                   -P ${_pkg_src}/check_pkgconfig.cmake)
  set_tests_properties(${name} PROPERTIES LABELS package FIXTURES_REQUIRED ${ARG_FIXTURE})
endfunction()

# package_relocated_test(<name> PREFIX <prefix> SHARED <0|1> FIXTURE <fixture>)
function(package_relocated_test name)
  cmake_parse_arguments(ARG "" "PREFIX;SHARED;FIXTURE" "" ${ARGN})
  add_test(NAME ${name}
           COMMAND ${CMAKE_COMMAND} -DPREFIX=${ARG_PREFIX} -DCOPY=${_pkg_bin}/${name}
                   -DBINDIR=${CMAKE_INSTALL_BINDIR} -DLIBDIR=${CMAKE_INSTALL_LIBDIR} -DSHARED=${ARG_SHARED}
                   -DVERSION=${PROJECT_VERSION} -P ${_pkg_src}/check_relocated.cmake)
  set_tests_properties(${name} PROPERTIES LABELS package FIXTURES_REQUIRED ${ARG_FIXTURE})
endfunction()

# package_python_test(<name> SITE <dist-packages dir> FIXTURE <fixture>)
function(package_python_test name)
  cmake_parse_arguments(ARG "" "SITE;FIXTURE" "" ${ARGN})
  add_test(NAME ${name}
           COMMAND ${CMAKE_COMMAND} -E env --unset=LD_LIBRARY_PATH
                   PYTHONPATH=${ARG_SITE} PYTHONDONTWRITEBYTECODE=1
                   ${Python_EXECUTABLE} -c
                   "import nodemeta, nodemeta.fx; assert nodemeta.__file__.startswith('${ARG_SITE}/'), nodemeta.__file__; assert nodemeta.__version__ == '${PROJECT_VERSION}', nodemeta.__version__; md = nodemeta.NodeMetadata({'val': 1}); md['k'] = [2]; assert md['k'] == [2] and md['val'] == 1; print('nodemeta', nodemeta.__version__, 'from', nodemeta.__file__)")
  set_tests_properties(${name} PROPERTIES LABELS package FIXTURES_REQUIRED ${ARG_FIXTURE})
endfunction()

# --- this build, installed ---------------------------------------------------------------
set(_prefix ${_pkg_bin}/prefix)
add_test(NAME package.install
         COMMAND ${CMAKE_COMMAND} --install ${PROJECT_BINARY_DIR} --prefix ${_prefix} --config $<CONFIG>)
set_tests_properties(package.install PROPERTIES LABELS package FIXTURES_SETUP nodemeta_installed)
package_consumer_test(package.consumer PREFIX ${_prefix} TYPE ${_nodemeta_type} FIXTURE nodemeta_installed)
if(_shared)
  set(_static "")
  set(_other_static STATIC)
else()
  set(_static STATIC)
  set(_other_static "")
endif()
package_pkgconfig_test(package.pkgconfig PCDIR ${_prefix}/${CMAKE_INSTALL_LIBDIR}/pkgconfig ${_static}
                       FIXTURE nodemeta_installed)
if(TARGET nodemeta_cli)
  package_relocated_test(package.relocated_cli PREFIX ${_prefix} SHARED ${_shared} FIXTURE nodemeta_installed)
endif()
if(TARGET nodemeta_python)
  package_python_test(package.python SITE ${_prefix}/lib/python3/dist-packages FIXTURE nodemeta_installed)
endif()

# --- what the shared libraries export and load ------------------------------------------
if(_shared AND TARGET nodemeta_passes)
  add_test(NAME package.exports
           COMMAND ${CMAKE_COMMAND} -DCORE=$<TARGET_FILE:nodemeta>
                   -DLIBS=$<TARGET_FILE:nodemeta_graph>,$<TARGET_FILE:nodemeta_passes>
                   -P ${_pkg_src}/check_exports.cmake)
  set_tests_properties(package.exports PROPERTIES LABELS package)
endif()

# --- the other library type: a second, small build ----------------------------------------
# Core, graph, passes and the command only, unoptimised and without debug info, so it costs
# as little as a build of them can (one to two minutes on two cores); same library directory.
set(_other ${_pkg_bin}/other)
add_test(NAME package.other.install
         COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${PROJECT_SOURCE_DIR} -DBUILD_DIR=${_other}/build
                 -DPREFIX=${_other}/prefix -DGENERATOR=${CMAKE_GENERATOR}
                 -DCXX=${CMAKE_CXX_COMPILER} -DTBB_DIR=${TBB_DIR} -DSHARED=${_other_shared}
                 -DLIBDIR=${CMAKE_INSTALL_LIBDIR} -P ${_pkg_src}/build_install.cmake)
set_tests_properties(package.other.install PROPERTIES LABELS package FIXTURES_SETUP nodemeta_other
                     TIMEOUT 900)
package_consumer_test(package.other.consumer PREFIX ${_other}/prefix TYPE ${_other_type}
                      FIXTURE nodemeta_other)
package_pkgconfig_test(package.other.pkgconfig PCDIR ${_other}/prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig
                       ${_other_static} FIXTURE nodemeta_other)
package_relocated_test(package.other.relocated_cli PREFIX ${_other}/prefix SHARED $<BOOL:${_other_shared}>
                       FIXTURE nodemeta_other)

# --- add_subdirectory ----------------------------------------------------------------------
add_test(NAME package.add_subdirectory
         COMMAND ${CMAKE_CTEST_COMMAND}
           --build-and-test ${_pkg_src}/add_subdirectory ${_pkg_bin}/add_subdirectory
           --build-generator ${CMAKE_GENERATOR}
           --build-options -DNODEMETA_SUBDIR=${PROJECT_SOURCE_DIR} -DTBB_DIR=${TBB_DIR}
           --test-command ${CMAKE_CTEST_COMMAND} --output-on-failure)
set_tests_properties(package.add_subdirectory PROPERTIES LABELS package TIMEOUT 900)

# --- the Debian packages ---------------------------------------------------------------
if(_shared AND TARGET nodemeta_cli)
  set(_deb ${_pkg_bin}/deb)
  set(_root ${_deb}/root)
  set(_debs libnodemeta${PROJECT_VERSION_MAJOR} libnodemeta-dev nodemeta)
  if(TARGET nodemeta_python)
    list(APPEND _debs python3-nodemeta)
  endif()
  string(REPLACE ";" "," _debs "${_debs}")  # a list through the command line
  add_test(NAME package.deb.build
           COMMAND ${CMAKE_COMMAND} -DCPACK=${CMAKE_CPACK_COMMAND} -DBUILD_DIR=${PROJECT_BINARY_DIR}
                   -DWORK_DIR=${_deb} -DROOT=${_root} -DVERSION=${PROJECT_VERSION} "-DPACKAGES=${_debs}"
                   -P ${_pkg_src}/build_deb.cmake)
  set_tests_properties(package.deb.build PROPERTIES LABELS package FIXTURES_SETUP nodemeta_deb TIMEOUT 600)
  # The packages install to /usr with this build's library directory.
  package_consumer_test(package.deb.find_package PREFIX ${_root}/usr TYPE SHARED_LIBRARY FIXTURE nodemeta_deb)
  package_pkgconfig_test(package.deb.pkgconfig PCDIR ${_root}/usr/${CMAKE_INSTALL_LIBDIR}/pkgconfig
                         FIXTURE nodemeta_deb)
  package_relocated_test(package.deb.cli PREFIX ${_root}/usr SHARED 1 FIXTURE nodemeta_deb)
  if(TARGET nodemeta_python)
    package_python_test(package.deb.python SITE ${_root}/usr/lib/python3/dist-packages FIXTURE nodemeta_deb)
  endif()
endif()
