#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""kexue vs ggml's CPU flash attention (ggml_flash_attn_ext, the kernel under llama.cpp), one thread, in one run.

    python3 bench/compare_ggml.py --ggml /path/to/ggml [--builds avx2 native] [--rounds 3] [--filter REGEX]

ggml is not part of this repository and is never downloaded by it: pass a ggml source tree you have (a clone of
github.com/ggml-org/ggml). For each build the script configures <build-prefix>-<build> with KEXUE_GGML_DIR set and
builds bench_ggml_attention (bench/peers/ggml_attention.cpp): kexue and ggml compiled with matching
instruction-set flags into one binary,
    avx2    kexue -mavx2 -mfma -mf16c;  ggml GGML_NATIVE=OFF, AVX AVX2 FMA F16C BMI2 on, AVX-512 off
    native  kexue -march=native;        ggml GGML_NATIVE=ON
(native is skipped when the CPU has no avx512f: it would be the avx2 build again). It then runs the binaries
--rounds times, alternating builds (this machine is shared: alternating spreads the noise over both), and prints
the minimum time of every row with the ggml / kexue ratio (> 1: kexue faster), the fraction of bench_peak's FMA
peak, and each library's largest error against a float64 reference on a sample of query rows (kexue's must stay
below 1e-4: it computes in float from the stored values; ggml's is printed as it is, since it rounds q to fp16 for an
f16 K and accumulates in fp16 on some paths). A kexue row past its bound is marked and the script exits non-zero.
"""
import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from compare_torch import cpu_model  # noqa: E402  (imports no torch at module level)

BUILDS = {
    "avx2": ["-DKEXUE_ARCH_FLAGS=-mavx2;-mfma;-mf16c", "-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON",
             "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF"],
    "native": ["-DKEXUE_ARCH_FLAGS=-march=native", "-DGGML_NATIVE=ON"],
}
# kexue's largest |out - float64 reference| over the sampled rows (float compute from the stored K and V).
KEXUE_MAX_ERR = 1e-4


def build(name, ggml, prefix, jobs):
    bdir = f"{prefix}-{name}"
    cfg = ["cmake", "-S", ROOT, "-B", bdir, "-DCMAKE_BUILD_TYPE=Release", "-DKEXUE_BUILD_TESTS=OFF",
           "-DKEXUE_BUILD_EXAMPLES=OFF", "-DKEXUE_BUILD_BENCHMARKS=ON", "-DKEXUE_BUILD_FUZZERS=OFF",
           "-DKEXUE_INSTALL=OFF", f"-DKEXUE_GGML_DIR={os.path.abspath(ggml)}"] + BUILDS[name]
    for cmd in (cfg, ["cmake", "--build", bdir, "-j", str(jobs), "--target", "bench_ggml_attention"]):
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            sys.exit(f"compare_ggml: {' '.join(cmd)} failed:\n{r.stdout[-4000:]}")
    return os.path.join(bdir, "bench", "peers", "bench_ggml_attention")


def run(binary, filt):
    cmd = [binary, "--benchmark_format=json"]
    if filt:
        cmd.append(f"--benchmark_filter={filt}")
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"compare_ggml: {binary} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ggml", required=True, help="a ggml source tree")
    ap.add_argument("--builds", nargs="*", default=["avx2", "native"], choices=sorted(BUILDS))
    ap.add_argument("--build-prefix", default=os.path.join(ROOT, "build", "ggml"))
    ap.add_argument("--rounds", type=int, default=3, help="runs of each binary, alternating builds")
    ap.add_argument("--filter", default=None, help="Google Benchmark filter (regex on the row names)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    if not os.path.isfile(os.path.join(args.ggml, "include", "ggml.h")):
        sys.exit(f"compare_ggml: {args.ggml} is not a ggml source tree (no include/ggml.h)")
    with open("/proc/cpuinfo") as f:
        has_avx512 = " avx512f" in f.read()
    builds = [b for b in args.builds if b != "native" or has_avx512]
    if len(builds) < len(args.builds):
        print("compare_ggml: no avx512f on this CPU: the native build is skipped (it would repeat avx2)")
    if not builds:
        sys.exit("compare_ggml: no build left to run (--builds avx2 and/or native)")

    binaries = {b: build(b, args.ggml, args.build_prefix, args.jobs) for b in builds}
    best = {b: {} for b in builds}   # row -> min real time
    info = {b: {} for b in builds}   # row -> (unit, counters)
    context = {}
    for r in range(args.rounds):
        for b in builds:
            out = run(binaries[b], args.filter)
            context[b] = out["context"]
            for row in out["benchmarks"]:
                name = row["name"]
                t = row["real_time"]
                if name not in best[b] or t < best[b][name]:
                    best[b][name] = t
                    info[b][name] = row
        print(f"compare_ggml: round {r + 1}/{args.rounds} done", file=sys.stderr)

    print(f"# kexue vs ggml flash_attn_ext, 1 thread, min of {args.rounds} runs per row (builds alternating)")
    print(f"# CPU: {cpu_model()}")
    ggml_rev = subprocess.run(["git", "-C", args.ggml, "log", "-1", "--format=%h %cs"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True).stdout.strip()
    print(f"# ggml: {os.path.abspath(args.ggml)} {ggml_rev or '(not a git checkout)'}")
    for b in builds:
        c = context[b]
        print(f"# {b}: kexue SIMD {c.get('kexue_simd', '?')}; {c.get('kexue_caches', '')}")
    head = f"{'case':<34}"
    for b in builds:
        head += (f" | {'ggml ' + b:>13} {'kexue ' + b:>13} {'ggml/kexue':>10} {'kexue peak':>10}"
                 f" {'ggml err':>8} {'kexue err':>9}")
    print(head)
    print("-" * len(head))
    failed = False
    kexue_rows = [n for n in best[builds[0]] if "/kexue:1/" in n]  # the binary's order (dicts keep it)
    for kname in kexue_rows:
        gname = kname.replace("/kexue:1/", "/kexue:0/")
        case = re.sub(r"/kexue:1|/real_time|/iterations:\d+", "", kname)
        line = f"{case:<34}"
        for b in builds:
            k, g = best[b].get(kname), best[b].get(gname)
            if k is None or g is None:
                line += f" | {'-':>13} {'-':>13} {'-':>10} {'-':>10} {'-':>8} {'-':>9}"
                continue
            krow, grow = info[b][kname], info[b][gname]
            unit = krow.get("time_unit", "ns")
            kerr, gerr = krow.get("max_err", float("nan")), grow.get("max_err", float("nan"))
            mark = "" if kerr <= KEXUE_MAX_ERR else "!"
            failed |= bool(mark)
            line += (f" | {g:>10.3f} {unit:<2} {k:>10.3f} {unit:<2} {g / k:>10.2f} {krow.get('peak_frac', 0):>10.2f}"
                     f" {gerr:>8.1e} {kerr:>8.1e}{mark or ' '}")
        print(line)
    if failed:
        print(f"compare_ggml: rows marked ! have a kexue error above {KEXUE_MAX_ERR}")
        sys.exit(1)

if __name__ == "__main__":
    main()
