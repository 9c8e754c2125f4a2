// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// kexue's version; CMakeLists.txt parses these three lines.
#define KEXUE_VERSION_MAJOR 0  ///< Major version: changes that break the public API.
#define KEXUE_VERSION_MINOR 1  ///< Minor version: additions (0.x: may also break the API, see CHANGELOG.md).
#define KEXUE_VERSION_PATCH 0  ///< Patch version: fixes only.
/// The version as one integer, major * 10000 + minor * 100 + patch (0.1.0 is 100), for `#if` comparisons.
#define KEXUE_VERSION (KEXUE_VERSION_MAJOR * 10000 + KEXUE_VERSION_MINOR * 100 + KEXUE_VERSION_PATCH)
