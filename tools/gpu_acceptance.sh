#!/usr/bin/env bash
# The GPU acceptance run: what a GPU machine must show before recipes train there.
#
#   bash tools/gpu_acceptance.sh              on a CUDA machine (one H100: ~8 minutes)
#   DRY_RUN=1 bash tools/gpu_acceptance.sh    the same steps on CPU at tiny sizes (CI)
#
# Steps (each with a time limit; a failed step is reported and the run goes on):
#   deps     install what the machine lacks from the wheels carried in $GPU_WHEELS
#            (build them with `make gpu-wheels` where there is internet; the GPU
#            machine downloads nothing), then say clearly what is still missing;
#   env      the machine and the versions            -> gpu_env.json
#   tests    tests/gpu: fp32 and bf16 parity, impl=auto dispatch, 12 heads in bf16, the
#            block-wise scan with carried states, > 100k frames, the dtypes at the
#            kernel call, bf16 precision check, CUDA waveforms -> gpu_tests.json
#   recipe   a tiny CALD recipe (target guidance, BiMamba2 student, ~30 updates) in
#            bf16 with the fused kernel forced; under torchrun on two GPUs where
#            there are two                            -> gpu_recipe.json (+ _ddp)
#   mixers   cald-bench mixers: fused vs PyTorch path vs SDPA, T up to 60,000
#                                                     -> gpu_mixers.json
#   speed    cald-bench speed: one-pass student vs one-pass and windowed teacher at 10
#            and 60 minutes (time, peak GPU memory)   -> gpu_speed.json
#   report   gpu_summary.json and gpu_acceptance.md (the table for the docs), targets
#            checked: fused scan >= 10x the PyTorch path at T = 30,000; student >= 5x
#            the one-pass teacher at 60 minutes and faster than the windowed one; the
#            student's peak GPU memory at 60 minutes <= 8 GiB.
#
# Environment: PYTHON (default python3; in a dry run .venv/bin/python), OUT_DIR (default
# docs/results; in a dry run $WORK_DIR/results), WORK_DIR (default build/gpu-acceptance,
# or build/gpu-acceptance-dry), GPU_WHEELS (default build/gpu-wheels).
# Exit status: 0 when every step ran and every judged target was met.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${DRY_RUN:-0}
if [ "$DRY" = 1 ]; then
    WORK=${WORK_DIR:-build/gpu-acceptance-dry}
    PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
else
    WORK=${WORK_DIR:-build/gpu-acceptance}
    PY=${PYTHON:-python3}
fi
OUT=${OUT_DIR:-$( [ "$DRY" = 1 ] && echo "$WORK/results" || echo docs/results )}
WHEELS=${GPU_WHEELS:-build/gpu-wheels}
HELP=tools/gpu_acceptance.py
RECIPE=recipes/LibriSpeech/ASR
case "$WORK" in "" | / | . | ..) echo "error: WORK_DIR=$WORK would be wiped" >&2; exit 2 ;; esac
rm -rf "$WORK"
mkdir -p "$WORK" "$OUT"
WORK=$(cd "$WORK" && pwd)
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export HF_HUB_OFFLINE=1 TRITON_CACHE_DIR="$WORK/triton-cache"
: > "$WORK/steps.tsv"

step() {  # step NAME SECONDS command...: runs it with a time limit, records the outcome
    local name=$1 limit=$2 start=$SECONDS status=ok
    shift 2
    echo "== $(date '+%T') $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1 || status="failed($?)"
    [ "$status" = ok ] || tail -n 30 "$WORK/$name.log"
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >> "$WORK/steps.tsv"
    echo "   $name: $status in $((SECONDS - start))s"
}

# -- deps: install from the carried wheels what this Python lacks ---------------------
deps() {
    "$PY" $HELP deps && return 0
    [ "$DRY" = 1 ] && return 1  # a dry run installs nothing: it reports
    if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl > /dev/null 2>&1; then
        echo "installing from $WHEELS (no index, no network)"
        if [ ! -x "$WORK/venv/bin/python" ]; then
            "$PY" -m venv --system-site-packages "$WORK/venv" || return 1
        fi
        PY=$WORK/venv/bin/python
        # Without dependencies: the wheelhouse is the closure already, less what the
        # machine brings (and mamba-ssm's unused dependencies); the check below names
        # anything still missing.
        "$PY" -m pip install -q --no-index --no-deps "$WHEELS"/*.whl
    else
        echo "no wheels in $WHEELS: build them where there is internet (make gpu-wheels) and" \
             "carry $WHEELS with the working tree"
    fi
    "$PY" $HELP deps
}
start=$SECONDS
if deps > "$WORK/deps.log" 2>&1; then status=ok; else status=failed; fi
[ -x "$WORK/venv/bin/python" ] && PY=$WORK/venv/bin/python
# A dry run goes on without the fused kernel (its steps take the PyTorch path on CPU).
[ "$status" != ok ] && [ "$DRY" = 1 ] && status="ok (dry run: $(grep -c '^missing' "$WORK/deps.log") missing)"
printf 'deps\t%s\t%s\n' "$status" "$((SECONDS - start))" >> "$WORK/steps.tsv"
cat "$WORK/deps.log"
if [ "$status" != ok ] && [ "$DRY" != 1 ]; then
    echo "error: the run needs the packages listed above; nothing else was run" >&2
    "$PY" $HELP env "$OUT/gpu_env.json" 2>/dev/null
    exit 2
fi

# -- env --------------------------------------------------------------------------------
step env 60 "$PY" $HELP env "$OUT/gpu_env.json"

# -- sizes: the GPU run, or the same steps on CPU at tiny sizes -------------------------
if [ "$DRY" = 1 ]; then
    DEV=cpu PREC=fp32 IMPL=torch BACKEND=gloo NPROC=2 ITEMS=12 BATCH=4
    T_EPOCHS=1 S_EPOCHS=2 CFG_FLAG=--tiny
    MIXERS=(--devices cpu --hidden 64 --lengths 64 128 --modes fwd --repeats 1 --no-plot)
    SPEED=(--shape wav2vec2-base --tiny --minutes 0.05,0.1 --device cpu --in-process --no-plot)
else
    DEV=cuda PREC=bf16 IMPL=fused BACKEND=nccl ITEMS=48 BATCH=8
    T_EPOCHS=2 S_EPOCHS=5 CFG_FLAG=
    NPROC=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
    MIXERS=(--devices cuda --hidden 768 --lengths 1000 4000 15000 30000 60000
            --modes fwd fwdbwd --repeats 3 --no-plot)
    SPEED=(--shape wav2vec2-base --minutes 10,60 --device cuda --precision bf16
           --time-cap 150 --no-plot)
fi

# -- tests/gpu ----------------------------------------------------------------------------
step tests 180 "$PY" -m pytest -q -p no:cacheprovider tests/gpu -o addopts="" \
    --junitxml "$WORK/gpu_tests.xml"
[ -f "$WORK/gpu_tests.xml" ] && "$PY" $HELP junit "$WORK/gpu_tests.xml" "$OUT/gpu_tests.json"

# -- a tiny CALD recipe: teacher fine-tuned briefly, then the student distilled ----------
DATA=$WORK/data
"$PY" $HELP corpus "$DATA" --items "$ITEMS"
"$PY" $HELP model-config "$WORK/model.yaml" $CFG_FLAG
COMMON=(--data_folder "$DATA" --feature_cache_folder "$WORK/cache" --batch_size "$BATCH"
        --device "$DEV" --precision "$PREC" --log_every 1 --warmup_updates 2
        --ckpt_interval_minutes 0 --sorting ascending)
step teacher 120 "$PY" $RECIPE/train.py $RECIPE/hparams/finetune.yaml "${COMMON[@]}" \
    --output_folder "$WORK/teacher" --model_config "$WORK/model.yaml" --waypoint_every null \
    --number_of_epochs "$T_EPOCHS" --total_updates 100
EXTRA=()
run_cald() {  # run_cald NAME launcher...   (recipe options beyond COMMON in EXTRA)
    local name=$1 start=$SECONDS
    shift
    step "$name" 150 env CALD_SSD_IMPL=$IMPL "$@" $RECIPE/train.py $RECIPE/hparams/cald.yaml \
        "${COMMON[@]}" --mode target --teacher_source "$WORK/teacher/model" \
        --output_folder "$WORK/$name" --number_of_epochs "$S_EPOCHS" --total_updates 100 \
        "${EXTRA[@]}"
    [ -f "$WORK/$name/steps.jsonl" ] && "$PY" $HELP recipe "$WORK/$name" "$OUT/gpu_$name.json" \
        --label "$name: $DEV, $PREC, SSD $IMPL" --seconds "$((SECONDS - start))"
}
run_cald recipe "$PY"
if [ "${NPROC:-0}" -ge 2 ]; then
    EXTRA=(--distributed_backend "$BACKEND")
    run_cald recipe_ddp "$PY" -m torch.distributed.run --nproc_per_node=2 \
        --master_port=$((29500 + RANDOM % 1000))
else
    echo "recipe_ddp: skipped (one GPU)"
fi

# -- benchmarks -------------------------------------------------------------------------
step mixers 150 "$PY" -m cald_speech.bench.cli mixers --mixers bimamba2 "${MIXERS[@]}" \
    --out-dir "$WORK/mixers"
[ -f "$WORK/mixers/mixers.json" ] && cp "$WORK/mixers/mixers.json" "$OUT/gpu_mixers.json"
step speed 240 "$PY" -m cald_speech.bench.cli speed "${SPEED[@]}" --out-dir "$WORK/speed"
[ -f "$WORK/speed/speed.json" ] && cp "$WORK/speed/speed.json" "$OUT/gpu_speed.json"

# -- report -------------------------------------------------------------------------------
"$PY" $HELP report "$WORK" "$OUT"
