// SPDX-License-Identifier: MIT
#pragma once
/// @file
/// Umbrella header: every kernel family of kexue. Each family also has its own header.

#include "kexue/version.hpp"
#include "kexue/core.hpp"
#include "kexue/half.hpp"               // Eigen::half / Eigen::bfloat16 storage: convert(src, dst)
#include "kexue/rope.hpp"               // SPEC 1, 4: RoPE, RoPE + bias, 2-D RoPE, frequency scaling
#include "kexue/attention.hpp"          // SPEC 3.3-3.4, 5.1: softmax / softmax_plus / squared-ReLU attention
#include "kexue/gau.hpp"                // SPEC 3.1-3.2: the gated attention unit
#include "kexue/dense.hpp"              // dense layers with packed weights (bias, swish, SwiGLU gate fused)
#include "kexue/linear_attention.hpp"   // SPEC 5.2: linear attention, causal and streaming
#include "kexue/flash.hpp"              // SPEC 3.5: FLASH mixed-chunk attention
#include "kexue/global_pointer.hpp"     // SPEC 2: GlobalPointer, Efficient GlobalPointer, losses, decoding
#include "kexue/ddpm.hpp"               // SPEC 6: DDPM schedules and steps
#include "kexue/random.hpp"             // torch-compatible and Philox normal generators
#include "kexue/norm.hpp"               // SPEC 7.1: layer_norm, rms_norm, fused residual (Pre-/Post-Norm) forms
#include "kexue/init.hpp"               // SPEC 7.2: LeCun / He / Xavier, truncated normal, RoFormerV2 initialisers
#include "kexue/patch.hpp"              // SPEC 8: patchify / unpatchify (Keras-DDPM order), patch coordinates
