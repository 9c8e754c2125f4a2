#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""kexue vs PyTorch, in one run, at the same thread count.

    /usr/bin/python3 bench/compare_torch.py [--build build/release] [--family core rope ...] [--case SUBSTR]

For every case in bench/torch_cases/<family>.py it runs our Google Benchmark row and the PyTorch formulation
of the same kernel, then prints a ratio table. PyTorch is timed twice, each time in a fresh process:
  * "as installed": the default allocator, which returns big temporaries to the OS and page-faults them back
    on the next call (this is what a user gets, and the ratio the issues quote);
  * "warm": GLIBC_TUNABLES keeps freed memory mapped, so the comparison is of compute only.
OPENBLAS_NUM_THREADS and OMP_NUM_THREADS are set to the case's thread count in both processes and in ours:
torch.set_num_threads alone does not reach OpenBLAS's own threads. The header prints PyTorch's 1024^3
matmul GFLOP/s: with the reference BLAS instead of OpenBLAS, every ratio here would be meaningless.
"""
import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WARM_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def thread_env(threads, warm=False):
    env = dict(os.environ)
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    if warm:
        env["GLIBC_TUNABLES"] = WARM_TUNABLES
    else:
        env.pop("GLIBC_TUNABLES", None)
    return env


def load_cases(families):
    sys.path.insert(0, os.path.join(HERE, "torch_cases"))
    cases = []
    for fam in families:
        mod = importlib.import_module(fam)
        for c in mod.CASES:
            c.family = fam
            cases.append(c)
    return cases


def all_families():
    d = os.path.join(HERE, "torch_cases")
    return sorted(f[:-3] for f in os.listdir(d) if f.endswith(".py") and not f.startswith("_"))


def time_callable(fn, min_time=0.5, repeats=5):
    """Median seconds per call over `repeats` batches of at least min_time/repeats each."""
    t0 = time.perf_counter()
    fn()  # warm-up (lazy init, first-touch of weights)
    one = max(time.perf_counter() - t0, 1e-7)
    if one > 1.0:  # a formulation that takes seconds per call (e.g. a cumsum over n x d x dv): 3 more calls
        samples = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return sorted(samples)[1]
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    per_batch = max(1, int(min_time / repeats / one))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(per_batch):
            fn()
        samples.append((time.perf_counter() - t0) / per_batch)
    samples.sort()
    return samples[len(samples) // 2]


def torch_worker(family, name, threads):
    """Runs in a child process: times one PyTorch case and prints JSON."""
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    case = next(c for c in load_cases([family]) if c.name == name)
    with torch.no_grad():
        fn = case.torch_setup()
        sec = time_callable(fn)
    print(json.dumps({"seconds": sec}))


def run_torch(case, warm):
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--torch-worker", case.family, case.name, str(case.threads)],
        env=thread_env(case.threads, warm), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def bench_exe(build, name):
    """Path of a benchmark binary of the build, or a clear exit if it has not been built."""
    exe = os.path.join(build, "bench", name)
    if not os.path.isfile(exe):
        sys.exit(f"compare_torch.py: {exe} not found; build the benchmarks first, e.g.\n"
                 f"  cmake -S . -B {build} -DCMAKE_BUILD_TYPE=Release && cmake --build {build} -j2")
    return exe


def measure_peaks(build):
    """bench_peak's single-thread FMA peak (GFLOP/s) and triad bandwidth (GB/s), measured once per run and
    handed to every benchmark binary, so peak_frac and bw_frac refer to one measurement."""
    exe = bench_exe(build, "bench_peak")
    out = subprocess.run([exe, "--benchmark_format=json", "--benchmark_min_time=0.3",
                          "--benchmark_filter=(BM_fma_peak|BM_triad)/1/"],
                         env=thread_env(1), capture_output=True, text=True, check=True)
    rows = {b["name"].split("/")[0]: b for b in json.loads(out.stdout)["benchmarks"]}
    return rows["BM_fma_peak"]["GFLOPS"], rows["BM_triad"]["GBps"]


PEAKS = {}


def run_ours(build, case):
    exe = bench_exe(build, case.binary)
    env = thread_env(case.threads)
    if PEAKS:
        env["KEXUE_PEAK_GFLOPS"] = str(PEAKS["gflops"])
        env["KEXUE_PEAK_GBS"] = str(PEAKS["gbs"])
    out = subprocess.run(
        [exe, f"--benchmark_filter={case.bench}", "--benchmark_format=json", "--benchmark_min_time=0.5",
         "--benchmark_repetitions=3", "--benchmark_report_aggregates_only=true"],
        env=env, capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    rows = [b for b in data["benchmarks"] if b.get("aggregate_name") == "median"]
    if not rows:
        rows = data["benchmarks"]
    if not rows:
        raise RuntimeError(f"{case.binary}: no benchmark matches {case.bench}")
    b = rows[0]
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b["time_unit"]]
    return b["real_time"] * scale, b


def header(threads_list):
    import torch
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{cpu_model()}")
    print(f"# torch {torch.__version__}; BLAS: {blas_name()}")
    for t in threads_list:
        out = subprocess.run([sys.executable, "-c", MATMUL_PROBE, str(t)], env=thread_env(t),
                             capture_output=True, text=True, check=True)
        print(f"# PyTorch 1024^3 fp32 matmul, {t} thread(s): {float(out.stdout):.1f} GFLOP/s")


MATMUL_PROBE = r"""
import sys, time, torch
t = int(sys.argv[1]); torch.set_num_threads(t)
a = torch.randn(1024, 1024); b = torch.randn(1024, 1024)
c = torch.empty(1024, 1024)
for _ in range(3): torch.matmul(a, b, out=c)
best = 0
for _ in range(5):
    t0 = time.perf_counter()
    for _ in range(10): torch.matmul(a, b, out=c)
    best = max(best, 10 * 2 * 1024**3 / (time.perf_counter() - t0))
print(best / 1e9)
"""


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def blas_name():
    try:
        link = os.path.realpath("/usr/lib/x86_64-linux-gnu/libblas.so.3")
        return link
    except OSError:
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build", "release"))
    ap.add_argument("--family", nargs="*", default=None)
    ap.add_argument("--case", default=None, help="only cases whose name contains this")
    ap.add_argument("--torch-worker", nargs=3, metavar=("FAMILY", "NAME", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        fam, name, threads = args.torch_worker
        torch_worker(fam, name, int(threads))
        return
    cases = load_cases(args.family or all_families())
    if args.case:
        cases = [c for c in cases if args.case in c.name]
    header(sorted({c.threads for c in cases}))
    PEAKS["gflops"], PEAKS["gbs"] = measure_peaks(args.build)
    print(f"# bench_peak: fp32 FMA peak {PEAKS['gflops']:.1f} GFLOP/s per thread, triad {PEAKS['gbs']:.1f} GB/s "
          f"(one thread); peak_frac = GFLOPS / (threads x peak), bw_frac = GBps / triad")
    cols = f"{'case':<52} {'thr':>3} {'kexue ms':>9} {'torch ms':>9} {'ratio':>6} {'warm ms':>9} {'ratio':>6}  figures"
    print(cols)
    print("-" * len(cols))
    for c in cases:
        ours, row = run_ours(args.build, c)
        t_inst = run_torch(c, warm=False)
        t_warm = run_torch(c, warm=True)
        figs = []
        for key in ("GFLOPS", "peak_frac", "GBps", "bw_frac"):
            if key in row:
                figs.append(f"{key}={row[key]:.3g}")
        print(f"{c.name:<52} {c.threads:>3} {ours * 1e3:>9.3f} {t_inst * 1e3:>9.3f} {t_inst / ours:>6.2f} "
              f"{t_warm * 1e3:>9.3f} {t_warm / ours:>6.2f}  {' '.join(figs)}", flush=True)


if __name__ == "__main__":
    main()
