// SPDX-License-Identifier: MIT
// The three models of examples/models end to end (issue 14 item 5), fp32, at small but realistic sizes, with
// the same sizes in bench/torch_cases/models.py for compare_torch.py:
//   BM_model_encoder      GAU-alpha encoder (4 layers, hidden 512, units 1024, key 128) + GlobalPointer
//                         (4 types, head 64) + span decoding, one sentence of n tokens per iteration: sentences/s
//   BM_model_prefill      LLaMA-style decoder (4 layers, hidden 512, 8 query heads / 2 KV heads of 64, SwiGLU 1408,
//                         vocab 4096, llama3 RoPE): n prompt tokens in one call into an empty cache: tokens/s
//   BM_model_decode       the same decoder, one token against a cache of `context` positions: tokens/s
//   BM_model_denoiser     the patch-diffusion GAU denoiser (64 x 64 x 3 images, 4 x 4 patches = 256 per image,
//                         4 layers, hidden 256, units 512, key 64) on a batch of images plus one ddpm_step with
//                         Philox noise, i.e. one sampling step: images/s
// The glue (embedding lookup, projections, SwiGLU, residuals) is plain Eigen, as in the examples; Eigen's GEMM
// follows the OpenMP thread count like kexue's kernels.
#include "bench_util.hpp"

#include <kexue/kexue.hpp>

#include <vector>

#include "../examples/models/llama_decoder.hpp"
#include "../examples/models/patch_denoiser.hpp"
#include "../examples/models/roformer_gp.hpp"

using namespace kexue_bench;
using kexue::Matrix;

namespace {

kexue_models::RoformerGpConfig encoder_config() {
  kexue_models::RoformerGpConfig c;
  c.vocab = 8192;
  c.hidden = 512;
  c.units = 1024;
  c.key_size = 128;
  c.layers = 4;
  c.entity_types = 4;
  c.head_size = 64;
  return c;
}

kexue_models::LlamaConfig decoder_config() {
  kexue_models::LlamaConfig c;
  c.vocab = 4096;
  c.hidden = 512;
  c.heads = 8;
  c.kv_heads = 2;
  c.head_dim = 64;
  c.ffn = 1408;
  c.layers = 4;
  c.original_max_positions = 8192;
  return c;
}

kexue_models::PatchDenoiserConfig denoiser_config() {
  kexue_models::PatchDenoiserConfig c;
  c.height = 64;
  c.width = 64;
  c.channels = 3;
  c.patch = 4;
  c.hidden = 256;
  c.units = 512;
  c.key_size = 64;
  c.layers = 4;
  return c;
}

std::vector<int> token_ids(Index n, Index vocab) {
  std::vector<int> ids(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) ids[std::size_t(i)] = int(3 + (i * 7919 + 17) % (vocab - 3));
  return ids;
}

// Args: n (tokens), threads.
void BM_model_encoder(benchmark::State& state) {
  const Index n = state.range(0);
  set_threads(int(state.range(1)));
  kexue::PhiloxGenerator gen(1);
  const auto config = encoder_config();
  kexue_models::RoformerGp<float> model(kexue_models::RoformerGpWeights<float>::random(config, gen), n);
  const std::vector<int> tokens = token_ids(n, config.vocab);
  // Untrained weights put about half the cells above bert4keras' threshold 0; a trained head finds a few spans
  // per sentence, so decode above 3 (torch_cases/models.py uses the same threshold).
  const double threshold = 3.0;
  std::size_t spans = model.recognize(tokens, {}, n, threshold).size();
  for (auto _ : state) {
    spans = model.recognize(tokens, {}, n, threshold).size();
    benchmark::DoNotOptimize(spans);
  }
  state.counters["sentences_per_s"] = benchmark::Counter(double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["tokens_per_s"] = benchmark::Counter(double(state.iterations() * n), benchmark::Counter::kIsRate);
  state.counters["spans"] = double(spans);
  set_threads(1);
}
BENCHMARK(BM_model_encoder)
    ->ArgNames({"n", "threads"})
    ->Args({128, 1})
    ->Args({512, 1})
    ->Args({512, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Args: n (prompt tokens), threads.
void BM_model_prefill(benchmark::State& state) {
  const Index n = state.range(0);
  set_threads(int(state.range(1)));
  kexue::PhiloxGenerator gen(2);
  const auto config = decoder_config();
  kexue_models::LlamaDecoder<float> model(kexue_models::LlamaWeights<float>::random(config, gen), n);
  const std::vector<int> prompt = token_ids(n, config.vocab);
  auto cache = model.new_cache();
  Matrix<float> logits;
  for (auto _ : state) {
    cache.clear();
    model.forward(prompt, cache, logits);
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["tokens_per_s"] = benchmark::Counter(double(state.iterations() * n), benchmark::Counter::kIsRate);
  set_threads(1);
}
BENCHMARK(BM_model_prefill)
    ->ArgNames({"n", "threads"})
    ->Args({128, 1})
    ->Args({512, 1})
    ->Args({512, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Args: context (cached positions before the new token), threads.
void BM_model_decode(benchmark::State& state) {
  const Index context = state.range(0);
  set_threads(int(state.range(1)));
  kexue::PhiloxGenerator gen(2);
  const auto config = decoder_config();
  kexue_models::LlamaDecoder<float> model(kexue_models::LlamaWeights<float>::random(config, gen), context + 1);
  auto cache = model.new_cache();
  Matrix<float> logits;
  model.forward(token_ids(context, config.vocab), cache, logits);
  const std::vector<int> next{42};
  for (auto _ : state) {
    cache.rewind(context);
    model.forward(next, cache, logits);
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["tokens_per_s"] = benchmark::Counter(double(state.iterations()), benchmark::Counter::kIsRate);
  set_threads(1);
}
BENCHMARK(BM_model_decode)
    ->ArgNames({"context", "threads"})
    ->Args({128, 1})
    ->Args({512, 1})
    ->Args({512, 2})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// Args: batch (images), threads.
void BM_model_denoiser(benchmark::State& state) {
  const Index batch = state.range(0);
  set_threads(int(state.range(1)));
  kexue::PhiloxGenerator gen(3);
  const auto config = denoiser_config();
  kexue_models::PatchDenoiser<float> model(kexue_models::PatchDenoiserWeights<float>::random(config, gen));
  const kexue::DdpmSchedule schedule(config.timesteps, kexue::BetaSchedule::Proportional);
  Matrix<float> x(batch * config.height, config.width * config.channels), eps;
  gen.normal(x);
  const Matrix<float> x_t = x;
  kexue::DdpmStepOptions options = model.step_options();
  options.prev_t = 499;
  for (auto _ : state) {
    x = x_t;
    model.predict(x, 500, eps);
    kexue::ddpm_step(schedule, eps, 500, x, gen, x, options);
    benchmark::DoNotOptimize(x.data());
  }
  state.counters["images_per_s"] = benchmark::Counter(double(state.iterations() * batch), benchmark::Counter::kIsRate);
  set_threads(1);
}
BENCHMARK(BM_model_denoiser)
    ->ArgNames({"batch", "threads"})
    ->Args({1, 1})
    ->Args({8, 1})
    ->Args({8, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
