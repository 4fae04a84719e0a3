#!/usr/bin/env bash
# Intent results: a wav2vec2 teacher fine-tuned for SLURP intents from the offline
# starting model, and four BiMamba2 students (CALD target, hybrid, waypoint; unguided),
# by default every model with the same number of updates, on the synthetic SLURP corpus
# (test voices and sentences unseen in training), then one table.
#   bash tools/intent_results.sh [SEED] [OUT]     (default 1, results/intent/seed<SEED>)
# EPOCHS: the teacher's epochs (default 2); STUDENT_EPOCHS: the students' (default
# EPOCHS). A waypoint student with fewer updates than the teacher follows its whole
# trajectory at the matching pace (waypoint_pace: auto). A finished model is kept
# whatever its settings: other EPOCHS or STUDENT_EPOCHS need an OUT of their own.
# Students run JOBS at a time (default 2), sharing the cores (JOBS=1: one by one).
# STAGES=teacher runs the teacher only (default teacher,students).
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-1}
OUT=${2:-results/intent/seed$SEED}
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-2}
CORES=$(nproc)
EPOCHS=${EPOCHS:-2}
CORPUS=data/pretrain/slurp_corpus
UPDATES=$((EPOCHS * 485))                  # 3,879 training utterances, batches of 8
S_EPOCHS=${STUDENT_EPOCHS:-$EPOCHS}
S_UPDATES=$((S_EPOCHS * 485))
bash tools/make_slurp_corpus.sh "$CORPUS"
common=(--data_folder "$CORPUS" --seed "$SEED"
        --feature_cache_folder data/pretrain/feature_cache --warmup_updates 100)
RECIPE=recipes/SLURP/intent
if [ ! -f "$OUT/runs/teacher/model/cald_info.json" ]; then   # STAGES: see above
    $PY $RECIPE/train.py $RECIPE/hparams/finetune.yaml "${common[@]}" \
        --number_of_epochs "$EPOCHS" --total_updates "$UPDATES" \
        --model_source models/pretrained-offline --waypoint_every 50 \
        --output_folder "$OUT/runs/teacher"
fi
TEACHER="$OUT/runs/teacher"
[[ ",${STAGES:-teacher,students}," == *,students,* ]] || exit 0
student() {  # mode, extra args...
    local mode=$1; shift
    [ -f "$OUT/runs/$mode/model/cald_info.json" ] && return 0
    OMP_NUM_THREADS=$((CORES / JOBS > 0 ? CORES / JOBS : 1)) \
    $PY $RECIPE/train.py $RECIPE/hparams/cald.yaml "${common[@]}" --mode "$mode" \
        --number_of_epochs "$S_EPOCHS" --total_updates "$S_UPDATES" --output_folder "$OUT/runs/$mode" "$@" > "$OUT/runs/$mode.log" 2>&1 \
        || { echo "student $mode failed: see $OUT/runs/$mode.log"; return 1; }
}
mkdir -p "$OUT/runs"
pids=()
for spec in "target --teacher_source $TEACHER/model" \
            "hybrid --teacher_source $TEACHER/model --switch_step $((S_UPDATES / 2))" \
            "waypoint --pretrained_source $TEACHER/initial --waypoint_dir $TEACHER/waypoints --waypoint_pace auto" \
            "unguided --teacher_source $TEACHER/model"; do
    # shellcheck disable=SC2086
    student $spec & pids+=($!)
    if [ ${#pids[@]} -ge "$JOBS" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done
$PY -m cald_speech.bench.runs "$TEACHER" "$OUT"/runs/{target,hybrid,waypoint,unguided} \
    --names teacher target hybrid waypoint unguided \
    --metrics intent_acc scenario_acc action_acc sa_acc --output-dir "$OUT/summary"
