#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Differential fuzzing of every fuzz/fuzz_*.cpp target (issue 17): builds the targets with clang + libFuzzer
# (the `fuzz` configure preset) in two instruction-set builds,
#   build/fuzz-avx2    -DKEXUE_ARCH_FLAGS="-mavx2;-mfma"
#   build/fuzz-native  -DKEXUE_ARCH_FLAGS="-march=native"   (only when /proc/cpuinfo lists avx512f)
# then runs each target for SECONDS (default 60), two at a time, starting from a writable copy of the committed
# seed corpus fuzz/corpus/<target>/ (nothing is ever written into the repository). Exits non-zero on any
# finding and prints the crashing input in hex (reproduce: printf the bytes into a file, run the target on it).
#
#   fuzz/ci_fuzz.sh            # 60 s per target and build (about 14 minutes on 2 cores, builds included)
#   fuzz/ci_fuzz.sh 10         # CI (.ci/run): 10 s each, about 6 minutes with the builds; long runs per kernel change
#   fuzz/ci_fuzz.sh 3600       # every target for an hour, in both builds (2 x 10 x 1 h of CPU: 10 h on 2 cores)
#   KEXUE_FUZZ_BUILDS=avx2 fuzz/ci_fuzz.sh 3600      # the -mavx2 -mfma build only (5 h on 2 cores)
#   KEXUE_FUZZ_JOBS=16 fuzz/ci_fuzz.sh 3600          # on 16 cores: every target for an hour in ~1 h 10 min
#
# Environment: KEXUE_FUZZ_BUILDS ("avx2 native", default), KEXUE_FUZZ_TARGETS (default: every target),
# KEXUE_FUZZ_JOBS (parallel fuzzers and build jobs, default 2), KEXUE_FUZZ_BUILD_PREFIX (default build/fuzz, the
# build dirs are <prefix>-avx2 and <prefix>-native), KEXUE_FUZZ_SEED (default: libFuzzer picks one; printed),
# KEXUE_FUZZ_WORKDIR (keep the run's corpora and logs there instead of a deleted temporary directory).
# Refreshing the committed corpus after a long run (minimised, small files only):
#   build/fuzz-avx2/fuzz/<target> -merge=1 -max_len=4096 fuzz/corpus/<target> <workdir>/avx2/corpus/<target>
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds=${1:-60}
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "usage: $0 [seconds]" >&2; exit 2; }
jobs=${KEXUE_FUZZ_JOBS:-2}
prefix=${KEXUE_FUZZ_BUILD_PREFIX:-$root/build/fuzz}
builds=${KEXUE_FUZZ_BUILDS:-avx2 native}
if [ -n "${KEXUE_FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<< "$KEXUE_FUZZ_TARGETS"
else
  targets=()
  for f in fuzz/fuzz_*.cpp; do targets+=("$(basename "$f" .cpp)"); done
fi
if [ -n "${KEXUE_FUZZ_WORKDIR:-}" ]; then
  work=$KEXUE_FUZZ_WORKDIR
  mkdir -p "$work"
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/kexue-fuzz.XXXXXX")
  trap 'rm -rf "$work"' EXIT
fi
start=$(date +%s)
failures=0

hex() { od -An -v -tx1 "$1" | tr -d ' \n'; }

# Runs one target; its log and result land in $work/<build>/.
fuzz_one() {
  local build=$1 bin=$2 t=$3 dir=$work/$1
  local seed_opt=()
  [ -n "${KEXUE_FUZZ_SEED:-}" ] && seed_opt=(-seed="$KEXUE_FUZZ_SEED")
  set +e
  "$bin" "${seed_opt[@]}" "$dir/corpus/$t" -max_total_time="$seconds" -timeout=60 -rss_limit_mb=4096 -max_len=4096 \
    -print_final_stats=1 -artifact_prefix="$dir/artifacts/$t-" > "$dir/$t.log" 2>&1
  echo $? > "$dir/$t.rc"
}

summary() {
  local build=$1 t=$2 dir=$work/$1
  local rc runs cov seed
  rc=$(cat "$dir/$t.rc")
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/$t.log" | tail -1)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$dir/$t.log" | tail -1 || true)
  seed=$(sed -n 's/^INFO: Seed: //p' "$dir/$t.log" | head -1)
  if [ "$rc" = 0 ]; then
    printf 'ci_fuzz: %-6s %-24s ok       execs %-9s %s  (seed %s)\n' "$build" "$t" "${runs:-?}" "$cov" "$seed"
    return 0
  fi
  printf 'ci_fuzz: %-6s %-24s FINDING  exit %s (seed %s)\n' "$build" "$t" "$rc" "$seed"
  grep -E 'fuzz finding|ERROR: (AddressSanitizer|libFuzzer)|runtime error|SUMMARY' "$dir/$t.log" | head -5 | sed 's/^/    /'
  local a
  for a in "$dir"/artifacts/"$t"-*; do
    [ -f "$a" ] || continue
    echo "    input $(basename "$a") ($(wc -c < "$a") bytes), hex: $(hex "$a")"
  done
  echo "    log: $dir/$t.log"
  return 1
}

# Phase 1: configure and build every requested instruction-set build.
active=()
for build in $builds; do
  case $build in
    avx2) flags="-mavx2;-mfma" ;;
    native)
      if ! grep -qw avx512f /proc/cpuinfo; then
        echo "ci_fuzz: skipping the -march=native build: this CPU has no avx512f (the AVX2 build covers it)"
        continue
      fi
      flags="-march=native" ;;
    *) echo "ci_fuzz: unknown build '$build' (avx2 or native)" >&2; exit 2 ;;
  esac
  bdir=$prefix-$build
  t0=$(date +%s)
  cmake --preset fuzz -B "$bdir" -DKEXUE_ARCH_FLAGS="$flags" > "$work/configure-$build.log" 2>&1 ||
    { cat "$work/configure-$build.log"; exit 1; }
  cmake --build "$bdir" -j "$jobs" --target "${targets[@]}" > "$work/build-$build.log" 2>&1 ||
    { tail -50 "$work/build-$build.log"; exit 1; }
  echo "ci_fuzz: $build build ($flags, $bdir) took $(( $(date +%s) - t0 )) s"
  mkdir -p "$work/$build/artifacts"
  for t in "${targets[@]}"; do
    mkdir -p "$work/$build/corpus/$t"
    if [ -d "fuzz/corpus/$t" ]; then cp -R "fuzz/corpus/$t/." "$work/$build/corpus/$t/"; fi
  done
  active+=("$build")
done

# Phase 2: one pool of (build, target) runs, $jobs at a time, so no core idles between the builds' runs.
t0=$(date +%s)
echo "ci_fuzz: fuzzing ${#targets[@]} targets x ${#active[@]} builds x $seconds s, $jobs at a time"
running=0
for build in "${active[@]}"; do
  for t in "${targets[@]}"; do
    if [ "$running" -ge "$jobs" ]; then
      wait -n || true
      running=$((running - 1))
    fi
    fuzz_one "$build" "$prefix-$build/fuzz/$t" "$t" &
    running=$((running + 1))
  done
done
wait || true
for build in "${active[@]}"; do
  for t in "${targets[@]}"; do summary "$build" "$t" || failures=$((failures + 1)); done
done
echo "ci_fuzz: fuzzing took $(( $(date +%s) - t0 )) s"

echo "ci_fuzz: total $(( $(date +%s) - start )) s, $failures finding(s)"
[ "$failures" = 0 ]
