// SPDX-License-Identifier: MIT
#pragma once
// Shared benchmark plumbing: this machine's measured peaks (so every kernel can report its fraction of
// them) and the counters every kernel benchmark sets.

#include <benchmark/benchmark.h>

#include <chrono>
#include <fstream>
#include <string>
#include <cstdlib>
#include <vector>

#include "kexue/core.hpp"
#include "kexue/detail/cache_info.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace kexue_bench {

using kexue::Index;
namespace kd = kexue::detail;

/// Runs `work(reps)` until it takes at least `seconds`, returns the best (reps / second) of 3 tries.
template <class F>
double best_rate(F&& work, double seconds = 0.1) {
  double best = 0;
  for (int trial = 0; trial < 3; ++trial) {
    long reps = 1;
    for (;;) {
      const auto t0 = std::chrono::steady_clock::now();
      work(reps);
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (dt >= seconds) {
        best = std::max(best, double(reps) / dt);
        break;
      }
      reps *= 2;
    }
  }
  return best;
}

/// FMA throughput of one thread in fp32 FLOP/s. Ten independent accumulators: two FMA ports times a
/// four-cycle latency need at least eight chains in flight to keep both ports busy.
inline double measure_fma_peak_one_thread() {
  using B = kd::Batch<float>;
  constexpr int kChains = 10;
  constexpr long kInner = 1000;
  auto work = [](long reps) {
    B acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = B(float(c) * 1e-3f);
    const B a(0.999999f), b(1e-7f);
    for (long r = 0; r < reps * kInner; ++r)
      for (int c = 0; c < kChains; ++c) acc[c] = xsimd::fma(acc[c], a, b);
    B s = acc[0];
    for (int c = 1; c < kChains; ++c) s += acc[c];
    benchmark::DoNotOptimize(s);
  };
  return best_rate(work) * kInner * kChains * B::size * 2.0;
}

/// The peaks, measured once per process (about a second).
struct Peak {
  double fma_flops_1t = 0;  // fp32 FLOP/s, one thread
  double bandwidth = 0;     // triad bytes/s, one thread
};

inline double measure_triad_one_thread() {
  const Index n = Index(1) << 24;  // 3 x 64 MiB: far beyond the caches
  std::vector<float> a(n, 1.f), b(n, 2.f), c(n, 3.f);
  auto work = [&](long reps) {
    for (long r = 0; r < reps; ++r) {
      for (Index i = 0; i < n; ++i) a[i] = b[i] + 0.5f * c[i];
      benchmark::ClobberMemory();
    }
  };
  return best_rate(work, 0.2) * double(n) * 3 * sizeof(float);
}

inline const Peak& peak() {
  static const Peak p = [] {
    Peak q;
    if (const char* env = std::getenv("KEXUE_PEAK_GFLOPS")) q.fma_flops_1t = std::atof(env) * 1e9;
    if (const char* env = std::getenv("KEXUE_PEAK_GBS")) q.bandwidth = std::atof(env) * 1e9;
    if (q.fma_flops_1t <= 0) q.fma_flops_1t = measure_fma_peak_one_thread();
    if (q.bandwidth <= 0) q.bandwidth = measure_triad_one_thread();
    return q;
  }();
  return p;
}

/// Sets GFLOPS (rate) and peak_frac (fraction of `threads` x the single-thread FMA peak) from the flops of
/// one iteration.
inline void report_flops(benchmark::State& state, double flops_per_iter, int threads = 1) {
  state.counters["GFLOPS"] = benchmark::Counter(flops_per_iter / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_frac"] = benchmark::Counter(flops_per_iter / (peak().fma_flops_1t * threads),
                                                   benchmark::Counter::kIsIterationInvariantRate);
}

/// Sets GBps (rate) and bw_frac (fraction of the single-thread triad bandwidth) from the bytes one
/// iteration reads and writes.
inline void report_bytes(benchmark::State& state, double bytes_per_iter) {
  state.counters["GBps"] = benchmark::Counter(bytes_per_iter / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bw_frac"] =
      benchmark::Counter(bytes_per_iter / peak().bandwidth, benchmark::Counter::kIsIterationInvariantRate);
}

/// Sets the OpenMP thread count for the kernels a benchmark calls (no effect without OpenMP).
inline void set_threads(int threads) {
#if defined(_OPENMP)
  omp_set_num_threads(threads);
#else
  (void)threads;
#endif
}

/// "model name" of /proc/cpuinfo, or "unknown CPU".
inline std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos)
      return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

/// Every benchmark binary's context (printed above its table and in its JSON): the CPU, the SIMD instruction set
/// the kernels were compiled for, and the cache sizes the kernels plan with, so no result is read without them.
inline bool add_kexue_context() {
  const auto& c = kd::cache_info();
  benchmark::AddCustomContext("kexue_cpu", cpu_model());
  benchmark::AddCustomContext("kexue_simd", kexue::simd_arch());
  benchmark::AddCustomContext("kexue_caches", "L1d " + std::to_string(c.l1d >> 10) + " KiB, L2 " +
                                                   std::to_string(c.l2 >> 10) + " KiB, L3 " +
                                                   std::to_string(c.l3 >> 20) + " MiB" +
                                                   (c.detected ? "" : " (defaults)"));
  return true;
}
inline const bool kContextAdded = add_kexue_context();

}  // namespace kexue_bench
