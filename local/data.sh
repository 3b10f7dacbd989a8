#!/usr/bin/env bash
# Stage 1 data preparation: Kaldi-style dirs data/{train,dev,test_llamaq,test_webq}.
#
#   local/data.sh [--data_source demo|real] [--max_utts_per_set N] [--train_max_utts N]
#
# demo (default): the built-in spoken sets (no downloads): train/dev from the spoken-instruction
#   bank (--demo_train instructions) or the QA world's own questions (qa_world); the QA test
#   sets in the training voices and, as test_*_unseen, in held-out voices; spoken by CMU Flite
#   when installed (apt-get install flite), else by espeak-ng (--demo_voices).
# real: the paper's corpora from local copies named in db.sh:
#   train = first-turn VoiceAssistant-400K + spoken-alpaca-gpt4 (paper §2.2), minus a dev
#   split; test_llamaq = LLaMA Questions (test); test_webq = spoken Web Questions (test).
set -euo pipefail
. ./path.sh
. ./db.sh
. utils/log.sh

# ==== Options ====
data_source=demo        # demo | real
datadir=data            # output root
max_utts_per_set=       # demo: cap per set (smoke tests); empty = all
voices_per_utt=2        # demo: voices per training question
demo_train=instructions # demo: instructions (the paper's regime) | qa_world (the test format)
demo_voices=auto        # demo: auto (flite when installed, else espeak) | flite | espeak
train_max_utts=         # real: seeded subset per training corpus; empty = all
n_dev=500               # real: utterances held out of train for dev
skip_bad_utts=false     # real: skip (and count) broken rows instead of failing
seed=0                  # subset / split seed
help_message="$(. utils/help.sh && script_header "$0" && echo && options_help "$0")"
. utils/parse_options.sh

case "$data_source" in
  demo)
    opts=(--voices_per_utt "$voices_per_utt" --seed "$seed" --train_source "$demo_train"
          --voices "$demo_voices")
    [ -n "$max_utts_per_set" ] && opts+=(--max_utts_per_set "$max_utts_per_set")
    python -m espnet_ext.bin.prepare_demo --out_dir "$datadir" --wav_dir "$datadir/wav" "${opts[@]}"
    ;;
  real)
    for v in VOICEASSISTANT_400K SPOKEN_ALPACA_GPT4 LLAMA_QUESTIONS SPOKEN_WEB_QUESTIONS; do
      [ -n "${!v}" ] || { log "Error: set $v in db.sh (local copy of the corpus)"; exit 1; }
    done
    sub=(--skip_bad_utts "$skip_bad_utts" --seed "$seed")
    tsub=("${sub[@]}"); [ -n "$train_max_utts" ] && tsub+=(--max_utts "$train_max_utts")
    prep() { python -m espnet_ext.bin.prepare_corpus --corpus "$1" --src "$2" --split "$3" \
               --out_dir "$datadir/$4" --wav_dir "$datadir/wav/$4" "${@:5}"; }
    prep voiceassistant "$VOICEASSISTANT_400K" train train_va "${tsub[@]}"
    prep spoken_alpaca "$SPOKEN_ALPACA_GPT4" train train_alpaca "${tsub[@]}"
    prep llama_questions "$LLAMA_QUESTIONS" test test_llamaq "${sub[@]}"
    prep web_questions "$SPOKEN_WEB_QUESTIONS" test test_webq "${sub[@]}"
    python -m espnet_ext.bin.combine_data --src "$datadir/train_va" --src "$datadir/train_alpaca" \
      --out "$datadir/train" --held_out "$datadir/dev" --n_held_out "$n_dev" --seed "$seed"
    ;;
  *) log "Error: --data_source must be demo or real, got '$data_source'"; exit 1 ;;
esac
log "data ready under $datadir/"
