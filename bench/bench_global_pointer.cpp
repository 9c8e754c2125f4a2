// SPDX-License-Identifier: MIT
// GlobalPointer scores for the shape: 9 heads, n = 512, head_size 64, fp32, from projected q/k
// (RoPE included), at 1 and 2 threads; a scalar baseline and an Eigen-GEMM formulation in the same binary.
//
// FLOP count: kexue multiplies only the upper triangle (end >= start), so its rows count
// heads * n(n+1)/2 * 2d (half of the dense 2 n^2 d per head); the Eigen and naive rows compute the dense
// product and count heads * 2 n^2 d. GFLOPS_dense_equiv states every row against the dense count.
#include <kexue/global_pointer.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "bench_util.hpp"

namespace {

using kexue::Index;
using kexue::Matrix;

constexpr Index kHeads = 9, kN = 512, kD = 64;

struct Inputs {
  Matrix<float> q, k;  // fused projections [n, heads * d]
  kexue::RopeTable<float> table{kN, kD};
  Inputs() : q(Matrix<float>::Random(kN, kHeads * kD)), k(Matrix<float>::Random(kN, kHeads * kD)) {}
};

const Inputs& inputs() {
  static const Inputs in;
  return in;
}

double triangle_flops() { return double(kHeads) * double(kN) * double(kN + 1) / 2.0 * 2.0 * kD; }
double dense_flops() { return double(kHeads) * 2.0 * kN * kN * kD; }

void dense_equiv(benchmark::State& state) {
  state.counters["GFLOPS_dense_equiv"] =
      benchmark::Counter(dense_flops() / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_global_pointer(benchmark::State& state) {
  const int threads = int(state.range(0));
  kexue_bench::set_threads(threads);
  const auto& in = inputs();
  Matrix<float> scores(kHeads * kN, kN);
  auto qv = kexue::TensorView<const float>::seq_major(in.q.data(), 1, kN, kHeads, kD);
  auto kv = kexue::TensorView<const float>::seq_major(in.k.data(), 1, kN, kHeads, kD);
  auto sv = kexue::TensorView<float>::contiguous(scores.data(), 1, kHeads, kN, kN);
  const std::vector<Index> lengths{kN};
  for (auto _ : state) {
    kexue::global_pointer(in.table, qv, kv, sv, lengths);
    benchmark::DoNotOptimize(scores.data());
    benchmark::ClobberMemory();
  }
  kexue_bench::report_flops(state, triangle_flops(), threads);
  dense_equiv(state);
  kexue_bench::set_threads(1);
}

/// The same work with Eigen: rotate, then a dense GEMM per head (parallel over heads), then the masks.
void BM_global_pointer_eigen(benchmark::State& state) {
  const int threads = int(state.range(0));
  kexue_bench::set_threads(threads);
  const auto& in = inputs();
  Matrix<float> scores(kHeads * kN, kN);
  std::vector<Matrix<float>> qr(kHeads, Matrix<float>(kN, kD)), kr(kHeads, Matrix<float>(kN, kD));
  const float ninf = -std::numeric_limits<float>::infinity(), scale = 1.0f / std::sqrt(float(kD));
  for (auto _ : state) {
    kexue::detail::parallel_for(kHeads, [&](Index a) {
      qr[size_t(a)] = in.q.middleCols(a * kD, kD);
      kr[size_t(a)] = in.k.middleCols(a * kD, kD);
      kexue::rope(in.table, qr[size_t(a)]);
      kexue::rope(in.table, kr[size_t(a)]);
      auto s = scores.middleRows(a * kN, kN);
      s.noalias() = (qr[size_t(a)] * scale) * kr[size_t(a)].transpose();
      for (Index i = 1; i < kN; ++i) s.row(i).head(i).setConstant(ninf);
    });
    benchmark::DoNotOptimize(scores.data());
    benchmark::ClobberMemory();
  }
  kexue_bench::report_flops(state, dense_flops(), threads);
  dense_equiv(state);
  kexue_bench::set_threads(1);
}

/// Scalar baseline: rotate, triple loop over every cell, mask.
void BM_global_pointer_naive(benchmark::State& state) {
  const auto& in = inputs();
  Matrix<float> scores(kHeads * kN, kN), qr(kN, kD), kr(kN, kD);
  const float ninf = -std::numeric_limits<float>::infinity(), scale = 1.0f / std::sqrt(float(kD));
  for (auto _ : state) {
    for (Index a = 0; a < kHeads; ++a) {
      qr = in.q.middleCols(a * kD, kD);
      kr = in.k.middleCols(a * kD, kD);
      kexue::rope(in.table, qr);
      kexue::rope(in.table, kr);
      for (Index i = 0; i < kN; ++i)
        for (Index j = 0; j < kN; ++j) {
          float s = 0;
          for (Index t = 0; t < kD; ++t) s += qr(i, t) * kr(j, t);
          scores(a * kN + i, j) = j >= i ? s * scale : ninf;
        }
    }
    benchmark::DoNotOptimize(scores.data());
    benchmark::ClobberMemory();
  }
  kexue_bench::report_flops(state, dense_flops(), 1);
  dense_equiv(state);
}

// ---- the layer from hidden states and the memory-lean decoding --------------------------------------------

constexpr Index kHidden = 768;

struct LayerInputs {
  Matrix<float> h;
  kexue::GlobalPointerWeights<float> w;
  kexue::EfficientGlobalPointerWeights<float> e;
  kexue::RopeTable<float> table{kN, kD};
  LayerInputs() : h(Matrix<float>::Random(kN, kHidden)) {
    w = {Matrix<float>::Random(kHidden, 2 * kHeads * kD) * 0.05f, Vector(2 * kHeads * kD), kHeads, kD};
    e = {Matrix<float>::Random(kHidden, 2 * kD) * 0.05f, Vector(2 * kD), Matrix<float>::Random(2 * kD, 2 * kHeads),
         Vector(2 * kHeads), kHeads, kD};
  }
  static kexue::Vector<float> Vector(Index n) { return kexue::Vector<float>::Random(n); }
};

const LayerInputs& layer_inputs() {
  static const LayerInputs in;
  return in;
}

void BM_global_pointer_layer(benchmark::State& state) {
  const int threads = int(state.range(0));
  kexue_bench::set_threads(threads);
  const auto& in = layer_inputs();
  Matrix<float> scores(kHeads * kN, kN);
  for (auto _ : state) {
    kexue::global_pointer(in.w, in.table, in.h, scores, kN);
    benchmark::DoNotOptimize(scores.data());
  }
  kexue_bench::report_flops(state, triangle_flops() + 2.0 * kN * kHidden * 2 * kHeads * kD, threads);
  kexue_bench::set_threads(1);
}

void BM_efficient_global_pointer(benchmark::State& state) {
  const int threads = int(state.range(0));
  kexue_bench::set_threads(threads);
  const auto& in = layer_inputs();
  Matrix<float> scores(kHeads * kN, kN);
  for (auto _ : state) {
    kexue::efficient_global_pointer(in.e, in.table, in.h, scores, kN);
    benchmark::DoNotOptimize(scores.data());
  }
  kexue_bench::report_flops(state, triangle_flops() / kHeads + 2.0 * kN * kHidden * 2 * kD, threads);
  kexue_bench::set_threads(1);
}

/// Dense scores + decode_spans vs the lean path that never stores the n x n matrices.
void BM_global_pointer_decode_dense(benchmark::State& state) {
  const int threads = int(state.range(0));
  kexue_bench::set_threads(threads);
  const auto& in = layer_inputs();
  Matrix<float> scores(kHeads * kN, kN);
  for (auto _ : state) {
    kexue::global_pointer(in.w, in.table, in.h, scores, kN);
    auto spans = kexue::decode_spans(scores, kHeads, 2.0);
    benchmark::DoNotOptimize(spans.data());
  }
  kexue_bench::set_threads(1);
}

void BM_global_pointer_decode_lean(benchmark::State& state) {
  const int threads = int(state.range(0));
  kexue_bench::set_threads(threads);
  const auto& in = layer_inputs();
  kexue::DecodeOptions o;
  o.threshold = 2.0;
  for (auto _ : state) {
    auto spans = kexue::global_pointer_spans(in.w, in.table, in.h, kN, o);
    benchmark::DoNotOptimize(spans.data());
  }
  kexue_bench::set_threads(1);
}

}  // namespace

BENCHMARK(BM_global_pointer)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_global_pointer_eigen)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_global_pointer_naive)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_global_pointer_layer)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_efficient_global_pointer)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_global_pointer_decode_dense)->Arg(2)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_global_pointer_decode_lean)->Arg(2)->Unit(benchmark::kMicrosecond)->UseRealTime();

BENCHMARK_MAIN();
