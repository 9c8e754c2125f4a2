// SPDX-License-Identifier: MIT
// A LLaMA-style decoder (RMSNorm, RoPE in the Half layout with llama3 frequency scaling, grouped-query attention
// over a KV cache, SwiGLU MLP; post 9529) generating tokens greedily. The model is examples/models/
// llama_decoder.hpp; the weights are freshly initialised from a Philox seed (not trained), so the tokens are
// arbitrary. The point shown: prefilling a sequence in one call and decoding it token by token give the same
// logits, because kexue's causal mask is bottom-right aligned over the cache.
#include <kexue/kexue.hpp>

#include <cstdio>
#include <vector>

#include "models/llama_decoder.hpp"

int main() {
  kexue_models::LlamaConfig config;
  config.vocab = 256;
  config.hidden = 128;
  config.heads = 8;
  config.kv_heads = 2;
  config.head_dim = 16;
  config.ffn = 344;
  config.layers = 4;
  kexue::PhiloxGenerator gen(/*seed=*/9529);
  kexue_models::LlamaDecoder<float> model(kexue_models::LlamaWeights<float>::random(config, gen), 256);

  const std::vector<int> prompt{17, 42, 99, 3, 250, 8, 64, 128};
  const kexue::Index steps = 24;
  kexue::Matrix<float> decoded;  // logits: the prompt's rows from the prefill, then one row per decoding step
  const std::vector<int> generated = model.generate(prompt, steps, &decoded);

  // The whole sequence (prompt + generated tokens but the last) in one prefill call.
  std::vector<int> sequence = prompt;
  sequence.insert(sequence.end(), generated.begin(), generated.end() - 1);
  auto cache = model.new_cache();
  kexue::Matrix<float> prefill;
  model.forward(sequence, cache, prefill);
  const double diff = (prefill - decoded).cwiseAbs().maxCoeff();
  const double scale = prefill.cwiseAbs().maxCoeff();

  std::printf("LLaMA-style decoder: %td layers, hidden %td, %td query heads sharing %td KV heads of %td, "
              "SwiGLU %td, vocab %td, llama3 RoPE (base %.0f, factor %.0f), SIMD %s\n",
              config.layers, config.hidden, config.heads, config.kv_heads, config.head_dim, config.ffn,
              config.vocab, config.rope_base, config.rope_factor, kexue::simd_arch());
  std::printf("prompt:   ");
  for (int t : prompt) std::printf(" %d", t);
  std::printf("\ngenerated:");
  for (int t : generated) std::printf(" %d", t);
  std::printf("\nprefill vs token-by-token logits over %td positions: max |diff| %.2e (max |logit| %.2e)\n",
              prefill.rows(), diff, scale);
  return diff <= 1e-4 * scale ? 0 : 1;
}
