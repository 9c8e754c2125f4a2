// SPDX-License-Identifier: MIT
#pragma once
// Cache sizes of the machine the library runs on, read once (Linux: sysfs; elsewhere, or when sysfs says
// nothing, defaults typical of a current x86-64 or ARM64 core). Kernels size the blocks whose reuse comes from a
// cache level with them. Only block sizes that never change a result may depend on this (see attention_kernel.hpp),
// so a result never depends on the machine's caches.

#include <cstddef>
#include <fstream>
#include <string>

namespace kexue::detail {

struct CacheInfo {
  std::size_t l1d = std::size_t(32) << 10;  ///< bytes of L1 data cache per core
  std::size_t l2 = std::size_t(1) << 20;    ///< bytes of L2 per core
  std::size_t l3 = std::size_t(32) << 20;   ///< bytes of L3 (shared)
  bool detected = false;                    ///< true when at least one size came from the system
};

/// "32K", "1024K", "32M" (sysfs' format) in bytes; 0 when unreadable.
inline std::size_t parse_cache_size(const std::string& s) {
  std::size_t v = 0, i = 0;
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) v = v * 10 + std::size_t(s[i] - '0');
  if (i == 0) return 0;
  if (i < s.size() && (s[i] == 'K' || s[i] == 'k')) v <<= 10;
  if (i < s.size() && (s[i] == 'M' || s[i] == 'm')) v <<= 20;
  return v;
}

inline CacheInfo read_cache_info() {
  CacheInfo info;
#if defined(__linux__)
  for (int idx = 0; idx < 8; ++idx) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(idx) + "/";
    std::ifstream level_file(dir + "level"), type_file(dir + "type"), size_file(dir + "size");
    int level = 0;
    std::string type, size;
    if (!(level_file >> level) || !(type_file >> type) || !(size_file >> size)) continue;
    const std::size_t bytes = parse_cache_size(size);
    if (bytes == 0 || type == "Instruction") continue;
    if (level == 1) info.l1d = bytes;
    if (level == 2) info.l2 = bytes;
    if (level == 3) info.l3 = bytes;
    info.detected = true;
  }
#endif
  return info;
}

/// The sizes, read on first use and constant afterwards (a thread-safe function-local static).
inline const CacheInfo& cache_info() {
  static const CacheInfo info = read_cache_info();
  return info;
}

}  // namespace kexue::detail
