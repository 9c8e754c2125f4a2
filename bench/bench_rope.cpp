// SPDX-License-Identifier: MIT
// RoPE of q and k in place, fp32, [batch, 8 heads, 2048 positions, 64 dims] (issue 3):
//   batch 1: 2 x 4 MiB, the in-cache case; batch 8: 2 x 32 MiB = 64 MiB, out of cache.
// Rows: kexue's batched rope(table, q, k), batched rope_with_bias(table, q, k, q_bias, k_bias) and, in the
// same binary, the PyTorch formulation written as plain loops over full-width cos/sin tables
// (x*cos + rotate(x)*sin through a temporary row): the naive baseline.
// Bytes counted: q and k each read once and written once (the table's reads are not counted: it is 1 MiB
// and stays in cache across heads).
#include <cmath>
#include <vector>

#include "bench_util.hpp"
#include "kexue/rope.hpp"

using namespace kexue_bench;

namespace {

constexpr Index kHeads = 8, kSeq = 2048, kDim = 64;

kexue::RopeLayout layout_of(benchmark::State& state) {
  return state.range(0) == 0 ? kexue::RopeLayout::Interleaved : kexue::RopeLayout::Half;
}

// 64-byte aligned, as torch's and Eigen's (AVX-512) allocators give: a 16-byte-aligned buffer would make every
// 64-byte register load straddle two cache lines, a cost of the buffer, not of the kernel.
kexue::detail::AlignedVector<float> data(Index n, unsigned salt) {
  kexue::detail::AlignedVector<float> x(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(((i + salt) * 2654435761u) % 2000) * 1e-3f - 1.f;
  return x;
}

void set_labels(benchmark::State& state, int threads) {
  state.SetLabel(std::string(state.range(0) == 0 ? "interleaved" : "half") + " batch " +
                 std::to_string(state.range(1)) + " threads " + std::to_string(threads));
}

void BM_rope_qk(benchmark::State& state) {
  const Index batch = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  set_threads(threads);
  kexue::RopeOptions o;
  o.layout = layout_of(state);
  const kexue::RopeTable<float> table(kSeq, kDim, o);
  const Index n = batch * kHeads * kSeq * kDim;
  auto q = data(n, 1), k = data(n, 2);
  const auto qv = kexue::TensorView<float>::contiguous(q.data(), batch, kHeads, kSeq, kDim);
  const auto kv = kexue::TensorView<float>::contiguous(k.data(), batch, kHeads, kSeq, kDim);
  // A rotation keeps norms, so rotating the same buffers again and again stays representative.
  for (auto _ : state) {
    kexue::rope(table, qv, kv);
    benchmark::ClobberMemory();
  }
  set_threads(kd::max_threads());
  set_labels(state, threads);
  report_bytes(state, double(n) * sizeof(float) * 4);
}

// The same q and k stored as fp16 / bf16 (issue 13): widened in registers, rotated with the float table, rounded
// once. Bytes counted as above at 2 bytes per value: the row is bandwidth-bound out of cache (batch 8), so it
// should take about half the float row's time there.
template <class S>
void BM_rope_qk_16(benchmark::State& state) {
  const Index batch = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  set_threads(threads);
  kexue::RopeOptions o;
  o.layout = layout_of(state);
  const kexue::RopeTable<float> table(kSeq, kDim, o);
  const Index n = batch * kHeads * kSeq * kDim;
  const auto qf = data(n, 1), kf = data(n, 2);
  kexue::detail::AlignedVector<S> q(qf.size()), k(kf.size());
  for (std::size_t i = 0; i < q.size(); ++i) {
    q[i] = kd::from_float<S>(qf[i]);
    k[i] = kd::from_float<S>(kf[i]);
  }
  const auto qv = kexue::TensorView<S>::contiguous(q.data(), batch, kHeads, kSeq, kDim);
  const auto kv = kexue::TensorView<S>::contiguous(k.data(), batch, kHeads, kSeq, kDim);
  for (auto _ : state) {
    kexue::rope(table, qv, kv);
    benchmark::ClobberMemory();
  }
  set_threads(kd::max_threads());
  set_labels(state, threads);
  report_bytes(state, double(n) * sizeof(S) * 4);
}

// RoPE + bias (SPEC 4) of q and k in one call: q <- RoPE(q + q_bias) with one bias per head ([heads, dim], as a
// fused projection's bias), k <- RoPE(k + k_bias) with one shared bias [dim]. Same bytes as BM_rope_qk (the
// biases are 2 KiB and stay in L1).
void BM_rope_qk_bias(benchmark::State& state) {
  const Index batch = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  set_threads(threads);
  kexue::RopeOptions o;
  o.layout = layout_of(state);
  const kexue::RopeTable<float> table(kSeq, kDim, o);
  const Index n = batch * kHeads * kSeq * kDim;
  auto q = data(n, 1), k = data(n, 2);
  // Small biases: rotating the same buffers again and again adds one bias per call, so the values drift by at
  // most iterations x 1e-3 and stay representative.
  kexue::Matrix<float> q_bias(kHeads, kDim);
  kexue::Vector<float> k_bias(kDim);
  const auto bq = data(kHeads * kDim, 3), bk = data(kDim, 4);
  for (Index i = 0; i < kHeads * kDim; ++i) q_bias.data()[i] = bq[std::size_t(i)] * 1e-3f;
  for (Index i = 0; i < kDim; ++i) k_bias[i] = bk[std::size_t(i)] * 1e-3f;
  const auto qv = kexue::TensorView<float>::contiguous(q.data(), batch, kHeads, kSeq, kDim);
  const auto kv = kexue::TensorView<float>::contiguous(k.data(), batch, kHeads, kSeq, kDim);
  for (auto _ : state) {
    kexue::rope_with_bias(table, qv, kv, q_bias, k_bias);
    benchmark::ClobberMemory();
  }
  set_threads(kd::max_threads());
  set_labels(state, threads);
  report_bytes(state, double(n) * sizeof(float) * 4);
}

// The PyTorch formulation: full-width cos/sin [seq, dim] (HF emb = cat(freqs, freqs), or each value repeated
// twice for the interleaved layout), rotate(x) materialised, then x*cos + rotate(x)*sin.
void BM_rope_qk_naive(benchmark::State& state) {
  const Index batch = state.range(1);
  const bool interleaved = state.range(0) == 0;
  const Index half = kDim / 2;
  kexue::detail::AlignedVector<float> cos(kSeq * kDim), sin(kSeq * kDim);
  for (Index p = 0; p < kSeq; ++p)
    for (Index i = 0; i < half; ++i) {
      const double a = double(p) * std::pow(10000.0, -2.0 * double(i) / double(kDim));
      const Index j0 = interleaved ? 2 * i : i, j1 = interleaved ? 2 * i + 1 : i + half;
      cos[std::size_t(p * kDim + j0)] = cos[std::size_t(p * kDim + j1)] = float(std::cos(a));
      sin[std::size_t(p * kDim + j0)] = sin[std::size_t(p * kDim + j1)] = float(std::sin(a));
    }
  const Index n = batch * kHeads * kSeq * kDim;
  auto q = data(n, 1), k = data(n, 2);
  std::vector<float> rot(kDim);
  auto apply = [&](float* x) {
    for (Index r = 0; r < batch * kHeads * kSeq; ++r) {
      float* row = x + r * kDim;
      const Index p = r % kSeq;
      for (Index j = 0; j < kDim; ++j) {
        if (interleaved) {
          rot[std::size_t(j)] = j % 2 == 0 ? -row[j + 1] : row[j - 1];
        } else {
          rot[std::size_t(j)] = j < half ? -row[j + half] : row[j - half];
        }
      }
      for (Index j = 0; j < kDim; ++j)
        row[j] = row[j] * cos[std::size_t(p * kDim + j)] + rot[std::size_t(j)] * sin[std::size_t(p * kDim + j)];
    }
  };
  for (auto _ : state) {
    apply(q.data());
    apply(k.data());
    benchmark::ClobberMemory();
  }
  set_labels(state, 1);
  report_bytes(state, double(n) * sizeof(float) * 4);
}

// Args: layout (0 interleaved, 1 half), batch, threads.
BENCHMARK(BM_rope_qk)->ArgsProduct({{0, 1}, {1, 8}, {1, 2}})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_rope_qk_16, Eigen::half)->ArgsProduct({{0, 1}, {1, 8}, {1, 2}})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_rope_qk_16, Eigen::bfloat16)->ArgsProduct({{0, 1}, {1, 8}, {1, 2}})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_rope_qk_bias)->ArgsProduct({{0, 1}, {1, 8}, {1, 2}})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_rope_qk_naive)->ArgsProduct({{0, 1}, {1, 8}})->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
