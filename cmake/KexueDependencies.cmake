# SPDX-License-Identifier: MIT
# Eigen >= 3.4 and xsimd >= 8.1: the system packages first (the offline path that must always work),
# FetchContent of a pinned upstream release otherwise. A cross build never downloads (a fetched xsimd would
# hide a wrong xsimd_DIR): it fails with a message instead, unless KEXUE_FETCH_DEPENDENCIES is set ON.
include(FetchContent)
if(CMAKE_CROSSCOMPILING)
  set(_kexue_fetch_default OFF)
else()
  set(_kexue_fetch_default ON)
endif()
option(KEXUE_FETCH_DEPENDENCIES "Download Eigen/xsimd when find_package does not find them" ${_kexue_fetch_default})

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
