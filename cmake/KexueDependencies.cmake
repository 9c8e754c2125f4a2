# SPDX-License-Identifier: MIT
# Eigen >= 3.4 and xsimd >= 8.1: the system packages first (the offline path that must always work),
# FetchContent of a pinned upstream release otherwise. Catch2 and Google Benchmark likewise, through
# kexue_find_catch2() / kexue_find_benchmark() below, which only tests/ and bench/ call (a consumer, whose
# tests and benchmarks are off, never looks for them). A cross build never downloads (a fetched xsimd would
# hide a wrong xsimd_DIR): it fails with a message instead, unless KEXUE_FETCH_DEPENDENCIES is set ON.
include(FetchContent)
if(CMAKE_CROSSCOMPILING)
  set(_kexue_fetch_default OFF)
else()
  set(_kexue_fetch_default ON)
endif()
option(KEXUE_FETCH_DEPENDENCIES "Download Eigen/xsimd (and Catch2/benchmark for tests/benchmarks) when find_package does not find them" ${_kexue_fetch_default})

find_package(Eigen3 3.4 CONFIG QUIET)
if(NOT TARGET Eigen3::Eigen AND NOT KEXUE_FETCH_DEPENDENCIES)
  message(FATAL_ERROR "kexue: Eigen3 >= 3.4 not found; set Eigen3_DIR (or KEXUE_FETCH_DEPENDENCIES=ON)")
elseif(NOT TARGET Eigen3::Eigen)
  message(STATUS "kexue: Eigen3 not found, fetching 3.4.0")
  set(EIGEN_BUILD_DOC OFF CACHE BOOL "" FORCE)
  set(BUILD_TESTING OFF CACHE BOOL "" FORCE)
  set(EIGEN_BUILD_PKGCONFIG OFF CACHE BOOL "" FORCE)
  FetchContent_Declare(eigen3 SYSTEM
    URL https://gitlab.com/libeigen/eigen/-/archive/3.4.0/eigen-3.4.0.tar.gz)
  FetchContent_GetProperties(eigen3)
  if(NOT eigen3_POPULATED)
    FetchContent_Populate(eigen3)
  endif()
  add_library(Eigen3::Eigen INTERFACE IMPORTED)
  set_target_properties(Eigen3::Eigen PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${eigen3_SOURCE_DIR}")
endif()

# No version in find_package: xsimd's version file demands the same major version.
find_package(xsimd CONFIG QUIET)
if(NOT TARGET xsimd AND NOT KEXUE_FETCH_DEPENDENCIES)
  message(FATAL_ERROR "kexue: xsimd not found; set xsimd_DIR (or KEXUE_FETCH_DEPENDENCIES=ON)")
elseif(NOT TARGET xsimd)
  message(STATUS "kexue: xsimd not found, fetching 13.2.0")
  FetchContent_Declare(xsimd SYSTEM
    URL https://github.com/xtensor-stack/xsimd/archive/refs/tags/13.2.0.tar.gz)
  FetchContent_MakeAvailable(xsimd)
endif()
include(KexueXtlShim)

# Catch2 for the tests: the package first, v2 (Debian 12: 2.13) or v3; else v3.7.1 fetched. Sets
# KEXUE_CATCH2_MAJOR (2 or 3) from the version of what was found, for tests/catch_compat.hpp: the headers the
# tests include must be those of the Catch2 they link, also when another major version is installed elsewhere.
macro(kexue_find_catch2)
  find_package(Catch2 CONFIG QUIET)
  if(TARGET Catch2::Catch2WithMain)
    set(KEXUE_CATCH2_MAJOR ${Catch2_VERSION_MAJOR})
    message(STATUS "kexue: Catch2 ${Catch2_VERSION} (${Catch2_DIR})")
  elseif(NOT KEXUE_FETCH_DEPENDENCIES)
    message(FATAL_ERROR "kexue: Catch2 not found; set Catch2_DIR (or KEXUE_FETCH_DEPENDENCIES=ON, or KEXUE_BUILD_TESTS=OFF)")
  else()
    message(STATUS "kexue: Catch2 not found, fetching 3.7.1")
    set(CATCH_INSTALL_DOCS OFF CACHE BOOL "" FORCE)
    set(CATCH_INSTALL_EXTRAS OFF CACHE BOOL "" FORCE)
    FetchContent_Declare(Catch2 SYSTEM
      URL https://github.com/catchorg/Catch2/archive/refs/tags/v3.7.1.tar.gz)
    FetchContent_MakeAvailable(Catch2)
    set(KEXUE_CATCH2_MAJOR 3)
  endif()
  if(KEXUE_CATCH2_MAJOR STREQUAL "")
    # A package without a version file: catch_compat.hpp falls back to __has_include.
    message(STATUS "kexue: Catch2's version is unknown; tests/catch_compat.hpp picks v2 or v3 by __has_include")
  elseif(NOT KEXUE_CATCH2_MAJOR MATCHES "^[23]$")
    message(FATAL_ERROR "kexue: Catch2 ${Catch2_VERSION} found in ${Catch2_DIR}; the tests need v2 or v3")
  endif()
endmacro()

# Google Benchmark for the benchmarks: the package first, else v1.9.1 fetched (without its own tests).
macro(kexue_find_benchmark)
  find_package(benchmark CONFIG QUIET)
  if(TARGET benchmark::benchmark)
    message(STATUS "kexue: Google Benchmark ${benchmark_VERSION} (${benchmark_DIR})")
  elseif(NOT KEXUE_FETCH_DEPENDENCIES)
    message(FATAL_ERROR
      "kexue: Google Benchmark not found; set benchmark_DIR (or KEXUE_FETCH_DEPENDENCIES=ON, or KEXUE_BUILD_BENCHMARKS=OFF)")
  else()
    message(STATUS "kexue: Google Benchmark not found, fetching 1.9.1")
    set(BENCHMARK_ENABLE_TESTING OFF CACHE BOOL "" FORCE)
    set(BENCHMARK_ENABLE_GTEST_TESTS OFF CACHE BOOL "" FORCE)
    set(BENCHMARK_ENABLE_INSTALL OFF CACHE BOOL "" FORCE)
    set(BENCHMARK_INSTALL_DOCS OFF CACHE BOOL "" FORCE)
    set(BENCHMARK_ENABLE_WERROR OFF CACHE BOOL "" FORCE)
    FetchContent_Declare(benchmark SYSTEM
      URL https://github.com/google/benchmark/archive/refs/tags/v1.9.1.tar.gz)
    FetchContent_MakeAvailable(benchmark)
  endif()
endmacro()
