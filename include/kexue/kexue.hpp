// SPDX-License-Identifier: MIT
#pragma once
/// Umbrella header: every kernel family of kexue. Each family also has its own header.

#include "kexue/core.hpp"
#include "kexue/version.hpp"
