// SPDX-License-Identifier: MIT
// Normal numbers per second (items_per_second): TorchGenerator (torch.randn bit-compatible, serial mt19937),
// Philox (counter-based, parallel), and the naive baseline std::normal_distribution over std::mt19937.
// Args: {count, threads}.
#include <random>
#include <vector>

#include "bench_util.hpp"
#include "kexue/random.hpp"

using namespace kexue_bench;

namespace {

void BM_normal_philox(benchmark::State& state) {
  const Index n = state.range(0);
  set_threads(int(state.range(1)));
  std::vector<float> out(static_cast<std::size_t>(n));
  kexue::PhiloxGenerator gen(42);
  for (auto _ : state) {
    gen.normal(out.data(), n);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * n);
  report_bytes(state, double(n) * sizeof(float));
}
BENCHMARK(BM_normal_philox)->Args({16384, 1})->Args({1 << 20, 1})->Args({1 << 20, 2})->UseRealTime();

void BM_normal_torch(benchmark::State& state) {
  const Index n = state.range(0);
  std::vector<float> out(static_cast<std::size_t>(n));
  kexue::TorchGenerator gen(42);
  for (auto _ : state) {
    gen.normal(out.data(), n);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * n);
  report_bytes(state, double(n) * sizeof(float));
}
BENCHMARK(BM_normal_torch)->Args({16384, 1})->Args({1 << 20, 1})->UseRealTime();

// torch.randn(n < 16) goes through the double scalar path: many short calls.
void BM_normal_torch_short(benchmark::State& state) {
  std::vector<float> out(7);
  kexue::TorchGenerator gen(42);
  for (auto _ : state) {
    gen.normal(out.data(), 7);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * 7);
}
BENCHMARK(BM_normal_torch_short);

void BM_normal_std_naive(benchmark::State& state) {
  const Index n = state.range(0);
  std::vector<float> out(static_cast<std::size_t>(n));
  std::mt19937 rng(42);
  std::normal_distribution<float> normal;
  for (auto _ : state) {
    for (auto& v : out) v = normal(rng);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * n);
  report_bytes(state, double(n) * sizeof(float));
}
BENCHMARK(BM_normal_std_naive)->Args({16384, 1})->Args({1 << 20, 1})->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
