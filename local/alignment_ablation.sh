#!/usr/bin/env bash
# Ablation of the two S2T alignment additions at the quick budget (Full-FT only):
#   nowarm: the paper's recipe (random adaptor)
#   mix:    --transcription_mix N (synthetic "repeat what the user said" data in stage 1)
# against the quick preset's adaptor warm-up (exp/full of ./run.sh).  Needs ./run.sh's
# stages 1-2 (data/, dump/); each variant writes its own exp dir and scores T2T and S2T.
#   local/alignment_ablation.sh [--num_mix 2000] [--decode_config conf/decode.yaml]
# Measured (2-core CPU, has_answer llamaq / webq): see README.md, "Adaptor warm-up".
set -euo pipefail

# ==== Options ====
num_mix=2000                    # synthetic utterances of the mix variant (--transcription_mix)
decode_config=conf/decode.yaml  # batch size and max_new_tokens of the decoding

help_message="$(. utils/help.sh && script_header "$0" && echo && options_help "$0")"
. utils/parse_options.sh
. ./path.sh
. utils/conf_get.sh

bs=$(conf_get "$decode_config" batch_size)
mnt=$(conf_get "$decode_config" max_new_tokens)
common=(--train_configs conf/train_full.yaml --adaptor_warmup false)
for variant in nowarm mix; do
  exp=exp_ablation_$variant
  extra=(); [ "$variant" = mix ] && extra=(--transcription_mix "$num_mix")
  ./run.sh "${common[@]}" "${extra[@]}" --expdir "$exp" --stage 2 --stop_stage 2
  ./run.sh "${common[@]}" "${extra[@]}" --expdir "$exp" --stage 4 --stop_stage 4
  io=() score=()
  for s in test_llamaq test_webq; do
    for m in text speech; do
      io+=(--modality "$m" --data_dir "dump/$s" --output_dir "$exp/full/decode_${s}_$m")
      score+=(--decode_dir "$exp/full/decode_${s}_$m" --ref_dir "dump/$s")
    done
  done
  python -m espnet_ext.bin.speechllm_inference --config "$exp/full/config.yaml" \
    --model_file "$exp/full/valid.loss.best.pth" --batch_size "$bs" --max_new_tokens "$mnt" "${io[@]}"
  python -m espnet_ext.bin.score_qa "${score[@]}"
done
