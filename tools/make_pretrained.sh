#!/usr/bin/env bash
# Builds the offline "pretrained" starting model (models/pretrained-offline). Seeded and
# resumable: run it again after an interruption and every finished stage is kept.
#   bash tools/make_pretrained.sh [OUT]            (default data/pretrain)
#   STAGES=corpora,frontend bash tools/make_pretrained.sh    (a subset of the stages)
#   HOLDOUT_ENGINE=festival bash tools/make_pretrained.sh data/pretrain_no_festival
#       the same build without any festival voice in training, tested on festival voices
# Stages:
#  corpora   three synthetic corpora: the demo's own (its dev/test sentences are kept out
#            of everything below), LJ Speech sentences in the LibriSpeech layout (train
#            voices = the demo's train voices; its dev/test voices = the demo's dev/test
#            voices), and SLURP sentences (tools/make_slurp_corpus.sh);
#  frontend  the CNN of hparams/models/tiny_wav2vec2.yaml fitted to log-mel filterbank
#            features (python -m cald_speech.frontend); a frozen random CNN makes the
#            transformer above it learn about ten times slower;
#  manifests one training manifest from both corpora's train splits, shuffled by the recipe
#            every epoch (data_format csv);
#  ctc       character CTC training of that model, CNN frozen (features cached), dynamic
#            batches, checkpoints ranked by CER on the held-out dev voices (the SpeechBrain
#            recipe; about 3 h on 2 CPU cores: how models/pretrained-offline was made);
#  fast      the same training with python -m cald_speech.pretrain instead (writes
#            $OUT/fast/model): the corpus held in memory, length-bucketed batches of
#            BATCH_S seconds, the frozen CNN's features of every utterance at speeds
#            0.9/1.0/1.1 (clean and noisy) computed once and kept in $OUT/fast, an
#            update-budget learning-rate schedule (warm-up, plateau, decay), SpecAugment
#            time and channel masks, bf16 on CUDA; resumable (run it again). On a GPU
#            (DEVICE=cuda): UPDATES=20000 or MINUTES=20; on the CPU, how the current
#            models/pretrained-offline was built (FRONTEND=models/pretrained-offline: the
#            CNN of the previous build, frozen there too; a 3,600-update run, then resumed
#            with the budget raised to 7,500 — the schedule follows the new budget):
#              STAGES=corpora,manifests bash tools/make_pretrained.sh data/pretrain3
#              for n in 3600 7500; do
#                FRONTEND=models/pretrained-offline STAGES=fast UPDATES=$n BATCH_S=60 \
#                  PRETRAIN_OPTS="--noisy-copies 0 --lr 1.5e-3 --eval-every 250 --warmup 500" \
#                  bash tools/make_pretrained.sh data/pretrain3; done
#  pack      (for training on another machine) the training and dev manifests' audio in
#            Opus shards at KBPS kbit/s (python -m cald_speech.data.pack): $OUT/pack holds
#            train.csv/dev.csv pointing into them; give those to `fast` there.
# It stands in for a self-supervised checkpoint, which cannot be downloaded here; it is
# not one.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-data/pretrain}
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-$(nproc)}
STAGES=${STAGES:-corpora,frontend,manifests,ctc}
EPOCHS=${EPOCHS:-10}
LJ_TRAIN=${LJ_TRAIN:-all}             # every usable LJ sentence outside dev, test, eval
# shares of the LJ training audio with noise / room reverberation / a telephone channel
NOISE_PROB=${NOISE_PROB:-0.25}
REVERB_PROB=${REVERB_PROB:-0.1}
TELEPHONE_PROB=${TELEPHONE_PROB:-0.05}
HOLDOUT_ENGINE=${HOLDOUT_ENGINE:-}
DEVICE=${DEVICE:-cpu}
BATCH_S=${BATCH_S:-240}
KBPS=${KBPS:-16}
DATA=${CALD_SPEECH_DATA:-../shared/data}
DEMO=${DEMO_DATA:-data/demo}          # where `make demo` keeps its corpus
CORPORA=${CORPORA:-data/pretrain}     # the corpora are shared by every build
want() { [[ ",$STAGES," == *",$1,"* ]]; }
mkdir -p "$OUT"

if want corpora; then
    $PY -m cald_speech.demo --scale small --data "$DEMO" --stages corpus
    # Sentences no split of the LJ corpus may use: the evaluation-only ones and the
    # demo's dev and test sentences.
    mkdir -p "$CORPORA"
    { cat "$DATA/eval/text/lj_heldout.tsv"
      cat "$DEMO"/corpus/LibriSpeech/{dev-clean,test-clean}/*/*/*.trans.txt \
        | awk '{id=$1; $1=""; sub(/^ /, ""); print "demo-" id "\t" $0}'
    } > "$CORPORA/keep_out.tsv"
    # seed 1 and the default voice options: the demo's voice split
    $PY -m cald_speech.data.synth librispeech --output-dir "$CORPORA/lj_corpus" \
        --train "$LJ_TRAIN" --dev 200 --test 200 --seed 1 --jobs "$JOBS" \
        --eval-text "$CORPORA/keep_out.tsv" --quiet --noise-prob "$NOISE_PROB" \
        --reverb-prob "$REVERB_PROB" --telephone-prob "$TELEPHONE_PROB"
    # the same dev/test sentences and voices with the synthesizer's default (harsher)
    # degradation shares: how well a model survives noise, reverberation, telephone
    $PY -m cald_speech.data.synth librispeech --output-dir "$CORPORA/lj_degraded" \
        --train 0 --dev 200 --test 200 --seed 1 --jobs "$JOBS" \
        --eval-text "$CORPORA/keep_out.tsv" --quiet
    bash tools/make_slurp_corpus.sh "$CORPORA/slurp_corpus"
fi
if want frontend && [ ! -f "$OUT/frontend/front_end_fit.json" ]; then  # a finished fit is kept
    $PY -m cald_speech.data.prepare slurp "$CORPORA/slurp_corpus" \
        --output-dir "$OUT/frontend_manifests" \
        --recording all --splits train devel
    $PY -m cald_speech.frontend --config hparams/models/tiny_wav2vec2.yaml \
        --train-csv "$OUT/frontend_manifests/train.csv" \
        --valid-csv "$OUT/frontend_manifests/devel.csv" \
        --out "$OUT/frontend" --steps 2000 --seed 7
fi

M=$OUT/manifests
TABLES=(--voice-tables "$CORPORA/lj_corpus" "$CORPORA/slurp_corpus")
DROP=()
[ -n "$HOLDOUT_ENGINE" ] && DROP=(--drop-voices "$HOLDOUT_ENGINE" "${TABLES[@]}")
ENGINES=(espeak festival flite)
if want manifests; then
    $PY -m cald_speech.data.prepare librispeech "$CORPORA/lj_corpus" --output-dir "$M/lj"
    $PY -m cald_speech.data.prepare slurp "$CORPORA/slurp_corpus" --output-dir "$M/slurp" \
        --recording all
    $PY -m cald_speech.data.prepare librispeech "$DEMO/corpus" --output-dir "$M/demo" \
        --splits dev-clean test-clean
    # merge OUT IN... [options]
    merge() { local out=$1; shift; $PY -m cald_speech.data.prepare merge "$@" --output "$out"; }
    merge "$M/train.csv" "$M/lj/train-clean-100.csv" "$M/slurp/train.csv" "${DROP[@]}"
    merge "$M/dev.csv" "$M/lj/dev-clean.csv" "${DROP[@]}"
    merge "$M/test.csv" "$M/lj/test-clean.csv"
    for e in "${ENGINES[@]}"; do      # the test voices of each engine
        merge "$M/test_$e.csv" "$M/lj/test-clean.csv" --keep-voices "$e" "${TABLES[@]}"
    done
    merge "$M/slurp_test.csv" "$M/slurp/test.csv"
    $PY -m cald_speech.data.prepare librispeech "$CORPORA/lj_degraded" --output-dir "$M/lj_degraded" \
        --splits test-clean
    merge "$M/test_degraded.csv" "$M/lj_degraded/test-clean.csv"
    merge "$M/demo_test.csv" "$M/demo/test-clean.csv"
fi

if want ctc; then
    # Dynamic batches of up to 60 s of audio: about 1.1 x (train hours x 60) updates per
    # epoch; the learning-rate schedule spans all epochs.
    UPDATES=$($PY -c "import csv,sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(round(1.1 * sum(float(r['duration']) for r in rows) / 60 * int(sys.argv[2])))" \
        "$M/train.csv" "$EPOCHS")
    $PY recipes/LibriSpeech/ASR/train.py recipes/LibriSpeech/ASR/hparams/finetune.yaml \
        --data_folder "$M" --data_format csv --seed 7 \
        --train_splits "[train]" --valid_splits "[dev]" \
        --test_splits "[test,test_espeak,test_festival,test_flite,slurp_test,demo_test]" --normalize_text true \
        --model_source "$OUT/frontend" \
        --output_folder "$OUT/run" --feature_cache_folder "$OUT/feature_cache" \
        --number_of_epochs "$EPOCHS" --dynamic_batching true --max_batch_seconds 60 \
        --lr_encoder 0.001 --lr_head 0.001 --warmup_updates 500 --total_updates "$UPDATES" \
        --waypoint_every null --best_metric CER
    echo "pretrained model: $OUT/run/model (the demo reads models/pretrained-offline: cp -r it there)"
fi

TESTS=()   # evaluated at the end (not where TRAIN_CSV points to a pack on another machine)
[ -z "${TRAIN_CSV:-}" ] && for t in test test_espeak test_festival test_flite slurp_test \
    demo_test test_degraded; do TESTS+=("$t=$M/$t.csv"); done
if want fast; then
    if [ -n "${MINUTES:-}" ]; then LENGTH=(--minutes "$MINUTES"); else LENGTH=(--updates "${UPDATES:-20000}"); fi
    # the CNN of the front end; everything above it trained from a seeded initialisation
    # PRETRAIN_OPTS: more options, e.g. "--lr 2e-3 --precision bf16 --eval-every 200"
    # shellcheck disable=SC2086
    $PY -m cald_speech.pretrain --init "${FRONTEND:-$OUT/frontend}" \
        --train-csv "${TRAIN_CSV:-$M/train.csv}" \
        --dev-csv "${DEV_CSV:-$M/dev.csv}" --out "$OUT/fast" --device "$DEVICE" --seed 7 \
        --batch-seconds "$BATCH_S" --noise-dir "$DATA/noise" "${LENGTH[@]}" \
        ${PRETRAIN_OPTS:-} ${TESTS[@]:+--test-csv "${TESTS[@]}"}
fi

if want pack; then
    $PY -m cald_speech.data.pack "$OUT/pack" "$M/train.csv" "$M/dev.csv" --kbps "$KBPS"
fi
