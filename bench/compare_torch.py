#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""kexue vs PyTorch (and optionally ONNX Runtime), in one run, at the same thread count.

    /usr/bin/python3 bench/compare_torch.py [--build build/release] [--build2 DIR] [--family core rope ...]
        [--case SUBSTR] [--stat median|min] [--repetitions N] [--min-time S] [--ort]

For every case in bench/torch_cases/<family>.py it runs our Google Benchmark row and the PyTorch formulation
of the same kernel, then prints a ratio table. PyTorch is timed twice, each time in a fresh process:
  * "as installed": the default allocator, which returns big temporaries to the OS and page-faults them back
    on the next call (this is what a user gets, and the ratio the issues quote);
  * "warm": GLIBC_TUNABLES keeps freed memory mapped, so the comparison is of compute only.
OPENBLAS_NUM_THREADS and OMP_NUM_THREADS are set to the case's thread count in both processes and in ours:
torch.set_num_threads alone does not reach OpenBLAS's own threads. The header prints PyTorch's 1024^3
matmul GFLOP/s: with the reference BLAS instead of OpenBLAS, every ratio here would be meaningless.
Every ratio column is other / kexue (build 1): above 1, kexue is faster.

Two builds side by side (--build2 DIR): every case also runs our row from the second build and prints a
second kexue column ("kexue2 ms") and the build2 / build1 time ratio ("b2/b1", below 1: build 2 is faster);
the header prints each build's SIMD architecture (the label of bench_peak's BM_fma_peak, e.g. "fma3+avx2" or
"avx512bw") and its measured single-thread FMA peak. The intended pair, one build at a time:

    cmake -S . -B build/avx2 -DCMAKE_BUILD_TYPE=Release -DKEXUE_ARCH_FLAGS="-mavx2;-mfma"
    cmake -S . -B build/native -DCMAKE_BUILD_TYPE=Release -DKEXUE_ARCH_FLAGS=-march=native
    for b in avx2 native; do for t in bench_peak bench_attention bench_rope; do
      cmake --build build/$b --target $t -j2; done; done
    /usr/bin/python3 bench/compare_torch.py --build build/avx2 --build2 build/native \\
        --family attention rope --stat min --repetitions 5 --ort

Statistic (--stat, printed in the header): "median" (the default) or "min" over --repetitions Google Benchmark
repetitions of --min-time seconds each for our rows, over the PyTorch timing batches, and over ORT's profiled
runs. On a shared, noisy machine the minimum is the robust statistic: other work only ever adds time. The
figures column gives spread = (slowest - fastest) / fastest repetition of our build-1 row: that row's noise.

--ort adds ONNX Runtime beside the attention and RoPE cases (onnxruntime-node from npm, CPU EP, one intra-op
thread, kernel time from ORT's profiler; see bench/compare_ort.py, which also runs alone without PyTorch): an
"ort ms" column with its ratio to kexue, plus lines of their own for ORT formulations that share a kexue row
(MatMul-Softmax-MatMul beside MultiHeadAttention). Without node, npm, the npm package or python3-onnx, the ORT
columns are skipped with a message. No test depends on any of this.
A case whose kexue row does not exist in a build prints "-" there, and the notes under the table name the row.
"""
import argparse
import importlib
import json
import os
import platform
import re
import statistics
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


def pick(samples, stat):
    """The statistic of a list of timings: 'min' or 'median'."""
    return min(samples) if stat == "min" else statistics.median(samples)


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


def time_callable(fn, min_time=0.5, repeats=5, stat="median"):
    """Seconds per call: the median (or min) over `repeats` batches of at least min_time/repeats each."""
    t0 = time.perf_counter()
    fn()  # warm-up (lazy init, first-touch of weights)
    one = max(time.perf_counter() - t0, 1e-7)
    if one > 1.0:  # a formulation that takes seconds per call (e.g. a cumsum over n x d x dv): 3 more calls
        samples = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return min(samples) if stat == "min" else sorted(samples)[1]
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
    return samples[0] if stat == "min" else samples[len(samples) // 2]


def torch_worker(family, name, threads, stat):
    """Runs in a child process: times one PyTorch case and prints JSON."""
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    case = next(c for c in load_cases([family]) if c.name == name)
    with torch.no_grad():
        fn = case.torch_setup()
        sec = time_callable(fn, stat=stat)
    print(json.dumps({"seconds": sec}))


def run_torch(case, warm, stat="median"):
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--torch-worker", case.family, case.name, str(case.threads),
         stat], env=thread_env(case.threads, warm), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def bench_exe(build, name):
    """Path of a benchmark binary of the build, or a clear exit if it has not been built."""
    exe = os.path.join(build, "bench", name)
    if not os.path.isfile(exe):
        sys.exit(f"compare_torch.py: {exe} not found; build the benchmarks first, e.g.\n"
                 f"  cmake -S . -B {build} -DCMAKE_BUILD_TYPE=Release && cmake --build {build} --target {name} -j2")
    return exe


def measure_peaks(build):
    """bench_peak's single-thread FMA peak (GFLOP/s), triad bandwidth (GB/s) and SIMD architecture label, measured
    once per run and handed to every benchmark binary of that build, so peak_frac and bw_frac refer to one
    measurement."""
    exe = bench_exe(build, "bench_peak")
    out = subprocess.run([exe, "--benchmark_format=json", "--benchmark_min_time=0.3",
                          "--benchmark_filter=(BM_fma_peak|BM_triad)/1/"],
                         env=thread_env(1), capture_output=True, text=True, check=True)
    rows = {b["name"].split("/")[0]: b for b in json.loads(out.stdout)["benchmarks"]}
    return {"gflops": rows["BM_fma_peak"]["GFLOPS"], "gbs": rows["BM_triad"]["GBps"],
            "arch": rows["BM_fma_peak"].get("label", "?")}


PEAKS = {}  # build dir -> measure_peaks(build)
_ROWS = {}  # (build, binary) -> names of the binary's benchmark rows


def has_row(build, binary, pattern):
    """Whether the binary of this build has a row matching the filter regex (a case may name a row that another
    engineer has not added yet)."""
    key = (build, binary)
    if key not in _ROWS:
        out = subprocess.run([bench_exe(build, binary), "--benchmark_list_tests"], capture_output=True, text=True,
                             check=True)
        _ROWS[key] = out.stdout.split()
    rx = re.compile(pattern)
    return any(rx.search(name) for name in _ROWS[key])


def run_ours(build, case, stat="median", repetitions=3, min_time=0.5, binary=None, bench=None):
    """(seconds, the chosen row's JSON, spread) of our benchmark row, or (None, None, None) when the build has no
    such row. binary/bench default to the case's."""
    binary = binary or case.binary
    bench = bench or case.bench
    if not has_row(build, binary, bench):
        return None, None, None
    exe = bench_exe(build, binary)
    env = thread_env(case.threads)
    peaks = PEAKS.get(build)
    if peaks:
        env["KEXUE_PEAK_GFLOPS"] = str(peaks["gflops"])
        env["KEXUE_PEAK_GBS"] = str(peaks["gbs"])
    out = subprocess.run(
        [exe, f"--benchmark_filter={bench}", "--benchmark_format=json", f"--benchmark_min_time={min_time}",
         f"--benchmark_repetitions={repetitions}"],
        env=env, capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    reps = [b for b in data["benchmarks"] if b.get("run_type", "iteration") == "iteration"]
    if not reps:
        raise RuntimeError(f"{binary}: no benchmark matches {bench}")
    reps = [b for b in reps if b["name"] == reps[0]["name"]]  # exactly one row, even if the regex is loose
    if stat == "min":
        b = min(reps, key=lambda r: r["real_time"])
    else:
        med = [r for r in data["benchmarks"] if r.get("aggregate_name") == "median" and r.get("run_name") ==
               reps[0].get("run_name", reps[0]["name"])]
        b = med[0] if med else sorted(reps, key=lambda r: r["real_time"])[len(reps) // 2]
    times = [r["real_time"] for r in reps]
    spread = (max(times) - min(times)) / min(times) if len(times) > 1 else 0.0
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b["time_unit"]]
    return b["real_time"] * scale, b, spread


def openblas_core_fix():
    """OpenBLAS picks its kernels by CPU model; a model newer than the library (Debian 12's 0.3.21 on an Intel
    Xeon "Emerald Rapids", model 0xCF) falls back to "Prescott", SSE3 kernels at a fifth of the machine's rate
    (measured there: 20 GFLOP/s against 107 with SkylakeX's). Every PyTorch figure would then be that fallback's,
    so unless the caller set OPENBLAS_CORETYPE, set it to the kernels the CPU's flags allow. Returns a header note."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} (set by the caller)"
    probe = subprocess.run([sys.executable, "-c", "import torch; torch.rand(64, 64) @ torch.rand(64, 64)"],
                           env=dict(os.environ, OPENBLAS_VERBOSE="2"), capture_output=True, text=True)
    m = re.search(r"Core: (\w+)", probe.stdout + probe.stderr)
    core = m.group(1) if m else None
    if core != "Prescott":
        return f"OpenBLAS core {core}" if core else "OpenBLAS core not reported"
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((ln for ln in f if ln.startswith("flags")), "").split())
    except OSError:
        flags = set()
    best = "SkylakeX" if "avx512f" in flags else "Haswell" if "avx2" in flags else None
    if best is None:
        return "OpenBLAS core Prescott"
    os.environ["OPENBLAS_CORETYPE"] = best
    return (f"OpenBLAS did not recognise this CPU (its fallback: Prescott kernels); PyTorch runs with "
            f"OPENBLAS_CORETYPE={best} (set OPENBLAS_CORETYPE to override)")


def header(threads_list):
    import torch
    note = openblas_core_fix()
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{cpu_model()}")
    print(f"# torch {torch.__version__}; BLAS: {blas_name()}; {note}")
    for t in threads_list:
        out = subprocess.run([sys.executable, "-c", MATMUL_PROBE, str(t)], env=thread_env(t),
                             capture_output=True, text=True, check=True)
        print(f"# PyTorch 1024^3 fp32 matmul, {t} thread(s): {float(out.stdout):.1f} GFLOP/s")


def print_build_headers(builds, args):
    """Measures each build's peaks and prints its SIMD architecture and peaks, then the statistic."""
    for i, build in enumerate(builds, 1):
        PEAKS[build] = measure_peaks(build)
        p = PEAKS[build]
        print(f"# build {i}: {os.path.relpath(build)}: SIMD {p['arch']}; bench_peak: fp32 FMA peak "
              f"{p['gflops']:.1f} GFLOP/s per thread, triad {p['gbs']:.1f} GB/s (one thread)")
    print("# peak_frac = GFLOPS / (threads x peak), bw_frac = GBps / triad: each build's rows get its own peaks; "
          "the figures column shows build 1's")
    print(f"# statistic: {args.stat} of {args.repetitions} repetitions x {args.min_time} s (kexue rows), "
          f"{args.stat} of 5 batches (PyTorch)" + (f", {args.stat} of the profiled runs (ORT)" if args.ort else "")
          + "; ratios are other / kexue build 1 (> 1: kexue faster)")


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


def ms(x, width=9):
    return f"{x * 1e3:>{width}.3f}" if x is not None else f"{'-':>{width}}"


def ratio(a, b, width=6):
    return f"{a / b:>{width}.2f}" if a is not None and b is not None else f"{'-':>{width}}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build", "release"))
    ap.add_argument("--build2", default=None, help="a second build whose rows are printed beside the first's")
    ap.add_argument("--family", nargs="*", default=None)
    ap.add_argument("--case", default=None, help="only cases whose name contains this")
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="statistic over repetitions (kexue), batches (PyTorch) and runs (ORT)")
    ap.add_argument("--repetitions", type=int, default=3, help="Google Benchmark repetitions of our rows")
    ap.add_argument("--min-time", type=float, default=0.5, help="--benchmark_min_time of each repetition (s)")
    ap.add_argument("--ort", action="store_true", help="add ONNX Runtime beside the attention and RoPE cases")
    ap.add_argument("--ort-dir", default=None, help="where onnxruntime-node is installed (default <build>/ort)")
    ap.add_argument("--ort-version", default=None, help="onnxruntime-node version (default compare_ort's pin)")
    ap.add_argument("--torch-worker", nargs=4, metavar=("FAMILY", "NAME", "THREADS", "STAT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        fam, name, threads, stat = args.torch_worker
        torch_worker(fam, name, int(threads), stat)
        return
    t_start = time.time()
    families = args.family or all_families()
    cases = load_cases(families)
    if args.case:
        cases = [c for c in cases if args.case in c.name]
    builds = [args.build] + ([args.build2] if args.build2 else [])
    header(sorted({c.threads for c in cases}))
    ort, ort_cases = None, []
    if args.ort:
        import compare_ort
        ort, msg = compare_ort.OrtRunner.setup(args.ort_dir or os.path.join(args.build, "ort"),
                                               args.ort_version or compare_ort.ORT_VERSION)
        print(f"# {msg}")
        if ort:
            ort_cases = compare_ort.load_ort_cases(families)
    print_build_headers(builds, args)

    cols = f"{'case':<52} {'thr':>3} {'kexue ms':>9}"
    if args.build2:
        cols += f" {'kexue2 ms':>9} {'b2/b1':>6}"
    cols += f" {'torch ms':>9} {'ratio':>6} {'warm ms':>9} {'ratio':>6}"
    if ort:
        cols += f" {'ort ms':>9} {'ratio':>6}"
    cols += "  figures"
    print(cols)
    print("-" * len(cols))
    notes = []
    names = {(c.name, c.threads) for c in cases}
    ran = [oc for oc in ort_cases if (oc.beside, oc.threads) in names]
    for c in cases:
        ours, row, spread = run_ours(args.build, c, args.stat, args.repetitions, args.min_time)
        ours2 = None
        if args.build2:
            ours2, row2, _ = run_ours(args.build2, c, args.stat, args.repetitions, args.min_time)
        if ours is None:
            notes.append(f"{c.name}: {c.binary} has no row {c.bench!r}")
        t_inst = run_torch(c, warm=False, stat=args.stat)
        t_warm = run_torch(c, warm=True, stat=args.stat)
        figs = []
        for key in ("GFLOPS", "peak_frac", "GBps", "bw_frac"):
            if row and key in row:
                figs.append(f"{key}={row[key]:.3g}")
        if spread is not None:
            figs.append(f"spread={spread:.0%}")
        mine = [oc for oc in ort_cases if oc.beside == c.name and oc.threads == c.threads]
        results = [ort.run(oc, args.stat, args.repetitions) for oc in mine]
        line = f"{c.name:<52} {c.threads:>3} {ms(ours)}"
        if args.build2:
            line += f" {ms(ours2)} {ratio(ours2, ours)}"
        line += f" {ms(t_inst)} {ratio(t_inst, ours)} {ms(t_warm)} {ratio(t_warm, ours)}"
        if ort:
            r = results[0] if results else None
            line += f" {ms(r and r.seconds)} {ratio(r and r.seconds, ours)}"
            if r:
                figs.append(f"ort {r.check}")
        print(f"{line}  {' '.join(figs)}", flush=True)
        for oc, r in list(zip(mine, results))[1:]:  # further ORT formulations of the same kexue row
            print(ort_line(f"  {oc.name}", c.threads, ours, ours2, args.build2, r), flush=True)
    for oc in ort_cases:  # ORT cases whose PyTorch twin was not selected
        if (oc.beside, oc.threads) in names or (args.case and args.case not in oc.name):
            continue
        ran.append(oc)
        ours, _, _ = run_ours(args.build, oc, args.stat, args.repetitions, args.min_time)
        ours2 = run_ours(args.build2, oc, args.stat, args.repetitions, args.min_time)[0] if args.build2 else None
        print(ort_line(oc.name, 1, ours, ours2, args.build2, ort.run(oc, args.stat, args.repetitions)), flush=True)
    for oc in ran:
        if oc.note:
            notes.append(f"{oc.name}: {oc.note}")
    for n in notes:
        print(f"# note: {n}")
    print(f"# run took {time.time() - t_start:.0f} s")


def ort_line(name, threads, ours, ours2, build2, r):
    """A table line for an ORT formulation: kexue columns, empty PyTorch columns, the ORT columns."""
    line = f"{name:<52} {threads:>3} {ms(ours)}"
    if build2:
        line += f" {ms(ours2)} {ratio(ours2, ours)}"
    line += f" {'':>9} {'':>6} {'':>9} {'':>6} {ms(r.seconds)} {ratio(r.seconds, ours)}  {r.check}"
    return line


if __name__ == "__main__":
    main()
