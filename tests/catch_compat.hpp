// SPDX-License-Identifier: MIT
#pragma once
// One test suite for Catch2 v2 (Debian 12) and v3 (upstream).
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
using Catch::Approx;
#else
#include <catch2/catch.hpp>
#endif
