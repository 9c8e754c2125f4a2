// SPDX-License-Identifier: MIT
#pragma once
// Parallel loop over independent work items. Each item is computed by exactly one thread with the same
// code path whatever the thread count, and items never share accumulators, so results are bitwise
// identical for any number of threads. Without OpenMP the loop is serial.

#include "kexue/core.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace kexue::detail {

/// Calls f(i) for i in [0, n). Work is handed out dynamically: items may differ in cost (causal tiles).
template <class F>
inline void parallel_for(Index n, F&& f) {
#if defined(_OPENMP)
  if (n > 1 && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic, 1)
    for (Index i = 0; i < n; ++i) f(i);
    return;
  }
#endif
  for (Index i = 0; i < n; ++i) f(i);
}

/// Number of threads parallel_for would use (1 without OpenMP).
inline int max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace kexue::detail
