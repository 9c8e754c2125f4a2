# SPDX-License-Identifier: MIT
"""diffusers-exact DDPM (kexue ScheduleArithmetic::DiffusersFloat32): whole trajectories of a float32
transcription of diffusers' DDPMScheduler, compared bit for bit by tests/test_ddpm.cpp.

diffusers is not installable here. The class below transcribes, operation by operation and in the same order,
src/diffusers/schedulers/scheduling_ddpm.py of huggingface/diffusers at commit
58eb52c0803ea9af3abec60841c2a093bdf1f951 (DDPMScheduler.__init__, _get_variance, _threshold_sample, step,
add_noise, get_velocity, and betas_for_alpha_bar), restricted to what kexue implements: the beta schedules
linear / scaled_linear / squaredcos_cap_v2 (plus trained_betas for kexue's Proportional), variance_type
fixed_small / fixed_large, prediction_type epsilon / sample / v_prediction, clip_sample, thresholding. The noise
comes from one torch.Generator per trajectory, as diffusers' randn_tensor draws it on the CPU.

torch.linspace's float32 result depends on the CPU kernel torch dispatches to (its AVX2, AVX-512 and DEFAULT
builds round differently); kexue follows the AVX2 kernel, so this module refuses to run under another capability
(set ATEN_CPU_CAPABILITY=avx2). The other two capabilities' linspace is recorded through subprocesses, for
kexue's detail::torch_linspace_f32 variants.
"""
import math
import os
import subprocess
import sys

import numpy as np
import torch

DIFFUSERS_COMMIT = "58eb52c0803ea9af3abec60841c2a093bdf1f951"
KINDS = ["linear", "scaled_linear", "squaredcos_cap_v2", "proportional"]  # kexue BetaSchedule order
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
VARIANCES = ["fixed_small", "fixed_large"]


def betas_for_alpha_bar(num_diffusion_timesteps, max_beta=0.999):
    def alpha_bar_fn(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar_fn(t2) / alpha_bar_fn(t1), max_beta))
    return torch.tensor(betas, dtype=torch.float32)


class DDPMScheduler:
    """diffusers' DDPMScheduler (58eb52c), the parts kexue implements, line for line."""

    def __init__(self, num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                 trained_betas=None, variance_type="fixed_small", clip_sample=True, prediction_type="epsilon",
                 thresholding=False, dynamic_thresholding_ratio=0.995, clip_sample_range=1.0, sample_max_value=1.0):
        if trained_betas is not None:
            self.betas = torch.tensor(trained_betas, dtype=torch.float32)
        elif beta_schedule == "linear":
            self.betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":
            self.betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            self.betas = betas_for_alpha_bar(num_train_timesteps)
        else:
            raise NotImplementedError(beta_schedule)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.one = torch.tensor(1.0)
        self.variance_type = variance_type
        self.clip_sample = clip_sample
        self.prediction_type = prediction_type
        self.thresholding = thresholding
        self.dynamic_thresholding_ratio = dynamic_thresholding_ratio
        self.clip_sample_range = clip_sample_range
        self.sample_max_value = sample_max_value
        self.timesteps_list = None  # custom timesteps: previous_timestep is the next entry (or -1)

    def previous_timestep(self, timestep):
        if self.timesteps_list is not None:
            index = self.timesteps_list.index(timestep)
            return -1 if index == len(self.timesteps_list) - 1 else self.timesteps_list[index + 1]
        return timestep - 1

    def _get_variance(self, t):
        prev_t = self.previous_timestep(t)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
        variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t
        variance = torch.clamp(variance, min=1e-20)
        if self.variance_type == "fixed_small":
            variance = variance
        elif self.variance_type == "fixed_large":
            variance = current_beta_t
        else:
            raise NotImplementedError(self.variance_type)
        return variance

    def _threshold_sample(self, sample):
        dtype = sample.dtype
        batch_size, channels, *remaining_dims = sample.shape
        sample = sample.reshape(batch_size, channels * np.prod(remaining_dims))
        abs_sample = sample.abs()
        s = torch.quantile(abs_sample, self.dynamic_thresholding_ratio, dim=1)
        s = torch.clamp(s, min=1, max=self.sample_max_value)
        s = s.unsqueeze(1)
        sample = torch.clamp(sample, -s, s) / s
        sample = sample.reshape(batch_size, channels, *remaining_dims)
        sample = sample.to(dtype)
        return sample

    def step(self, model_output, timestep, sample, generator=None):
        t = timestep
        prev_t = self.previous_timestep(t)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t
        if self.prediction_type == "epsilon":
            pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
        elif self.prediction_type == "sample":
            pred_original_sample = model_output
        elif self.prediction_type == "v_prediction":
            pred_original_sample = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
        if self.thresholding:
            pred_original_sample = self._threshold_sample(pred_original_sample)
        elif self.clip_sample:
            pred_original_sample = pred_original_sample.clamp(-self.clip_sample_range, self.clip_sample_range)
        pred_original_sample_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
        current_sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
        pred_prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample
        variance = 0
        if t > 0:
            variance_noise = torch.randn(model_output.shape, generator=generator, dtype=model_output.dtype)
            variance = (self._get_variance(t) ** 0.5) * variance_noise
        pred_prev_sample = pred_prev_sample + variance
        return pred_prev_sample

    def add_noise(self, original_samples, noise, timesteps):
        alphas_cumprod = self.alphas_cumprod.to(dtype=original_samples.dtype)
        sqrt_alpha_prod = alphas_cumprod[timesteps] ** 0.5
        sqrt_alpha_prod = sqrt_alpha_prod.flatten()
        while len(sqrt_alpha_prod.shape) < len(original_samples.shape):
            sqrt_alpha_prod = sqrt_alpha_prod.unsqueeze(-1)
        sqrt_one_minus_alpha_prod = (1 - alphas_cumprod[timesteps]) ** 0.5
        sqrt_one_minus_alpha_prod = sqrt_one_minus_alpha_prod.flatten()
        while len(sqrt_one_minus_alpha_prod.shape) < len(original_samples.shape):
            sqrt_one_minus_alpha_prod = sqrt_one_minus_alpha_prod.unsqueeze(-1)
        noisy_samples = sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise
        return noisy_samples

    def get_velocity(self, sample, noise, timesteps):
        alphas_cumprod = self.alphas_cumprod.to(dtype=sample.dtype)
        sqrt_alpha_prod = alphas_cumprod[timesteps] ** 0.5
        sqrt_alpha_prod = sqrt_alpha_prod.flatten()
        while len(sqrt_alpha_prod.shape) < len(sample.shape):
            sqrt_alpha_prod = sqrt_alpha_prod.unsqueeze(-1)
        sqrt_one_minus_alpha_prod = (1 - alphas_cumprod[timesteps]) ** 0.5
        sqrt_one_minus_alpha_prod = sqrt_one_minus_alpha_prod.flatten()
        while len(sqrt_one_minus_alpha_prod.shape) < len(sample.shape):
            sqrt_one_minus_alpha_prod = sqrt_one_minus_alpha_prod.unsqueeze(-1)
        velocity = sqrt_alpha_prod * noise - sqrt_one_minus_alpha_prod * sample
        return velocity


def dummy_model(sample, t):
    """diffusers' SchedulerCommonTest.dummy_model (tests/schedulers/test_schedulers.py): sample * t / (t + 1)."""
    return sample * t / (t + 1)


def make_scheduler(kind, T, beta_start, beta_end, **kw):
    if kind == "proportional":  # kexue's BetaSchedule::Proportional as trained_betas
        return DDPMScheduler(T, trained_betas=[beta_end * (i + 1) / T for i in range(T)], **kw)
    return DDPMScheduler(T, beta_start, beta_end, kind, **kw)


def require_avx2():
    config = torch.__config__.show()
    if "CPU capability usage: AVX2" not in config:
        raise RuntimeError("cases_ddpm_diffusers.py needs torch's AVX2 CPU kernels (kexue follows their "
                           "torch.linspace rounding): run with ATEN_CPU_CAPABILITY=avx2")


LINSPACE_CASES = [(1e-4, 0.02, 1000), (0.00085 ** 0.5, 0.012 ** 0.5, 1000), (1e-4, 0.02, 10), (1e-4, 0.02, 50),
                  (1e-4, 0.02, 17), (1e-3, 0.2, 37), (-6.0, 6.0, 333), (0.3, 0.01, 100), (1e-4, 0.02, 2),
                  (0.5, 0.5, 1)]


def linspace_under(capability):
    code = ("import torch,sys\n"
            f"cases={LINSPACE_CASES!r}\n"
            "for s,e,n in cases: print(' '.join(repr(float(v)) for v in torch.linspace(s,e,n,dtype=torch.float32)))\n")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    return [[float(v) for v in line.split()] for line in out.strip().split("\n")]


def generate(w):
    # diffusers runs with torch's default dtype float32 (self.one = torch.tensor(1.0), the dummy samples);
    # generate.py sets float64 for the other families.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        generate_float32_default(w)
    finally:
        torch.set_default_dtype(previous)


def generate_float32_default(w):
    require_avx2()
    w.lines.append(f"# float32 transcription of diffusers {DIFFUSERS_COMMIT} scheduling_ddpm.py; "
                   "torch CPU capability AVX2")

    # torch.linspace under each CPU capability (lanes, fused) = avx2 (8, 1), avx512 (16, 1), default (8, 0).
    for i, (s, e, n) in enumerate(LINSPACE_CASES):
        w.tensor(f"linspace/case{i}/config", torch.tensor([s, e, n], dtype=torch.float64))
        w.tensor(f"linspace/case{i}/avx2", torch.linspace(s, e, n, dtype=torch.float32))
    for cap in ["avx512", "default"]:
        for i, values in enumerate(linspace_under(cap)):
            w.tensor(f"linspace/case{i}/{cap}", torch.tensor(values, dtype=torch.float64))

    # Schedules: (kind, T, beta_start, beta_end).
    schedules = [("linear", 1000, 1e-4, 0.02), ("scaled_linear", 1000, 0.00085, 0.012),
                 ("squaredcos_cap_v2", 1000, 1e-4, 0.02), ("proportional", 1000, 1e-4, 0.02),
                 ("linear", 50, 1e-4, 0.02), ("scaled_linear", 10, 0.00085, 0.012), ("squaredcos_cap_v2", 37, 1e-4, 0.02),
                 ("linear", 1000, 1e-3, 0.2), ("linear", 1, 1e-4, 0.02), ("squaredcos_cap_v2", 4000, 1e-4, 0.02)]
    for i, (kind, T, bs, be) in enumerate(schedules):
        s = make_scheduler(kind, T, bs, be)
        w.tensor(f"schedule/case{i}/config", torch.tensor([KINDS.index(kind), T, bs, be], dtype=torch.float64))
        w.tensor(f"schedule/case{i}/betas", s.betas)
        w.tensor(f"schedule/case{i}/alphas_cumprod", s.alphas_cumprod)
        ts = [t for t in [0, 1, 2, T // 2, T - 1] if t < T]
        w.tensor(f"schedule/case{i}/variance_t", torch.tensor(ts, dtype=torch.float64))
        for vt in VARIANCES:
            s.variance_type = vt
            w.tensor(f"schedule/case{i}/variance_{vt}", torch.stack([s._get_variance(t) for t in ts]))

    # Trajectories: add_noise at the first timestep, then the steps, each sample recorded.
    cases = []
    lists = {"leading10": [900, 800, 700, 600, 500, 400, 300, 200, 100, 0], "tail": [5, 4, 3, 2, 1, 0],
             "custom": [999, 950, 700, 333, 87, 50, 3, 1, 0]}
    for kind, T, bs, be, ts_name in [("linear", 1000, 1e-4, 0.02, "leading10"),
                                     ("scaled_linear", 1000, 0.00085, 0.012, "custom"),
                                     ("squaredcos_cap_v2", 1000, 1e-4, 0.02, "tail"),
                                     ("proportional", 1000, 1e-4, 0.02, "leading10")]:
        for prediction in PREDICTIONS:
            for variance in VARIANCES:
                for clip in [True, False]:
                    cases.append(dict(kind=kind, T=T, bs=bs, be=be, ts=ts_name, prediction=prediction,
                                      variance=variance, clip=clip, clip_range=1.0, threshold=None, dtype="float32"))
    for prediction in PREDICTIONS:
        for ratio, smax in [(0.995, 1.5), (0.9, 3.0), (0.5, 1.0)]:
            cases.append(dict(kind="linear", T=1000, bs=1e-4, be=0.02, ts="leading10", prediction=prediction,
                              variance="fixed_small", clip=True, clip_range=1.0, threshold=(ratio, smax),
                              dtype="float32"))
    cases.append(dict(kind="linear", T=1000, bs=1e-4, be=0.02, ts="custom", prediction="epsilon",
                      variance="fixed_small", clip=True, clip_range=0.7, threshold=None, dtype="float32"))
    for prediction in PREDICTIONS:  # float64 data: the float32 scalars promote, every op in double
        cases.append(dict(kind="squaredcos_cap_v2", T=1000, bs=1e-4, be=0.02, ts="custom", prediction=prediction,
                          variance="fixed_large", clip=True, clip_range=1.0, threshold=(0.9, 2.0), dtype="float64"))
    shape = (2, 1, 37)  # [batch, channels, n]: thresholding is per batch row, as in diffusers
    for i, c in enumerate(cases):
        dtype = torch.float32 if c["dtype"] == "float32" else torch.float64
        kw = dict(variance_type=c["variance"], clip_sample=c["clip"], prediction_type=c["prediction"],
                  clip_sample_range=c["clip_range"])
        if c["threshold"] is not None:
            kw.update(thresholding=True, dynamic_thresholding_ratio=c["threshold"][0], sample_max_value=c["threshold"][1])
        s = make_scheduler(c["kind"], c["T"], c["bs"], c["be"], **kw)
        ts = lists[c["ts"]]
        s.timesteps_list = ts
        seed = 1000 + i
        g = torch.Generator().manual_seed(seed)
        x0 = torch.randn(shape, generator=g, dtype=dtype)
        noise = torch.randn(shape, generator=g, dtype=dtype)
        sample = s.add_noise(x0, noise, torch.tensor([ts[0]]))
        velocity = s.get_velocity(x0, noise, torch.tensor([ts[0]]))
        traj = [sample]
        for t in ts:
            sample = s.step(dummy_model(sample, t), t, sample, generator=g)
            traj.append(sample)
        th = c["threshold"] or (0.0, 0.0)
        w.tensor(f"traj/case{i}/config", torch.tensor(
            [KINDS.index(c["kind"]), c["T"], c["bs"], c["be"], PREDICTIONS.index(c["prediction"]),
             VARIANCES.index(c["variance"]), float(c["clip"]), c["clip_range"], float(c["threshold"] is not None),
             th[0], th[1], 32 if dtype == torch.float32 else 64, seed], dtype=torch.float64))
        w.tensor(f"traj/case{i}/timesteps", torch.tensor(ts, dtype=torch.float64))
        w.tensor(f"traj/case{i}/velocity", velocity.reshape(2, 37))
        w.tensor(f"traj/case{i}/samples", torch.stack(traj).reshape(len(ts) + 1, 2, 37))

    # diffusers' own scheduler tests (tests/schedulers/test_scheduler_ddpm.py): the final samples of
    # test_full_loop_no_noise, test_full_loop_with_v_prediction and test_full_loop_with_noise.
    num_elems = 4 * 3 * 8 * 8
    sample_deter = (torch.arange(num_elems).reshape(3, 8, 8, 4) / num_elems).permute(3, 0, 1, 2)
    noise_deter = (torch.arange(num_elems).flip(-1).reshape(3, 8, 8, 4) / num_elems).permute(3, 0, 1, 2)
    for name, prediction in [("no_noise", "epsilon"), ("v_prediction", "v_prediction")]:
        s = DDPMScheduler(prediction_type=prediction)
        sample = sample_deter
        generator = torch.manual_seed(0)
        for t in reversed(range(1000)):
            sample = s.step(dummy_model(sample, t), t, sample, generator=generator)
        w.tensor(f"published/{name}/final", sample.contiguous())
        w.scalar(f"published/{name}/sum", torch.sum(torch.abs(sample)))
    s = DDPMScheduler()
    generator = torch.manual_seed(0)
    sample = s.add_noise(sample_deter, noise_deter, torch.tensor([1]))
    for t in [1, 0]:
        sample = s.step(dummy_model(sample, t), t, sample, generator=generator)
    w.tensor("published/with_noise/final", sample.contiguous())
    w.scalar("published/with_noise/sum", torch.sum(torch.abs(sample)))
