// SPDX-License-Identifier: MIT
// The three models of examples/models (issue 14 item 5) end to end against their float64 PyTorch
// transcriptions (tests/reference/cases_models.py, same weights and inputs): the GAU-alpha encoder with its
// GlobalPointer head and span decoding, the LLaMA-style decoder's logits and greedy tokens (and prefill ==
// token-by-token decoding over the KV cache), and the patch-diffusion denoiser inside a DDPM sampling loop whose
// noise comes from kexue::TorchGenerator (bit-compatible with the reference's torch.randn).
// Tolerances: relative to the largest |reference| value, 1e-10 in double and 1e-4 in float, after the whole
// stack (for the sampler: after the whole loop).
#include <kexue/kexue.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "../examples/models/llama_decoder.hpp"
#include "../examples/models/patch_denoiser.hpp"
#include "../examples/models/roformer_gp.hpp"
#include "reference/reference_data.hpp"
#include "support.hpp"

using kexue::Index;
using kexue::Matrix;
using kexue::Vector;
using namespace kexue_test;

namespace {

const RefData& ref() {
  static const RefData data("models");
  return data;
}

template <class T>
constexpr double tolerance() {
  return std::is_same<T, float>::value ? 1e-4 : 1e-10;
}

/// max |a - b| / max |b| over the finite entries of b; entries where b is infinite must be equal in a.
template <class A, class B>
double relative_error(const A& a, const B& b) {
  double diff = 0, scale = 0;
  for (Index i = 0; i < Index(b.size()); ++i) {
    const double x = double(a.data()[i]), y = double(b.data()[i]);
    if (!std::isfinite(y)) {
      if (x != y) return std::numeric_limits<double>::infinity();
      continue;
    }
    if (!std::isfinite(x)) return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::abs(x - y));
    scale = std::max(scale, std::abs(y));
  }
  return diff / std::max(scale, 1e-300);
}

std::vector<int> ints(const std::string& name) {
  std::vector<int> out;
  for (double v : ref().values(name)) out.push_back(int(v));
  return out;
}

Index cfg(const std::string& model, int i) { return Index(ref().values(model + "/config")[std::size_t(i)]); }

// ---- a. encoder ---------------------------------------------------------------------------------------------

kexue_models::RoformerGpWeights<double> encoder_weights() {
  const std::string p = "encoder/";
  kexue_models::RoformerGpWeights<double> w;
  w.token_embedding = ref().matrix<double>(p + "token_embedding");
  w.segment_embedding = ref().matrix<double>(p + "segment_embedding");
  for (Index l = 0; l < cfg("encoder", 5); ++l) {
    const std::string q = p + "layer" + std::to_string(l) + "/";
    kexue::GauWeights<double> g;
    g.w_in = ref().matrix<double>(q + "w_in");
    g.gamma_q = ref().vector<double>(q + "gamma_q");
    g.gamma_k = ref().vector<double>(q + "gamma_k");
    g.w_out = ref().matrix<double>(q + "w_out");
    w.layers.push_back(g);
  }
  w.pointer.w = ref().matrix<double>(p + "pointer/w");
  w.pointer.b = ref().vector<double>(p + "pointer/b");
  w.pointer.heads = cfg("encoder", 6);
  w.pointer.head_size = cfg("encoder", 7);
  return w;
}

template <class T>
void check_encoder() {
  const Index n = cfg("encoder", 8), length = cfg("encoder", 9), heads = cfg("encoder", 6);
  const std::vector<int> tokens = ints("encoder/tokens"), segments = ints("encoder/segments");
  kexue_models::RoformerGp<T> model(encoder_weights().template cast<T>(), n);
  Matrix<T> hidden, scores;
  model.encode(tokens, segments, length, hidden);
  const Matrix<double> ref_hidden = ref().matrix<double>("encoder/hidden");
  REQUIRE(hidden.rows() == ref_hidden.rows());
  REQUIRE(hidden.cols() == ref_hidden.cols());
  CHECK(relative_error(hidden, ref_hidden) < tolerance<T>());

  model.score(hidden, length, scores);
  const Matrix<double> ref_scores = ref().matrix<double>("encoder/scores");
  REQUIRE(scores.rows() == heads * n);
  CHECK(relative_error(scores, ref_scores) < tolerance<T>());  // -inf cells must be -inf here too

  // Spans: every reference span and nothing else, except that float may flip a cell within 1e-3 of 0.
  const std::vector<kexue::Span> spans = model.recognize(tokens, segments, length);
  const Matrix<double> ref_spans = ref().matrix<double>("encoder/spans");
  REQUIRE(ref_spans.rows() > 10);
  auto close_to_zero = [&](Index a, Index i, Index j) { return std::abs(ref_scores(a * n + i, j)) < 1e-3; };
  std::size_t matched = 0;
  for (const kexue::Span& s : spans) {
    bool found = false;
    for (Index r = 0; r < ref_spans.rows() && !found; ++r)
      found = Index(ref_spans(r, 0)) == s.head && Index(ref_spans(r, 1)) == s.start && Index(ref_spans(r, 2)) == s.end;
    if (found) ++matched;
    CHECK((found || (std::is_same<T, float>::value && close_to_zero(s.head, s.start, s.end))));
    CHECK(s.start > 0);
    CHECK(s.end < length - 1);
  }
  for (Index r = 0; r < ref_spans.rows(); ++r) {
    bool found = false;
    for (const kexue::Span& s : spans)
      found = found || (Index(ref_spans(r, 0)) == s.head && Index(ref_spans(r, 1)) == s.start &&
                        Index(ref_spans(r, 2)) == s.end);
    CHECK((found || (std::is_same<T, float>::value &&
                     close_to_zero(Index(ref_spans(r, 0)), Index(ref_spans(r, 1)), Index(ref_spans(r, 2))))));
  }
  if (std::is_same<T, double>::value) CHECK(matched == std::size_t(ref_spans.rows()));
}

// ---- b. decoder ---------------------------------------------------------------------------------------------

kexue_models::LlamaWeights<double> decoder_weights() {
  const std::vector<double>& c = ref().values("decoder/config");
  kexue_models::LlamaConfig config;
  config.vocab = Index(c[0]);
  config.hidden = Index(c[1]);
  config.heads = Index(c[2]);
  config.kv_heads = Index(c[3]);
  config.head_dim = Index(c[4]);
  config.ffn = Index(c[5]);
  config.layers = Index(c[6]);
  config.rope_base = c[7];
  config.rope_factor = c[8];
  config.low_freq_factor = c[9];
  config.high_freq_factor = c[10];
  config.original_max_positions = Index(c[11]);
  config.rms_eps = c[12];
  kexue_models::LlamaWeights<double> w;
  w.config = config;
  const std::string p = "decoder/";
  w.embedding = ref().matrix<double>(p + "embedding");
  for (Index l = 0; l < config.layers; ++l) {
    const std::string q = p + "layer" + std::to_string(l) + "/";
    kexue_models::LlamaLayerWeights<double> lw;
    lw.attn_norm = ref().vector<double>(q + "attn_norm");
    lw.mlp_norm = ref().vector<double>(q + "mlp_norm");
    lw.wq = ref().matrix<double>(q + "wq");
    lw.wk = ref().matrix<double>(q + "wk");
    lw.wv = ref().matrix<double>(q + "wv");
    lw.wo = ref().matrix<double>(q + "wo");
    lw.w_gate = ref().matrix<double>(q + "w_gate");
    lw.w_up = ref().matrix<double>(q + "w_up");
    lw.w_down = ref().matrix<double>(q + "w_down");
    w.layers.push_back(lw);
  }
  w.final_norm = ref().vector<double>(p + "final_norm");
  w.lm_head = ref().matrix<double>(p + "lm_head");
  return w;
}

template <class T>
void check_decoder() {
  const auto weights = decoder_weights().template cast<T>();
  const std::vector<int> prompt = ints("decoder/prompt"), expected = ints("decoder/generated");
  const Matrix<double> ref_logits = ref().matrix<double>("decoder/logits");
  kexue_models::LlamaDecoder<T> model(weights, 32);

  // The RoPE table's llama3 frequencies are HF's (three bands: kept, smoothed, divided by the factor).
  const kexue::RopeTable<double> table(1, weights.config.head_dim, weights.config.rope());
  const Vector<double> ref_inv = ref().vector<double>("decoder/inv_freq");
  for (Index i = 0; i < ref_inv.size(); ++i) CHECK(table.inv_freq()[std::size_t(i)] == Approx(ref_inv[i]).epsilon(1e-14));

  // Greedy generation: prefill, then one token per call.
  Matrix<T> decoded;
  const std::vector<int> generated = model.generate(prompt, Index(expected.size()), &decoded);
  CHECK(generated == expected);  // the reference keeps every greedy margin above 1e-3
  REQUIRE(decoded.rows() == ref_logits.rows());
  CHECK(relative_error(decoded, ref_logits) < tolerance<T>());

  // The same positions in one prefill call.
  std::vector<int> sequence = prompt;
  sequence.insert(sequence.end(), expected.begin(), expected.end() - 1);
  auto cache = model.new_cache();
  Matrix<T> prefill;
  model.forward(sequence, cache, prefill);
  CHECK(cache.length() == Index(sequence.size()));
  CHECK(relative_error(prefill, ref_logits) < tolerance<T>());
  // Prefill and token-by-token decoding agree to rounding (the GEMM and attention tiles sum in other orders).
  CHECK(relative_error(decoded, prefill) < (std::is_same<T, float>::value ? 1e-5 : 1e-13));

  // Uneven chunks (3 tokens, then 1, then the rest) give the same logits again.
  auto chunked = model.new_cache();
  Matrix<T> part, all(sequence.size(), weights.config.vocab);
  Index at = 0;
  for (Index len : {Index(3), Index(1), Index(sequence.size()) - 4}) {
    model.forward(std::vector<int>(sequence.begin() + at, sequence.begin() + at + len), chunked, part);
    all.middleRows(at, len) = part;
    at += len;
  }
  CHECK(relative_error(all, prefill) < (std::is_same<T, float>::value ? 1e-5 : 1e-13));
}

// ---- c. denoiser --------------------------------------------------------------------------------------------

kexue_models::PatchDenoiserWeights<double> denoiser_weights() {
  const std::string p = "denoiser/";
  kexue_models::PatchDenoiserConfig c;
  c.height = cfg("denoiser", 1);
  c.width = cfg("denoiser", 2);
  c.channels = cfg("denoiser", 3);
  c.patch = cfg("denoiser", 4);
  c.hidden = cfg("denoiser", 5);
  c.units = cfg("denoiser", 6);
  c.key_size = cfg("denoiser", 7);
  c.layers = cfg("denoiser", 8);
  c.timesteps = cfg("denoiser", 9);
  kexue_models::PatchDenoiserWeights<double> w;
  w.config = c;
  w.patch_in = ref().matrix<double>(p + "patch_in");
  w.patch_out = ref().matrix<double>(p + "patch_out");
  w.final_gamma = ref().vector<double>(p + "final_gamma");
  // Only the rows of the sampled timesteps are in the data; every other row is NaN, so using a wrong row
  // would show.
  w.time_embedding = Matrix<double>::Constant(c.timesteps, c.hidden, std::numeric_limits<double>::quiet_NaN());
  const std::vector<int> ts = ints(p + "timesteps");
  const Matrix<double> rows = ref().matrix<double>(p + "time_rows");
  for (std::size_t i = 0; i < ts.size(); ++i) w.time_embedding.row(ts[i]) = rows.row(Index(i));
  for (Index l = 0; l < c.layers; ++l) {
    const std::string q = p + "layer" + std::to_string(l) + "/";
    kexue_models::PatchDenoiserLayer<double> layer;
    layer.norm_gamma = ref().vector<double>(q + "norm_gamma");
    kexue::GauWeights<double>& g = layer.gau;
    g.w_in = ref().matrix<double>(q + "w_in");
    g.b_in = ref().vector<double>(q + "b_in");
    g.gamma_q = ref().vector<double>(q + "gamma_q");
    g.beta_q = ref().vector<double>(q + "beta_q");
    g.gamma_k = ref().vector<double>(q + "gamma_k");
    g.beta_k = ref().vector<double>(q + "beta_k");
    g.w_out = ref().matrix<double>(q + "w_out");
    g.b_out = ref().vector<double>(q + "b_out");
    w.layers.push_back(layer);
  }
  return w;
}

template <class T>
void check_denoiser() {
  const auto weights = denoiser_weights().template cast<T>();
  const auto& c = weights.config;
  const Index batch = cfg("denoiser", 0), steps = cfg("denoiser", 10);
  const auto seed = std::uint64_t(cfg("denoiser", 11));
  kexue_models::PatchDenoiser<T> model(weights);
  const kexue::DdpmSchedule schedule(c.timesteps, kexue::BetaSchedule::Proportional);
  const std::vector<Index> timesteps = schedule.timesteps(steps);
  const std::vector<int> ref_ts = ints("denoiser/timesteps");
  REQUIRE(timesteps.size() == ref_ts.size());
  for (std::size_t i = 0; i < ref_ts.size(); ++i) CHECK(timesteps[i] == Index(ref_ts[i]));

  // torch.manual_seed(seed); x_T = torch.randn(..., float64), then one randn call per step.
  kexue::TorchGenerator gen(seed);
  Matrix<double> x64(batch * c.height, c.width * c.channels);
  gen.normal(x64);
  const Matrix<double> ref_x = ref().matrix<double>("denoiser/x_T");
  REQUIRE(x64.size() == ref_x.size());
  CHECK(max_abs_diff(x64, ref_x) == 0.0);
  Matrix<T> x = x64.cast<T>();

  Matrix<T> eps;
  model.predict(x, timesteps[0], eps);
  CHECK(relative_error(eps, ref().matrix<double>("denoiser/eps_first")) < tolerance<T>());

  // Float draws the double noise and rounds it, so both precisions follow the reference's noise.
  model.sample(schedule, timesteps, x,
               [&](Matrix<T>& z) {
                 Matrix<double> z64(z.rows(), z.cols());
                 gen.normal(z64);
                 z = z64.cast<T>();
               },
               /*clip=*/false);
  const Matrix<double> ref_sample = ref().matrix<double>("denoiser/sample");
  CHECK(relative_error(x, ref_sample) < tolerance<T>());
  CHECK(ref_sample.cwiseAbs().maxCoeff() > 1.0);  // the loop moved the sample (an untrained eps-network)
}

}  // namespace

TEST_CASE("models: GAU-alpha encoder + GlobalPointer matches PyTorch", "[models]") {
  SECTION("double") { check_encoder<double>(); }
  SECTION("float") { check_encoder<float>(); }
}

TEST_CASE("models: LLaMA decoder matches PyTorch; prefill == token-by-token decoding", "[models]") {
  SECTION("double") { check_decoder<double>(); }
  SECTION("float") { check_decoder<float>(); }
}

TEST_CASE("models: patch-diffusion denoiser and its DDPM loop match PyTorch", "[models]") {
  SECTION("double") { check_denoiser<double>(); }
  SECTION("float") { check_denoiser<float>(); }
}

TEST_CASE("models: padding does not change the encoder's real tokens", "[models]") {
  // Appending padding tokens (masked keys) must leave the hidden states of the real tokens unchanged.
  const Index n = cfg("encoder", 8), length = cfg("encoder", 9);
  std::vector<int> tokens = ints("encoder/tokens"), segments = ints("encoder/segments");
  kexue_models::RoformerGp<double> model(encoder_weights(), 64);
  Matrix<double> hidden, longer;
  model.encode(tokens, segments, length, hidden);
  tokens.resize(std::size_t(n + 13), 0);
  segments.resize(std::size_t(n + 13), 0);
  model.encode(tokens, segments, length, longer);
  CHECK(relative_error(longer.topRows(length), hidden.topRows(length)) < 1e-13);
}

TEST_CASE("models: misuse is reported, not undefined", "[models]") {
  // A full KV cache, a token outside the vocabulary, an image batch of the wrong height, a timestep outside
  // the time embedding.
  kexue_models::LlamaDecoder<double> decoder(decoder_weights(), 4);
  auto cache = decoder.new_cache();
  Matrix<double> logits;
  decoder.forward({1, 2, 3}, cache, logits);
  CHECK_THROWS_AS(decoder.forward({4, 5}, cache, logits), std::length_error);
  CHECK(cache.length() == 3);
  CHECK_THROWS_AS(decoder.forward({1000}, cache, logits), std::out_of_range);
  cache.rewind(1);
  decoder.forward({2, 3}, cache, logits);  // the rewound positions are written again
  CHECK(cache.length() == 3);
  CHECK_THROWS_AS(cache.rewind(4), std::out_of_range);

  kexue_models::PatchDenoiser<double> denoiser(denoiser_weights());
  const auto& c = denoiser.weights().config;
  Matrix<double> eps, wrong(c.height + 1, c.width * c.channels), right(c.height, c.width * c.channels);
  right.setZero();
  CHECK_THROWS_AS(denoiser.predict(wrong, 0, eps), std::invalid_argument);
  CHECK_THROWS_AS(denoiser.predict(right, c.timesteps, eps), std::out_of_range);
}
