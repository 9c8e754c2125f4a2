// SPDX-License-Identifier: MIT
// kexue's packed GEMM (detail/gemm.hpp) against Eigen's GEMM in the same binary, fp32 (and fp64 at 1024^3).
// Shapes: square 1024^3 and the four products of a GAU layer at D = 768, e = 1536, s = 128, n = 2048:
//   x W_in      [2048, 768] x [768, 3200]    (with bias + swish fused: the layer's input projection)
//   g W_out     [2048, 1536] x [1536, 768]
//   q k^T       [2048, 128] x [128, 2048]    (B given transposed)
//   A v         [2048, 2048] x [2048, 1536]
// Every call packs B (as Eigen does); flops 2 m n k (the epilogue is not counted).
// peak_frac is against the fp32 FMA peak, so fp64 rows top out at 0.5.
// Rows: BM_gemm (kexue, workspace reused), BM_gemm_eigen (c.noalias() = a * b), args m, k, n, b^T, threads;
// BM_dense / BM_dense_eigen: kexue::dense with weights packed once against Eigen's product, the decoder's MLP shape;
// BM_gemm_bf16<0> (issue 13): a and b in bfloat16, c in float, same shapes (no epilogue), in the library's layout
// (vdpbf16ps under -march=native on AVX512-BF16 cores where it is the faster one, else widened to float when
// packed + fp32 FMA); BM_gemm_bf16<1> / <2>: the pair / widened layout forced, one shape; peak_frac still against
// the fp32 FMA peak, so vdpbf16ps can exceed 1 where it is fast.
#include "bench_util.hpp"
#include "kexue/detail/gemm.hpp"  // first: see simd.hpp on GCC 12's AVX-512 warnings

#include <Eigen/Core>

#include "kexue/dense.hpp"

using namespace kexue_bench;
using kexue::Matrix;

namespace {

template <class T>
void fill(Matrix<T>& m, unsigned seed) {
  for (Index i = 0; i < m.size(); ++i)
    m.data()[i] = T(float((std::size_t(i) * 2654435761u + seed * 40503u) % 2001) * 1e-3f - 1.f);
}

template <class T>
struct Operands {
  Matrix<T> a, b, c;
  kexue::Vector<T> bias;
  Operands(Index m, Index k, Index n, bool bt) : a(m, k), b(bt ? n : k, bt ? k : n), c(m, n), bias(n) {
    fill(a, 1);
    fill(b, 2);
    bias.setConstant(T(0.01));
  }
};

// Args: m, k, n, b transposed, threads, epilogue (0 none, 1 bias + swish).
template <class T>
void BM_gemm(benchmark::State& state) {
  const Index m = state.range(0), k = state.range(1), n = state.range(2);
  const bool bt = state.range(3) != 0;
  const int threads = static_cast<int>(state.range(4));
  set_threads(threads);
  Operands<T> o(m, k, n, bt);
  kd::GemmEpilogue<T> epi;
  if (state.range(5) == 1) {
    epi.bias = o.bias.data();
    epi.swish = true;
  }
  kd::GemmWorkspace<T> ws;
  const kd::View<const T> av{o.a.data(), m, k, k}, bv{o.b.data(), o.b.rows(), o.b.cols(), o.b.cols()};
  const kd::View<T> cv{o.c.data(), m, n, n};
  kd::gemm(av, bv, bt, cv, epi, ws);
  for (auto _ : state) {
    kd::gemm(av, bv, bt, cv, epi, ws);
    benchmark::DoNotOptimize(o.c.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, 2.0 * double(m) * double(n) * double(k), threads);
  set_threads(1);
}

template <class T>
void BM_gemm_eigen(benchmark::State& state) {
  const Index m = state.range(0), k = state.range(1), n = state.range(2);
  const bool bt = state.range(3) != 0;
  const int threads = static_cast<int>(state.range(4));
  set_threads(threads);
  Eigen::setNbThreads(threads);
  Operands<T> o(m, k, n, bt);
  for (auto _ : state) {
    if (bt) {
      o.c.noalias() = o.a * o.b.transpose();
    } else {
      o.c.noalias() = o.a * o.b;
    }
    if (state.range(5) == 1) {
      o.c.rowwise() += o.bias.transpose();
      o.c.array() = o.c.array() / (T(1) + (-o.c.array()).exp());
    }
    benchmark::DoNotOptimize(o.c.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, 2.0 * double(m) * double(n) * double(k), threads);
  Eigen::setNbThreads(1);
  set_threads(1);
}

// Layout 0: the library's choice (kPreferBf16Dot); 1: bf16 pairs through dot_bf16_pairs (vdpbf16ps where the build
// has it); 2: halves widened to float when packing, float FMAs. Both give the same bits on normal numbers.
template <int kLayout>
void BM_gemm_bf16(benchmark::State& state) {
  constexpr bool kDot = kLayout == 0 ? kd::kPreferBf16Dot : kLayout == 1;
  const Index m = state.range(0), k = state.range(1), n = state.range(2);
  const bool bt = state.range(3) != 0;
  const int threads = static_cast<int>(state.range(4));
  set_threads(threads);
  Operands<float> o(m, k, n, bt);
  Matrix<Eigen::bfloat16> a(o.a.rows(), o.a.cols()), b(o.b.rows(), o.b.cols());
  for (Index i = 0; i < a.size(); ++i) a.data()[i] = kd::from_float<Eigen::bfloat16>(o.a.data()[i]);
  for (Index i = 0; i < b.size(); ++i) b.data()[i] = kd::from_float<Eigen::bfloat16>(o.b.data()[i]);
  kd::GemmBf16Workspace ws;
  const kd::View<const Eigen::bfloat16> av{a.data(), m, k, k}, bv{b.data(), b.rows(), b.cols(), b.cols()};
  const kd::View<float> cv{o.c.data(), m, n, n};
  kd::gemm_bf16<kDot>(av, bv, bt, cv, ws);
  for (auto _ : state) {
    kd::gemm_bf16<kDot>(av, bv, bt, cv, ws);
    benchmark::DoNotOptimize(o.c.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, 2.0 * double(m) * double(n) * double(k), threads);
  state.SetLabel(kDot ? (kd::kNativeBf16Dot ? "pairs, vdpbf16ps" : "pairs, widened in the kernel")
                     : "widened when packed, fma");
  set_threads(1);
}

// kexue::dense (weights packed once by dense_pack, outside the timed loop) against Eigen's product on the
// decoder's SwiGLU MLP shape: silu(x W_gate) * (x W_up) with x [m, 512], W [512, 1408], for one decoding row
// (the GEMV path) and a 128-token prefill. Args: m, k, n, gated (0: plain x W, 1: the SwiGLU gate product).
// Eigen packs W on every call (as any GEMM library must when handed a matrix); flops count x W only.
void BM_dense(benchmark::State& state) {
  const Index m = state.range(0), k = state.range(1), n = state.range(2);
  const bool gated = state.range(3) != 0;
  set_threads(1);
  Operands<float> o(m, k, n, false);
  Matrix<float> up(m, n);
  fill(up, 3);
  const kexue::PackedDense<float> layer = kexue::dense_pack(o.b);
  for (auto _ : state) {
    if (gated)
      kexue::dense_gated(layer, o.a, up, o.c, kexue::DenseActivation::Swish);
    else
      kexue::dense(layer, o.a, o.c);
    benchmark::DoNotOptimize(o.c.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, 2.0 * double(m) * double(n) * double(k), 1);
}

void BM_dense_eigen(benchmark::State& state) {
  const Index m = state.range(0), k = state.range(1), n = state.range(2);
  const bool gated = state.range(3) != 0;
  set_threads(1);
  Eigen::setNbThreads(1);
  Operands<float> o(m, k, n, false);
  Matrix<float> up(m, n);
  fill(up, 3);
  for (auto _ : state) {
    o.c.noalias() = o.a * o.b;
    if (gated) o.c.array() = o.c.array() / (1.0f + (-o.c.array()).exp()) * up.array();
    benchmark::DoNotOptimize(o.c.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, 2.0 * double(m) * double(n) * double(k), 1);
}

void dense_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "k", "n", "gated"});
  for (Index m : {1, 128}) {
    b->Args({m, 512, 1408, 0});
    b->Args({m, 512, 1408, 1});
  }
  b->Unit(benchmark::kMicrosecond)->UseRealTime();
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "k", "n", "bt", "threads", "epi"});
  for (int threads : {1, 2}) {
    b->Args({1024, 1024, 1024, 0, threads, 0});
    b->Args({2048, 768, 3200, 0, threads, 0});
    b->Args({2048, 768, 3200, 0, threads, 1});
    b->Args({2048, 1536, 768, 0, threads, 0});
    b->Args({2048, 128, 2048, 1, threads, 0});
    b->Args({2048, 2048, 1536, 0, threads, 0});
  }
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

void square(benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "k", "n", "bt", "threads", "epi"});
  b->Args({1024, 1024, 1024, 0, 1, 0});
  b->Args({1024, 1024, 1024, 0, 2, 0});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK_TEMPLATE(BM_gemm, float)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_gemm_eigen, float)->Apply(shapes);
BENCHMARK(BM_dense)->Apply(dense_shapes);
BENCHMARK(BM_dense_eigen)->Apply(dense_shapes);
BENCHMARK_TEMPLATE(BM_gemm_bf16, 0)->Apply([](benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "k", "n", "bt", "threads", "epi"});
  for (int threads : {1, 2}) {
    b->Args({1024, 1024, 1024, 0, threads, 0});
    b->Args({2048, 768, 3200, 0, threads, 0});
    b->Args({2048, 1536, 768, 0, threads, 0});
    b->Args({2048, 128, 2048, 1, threads, 0});
    b->Args({2048, 2048, 1536, 0, threads, 0});
  }
  b->Unit(benchmark::kMillisecond)->UseRealTime();
});
// Both bf16 layouts side by side, one thread (which one is faster depends on the core: arch/x86.hpp).
BENCHMARK_TEMPLATE(BM_gemm_bf16, 1)->Apply([](benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "k", "n", "bt", "threads", "epi"})->Args({2048, 768, 3200, 0, 1, 0});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
});
BENCHMARK_TEMPLATE(BM_gemm_bf16, 2)->Apply([](benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "k", "n", "bt", "threads", "epi"})->Args({2048, 768, 3200, 0, 1, 0});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
});
BENCHMARK_TEMPLATE(BM_gemm, double)->Apply(square);
BENCHMARK_TEMPLATE(BM_gemm_eigen, double)->Apply(square);

}  // namespace

BENCHMARK_MAIN();
