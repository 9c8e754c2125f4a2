# SPDX-License-Identifier: MIT
# The pkg-config consumer: what a Make / Meson / Bazel user does after installing kexue.
#   cmake -DPKG_CONFIG=<pkg-config> -DPC_DIR=<prefix>/share/pkgconfig -DCXX=<c++> -DSOURCE=consumer.cpp
#         -DOUTPUT=<exe> [-DEMULATOR=qemu|-L|sysroot] -P run.cmake
# compiles SOURCE with `$(CXX) $(pkg-config --variable=cxx_std kexue) $(pkg-config --cflags kexue)` (plus the
# OpenMP flags the .pc names, compile and link), with PKG_CONFIG_PATH=PC_DIR, then runs the program.
foreach(_var PKG_CONFIG PC_DIR CXX SOURCE OUTPUT)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "pkg_config consumer: -D${_var}=... missing")
  endif()
endforeach()
string(REPLACE "|" ";" EMULATOR "${EMULATOR}")
set(ENV{PKG_CONFIG_PATH} "${PC_DIR}")

function(pkg_config out)
  execute_process(COMMAND "${PKG_CONFIG}" ${ARGN} kexue RESULT_VARIABLE rc OUTPUT_VARIABLE value
                  OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "pkg_config consumer: `pkg-config ${ARGN} kexue` failed (PKG_CONFIG_PATH=${PC_DIR})")
  endif()
  message(STATUS "pkg-config ${ARGN} kexue: ${value}")
  set(${out} "${value}" PARENT_SCOPE)
endfunction()

# The kexue.pc in use must be the installed one, not another copy on the default search path.
pkg_config(pcfiledir --variable=pcfiledir)
file(REAL_PATH "${pcfiledir}" pcfiledir)
file(REAL_PATH "${PC_DIR}" expected)
if(NOT pcfiledir STREQUAL expected)
  message(FATAL_ERROR "pkg_config consumer: pkg-config found kexue.pc in ${pcfiledir}, not in ${expected}")
endif()
pkg_config(version --modversion)
pkg_config(cflags --cflags)
pkg_config(libs --libs)
pkg_config(std --variable=cxx_std)
pkg_config(openmp --variable=openmp_flags)
if(NOT cflags MATCHES "-I")
  message(FATAL_ERROR "pkg_config consumer: no include flags in `pkg-config --cflags kexue`")
endif()
separate_arguments(cflags UNIX_COMMAND "${cflags}")
separate_arguments(libs UNIX_COMMAND "${libs}")
separate_arguments(openmp UNIX_COMMAND "${openmp}")

get_filename_component(_dir "${OUTPUT}" DIRECTORY)
file(MAKE_DIRECTORY "${_dir}")
set(compile "${CXX}" ${std} -O2 ${openmp} ${cflags} "${SOURCE}" -o "${OUTPUT}" ${libs} ${openmp})
string(REPLACE ";" " " _shown "${compile}")
message(STATUS "${_shown}")
execute_process(COMMAND ${compile} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "pkg_config consumer: compiling failed")
endif()
execute_process(COMMAND ${EMULATOR} "${OUTPUT}" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "pkg_config consumer: the program failed (exit ${rc})")
endif()
