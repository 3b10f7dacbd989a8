#!/usr/bin/env bash
# Bring your own checkpoints, recipe side: the trained systems of a run, exported as Hugging
# Face folders (Full-FT, Layer-LR: the LLM; LoRA: its peft adapter), compared with the base
# LLM by espnet_ext.bin.compare_checkpoints on stage 3's utterances with the speech LLM's
# prompt: the shift numbers equal stage 6's (exp/results/analysis.json). Needs stages 3-4.
#   local/compare_checkpoints.sh [--expdir exp] [--systems "full lora"] [--out_dir exp/compare]
#   local/compare_checkpoints.sh --args "--speech_exp_dir exp/full --speech_data_dir dump/train"
# Other models and data: call python -m espnet_ext.bin.compare_checkpoints directly (--help).
set -euo pipefail

# ==== Options ====
expdir=exp                      # the run's exp dir (exp/pretrained/llm, exp/importance/base, exp/<tag>)
systems="full layerlr lora"     # trained systems (exp/<tag>) compared with the base LLM
checkpoint=valid.loss.best.pth  # checkpoint of every system
data_dir=dump/train             # stage 3's scoring data (the base report's utterances are reused)
importance_config=conf/importance.yaml  # scoring, deactivation and analysis options (as stage 3/6)
mixed_precision=auto            # auto = the model preset's model_conf.mixed_precision, as stages 3/6
eval_dir=                       # held-out dump dir (e.g. dump/dev): Table 1 of every model; empty = none
ngpu=0                          # GPUs (--device cuda); > 1 runs torchrun, one process per GPU
out_dir=                        # default: <expdir>/compare
args=""                         # extra options for espnet_ext.bin.compare_checkpoints

help_message="$(. utils/help.sh && script_header "$0" && echo && options_help "$0")"
. utils/parse_options.sh
. ./path.sh
. utils/conf_get.sh

out_dir=${out_dir:-$expdir/compare}
if [ "$mixed_precision" = auto ]; then
  mixed_precision=$(conf_get "$expdir/pretrained/model.yaml" model_conf.mixed_precision none)
fi
device=cpu; [ "$ngpu" -gt 0 ] && device=cuda
launch=(python)
[ "$ngpu" -gt 1 ] && launch=(python -m torch.distributed.run --standalone --nproc_per_node "$ngpu")
extra=()
[ -n "$eval_dir" ] && extra=(--eval_data "$eval_dir")
tuned=()
for tag in $systems; do
  cfg=$expdir/$tag/config.yaml ckpt=$expdir/$tag/$checkpoint
  [ -f "$ckpt" ] || { echo "$0: $ckpt is missing (train $tag in stage 4)" >&2; exit 1; }
  if [ -n "$(conf_get "$cfg" lora_conf.r "")" ]; then
    hf=$expdir/$tag/export/adapter  # the peft adapter on the base (export/ also holds merged/)
    marker=$hf/adapter_config.json
    export=(espnet_ext.bin.export_lora --out_dir "$expdir/$tag/export")
  else
    hf=$expdir/$tag/hf
    marker=$hf/config.json
    export=(espnet_ext.bin.export_llm --out_dir "$hf")
  fi
  if [ ! -f "$marker" ] || [ "$ckpt" -nt "$marker" ]; then  # (re-)export after (re-)training
    python -m "${export[@]}" --config "$cfg" --model_file "$ckpt"
  fi
  tuned+=(--tuned "$tag=$hf")
done
# shellcheck disable=SC2086  # $args: word-split on purpose
"${launch[@]}" -m espnet_ext.bin.compare_checkpoints --config "$importance_config" \
  --base "$expdir/pretrained/llm" "${tuned[@]}" --data "$data_dir" --prompt recipe \
  --reuse_subset_from "$expdir/importance/base" --mixed_precision "$mixed_precision" \
  --device "$device" --out_dir "$out_dir" "${extra[@]}" $args
echo "wrote $out_dir/RESULTS.md"
