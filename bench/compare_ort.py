#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""kexue vs ONNX Runtime (issue 16, item 3): fused attention and RoPE, one thread, fp32, in one run.

    /usr/bin/python3 bench/compare_ort.py --build build/avx2 [--build2 build/native] [--family attention rope]
        [--case SUBSTR] [--stat median|min] [--repetitions N] [--ort-dir DIR] [--ort-version V]

With PyTorch beside it, in one table (the usual way; see compare_torch.py's docstring for the builds):

    /usr/bin/python3 bench/compare_torch.py --build build/avx2 --build2 build/native \\
        --family attention rope --stat min --repetitions 5 --ort

What it does:
  1. Installs onnxruntime-node (pinned: ORT_VERSION below; 1.31.1 runs on Node 20) from npm into the build tree,
     <build>/ort by default, with `npm install --ignore-scripts`: the package's install script only fetches GPU
     (CUDA / TensorRT) files, and the CPU library ships inside the package. Skipped with a clear message, and
     the rest of the run goes on, when node, npm, the package or python3-onnx (apt-get install python3-onnx)
     is unavailable. No test depends on this script.
  2. Builds single-node ONNX models with python3-onnx (bench/ort_cases/<family>.py): com.microsoft
     MultiHeadAttention (non-causal n = 2048, 8192: MLAS's flash kernel; causal n = 2048), GroupQueryAttention
     (causal prefill n = 2048 and decode against 4096 cached keys, 8 q heads / 2 KV heads), RotaryEmbedding
     (q + k, 8 x 2048 x 64, both layouts), and the plain MatMul-Softmax-MatMul graph (n = 2048). Batch 1,
     8 heads, d = 64, inputs = the kexue bench row's own values.
  3. Runs each in a fresh node process (bench/ort_cases/run_ort.js): CPU execution provider, intra-op and
     inter-op threads 1, sequential, all graph optimisations, ORT's profiler on. 1 warm-up run, then
     --repetitions runs (at least 3). The time of a run is the sum of the "dur" of its nodes' "kernel_time"
     events in the profile: ORT's kernel time, not the JavaScript binding's copies of inputs and outputs.
  4. Checks ORT's output. kexue's benchmark binaries print no outputs, so the check is against a float64
     PyTorch reference computed from the same inputs (the mathematics kexue's own tests check kexue against),
     as relative RMSE with a threshold per case (1e-5): "check ok 2.1e-07" or "CHECK FAILED ...".
  5. Runs kexue's Google Benchmark rows (bench_attention, bench_rope; one per case, named in
     bench/ort_cases) of --build (and --build2) in the same run, and prints ORT / kexue time ratios (> 1: kexue
     faster). A case whose kexue row is not in the binary yet prints "-" for kexue.
"""
import argparse
import glob
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ORT_VERSION = "1.31.1"
RUNNER = os.path.join(HERE, "ort_cases", "run_ort.js")
DTYPES = {"float32": "float32", "int32": "int32", "int64": "int64"}

sys.path.insert(0, HERE)
import compare_torch  # noqa: E402  (thread_env, run_ours, bench headers, table helpers)


def load_ort_cases(families):
    """The OrtCase lists of bench/ort_cases/<family>.py for the families that have one (loaded under the name
    ort_cases_<family>: torch_cases has modules of the same file names)."""
    d = os.path.join(HERE, "ort_cases")
    if d not in sys.path:
        sys.path.insert(0, d)
    cases = []
    for fam in families:
        path = os.path.join(d, fam + ".py")
        if not os.path.isfile(path):
            continue
        name = "ort_cases_" + fam
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, path)
            sys.modules[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(sys.modules[name])
        cases.extend(sys.modules[name].CASES)
    return cases


class OrtResult:
    def __init__(self, seconds, samples, ops, err, maxabs, ok, message="", shared_ok=None):
        self.seconds = seconds    # the statistic of the runs' summed kernel times
        self.samples = samples    # every run's summed kernel time (s)
        self.ops = ops            # op type -> seconds in the chosen run (fused names as ORT ran them)
        self.err, self.maxabs, self.ok = err, maxabs, ok
        self.check = message or (f"check {'ok' if ok else 'FAILED'} relRMSE={err:.1e}" +
                                 ("" if ok else f" maxabs={maxabs:.1e}") +
                                 {None: "", True: " in-place cache", False: " cache COPIED"}[shared_ok] + " ops: " +
                                 "+".join(f"{k} {v * 1e3:.3g}" for k, v in ops.items()))


class OrtRunner:
    """onnxruntime-node installed in pkg_dir; runs OrtCases."""

    def __init__(self, pkg_dir, version):
        self.pkg_dir, self.version = os.path.abspath(pkg_dir), version

    @staticmethod
    def setup(pkg_dir, version=ORT_VERSION):
        """(runner, message) or (None, why the ORT column is skipped)."""
        pkg_dir = os.path.abspath(pkg_dir)
        node, npm = shutil.which("node"), shutil.which("npm")
        if not node or not npm:
            return None, "ONNX Runtime skipped: node and npm are needed (Node 20 runs onnxruntime-node 1.31)"
        try:
            import onnx  # noqa: F401
        except ImportError:
            return None, "ONNX Runtime skipped: python3-onnx is missing (apt-get install python3-onnx)"
        pkg_json = os.path.join(pkg_dir, "node_modules", "onnxruntime-node", "package.json")
        installed = None
        if os.path.isfile(pkg_json):
            with open(pkg_json) as f:
                installed = json.load(f).get("version")
        if installed != version:
            os.makedirs(pkg_dir, exist_ok=True)
            if not os.path.isfile(os.path.join(pkg_dir, "package.json")):
                with open(os.path.join(pkg_dir, "package.json"), "w") as f:
                    json.dump({"name": "kexue-compare-ort", "private": True}, f)
            # --ignore-scripts: the install script downloads GPU files; the CPU library is in the package.
            try:
                out = subprocess.run([npm, "install", "--ignore-scripts", "--no-audit", "--no-fund",
                                      f"onnxruntime-node@{version}"], cwd=pkg_dir, capture_output=True, text=True,
                                     timeout=900)
            except subprocess.TimeoutExpired:
                return None, f"ONNX Runtime skipped: npm install onnxruntime-node@{version} timed out"
            if out.returncode != 0:
                tail = " ".join((out.stderr or out.stdout).strip().splitlines()[-3:])
                return None, f"ONNX Runtime skipped: npm install onnxruntime-node@{version} failed: {tail}"
        probe = subprocess.run([node, "-e", "const o = require(process.argv[1]); console.log(o.env.versions.node)",
                                os.path.join(pkg_dir, "node_modules", "onnxruntime-node")],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            tail = " ".join(probe.stderr.strip().splitlines()[-2:])
            return None, f"ONNX Runtime skipped: onnxruntime-node does not load: {tail}"
        node_ver = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
        return OrtRunner(pkg_dir, version), (
            f"ONNX Runtime: onnxruntime-node {probe.stdout.strip()} (node {node_ver}) in {os.path.relpath(pkg_dir)}; "
            f"CPU EP, 1 intra-op thread, all graph optimisations; time = sum of the nodes' kernel_time in ORT's "
            f"profiler, after 1 warm-up run; output checked against a float64 PyTorch reference")

    def run(self, case, stat="median", repetitions=3):
        """Builds, runs and checks one case; an OrtResult (seconds None and a message if ORT failed)."""
        import onnx
        slug = re.sub(r"[^A-Za-z0-9]+", "_", case.name).strip("_")
        work = os.path.join(self.pkg_dir, "cases", slug)
        os.makedirs(work, exist_ok=True)
        model = case.model()
        model_path = os.path.join(work, "model.onnx")
        onnx.save(model, model_path)
        inputs = case.inputs()
        manifest = {"model": model_path, "inputs": [], "outputs": [], "warmup": 1, "runs": max(3, repetitions),
                    "profile_prefix": os.path.join(work, f"profile_{os.getpid()}"), "shared": case.shared}
        for name, arr in inputs.items():
            path = os.path.join(work, name + ".bin")
            arr.tofile(path)
            manifest["inputs"].append({"name": name, "dtype": DTYPES[str(arr.dtype)], "shape": list(arr.shape),
                                       "file": path})
        checked = [o.name for o in model.graph.output if o.name not in case.shared]
        for name in checked:
            manifest["outputs"].append({"name": name, "file": os.path.join(work, name + ".out")})
        with open(os.path.join(work, "manifest.json"), "w") as f:
            json.dump(manifest, f)
        for old in glob.glob(manifest["profile_prefix"] + "*.json"):
            os.remove(old)
        out = subprocess.run(["node", RUNNER, self.pkg_dir, os.path.join(work, "manifest.json")],
                             env=compare_torch.thread_env(1), capture_output=True, text=True)
        if out.returncode != 0:
            tail = " ".join(out.stderr.strip().splitlines()[-2:])[:300]
            return OrtResult(None, [], {}, None, None, False, f"ORT FAILED: {tail}")
        shared_ok = json.loads(out.stdout.strip().splitlines()[-1]).get("shared_ok")
        profiles = sorted(glob.glob(manifest["profile_prefix"] + "*.json"), key=os.path.getmtime)
        runs = kernel_times(profiles[-1])[manifest["warmup"]:]
        totals = [sum(r.values()) for r in runs]
        seconds = compare_torch.pick(totals, stat)
        chosen = min(range(len(runs)), key=lambda i: abs(totals[i] - seconds))
        ops = dict(sorted(runs[chosen].items(), key=lambda kv: -kv[1]))
        err, maxabs = 0.0, 0.0
        ref = case.reference(inputs)
        from _ort_case import rel_rmse
        import numpy as np
        for name in (n for n in checked if n in ref):
            got = np.fromfile(os.path.join(work, name + ".out"), dtype=np.float32)
            e, m = rel_rmse(got, ref[name])
            err, maxabs = max(err, e), max(maxabs, m)
        return OrtResult(seconds, totals, ops, err, maxabs, err <= case.tol, shared_ok=shared_ok)


def kernel_times(profile_path):
    """Per model_run of the profile (in order): op type -> seconds, the sum of its nodes' kernel_time 'dur'."""
    with open(profile_path) as f:
        events = json.load(f)
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    out = [dict() for _ in runs]
    starts = [r["ts"] for r in runs]
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        i = max((j for j, s in enumerate(starts) if s <= e["ts"]), default=None)
        if i is None:
            continue
        op = e.get("args", {}).get("op_name", e["name"])
        out[i][op] = out[i].get(op, 0.0) + e["dur"] * 1e-6
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build", "release"))
    ap.add_argument("--build2", default=None)
    ap.add_argument("--family", nargs="*", default=["attention", "rope"])
    ap.add_argument("--case", default=None, help="only cases whose name contains this")
    ap.add_argument("--stat", choices=("median", "min"), default="median")
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--ort-dir", default=None, help="where onnxruntime-node is installed (default <build>/ort)")
    ap.add_argument("--ort-version", default=ORT_VERSION)
    args = ap.parse_args()
    args.ort = True
    t_start = time.time()
    runner, msg = OrtRunner.setup(args.ort_dir or os.path.join(args.build, "ort"), args.ort_version)
    print(f"# machine: {compare_torch.cpu_model()}, {os.cpu_count()} cores")
    print(f"# {msg}")
    if not runner:
        return
    builds = [args.build] + ([args.build2] if args.build2 else [])
    compare_torch.print_build_headers(builds, args)
    cases = [c for c in load_ort_cases(args.family) if not args.case or args.case in c.name]
    cols = f"{'case':<52} {'thr':>3} {'kexue ms':>9}"
    if args.build2:
        cols += f" {'kexue2 ms':>9} {'b2/b1':>6}"
    cols += f" {'ort ms':>9} {'ratio':>6}  check, ORT ops (ms)"
    print(cols)
    print("-" * len(cols))
    ms, ratio = compare_torch.ms, compare_torch.ratio
    timed = {}  # (build, binary, row) -> seconds: two ORT formulations of one kexue row share one measurement

    def kexue(build, c):
        key = (build, c.binary, c.bench)
        if key not in timed:
            timed[key] = compare_torch.run_ours(build, c, args.stat, args.repetitions, args.min_time)[0]
        return timed[key]
    for c in cases:
        ours = kexue(args.build, c)
        ours2 = kexue(args.build2, c) if args.build2 else None
        r = runner.run(c, args.stat, args.repetitions)
        line = f"{c.name:<52} {1:>3} {ms(ours)}"
        if args.build2:
            line += f" {ms(ours2)} {ratio(ours2, ours)}"
        print(f"{line} {ms(r.seconds)} {ratio(r.seconds, ours)}  {r.check}", flush=True)
        if ours is None:
            print(f"# note: {c.binary} has no row {c.bench!r}")
        if c.note:
            print(f"# note: {c.note}")
    print(f"# run took {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
