#!/usr/bin/env bash
# GenDistiller results: three layer students of one teacher (DistilHuBERT baseline,
# GenDistiller with two-dimensional attention, linear-time GenDistiller with BiMamba2),
# then CTC probes of each and of the teacher's own layers, on held-out voices.
# Resumable: run it again and finished runs are kept, unfinished ones resume.
#   bash tools/gendistiller_results.sh [OUT]           (default results/gendistiller)
# Env: TEACHER (default models/pretrained-offline), LJ (an LJ corpus's manifests, from
# STAGES=corpora,manifests bash tools/make_pretrained.sh), TRAIN_N (training utterances,
# 2000), EPOCHS (3), PROBE_EPOCHS (2), LAYERS ("[2, 3, 4]": of a 4-layer teacher).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/gendistiller}
PY=${PY:-.venv/bin/python}
TEACHER=${TEACHER:-models/pretrained-offline}
LJ=${LJ:-data/pretrain/manifests/lj}
TRAIN_N=${TRAIN_N:-2000}
EPOCHS=${EPOCHS:-3}
PROBE_EPOCHS=${PROBE_EPOCHS:-2}
LAYERS=${LAYERS:-[2, 3, 4]}
SEED=${SEED:-1}
DATA=$OUT/data
mkdir -p "$DATA"
if [ ! -f "$DATA/test.csv" ]; then
    # a seeded subset of the training voices; dev for model selection; test: held-out voices
    $PY - "$LJ" "$DATA" "$TRAIN_N" <<'PYEOF'
import csv, random, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for split, name, keep in (("train-clean-100", "train", n), ("dev-clean", "dev", 100),
                          ("test-clean", "test", None)):
    with open(f"{src}/{split}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if keep is not None and keep < len(rows):
        rows = random.Random(1).sample(rows, keep)
    with open(f"{dst}/{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
PYEOF
fi
COMMON=(--data_folder "$DATA" --data_format csv --train_splits "[train]" --valid_splits "[dev]"
        --test_splits "[test]" --feature_cache_folder "$OUT/feature_cache" --seed "$SEED"
        --device cpu)
BIMAMBA=$PWD/hparams/mixers/bimamba2.yaml
distill() {  # name, extra options
    local name=$1; shift
    [ -f "$OUT/$name/model/gendistiller.json" ] && return 0
    $PY recipes/LibriSpeech/distill/train.py recipes/LibriSpeech/distill/hparams/distill.yaml \
        "${COMMON[@]}" --output_folder "$OUT/$name" --teacher_source "$TEACHER" \
        --target_layers "$LAYERS" --encoder_layers 1 --generator "{depth: 1, dropout: 0.1}" \
        --number_of_epochs "$EPOCHS" --total_updates 2000 --warmup_updates 100 \
        --lr_encoder 0.0005 --lr_head 0.0005 "$@"
}
probe() {  # name, upstream, extra options
    local name=$1 upstream=$2; shift 2
    [ -f "$OUT/probe_$name/model/probe.json" ] && return 0
    $PY recipes/LibriSpeech/probe/train.py recipes/LibriSpeech/probe/hparams/probe.yaml \
        "${COMMON[@]}" --output_folder "$OUT/probe_$name" --upstream_source "$upstream" \
        --number_of_epochs "$PROBE_EPOCHS" --normalize_text true "$@"
}
distill distilhubert --mode distilhubert
distill gendistiller --mode gendistiller
distill gendistiller_linear --mode gendistiller --mixer "$BIMAMBA"
probe teacher "$TEACHER" --probe_layers "$LAYERS"
for s in distilhubert gendistiller gendistiller_linear; do
    probe "$s" "$OUT/$s/model"
done
echo "done: $OUT"
