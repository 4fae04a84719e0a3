#!/usr/bin/env bash
# CPU speed results of docs/performance.md:
#   1. token mixers vs attention, forward, C = 768, T = 250 ... 30,000 frames, with the
#      SSD scan's GFLOP/s next to a plain matmul's and the oneDNN linear's;
#   2. wav2vec2-base: the one-pass and windowed teacher and two one-pass students
#      (BiMamba2, shared-projection BiMamba2), 10 and 60 minutes, all in one run;
#   3. wav2vec2-large: the same systems from 30 s to 5 minutes;
#   4. 2. again with --precision bf16;
#   5. what bf16 changes in the transcripts of the offline starting model (its LJ test).
# Each step is skipped when its JSON exists: run it again to finish an interrupted run.
# Run it alone on the machine: other load changes the timings.
#   bash tools/cpu_speed_results.sh [OUT]          (default results/cpu_speed)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/cpu_speed}
BENCH=${BENCH:-.venv/bin/cald-bench}
step() {  # step JSON command...
    local json=$1
    shift
    if [ -f "$json" ]; then
        echo "done: $json"
    else
        echo "== $(date '+%F %T') $*"
        "$@"
    fi
}
step "$OUT/mixers_fwd/mixers.json" $BENCH mixers --hidden 768 \
    --lengths 250 500 1000 2000 4000 7500 15000 30000 --mixers bimamba2 bimamba2_shared \
    --modes fwd --repeats 4 --output-dir "$OUT/mixers_fwd"
step "$OUT/base/speed.json" $BENCH speed --shape wav2vec2-base \
    --mixers bimamba2 bimamba2_shared --minutes 10 60 --time-cap 1200 --output-dir "$OUT/base"
step "$OUT/large/speed.json" $BENCH speed --shape wav2vec2-large-lv60 \
    --minutes 0.5 1 2 5 --time-cap 400 --output-dir "$OUT/large"
step "$OUT/base_bf16/speed.json" $BENCH speed --shape wav2vec2-base \
    --mixers bimamba2 bimamba2_shared --minutes 10 60 --precision bf16 --time-cap 1200 \
    --output-dir "$OUT/base_bf16"
if [ -f data/pretrain/manifests/test.csv ]; then
    step "$OUT/wer_bf16/wer.json" $BENCH wer --teacher models/pretrained-offline \
        --student models/pretrained-offline --student-precision bf16 \
        --csv data/pretrain/manifests/test.csv --output-dir "$OUT/wer_bf16"
else
    echo "skipped the bf16 transcripts: no data/pretrain/manifests/test.csv" \
         "(STAGES=corpora,manifests bash tools/make_pretrained.sh makes it)"
fi
echo "all done $(date '+%F %T')"
