// SPDX-License-Identifier: MIT
// Runs one single-node (or small) ONNX model with onnxruntime-node on the CPU execution provider, one intra-op
// thread, with ORT's profiler on, and writes the first run's outputs for bench/compare_ort.py to check.
//
//   node run_ort.js ORT_PACKAGE_DIR MANIFEST.json
//
// MANIFEST (written by compare_ort.py): {"model": path, "inputs": [{name, dtype, shape, file}],
//   "outputs": [{name, file}], "warmup": W, "runs": R, "profile_prefix": path, "shared": {output: input}}
// Inputs are raw little-endian files. "shared" hands a preallocated output the same buffer as an input (a KV
// cache updated in place: ORT's GroupQueryAttention sees past_key and present_key at one address).
// ORT's profiler writes <profile_prefix>_<date>.json; prints one JSON line {"runs": W + R, "shared_ok": whether
// ORT wrote every shared output into its input's buffer (null: none shared)}. The timing itself is taken
// from the profile (each node's kernel_time events), never from this script's clock: that would include the
// binding's copies of inputs and outputs.
'use strict';
const fs = require('fs');
const path = require('path');

const [pkgDir, manifestPath] = process.argv.slice(2);
const ort = require(path.join(pkgDir, 'node_modules', 'onnxruntime-node'));
const m = JSON.parse(fs.readFileSync(manifestPath, 'utf8'));

const ARRAYS = {float32: Float32Array, int32: Int32Array, int64: BigInt64Array};

function load(input) {
  const buf = fs.readFileSync(input.file);
  const Arr = ARRAYS[input.dtype];
  // Copy into a fresh, aligned ArrayBuffer: a Buffer's slice may start at any offset of a shared pool.
  const data = new Arr(buf.length / Arr.BYTES_PER_ELEMENT);
  new Uint8Array(data.buffer).set(buf);
  return new ort.Tensor(input.dtype, data, input.shape);
}

(async () => {
  const session = await ort.InferenceSession.create(m.model, {
    executionProviders: ['cpu'],
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    enableProfiling: true,
    profileFilePrefix: m.profile_prefix,
  });
  const feeds = {};
  for (const input of m.inputs) feeds[input.name] = load(input);
  const fetches = {};
  for (const out of m.outputs) fetches[out.name] = null;
  for (const [out, inp] of Object.entries(m.shared || {})) fetches[out] = feeds[inp];
  let first = null;
  let sharedOk = null;
  const total = m.warmup + m.runs;
  for (let r = 0; r < total; ++r) {
    const res = await session.run(feeds, Object.keys(m.shared || {}).length ? fetches : m.outputs.map((o) => o.name));
    // The shared inputs hold NaN where ORT writes the new rows: no NaN left after a run means that ORT wrote
    // into the input's own buffer (past and present were one cache), not into a copy.
    for (const inp of Object.values(m.shared || {}))
      sharedOk = (sharedOk !== false) && !feeds[inp].data.some(Number.isNaN);
    if (first === null) {
      first = {};
      // Copy the checked outputs of the first run before an in-place cache could change them again.
      for (const out of m.outputs) {
        const d = res[out.name].data;
        first[out.name] = Buffer.from(new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
      }
    }
  }
  for (const out of m.outputs) fs.writeFileSync(out.file, first[out.name]);
  session.endProfiling();  // writes <profile_prefix>_<date>.json; the binding does not return the name
  await session.release();
  console.log(JSON.stringify({runs: total, shared_ok: sharedOk}));
})().catch((e) => {
  console.error(String(e && e.stack || e));
  process.exit(1);
});
