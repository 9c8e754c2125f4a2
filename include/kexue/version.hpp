// SPDX-License-Identifier: MIT
#pragma once

/// kexue's version; CMakeLists.txt parses these three lines.
#define KEXUE_VERSION_MAJOR 0
#define KEXUE_VERSION_MINOR 1
#define KEXUE_VERSION_PATCH 0
#define KEXUE_VERSION (KEXUE_VERSION_MAJOR * 10000 + KEXUE_VERSION_MINOR * 100 + KEXUE_VERSION_PATCH)
