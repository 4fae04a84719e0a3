#!/usr/bin/env bash
# The committed starting model against a new build, on the same held-out test manifests
# (every engine's test voices, SLURP, the demo corpus, and the LJ test sentences with the
# synthesizer's default, harsher degradation shares), with both learning curves.
#   bash tools/starting_model_results.sh [BUILD] [OUT]
#     BUILD: the make_pretrained.sh output folder (default data/pretrain3), whose
#            fast/model is the new build; OUT: default docs/results (starting_models.*)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BUILD=${1:-data/pretrain3}
OUT=${2:-docs/results}
M=$BUILD/manifests
TESTS=()
for t in test test_espeak test_festival test_flite slurp_test demo_test test_degraded; do
    TESTS+=("$t=$M/$t.csv")
done
$PY -m cald_speech.bench.starting_models \
    --model "committed=${OLD_MODEL:-models/pretrained-offline}" "new=$BUILD/fast/model" \
    --test "${TESTS[@]}" \
    --curve "committed (recipe, 60 s batches)=docs/results/pretrained_runs.json" \
        "new (pretrain, 60 s batches)=$BUILD/fast/curve.json" \
    --output-dir "$OUT"
