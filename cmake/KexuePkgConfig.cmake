# SPDX-License-Identifier: MIT
# kexue.pc for build systems other than CMake (Make, Meson, Bazel): `pkg-config --cflags kexue` gives kexue's
# include directory plus Eigen's and xsimd's, taken from the targets find_package found (Eigen3::Eigen, xsimd),
# so it needs no eigen3.pc / xsimd.pc (not every install of them has one). Installed into
# KEXUE_PKGCONFIG_DIR (top-level CMakeLists.txt; default <datadir>/pkgconfig, the directory for
# architecture-independent .pc files), beside <datadir>/cmake/kexue.

if(IS_ABSOLUTE "${KEXUE_PKGCONFIG_DIR}")
  set(KEXUE_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
  # Relocatable: the prefix is found from the .pc file's own directory.
  file(RELATIVE_PATH _kexue_pc_up "/kexue-prefix/${KEXUE_PKGCONFIG_DIR}" "/kexue-prefix")
  string(REGEX REPLACE "/$" "" _kexue_pc_up "${_kexue_pc_up}")
  set(KEXUE_PC_PREFIX "\${pcfiledir}/${_kexue_pc_up}")
endif()
if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(KEXUE_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
else()
  set(KEXUE_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
if(KEXUE_USES_OPENMP)
  set(KEXUE_PC_OPENMP_FLAGS "${OpenMP_CXX_FLAGS}")
else()
  set(KEXUE_PC_OPENMP_FLAGS "")
endif()

# " -I<dir>" for every include directory of the dependency targets, evaluated at generate time (a fetched
# xsimd's directories are generator expressions), except the compiler's own search directories: Debian's xsimd
# is in /usr/include, and an explicit -I/usr/include breaks libstdc++'s #include_next (pkg-config drops it by
# default, but not with PKG_CONFIG_ALLOW_SYSTEM_CFLAGS) and would put host headers first in a cross build.
set(_kexue_implicit "")
foreach(_dir IN LISTS CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES)
  string(REGEX REPLACE "([][+.*()^$?|\\\\])" "\\\\\\1" _dir "${_dir}")
  list(APPEND _kexue_implicit "${_dir}")
endforeach()
list(JOIN _kexue_implicit "|" _kexue_implicit)
set(KEXUE_PC_DEP_CFLAGS "")
foreach(_kexue_dep Eigen3::Eigen xsimd)
  set(_dirs "$<FILTER:$<TARGET_PROPERTY:${_kexue_dep},INTERFACE_INCLUDE_DIRECTORIES>,EXCLUDE,^(${_kexue_implicit})$>")
  string(APPEND KEXUE_PC_DEP_CFLAGS "$<$<BOOL:${_dirs}>: -I$<JOIN:${_dirs}, -I>>")
endforeach()

configure_file(${CMAKE_CURRENT_LIST_DIR}/kexue.pc.in ${CMAKE_CURRENT_BINARY_DIR}/kexue.pc.in @ONLY)
file(GENERATE OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/kexue.pc INPUT ${CMAKE_CURRENT_BINARY_DIR}/kexue.pc.in)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/kexue.pc DESTINATION ${KEXUE_PKGCONFIG_DIR})
