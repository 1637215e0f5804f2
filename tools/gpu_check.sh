#!/usr/bin/env bash
# One command that proves the GPU half of recogfast on a bare GPU machine, inside one deadline.
#
#   tools/gpu_check.sh OUTDIR           # from the repository root; BUDGET=470 (seconds) by default
#   REHEARSE=1 tools/gpu_check.sh OUT   # the CPU rehearsal (automatic when no GPU is visible): every step
#                                       # that can run without a GPU runs, the rest skip with one line
#
# Steps, in order of value, each with its own cap inside the shared deadline (a slow step never eats the
# others' time): env (versions, nvidia-smi) · build (load a carried recogfast/_C*.so, else compile with
# MAX_JOBS=16 for sm_90) · tests (pytest -k cuda, without the learning test) · crosscheck (CUDA vs CPU
# kernels: tools/gpu_crosscheck.py) · memcheck and racecheck (compute-sanitizer on a small crosscheck) ·
# variants_san (the same on the kernel variants the defaults do not take: flash MS loss, one-CTA SE, CUBS tiles) ·
# bench (the headline shapes, fused vs eager reference, each timed by synced wall clock, CUDA events and
# CUDA-graph replay, with floors and ratios) · se_fused (SE's split and one-CTA variants) · graphs (the
# engine's training step, eager vs `recogfast train --cuda-graphs`, plain ResNet-18 and the three CUBS
# placements, 64×64 B=256 and 224×224 B=64) · flash (the flash MS loss's tile variants, forward forms, separated embeddings and batch sweep) ·
# cubs_tiles (the CUBS kernel variants: RECOGFAST_CUBS_SPATIAL_TILE, RECOGFAST_CUBS_CHANNEL_THREADS) · profile
# (tools/gpu_profile.py: kernel tables, launches per fwd+bwd) · compiled (torch.compile default mode of the
# references: the peer column) · ncu (Nsight Compute on the key kernels; "not permitted" in one line where
# the counters are refused) · maxautotune
# (torch.compile mode max-autotune, as far as the deadline allows); then the variants' winners (tools/tuned_table.py,
# printed into logs/tuned.txt). Every benchmark appends a JSON line to
# OUTDIR/bench.jsonl as it finishes, so a step cut at its cap keeps what finished. It always ends with
# OUTDIR/summary.json and OUTDIR/summary.md (tools/gpu_results.py), and packs every log into
# OUTDIR/logs.tar.gz: at most eight files come back (summary.json, summary.md, logs.tar.gz, junit.xml,
# crosscheck.json, bench.jsonl, profile.json, ncu.csv).
#
# Carried wheels: a folder .whl/ with pytorch_metric_learning-*.whl (pure Python) is installed into
# /tmp/site for the PML comparison of the MS-loss benchmark.
set -u
OUT=${1:?usage: tools/gpu_check.sh OUTDIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
mkdir -p "$OUT/logs"
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-540}
START=$(date +%s)
DEADLINE=$((START + BUDGET))
STEPS="$OUT/logs/steps.tsv"
: >"$STEPS"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 RECOGFAST_BENCH_JSONL="$OUT/bench.jsonl"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # `import recogfast` from tools/ without an install

record() {  # name status seconds note
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$STEPS"
  printf '[gpu_check %4ss] %-10s %-8s %5ss  %s\n' "$(($(date +%s) - START))" "$1" "$2" "$3" "$4"
}

# step NAME CAP NOTE -- CMD...: run CMD with min(CAP, time left) seconds, its output in logs/NAME.log.
step() {
  local name=$1 cap=$2 note=$3
  shift 4
  local left=$((DEADLINE - $(date +%s) - 10))  # 10 s kept for the summary
  if ((left < 5)); then
    record "$name" skipped 0 "deadline reached before the step"
    return 1
  fi
  local t=$((cap < left ? cap : left)) t0 rc
  t0=$(date +%s)
  timeout -k 5 "$t" "$@" >"$OUT/logs/$name.log" 2>&1
  rc=$?
  local dt=$(($(date +%s) - t0))
  if [[ -s "$OUT/logs/$name.skip" ]]; then  # the step decided it cannot run here (say, ncu not permitted)
    record "$name" skipped "$dt" "$(head -1 "$OUT/logs/$name.skip")"
    return 0
  fi
  if ((rc == 0)); then
    record "$name" ok "$dt" "$note"
  elif ((rc == 124 || rc == 137)); then
    record "$name" timeout "$dt" "$note (cap ${t}s)"
  else
    record "$name" failed "$dt" "$note (exit $rc; logs/$name.log)"
  fi
  return $rc
}

skip() { record "$1" skipped 0 "$2"; }

GPU=0
if [[ "${REHEARSE:-0}" != 1 ]] && $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  GPU=1
fi
MODE=$([[ $GPU == 1 ]] && echo gpu || echo rehearsal)
echo "mode $MODE, budget ${BUDGET}s" >"$OUT/logs/mode.txt"

if [[ -d .whl ]] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$OUT/logs/wheels.log" 2>&1 && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi

# 1. versions and the device
step env 30 "versions, nvidia-smi" -- bash -c "
  date -u; uname -a; $PY --version; nvcc --version 2>&1 | tail -2
  $PY -c 'import torch, sys; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"gpu\", torch.cuda.is_available(),
    torch.cuda.get_device_name() if torch.cuda.is_available() else \"\",
    torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else \"\")'
  $PY -m pip list 2>/dev/null | grep -iE '^(torch|torchvision|timm|pytest|pytest-benchmark|numpy|pytorch-metric-learning|nvidia-dali) '
  command -v compute-sanitizer ncu || true
  nvidia-smi || echo 'no nvidia-smi'"

# 2. the extension: a carried build if it loads, else compile (GPU mode only; CI has built it already)
LOADS="import sys, recogfast; sys.exit(0 if recogfast.dispatch.cuda_kernels_compiled() or '$MODE' == 'rehearsal' else 3)"
if $PY -c "$LOADS" >"$OUT/logs/load.log" 2>&1; then
  record build ok 0 "extension loads ($(ls recogfast/_C*.so 2>/dev/null | xargs -n1 basename | tr '\n' ' '))"
elif [[ $GPU == 1 ]]; then
  step build 240 "compiled here: MAX_JOBS=16, TORCH_CUDA_ARCH_LIST=9.0" -- env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 \
    FORCE_CUDA=1 $PY setup.py -q build_ext --inplace
  $PY -c "$LOADS" >>"$OUT/logs/load.log" 2>&1 || record load failed 0 "the extension does not load after the build"
else
  record build failed 0 "the extension does not load (logs/load.log)"
fi

# 3. the CUDA tests (the learning test takes minutes and has no CUDA case)
if [[ $GPU == 1 ]]; then
  XDIST=$($PY -c 'import xdist' 2>/dev/null && echo "-n 4")
  step tests 150 "pytest tests -k cuda ${XDIST}" -- $PY -m pytest tests -k cuda --ignore=tests/test_learning.py -q -rfE \
    -p no:cacheprovider $XDIST --junitxml="$OUT/junit.xml"
else
  step tests 60 "collect the CUDA tests (they run only on a GPU)" -- bash -c "
    $PY -m pytest tests -k cuda --ignore=tests/test_learning.py -q --collect-only -p no:cacheprovider | tail -1 |
    tee /dev/stderr | grep -qE '^[0-9]+(/[0-9]+)? tests? (collected|selected)'"
fi

# 4. CUDA kernels against the CPU kernels
if [[ $GPU == 1 ]]; then
  step crosscheck 90 "CUDA vs CPU kernels, all dtypes and layouts" -- $PY tools/gpu_crosscheck.py \
    --out "$OUT/crosscheck.json"
else
  step crosscheck 60 "the harness against itself on the CPU (small)" -- $PY tools/gpu_crosscheck.py --device cpu \
    --small --out "$OUT/crosscheck.json"
fi

# 5. compute-sanitizer on a small cross-check
if [[ $GPU == 1 ]] && command -v compute-sanitizer >/dev/null; then
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1
  step memcheck 75 "compute-sanitizer memcheck, small crosscheck" -- compute-sanitizer --tool memcheck \
    --error-exitcode 9 --print-limit 30 $PY tools/gpu_crosscheck.py --small
  step racecheck 60 "compute-sanitizer racecheck, recogfast kernels" -- compute-sanitizer --tool racecheck \
    --kernel-name kns=recogfast --error-exitcode 9 --print-limit 30 $PY tools/gpu_crosscheck.py --small --tiny
  unset PYTORCH_NO_CUDA_MEMORY_CACHING
else
  skip memcheck "no GPU or no compute-sanitizer"
  skip racecheck "no GPU or no compute-sanitizer"
fi

# 5b. the kernel variants the default paths do not take, under the same two tools, one process each (some are read
# once per process): "ENV|OPS|DTYPES". Values are the tests' job here (--report-only): the sanitizer's exit code is
# the verdict. In the rehearsal the same cross-checks run on the CPU, without the sanitizer.
SAN_VARIANTS=(
  "RECOGFAST_MS_LOSS_PATH=flash RECOGFAST_MS_FLASH_TILE=0|ms_loss|bfloat16,float16"
  "RECOGFAST_MS_LOSS_PATH=flash RECOGFAST_MS_FLASH_TILE=3|ms_loss|bfloat16,float32"
  "RECOGFAST_MS_LOSS_PATH=flash RECOGFAST_MS_FLASH_TILE=5|ms_loss|bfloat16,float16"
  "RECOGFAST_MS_LOSS_PATH=flash RECOGFAST_MS_FLASH_FWD=one|ms_loss|bfloat16"
  "RECOGFAST_SE_VARIANT=fused|se_gate|float32,bfloat16"
  "RECOGFAST_CUBS_SPATIAL_TILE=3 RECOGFAST_CUBS_CHANNEL_THREADS=512|cubs_channel,cubs_spatial_saved|float32,bfloat16"
  "RECOGFAST_CUBS_CHANNEL_VARIANT=fused|cubs_channel|float32,bfloat16"
)
sanitize_variants() {  # TOOL...: the sanitizer command line, or nothing (the rehearsal)
  local v env ops dtypes
  for v in "${SAN_VARIANTS[@]}"; do
    IFS='|' read -r env ops dtypes <<<"$v"
    echo "== $env: $ops $dtypes"
    env $env "$@" $PY tools/gpu_crosscheck.py --small --ops "$ops" --dtypes "$dtypes" --report-only \
      $([[ $GPU == 1 ]] || echo --device cpu) || return
  done
}
if [[ $GPU == 1 ]] && command -v compute-sanitizer >/dev/null; then
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1
  step variants_san 160 "compute-sanitizer memcheck + racecheck of the variants (flash, one-CTA SE and Block 1, CUBS tiles)" -- bash -c "$(declare -p SAN_VARIANTS PY GPU); $(declare -f sanitize_variants)
    sanitize_variants compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 30 &&
    sanitize_variants compute-sanitizer --tool racecheck --kernel-name kns=recogfast --error-exitcode 9 --print-limit 30"
  unset PYTORCH_NO_CUDA_MEMORY_CACHING
else
  step variants_san 90 "the variant cross-checks on the CPU (no sanitizer here)" -- bash -c \
    "$(declare -p SAN_VARIANTS PY GPU); $(declare -f sanitize_variants); sanitize_variants"
fi

# 6. the headline benchmark shapes (benchmarks/RESULTS.md), each with its floor and ratio, three timings
SE="test_se_gate and (fused or reference) and not fused_1cta and not fused_split"
CUBS="(test_cubs and fwd+bwd and (stage0 or stage4) and (fused or reference))"
TRAIN="test_resnet18_train_step"
MS="(test_ms_loss_fwd_bwd and (size2 or size3 or size4) and not compiled)"
SEL="cuda and (($SE) or $CUBS or $TRAIN or $MS)"
# torch.compile peers of the references (SE, Block 1, Block 2, the three placements, the dense MS loss): the default
# mode at the headline shapes (MS: B = 16384 fp32, issue 26's goal), max-autotune at the largest (it autotunes every
# GEMM: minutes), SE first. No max-autotune MS peer: its B x B GEMMs (forward, and two backward) would take the
# step's minutes from SE and CUBS, and no goal is set against it.
COMPILED="cuda and compiled and not maxautotune and ((test_se_gate and fwd+bwd and (56 or 7)) or (test_cubs and fwd+bwd and (stage0 or stage4)) or (test_ms_loss_fwd_bwd and size3))"
MAXAT="cuda and maxautotune and fwd+bwd and ((test_se_gate and 56) or (test_cubs and stage0))"
PEER_FILES="benchmarks/test_se_gate_bench.py benchmarks/test_cubs_bench.py benchmarks/test_ms_loss_bench.py"
BENCH_ARGS="--benchmark-only -q -p no:cacheprovider --benchmark-columns=min,mean,stddev,rounds"
collect() {  # the number of benchmarks a -k selection names (CUDA ones are collected, then skipped, on a CPU)
  [[ $GPU == 1 ]] && { echo "?"; return; }  # no device seconds spent counting on the GPU machine
  (($(date +%s) + 15 > DEADLINE)) && { echo "-1"; return; }  # no time left to count: the step is skipped
  $PY -m pytest benchmarks -q --collect-only -p no:cacheprovider -k "$1" 2>/dev/null | grep -c '::'
}
# A benchmark step: on the GPU, FILES' benchmarks of the -k selection SEL run (records: logs/bench_NAME.json); on a
# CPU the selection is only counted, and the step is skipped with that count (an empty selection fails).
bench_step() {  # NAME CAP WHAT SEL FILES...
  local name=$1 cap=$2 what=$3 sel=$4 n
  shift 4
  n=$(collect "$sel")
  if [[ $GPU == 1 ]]; then
    step "$name" "$cap" "$what" -- $PY -m pytest "$@" $BENCH_ARGS -k "$sel" --benchmark-json="$OUT/logs/bench_$name.json"
  elif [[ $n -lt 0 ]]; then
    skip "$name" "deadline reached before the step"
  elif [[ $n -gt 0 ]]; then
    skip "$name" "no GPU: $n $what selected"
  else
    record "$name" failed 0 "the $what selection is empty"
  fi
}
if [[ $GPU == 1 ]]; then
  step bench 240 "headline shapes: wall, CUDA events, CUDA-graph replay" -- $PY -m pytest benchmarks $BENCH_ARGS \
    -k "$SEL" --benchmark-json="$OUT/logs/bench.json"
else
  # Rehearsal: the selection must name the CUDA benchmarks; one CPU benchmark exercises the JSON lines.
  step bench 60 "selection collected; one CPU benchmark" -- bash -c "
    n=\$($PY -m pytest benchmarks -q --collect-only -p no:cacheprovider -k '$SEL' | grep -c '::')
    echo \"\$n CUDA benchmarks selected\"; test \"\$n\" -ge 40 &&
    $PY -m pytest benchmarks $BENCH_ARGS -k 'test_se_gate and cpu and fused and fwd and not bwd and 7' \
      --benchmark-json='$OUT/logs/bench.json'"
fi

# 6a. SE's two CUDA variants forced (RECOGFAST_SE_VARIANT=fused, one CTA a sample, impl fused_1cta; =split, impl
# fused_split) at 56², 28², 14², 7² bf16 B=256, fwd and fwd+bwd: the headline step's "fused" ran the table's (or the
# default's) variant; both forced rows give tools/tuned_table.py its comparison whatever the table says.
bench_step se_fused 110 "SE variants forced (RECOGFAST_SE_VARIANT=fused, split)" \
  "cuda and test_se_gate and (fused_1cta or fused_split)" benchmarks/test_se_gate_bench.py

# 6b. the engine's training step: eager against the captured step of `recogfast train --cuda-graphs`
bench_step graphs 150 "engine train-step benchmarks (eager and --cuda-graphs)" "cuda and test_engine_train_step" \
  benchmarks/test_train_graphs_bench.py

# 6c. the flash MS loss (issue 26): its tile variants (RECOGFAST_MS_FLASH_TILE, read once per process: one pytest
# run each, all six set explicitly: the headline step ran the table's variant, and tools/tuned_table.py needs the
# default's rows too) at bf16 B = 16384, its forward's two forms (RECOGFAST_MS_FLASH_FWD=one, two; the rows above
# ran "auto"), then the batch sweep up to B = 1,000,000 and separated embeddings (few mined pairs: the flash
# backward skips all-zero weight blocks).
FLASH_TILE_SEL="cuda and tensor_cores and flash and bf16 and size3"
FLASH_SWEEP_SEL="cuda and (flash_batch_sweep or fwd_bwd_separated)"
MS_BENCH=benchmarks/test_ms_loss_bench.py
if [[ $GPU == 1 ]]; then
  step flash 300 "flash MS loss: tile variants 0-5; forward one / two passes; batch sweep to 10^6" -- bash -c "
    for v in 0 1 2 3 4 5; do RECOGFAST_MS_FLASH_TILE=\$v $PY -m pytest $MS_BENCH $BENCH_ARGS -k '$FLASH_TILE_SEL' \
      --benchmark-json='$OUT/logs/bench_flash_tile'\$v.json || exit 1; done
    for f in one two; do RECOGFAST_MS_FLASH_FWD=\$f $PY -m pytest $MS_BENCH $BENCH_ARGS -k '$FLASH_TILE_SEL' \
      --benchmark-json='$OUT/logs/bench_flash_fwd'\$f.json || exit 1; done
    $PY -m pytest $MS_BENCH $BENCH_ARGS -k '$FLASH_SWEEP_SEL' --benchmark-json='$OUT/logs/bench_flash_sweep.json'"
else
  n_flash=$(collect "($FLASH_TILE_SEL) or ($FLASH_SWEEP_SEL)")
  if [[ $n_flash -lt 0 ]]; then skip flash "deadline reached before the step"
  elif [[ $n_flash -ge 5 ]]; then skip flash "no GPU: $n_flash flash MS-loss benchmarks selected"
  else record flash failed 0 "the flash MS-loss selection names $n_flash benchmarks"; fi
fi

# 6d. the CUBS kernel variants, each read once per process (one pytest run each), at bf16 B = 64: Block 2's
# RECOGFAST_CUBS_SPATIAL_TILE = 0-3 (csrc/ops/cuda/cubs_spatial_passes.cuh: threads a block, rows a thread, staged tile
# of its two quadratic passes) at 56x56x64 and 28x28x128, fwd and fwd+bwd (impl fused_tileN beside fused = 0); then
# Block 1's RECOGFAST_CUBS_CHANNEL_THREADS = 128, 256, 512 (threads a sample of its head kernel) at 56x56x64 and
# 7x7x512 (impl fused_threadsN); then Block 1's one-CTA variant and the split path forced,
# RECOGFAST_CUBS_CHANNEL_VARIANT=fused / split (csrc/ops/cuda/cubs_channel_fused.cuh; impl fused_1cta / fused_split)
# at 56x56x64 (a cluster of 2 CTAs a sample), 28x28x128, 14x14x256, 7x7x512 at B = 64 and 2x2x512 at B = 256. Every
# value is set explicitly, the default included: the headline rows ran the table's values, and tools/tuned_table.py
# compares each candidate with the default's rows.
CUBS_TILE_SEL="cuda and test_cubs and cubs2 and fused and (stage0 or stage1)"
CUBS_THREADS_SEL="cuda and test_cubs and cubs1 and fused and (stage0 or stage3)"
CUBS_1CTA_SEL="cuda and test_cubs and cubs1 and fused and (stage0 or stage1 or stage2 or stage3 or stage7)"
CUBS_BENCH=benchmarks/test_cubs_bench.py
if [[ $GPU == 1 ]]; then
  step cubs_tiles 230 "CUBS kernel variants: Block 2 tiles 0-3, Block 1 threads 128-512, Block 1 one-CTA and split" -- bash -c "
    for v in 0 1 2 3; do RECOGFAST_CUBS_SPATIAL_TILE=\$v $PY -m pytest $CUBS_BENCH $BENCH_ARGS -k '$CUBS_TILE_SEL' \
      --benchmark-json='$OUT/logs/bench_cubs_tile'\$v.json || exit 1; done
    for t in 128 256 512; do RECOGFAST_CUBS_CHANNEL_THREADS=\$t $PY -m pytest $CUBS_BENCH $BENCH_ARGS -k '$CUBS_THREADS_SEL' \
      --benchmark-json='$OUT/logs/bench_cubs_threads'\$t.json || exit 1; done
    for v in fused split; do RECOGFAST_CUBS_CHANNEL_VARIANT=\$v $PY -m pytest $CUBS_BENCH $BENCH_ARGS -k '$CUBS_1CTA_SEL' \
      --benchmark-json='$OUT/logs/bench_cubs_1cta_'\$v.json || exit 1; done"
else
  n_tiles=$(collect "($CUBS_TILE_SEL) or ($CUBS_THREADS_SEL) or ($CUBS_1CTA_SEL)")
  if [[ $n_tiles -lt 0 ]]; then skip cubs_tiles "deadline reached before the step"
  # 4 Block 2, 4 Block 1 threads, 10 Block 1 one-CTA benchmarks, 4 of them (56x56, 7x7) also in the threads selection
  elif [[ $n_tiles -eq 14 ]]; then skip cubs_tiles "no GPU: $n_tiles CUBS Block 1 and 2 benchmarks selected, a run each variant"
  else record cubs_tiles failed 0 "the CUBS variant selections name $n_tiles benchmarks, not 14"; fi
fi

# 7. where the GPU time goes: kernel tables, launches per fwd+bwd, CUDA-graph replay vs eager
if [[ $GPU == 1 ]]; then
  step profile 75 "torch.profiler kernel tables, launches, CUDA-graph vs eager" -- $PY tools/gpu_profile.py \
    --json "$OUT/profile.json"
else
  step profile 60 "the profiler harness on the CPU (small; CPU ops only)" -- $PY tools/gpu_profile.py --device cpu \
    --small --json "$OUT/profile.json"
fi

# 8. torch.compile (default mode) of the references as the peer column
bench_step compiled 180 "torch.compile default-mode peers" "$COMPILED" $PEER_FILES

# 9. Nsight Compute: speed of light, memory, occupancy and warp stalls of the key recogfast kernels -- the flash MS
# loss's tiles (bf16 and 3xTF32; not its label and segment kernels) first, then Block 2, SE and Block 1 (tools/gpu_profile.py
# --ncu-driver) -- and, where this ncu knows them (--query-metrics), the tensor pipe's and the shared-memory pipe's
# utilisation and the shared-memory bank conflicts: the flash tiles' S product is predicted shared-memory bound (TF32,
# bf16) or tensor bound (3xTF32; RESULTS.md), which these settle.
NCU_KERNELS='regex:ms_flash_(fwd|gather|bwd)|se_gate|channel_gate|cubs_'
NCU_REFUSED='ERR_NVGPUCTRPERM|LibraryNotLoaded|Failed to initialize the profiler'  # the not-permitted cases below
NCU_WANT="sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active
  l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum"
if [[ $GPU == 1 ]] && command -v ncu >/dev/null; then
  step ncu 130 "Nsight Compute, key kernels (launch count 36)" -- bash -c "
    run_ncu() {  # EXTRA_ARGS...
      ncu --clock-control none --target-processes all --kernel-name '$NCU_KERNELS' --launch-count 36 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats \
        --section LaunchStats \"\$@\" --export '$OUT/logs/ncu' --force-overwrite $PY tools/gpu_profile.py --ncu-driver 2>&1 |
        tee -a '$OUT/logs/ncu_run.txt'
    }
    avail=\$(timeout 20 ncu --query-metrics 2>/dev/null)
    metrics=\$(for m in $(echo $NCU_WANT); do grep -q \"^\${m%%.*} \" <<<\"\$avail\" && printf '%s,' \"\$m\"; done)
    echo \"extra metrics: \${metrics:-none}\" | tee '$OUT/logs/ncu_run.txt'
    if [[ -n \$metrics ]]; then run_ncu --metrics \"\${metrics%,}\"; else run_ncu; fi
    if [[ -n \$metrics && ! -s '$OUT/logs/ncu.ncu-rep' ]] &&
      ! grep -qE '$NCU_REFUSED' '$OUT/logs/ncu_run.txt'; then  # not when the profiler itself is refused (below)
      echo 'no report with the extra metrics: again without them' | tee -a '$OUT/logs/ncu_run.txt'; run_ncu
    fi
    if grep -q ERR_NVGPUCTRPERM '$OUT/logs/ncu_run.txt'; then
      echo 'not permitted: ERR_NVGPUCTRPERM (no access to the GPU performance counters)' >'$OUT/logs/ncu.skip'; exit 0
    elif grep -qE 'LibraryNotLoaded|Failed to initialize the profiler' '$OUT/logs/ncu_run.txt'; then
      echo 'not permitted: the profiler does not initialise here (LibraryNotLoaded; gVisor?)' >'$OUT/logs/ncu.skip'; exit 0
    fi
    test -s '$OUT/logs/ncu.ncu-rep' || exit 3
    ncu --import '$OUT/logs/ncu.ncu-rep' --csv --page raw >'$OUT/ncu.csv' &&
    ncu --import '$OUT/logs/ncu.ncu-rep' --csv --page details >'$OUT/logs/ncu_details.csv'"
else
  skip ncu "no GPU or no ncu"
fi

# 10. torch.compile mode max-autotune, with what is left of the deadline
bench_step maxautotune 150 "torch.compile max-autotune peers" "$MAXAT" $PEER_FILES

# 11. the summary (always), with the variants' winners by tools/tuned_table.py (printed into logs/tuned.txt, not
# written: commit them afterwards with `python tools/tuned_table.py pick OUT --write` on the returned bench.jsonl)
$PY tools/tuned_table.py pick "$OUT" >"$OUT/logs/tuned.txt" 2>&1 || echo "tools/tuned_table.py failed" >>"$OUT/logs/tuned.txt"
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs 2>/dev/null
$PY tools/gpu_results.py summarize "$OUT" --mode "$MODE" --budget "$BUDGET" --seconds "$(($(date +%s) - START))"
rc=$?
rm -rf "$OUT/logs"
exit $rc
