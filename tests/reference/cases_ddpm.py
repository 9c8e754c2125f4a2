# SPDX-License-Identifier: MIT
"""DDPM reference values: schedules, timestep spacings, add_noise/velocity and the reverse step.

diffusers is not installed; the step rule below is a direct float64 transcription of diffusers'
DDPMScheduler.step (58eb52c, SPEC.md 6.4). Deliberate differences, mirrored by kexue and documented in
ddpm.hpp: the schedule is built in float64 (diffusers builds the linear betas with float32 torch.linspace), and
no noise is added when prev_t < 0 (diffusers adds it whenever t > 0, which only differs for custom timestep
lists that stop above 0).
"""
import math

import numpy as np
import torch

from generate import randn

T = 1000


def betas_for(kind, T=T, beta_start=1e-4, beta_end=0.02):
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float64) ** 2
    if kind == "cosine":  # squaredcos_cap_v2 (betas_for_alpha_bar with max_beta 0.999)
        f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)
    if kind == "proportional":  # kexue.fm/archives/9119: beta_t = 0.02 t / T, t = 1..T
        return torch.tensor([beta_end * (i + 1) / T for i in range(T)], dtype=torch.float64)
    raise ValueError(kind)


def diffusers_timesteps(T, k, spacing, steps_offset=0):
    if spacing == "leading":
        step_ratio = T // k
        ts = (np.arange(0, k) * step_ratio).round()[::-1].copy().astype(np.int64)
        return ts + steps_offset
    if spacing == "trailing":
        step_ratio = T / k
        return np.round(np.arange(T, 0, -step_ratio)).astype(np.int64) - 1
    if spacing == "linspace":
        return np.linspace(0, T - 1, k).round()[::-1].copy().astype(np.int64)
    raise ValueError(spacing)


def threshold_sample(x0, ratio, sample_max_value):
    """diffusers DDPMScheduler._threshold_sample: per sample (row), s = quantile(|x0|, ratio) clamped to
    [1, sample_max_value], then clamp(x0, -s, s) / s."""
    s = torch.quantile(x0.abs(), ratio, dim=1)
    s = torch.clamp(s, min=1, max=sample_max_value).unsqueeze(1)
    return torch.clamp(x0, -s, s) / s


def step(acp, model_output, t, x, noise, prediction, variance, clip, clip_range, prev_t, thresholding=None):
    ab_t = acp[t]
    ab_prev = acp[prev_t] if prev_t >= 0 else torch.tensor(1.0, dtype=torch.float64)
    beta_prod_t = 1 - ab_t
    beta_prod_prev = 1 - ab_prev
    cur_alpha = ab_t / ab_prev
    cur_beta = 1 - cur_alpha
    if prediction == "epsilon":
        x0 = (x - beta_prod_t ** 0.5 * model_output) / ab_t ** 0.5
    elif prediction == "sample":
        x0 = model_output
    else:
        x0 = ab_t ** 0.5 * x - beta_prod_t ** 0.5 * model_output
    if thresholding is not None:  # (ratio, sample_max_value, rows per sample)
        ratio, smax, rows = thresholding
        x0 = threshold_sample(x0.reshape(rows, -1), ratio, smax).reshape(x0.shape)
    elif clip:
        x0 = x0.clamp(-clip_range, clip_range)
    coef0 = ab_prev ** 0.5 * cur_beta / beta_prod_t
    coef1 = cur_alpha ** 0.5 * beta_prod_prev / beta_prod_t
    mean = coef0 * x0 + coef1 * x
    var = torch.clamp(beta_prod_prev / beta_prod_t * cur_beta, min=1e-20)
    std = var ** 0.5 if variance == "fixed_small" else cur_beta ** 0.5
    if prev_t >= 0:
        return mean + std * noise
    return mean


def generate(w):
    schedules = {}
    for kind in ["linear", "scaled_linear", "cosine", "proportional"]:
        b = betas_for(kind)
        acp = torch.cumprod(1 - b, 0)
        schedules[kind] = acp
        w.tensor(f"schedule/{kind}/betas", b)
        w.tensor(f"schedule/{kind}/alphas_cumprod", acp)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
        w.tensor(f"schedule/{kind}/variance", torch.clamp((1 - prev) / (1 - acp) * b, min=1e-20))
    # SPEC 6.1-6.3 derived values, recomputed here.
    acp = schedules["linear"]
    w.scalar("derived/linear_alpha_bar_T", acp[-1])
    w.scalar("derived/linear_posterior_var_2", (1 - acp[0]) / (1 - acp[1]) * betas_for("linear")[1])
    w.scalar("derived/linear_posterior_var_T", (1 - acp[-2]) / (1 - acp[-1]) * betas_for("linear")[-1])
    w.scalar("derived/cosine_beta_1", betas_for("cosine")[0])
    w.scalar("derived/cosine_alpha_bar_T", schedules["cosine"][-1])
    w.scalar("derived/proportional_sqrt_alpha_bar_T", schedules["proportional"][-1] ** 0.5)
    # A small T with a non-default range.
    b = betas_for("scaled_linear", T=10, beta_start=0.00085, beta_end=0.012)
    w.tensor("schedule/scaled_linear_T10/betas", b)

    for Tn, k in [(1000, 1), (1000, 3), (1000, 7), (1000, 50), (1000, 999), (1000, 1000), (10, 3), (10, 4)]:
        for spacing in ["leading", "trailing", "linspace"]:
            ts = diffusers_timesteps(Tn, k, spacing)
            if len(ts) != k:  # numpy's float arange overshoots: diffusers itself returns a wrong count here
                continue
            w.tensor(f"timesteps/T{Tn}_k{k}_{spacing}", torch.tensor(ts.astype(np.float64)))
    w.tensor("timesteps/T1000_k10_leading_offset1", torch.tensor(diffusers_timesteps(1000, 10, "leading", 1).astype(np.float64)))

    shape = (3, 37)
    x0 = randn(*shape, seed=11)
    eps = randn(*shape, seed=12)
    w.tensor("noise/x0", x0)
    w.tensor("noise/eps", eps)
    for kind, t in [("linear", 0), ("linear", 500), ("cosine", 999), ("proportional", 250)]:
        a = schedules[kind]
        w.tensor(f"noise/{kind}_t{t}/add_noise", a[t] ** 0.5 * x0 + (1 - a[t]) ** 0.5 * eps)
        w.tensor(f"noise/{kind}_t{t}/velocity", a[t] ** 0.5 * eps - (1 - a[t]) ** 0.5 * x0)

    m = randn(*shape, seed=21)
    x = randn(*shape, seed=22)
    z = randn(*shape, seed=23)
    w.tensor("step/model_output", m)
    w.tensor("step/sample", x)
    w.tensor("step/noise", z)
    cases = []
    for prediction in ["epsilon", "sample", "v_prediction"]:
        for variance in ["fixed_small", "fixed_large"]:
            for clip in [False, True]:
                for kind, t, prev in [("linear", 500, 499), ("linear", 0, -1), ("linear", 999, 979),
                                      ("cosine", 600, 300), ("scaled_linear", 20, -1), ("proportional", 1, 0)]:
                    cases.append((prediction, variance, clip, 1.0 if prediction != "sample" else 0.5, kind, t, prev))
    for i, (prediction, variance, clip, r, kind, t, prev) in enumerate(cases):
        name = f"step/case{i}"
        w.tensor(name + "/config", torch.tensor([["epsilon", "sample", "v_prediction"].index(prediction),
                                                ["fixed_small", "fixed_large"].index(variance), float(clip), r,
                                                ["linear", "scaled_linear", "cosine", "proportional"].index(kind),
                                                t, prev], dtype=torch.float64))
        w.tensor(name + "/out", step(schedules[kind], m, t, x, z, prediction, variance, clip, r, prev))
    generate_su(w)
    generate_thresholding(w, schedules["linear"], m, x, z)


def su_keras_step(t, m, x, z, small=False, T=T):
    """One step of Su's Keras-DDPM sampler (ddpm.py, SPEC 6.3), written as his code is: 0-based arrays
    alpha = sqrt(1 - 0.02 (t + 1) / T), beta = sqrt(1 - alpha^2), bar_alpha = cumprod(alpha),
    bar_beta = sqrt(1 - bar_alpha^2), sigma = beta (or his commented fixed-small alternative
    sigma *= pad(bar_beta[:-1], [1, 0]) / bar_beta), and noise added at every step, t = 0 included."""
    alpha = np.sqrt(1 - 0.02 * np.arange(1, T + 1) / T)
    beta = np.sqrt(1 - alpha ** 2)
    bar_alpha = np.cumprod(alpha)
    bar_beta = np.sqrt(1 - bar_alpha ** 2)
    sigma = beta.copy()
    if small:
        sigma *= np.pad(bar_beta[:-1], [1, 0]) / bar_beta
    x = x.numpy().copy()
    x -= beta[t] ** 2 / bar_beta[t] * m.numpy()
    x /= alpha[t]
    x += sigma[t] * z.numpy()
    return torch.tensor(x)


def generate_su(w):
    m = randn(3, 37, seed=31)
    x = randn(3, 37, seed=32)
    z = randn(3, 37, seed=33)
    w.tensor("su/model_output", m)
    w.tensor("su/sample", x)
    w.tensor("su/noise", z)
    for t in [999, 500, 1, 0]:
        w.tensor(f"su/t{t}/large", su_keras_step(t, m, x, z))
        w.tensor(f"su/t{t}/small", su_keras_step(t, m, x, z, small=True))


def generate_thresholding(w, acp, m, x, z):
    """Dynamic thresholding, epsilon prediction, fixed_small: per row of the [3, 37] tensors (the batched step)
    and over the whole tensor as one sample (the flat step)."""
    i = 0
    for t in [500, 999, 30]:
        for ratio, smax in [(0.995, 1.0), (0.995, 2.5), (0.9, 10.0), (0.5, 3.0), (1.0, 100.0), (0.0, 2.0)]:
            w.tensor(f"threshold/case{i}/config", torch.tensor([t, ratio, smax], dtype=torch.float64))
            w.tensor(f"threshold/case{i}/rows", step(acp, m, t, x, z, "epsilon", "fixed_small", True, 1.0, t - 1,
                                                     (ratio, smax, m.shape[0])))
            w.tensor(f"threshold/case{i}/flat", step(acp, m, t, x, z, "epsilon", "fixed_small", True, 1.0, t - 1,
                                                     (ratio, smax, 1)))
            i += 1
