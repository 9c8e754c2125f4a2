# SPDX-License-Identifier: MIT
# Cross build for ARM64 (NEON) with Debian's g++-aarch64-linux-gnu, run under qemu-user:
#   cmake --workflow --preset test-aarch64
# Libraries come only from the aarch64 sysroot that the cross toolchain installs (/usr/aarch64-linux-gnu):
# an x86 library (libCatch2WithMain.a, Google Benchmark) is never found. Eigen and xsimd are header-only and
# architecture-independent, so their host CMake packages are used as they are (Catch2's main is compiled from
# its header, see tests/CMakeLists.txt).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(KEXUE_CROSS_TRIPLE aarch64-linux-gnu)
set(KEXUE_CROSS_SYSROOT /usr/${KEXUE_CROSS_TRIPLE})
set(CMAKE_C_COMPILER ${KEXUE_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${KEXUE_CROSS_TRIPLE}-g++)

# Tests (add_test, and custom commands that run a built tool) go through qemu; -L gives it the aarch64 loader
# and shared libraries (libstdc++, libgomp).
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-${CMAKE_SYSTEM_PROCESSOR} -L ${KEXUE_CROSS_SYSROOT})

# Programs (the emulator, python) from the host; libraries, headers and CMake packages from the sysroot only.
set(CMAKE_FIND_ROOT_PATH ${KEXUE_CROSS_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# The two header-only dependencies: an explicit <Package>_DIR is used as given (not re-rooted), so the host's
# Debian packages (libeigen3-dev, libxsimd-dev) serve the cross build and nothing is downloaded. Their include
# directories (/usr/include/eigen3, /usr/include) are the cross compiler's own last search directories, so the
# aarch64 C and C++ headers still come first. A -D on the command line wins.
foreach(_kexue_dep Eigen3:/usr/share/eigen3/cmake xsimd:/usr/lib/x86_64-linux-gnu/cmake/xsimd
                   xsimd:/usr/share/cmake/xsimd xsimd:/usr/lib/cmake/xsimd)
  string(REPLACE ":" ";" _kexue_dep "${_kexue_dep}")
  list(GET _kexue_dep 0 _kexue_name)
  list(GET _kexue_dep 1 _kexue_dir)
  if(NOT ${_kexue_name}_DIR AND EXISTS ${_kexue_dir})
    set(${_kexue_name}_DIR ${_kexue_dir} CACHE PATH "${_kexue_name} CMake package (header-only, from the host)")
  endif()
endforeach()
