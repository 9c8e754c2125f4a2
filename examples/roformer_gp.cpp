// SPDX-License-Identifier: MIT
// A GAU-alpha encoder (RoFormerV2 family: GAU layers, Post-Norm RMSNorm without parameters, softmax_plus) with a
// GlobalPointer head on top, recognising nested spans (posts 9052, 8373). The model is examples/models/
// roformer_gp.hpp; the weights here are freshly initialised (bert4keras' GAU-alpha initialiser from a Philox
// seed), not trained, so the spans are arbitrary: the program shows the data flow, that float and double give
// the same spans, and how padding is handled (a padded copy of the sentence gives the same spans).
#include <kexue/kexue.hpp>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "models/roformer_gp.hpp"

int main() {
  kexue_models::RoformerGpConfig config;
  config.vocab = 1000;
  config.hidden = 128;
  config.units = 256;
  config.key_size = 64;
  config.layers = 4;
  config.entity_types = 3;
  config.head_size = 32;
  kexue::PhiloxGenerator gen(/*seed=*/2022);
  const auto weights = kexue_models::RoformerGpWeights<double>::random(config, gen);

  // [CLS] w1 ... w30 [SEP]: ids 1 and 2 play [CLS] and [SEP].
  std::vector<int> tokens{1};
  for (int i = 0; i < 30; ++i) tokens.push_back(3 + (i * 37 + 11) % (int(config.vocab) - 3));
  tokens.push_back(2);
  const kexue::Index length = kexue::Index(tokens.size());

  kexue_models::RoformerGp<double> model64(weights, 64);
  kexue_models::RoformerGp<float> model32(weights.cast<float>(), 64);
  // bert4keras' GlobalPointer threshold is 0; the untrained head scores about half the cells above 0, so this
  // demo keeps the confident ones.
  const double threshold = 1.0;
  const auto spans64 = model64.recognize(tokens, {}, length, threshold);
  const auto spans32 = model32.recognize(tokens, {}, length, threshold);

  std::vector<int> padded = tokens;
  padded.resize(48, 0);  // 16 padding tokens: masked keys in every GAU, masked rows and columns in GlobalPointer
  const auto spans_padded = model64.recognize(padded, {}, length, threshold);

  std::printf("GAU-alpha encoder (%td layers, hidden %td, units %td, key size %td) + GlobalPointer (%td types, "
              "head size %td), SIMD %s\n", config.layers, config.hidden, config.units, config.key_size,
              config.entity_types, config.head_size, kexue::simd_arch());
  std::printf("%td tokens, %zu spans with score > %.1f (double), %zu (float), %zu (double, padded to 48)\n",
              length, spans64.size(), threshold, spans32.size(), spans_padded.size());
  bool same = spans64.size() == spans32.size() && spans64.size() == spans_padded.size();
  for (std::size_t i = 0; same && i < spans64.size(); ++i)
    same = spans64[i].head == spans32[i].head && spans64[i].start == spans32[i].start &&
           spans64[i].end == spans32[i].end && spans64[i].head == spans_padded[i].head &&
           spans64[i].start == spans_padded[i].start && spans64[i].end == spans_padded[i].end;
  // They agree to rounding (tests/test_models.cpp checks both against PyTorch), so only a score within rounding
  // of the threshold could differ.
  std::printf("float, double and padded runs find the same spans: %s\n", same ? "yes" : "no");
  auto top = spans64;
  std::sort(top.begin(), top.end(), [](const kexue::Span& a, const kexue::Span& b) { return a.score > b.score; });
  for (std::size_t i = 0; i < std::min<std::size_t>(5, top.size()); ++i)
    std::printf("  type %td: tokens [%td, %td] score %.3f\n", top[i].head, top[i].start, top[i].end, top[i].score);
  return 0;
}
