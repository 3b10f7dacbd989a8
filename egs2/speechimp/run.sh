#!/usr/bin/env bash
# speechimp recipe: why speech fine-tuning erodes an LLM's text abilities, and how to stop it.
# (Wang, Zheng, Ai, Ling: "Understanding Textual Capability Degradation in Speech LLMs via
# Parameter Importance Analysis"; LLaMA-Omni stage-1 training on ESPnet.)
#
#   ./run.sh                                   # stages 1-6 on the built-in offline demo (preset quick)
#   ./run.sh --preset full                     # the paper's recipe without additions, 3x the steps
#   ./run.sh --stage 3 --stop_stage 6          # importance → train → decode → score
#   ./run.sh --model_preset conf/model/llama32_1b_whisper_large_v3.yaml --data_source real --ngpu 1
#
# Stages (each one idempotent; logs under exp/):
#   1 data        local/data.sh                     -> data/<set>/ (Kaldi style)
#   2 pretrained  preset sources -> HF folders; audio checked (16 kHz), frozen-encoder outputs
#                 cached (unless the model preset encodes on the fly: encoder_conf.cache_features)
#                                                   -> exp/pretrained/, dump/<set>/
#   3 importance  base-LLM importance (eq. 2) + deactivation check (Table 1)
#                                                   -> exp/importance/base/
#   4 train       one ESPnet run per conf/train_*.yaml in --train_configs
#                                                   -> exp/<tag>/
#   5 decode      T2T for No-FT; T2T + S2T for every trained system
#                                                   -> exp/<tag>/decode_<set>_<modality>/
#   6 score       QA accuracy (has_answer, contain); importance of every trained system,
#                 its shift, rank clustering, parameter changes (Fig. 1-4); RESULTS.md
#                                                   -> exp/results/, exp/importance/<tag>/,
#                                                      RESULTS.md + figures/ beside it
set -euo pipefail

# ==== Options: each one is also a command-line option (--name value); --help lists them ====

# ---- General ----------------------------------------------------------------------------------
stage=1                  # first stage to run
stop_stage=6             # last stage to run
preset=quick             # conf/preset/<name>.yaml: quick (<= 20 min on 2 CPU cores, adds the
                         # adaptor warm-up) | full (the paper's recipe, no additions)
datadir=data             # Kaldi-style data dirs
dumpdir=dump             # checked audio lists, shape files, cached encoder outputs
expdir=exp               # experiments
results_md=RESULTS.md    # generated results file (stage 6)

# ---- Data -------------------------------------------------------------------------------------
data_source=demo         # demo: built-in spoken QA world; real: corpora named in db.sh
demo_max_utts=           # demo: cap utterances per set (smoke tests); empty = all
demo_train=instructions  # demo train/dev: instructions (spoken requests with assistant responses,
                         # the paper's regime) | qa_world (the test sets' short-answer format)
demo_voices=auto         # demo: auto (CMU Flite when installed, else espeak-ng) | flite | espeak
local_data_opts=""       # extra options for local/data.sh
                         # (e.g. "--train_max_utts 20000 --n_dev 500")
train_set=train          # training data dir under data/
valid_set=dev            # validation data dir under data/
test_sets="test_llamaq test_webq"  # decoded and scored sets
unseen_test_sets=auto    # speech-only test sets (S2T and cascade; T2T would repeat test_sets):
                         # auto = demo: test_llamaq_unseen (held-out voices; stage 1 also makes
                         # test_webq_unseen, which "test_llamaq_unseen test_webq_unseen" adds); real: none
skip_bad_utts=false      # skip (and count) unreadable/invalid utterances instead of failing
long_audio=truncate      # audio longer than the encoder window: truncate | reject

# ---- Model and its parameter importance -------------------------------------------------------
model_preset=conf/model/smollm2_135m_whisper_tiny.yaml  # which pretrained models (conf/model/)
importance_config=conf/importance.yaml  # importance scoring (stage 3) and analysis (stage 6) options
importance_sharding=""   # FSDP2-shard the model of the importance jobs (stages 3, 6; needs > 1 process,
                         # as --train_sharding), e.g. "engine=fsdp2,param_dtype=float32": eq. 2,
                         # thresholds and Table 1 on the shards; empty = every rank holds the model

# ---- Training (stage 4) -----------------------------------------------------------------------
train_configs="conf/train_full.yaml conf/train_layerlr.yaml conf/train_lora.yaml"
                         # space-separated; tag = file name minus train_ and .yaml: Full-FT and the
                         # paper's two mitigations (eq. 3 layer-wise lr, LoRA); layerlr reads stage 3's
                         # $expdir/importance/base. Ours (importance-weighted anchoring, not in the
                         # default: it costs 5 min): add conf/train_impanchor.yaml. LoRA rank ablation
                         # (Table 3): add conf/train_lora_r16.yaml conf/train_lora_r24.yaml (lora is r 8)
seeds=""                 # training seeds: empty = the preset's recipe.seeds (none: the configs' own);
                         # "0 1 2" = one run per config and seed (tag <tag> for the first,
                         # <tag>_seed<N> for the others; RESULTS.md pools the runs of a system and
                         # records their spread)
ngpu=0                   # GPUs of every model job (stages 2-6; 0 = CPU): --device cuda; > 1 runs
                         # torchrun, one process per GPU (NCCL): training, importance, decoding and
                         # the cascade are sharded across them; the feature dump and warm-up use one
nproc=1                  # with --ngpu 0: processes per sharded job; > 1 runs torchrun (gloo)
train_args=""            # extra options for espnet_ext.bin.speechllm_train
train_sharding=""        # FSDP2-sharded training (needs > 1 process: --ngpu > 1 or --nproc > 1), e.g.
                         # "engine=fsdp2" (bf16 compute, fp32 shards); empty = ESPnet's DDP. For the 8B
                         # preset's Full-FT; checkpoints: checkpoint.dcp/ + the usual <N>epoch.pth

# ---- Decoding (stage 5) -----------------------------------------------------------------------
decode_config=conf/decode.yaml  # batch size, max_new_tokens, model checkpoint to use
decode_args=""           # extra options for espnet_ext.bin.speechllm_inference
t2t_chat=true            # T2T also in the LLM's own chat template (decode_<set>_chat), besides the
                         # speech LLM's prompt (decode_<set>_text): the paper does not say which
                         # prompt its T2T column uses; RESULTS.md checks its claims under both
cascade=true             # also decode the cascade baseline (an addition to the paper's systems,
                         # the S2T bar): Whisper's own decoder transcribes, the No-FT LLM answers

# ---- Additions to the paper's recipe ----------------------------------------------------------
# Things the paper does not do: all off with --preset full; --preset quick adds the warm-up.
adaptor_warmup=          # CTC warm-up of the adaptor in stage 2, used as init_param in stage 4
                         # (true | false; empty = the preset's: quick true, full false)
warmup_config=conf/warmup.yaml  # adaptor warm-up options (with --adaptor_warmup true); its
                                # alignment_conf shapes --transcription_mix
transcription_mix=0      # N synthetic broad-vocabulary utterances, answered with their transcript
                         # ("Please repeat what the user said."), mixed into stage-1 training
                         # (0 = off)

help_message="$(. utils/help.sh && script_header "$0" && echo && options_help "$0")"
run_args=""              # the command line (shell-quoted), recorded in RESULTS.md and exp/run.sh.cmd
[ $# -eq 0 ] || { run_args=$(printf '%q ' "$@"); run_args=${run_args% }; }
. ./path.sh
. ./cmd.sh
. utils/log.sh
. utils/conf_get.sh
. utils/parse_options.sh

preset_file=conf/preset/$preset.yaml
if [ ! -f "$preset_file" ]; then
  echo "run.sh: --preset $preset: no $preset_file" \
    "(presets: $(ls conf/preset | sed 's/\.yaml$//' | paste -sd ' ' -))" >&2
  exit 1
fi
warmup_from_preset=false
if [ -z "$adaptor_warmup" ]; then
  adaptor_warmup=$(conf_get "$preset_file" recipe.adaptor_warmup)
  warmup_from_preset=true
fi
[ -n "$seeds" ] || seeds=$(conf_get "$preset_file" recipe.seeds "")
if [ "$unseen_test_sets" = auto ]; then
  unseen_test_sets=""
  [ "$data_source" = demo ] && unseen_test_sets="test_llamaq_unseen"  # one: the 20-min budget
fi
for _opt in adaptor_warmup t2t_chat cascade; do
  case ${!_opt} in
    true|false) ;;
    *) echo "run.sh: --$_opt must be true or false, got '${!_opt}'" >&2; exit 1;;
  esac
done
for _opt in ngpu nproc; do
  case ${!_opt} in
    ''|*[!0-9]*) echo "run.sh: --$_opt must be a whole number, got '${!_opt}'" >&2; exit 1;;
  esac
done
unset _opt
[ "$nproc" -ge 1 ] || { echo "run.sh: --nproc must be at least 1, got '$nproc'" >&2; exit 1; }
for _opt in $seeds; do
  case $_opt in
    ''|*[!0-9]*) echo "run.sh: --seeds must list whole numbers, got '$seeds'" >&2; exit 1;;
  esac
done
[ "$(printf '%s\n' $seeds | sort | uniq -d)" = "" ] ||
  { echo "run.sh: --seeds lists a seed twice: '$seeds'" >&2; exit 1; }

# ---- where the frozen encoder's outputs come from: the model preset's choice ----------------
# true: stage 2 caches them (dump/<set>/enc_feats.scp), the jobs read the cache; false: on the
# fly, the jobs read the 16 kHz audio (dump/<set>/wav.scp) and run the encoder on each batch
cache_features=$(conf_get "$model_preset" encoder_conf.cache_features true)
case $cache_features in
  true|false) ;;
  *) echo "run.sh: $model_preset: encoder_conf.cache_features must be true or false," \
       "got '$cache_features'" >&2; exit 1;;
esac
if [ "$cache_features" = false ]; then
  # the two additions built for the CPU demo hold cached features (the warm-up: every training
  # utterance's, in memory)
  if [ "$transcription_mix" -gt 0 ]; then
    echo "run.sh: --transcription_mix needs cached encoder features, and $model_preset encodes on" \
      "the fly (encoder_conf.cache_features: false); leave it at 0" >&2
    exit 1
  fi
  if [ "$adaptor_warmup" = true ] && [ "$warmup_from_preset" = false ]; then
    echo "run.sh: --adaptor_warmup true needs cached encoder features, and $model_preset encodes on" \
      "the fly (encoder_conf.cache_features: false); use --adaptor_warmup false" >&2
    exit 1
  fi
  adaptor_warmup=false  # the recipe preset's warm-up: skipped (logged once the run starts)
fi

# ---- devices and launchers of the model jobs (stages 2-6) ---------------------------------
# --ngpu N > 0: every job computes on --device cuda (under torchrun each rank takes
# cuda:$LOCAL_RANK) and the sharded jobs (training, importance scoring, decoding, the cascade,
# the analysis) run N processes, one per GPU, under torchrun (NCCL); --ngpu 0: the CPU, and
# --nproc processes (> 1: torchrun, gloo). The feature dump and the warm-up run one process.
if [ "$ngpu" -gt 0 ]; then
  if [ "$nproc" -gt 1 ] && [ "$nproc" -ne "$ngpu" ]; then
    echo "run.sh: --nproc $nproc with --ngpu $ngpu: on GPUs a job runs one process per GPU" \
      "(--ngpu processes); leave --nproc at 1" >&2
    exit 1
  fi
  device=cuda job_nproc=$ngpu
  gpu_cmd="${cuda_cmd} --gpu $ngpu"      # a sharded job: all the GPUs
  gpu1_cmd="${cuda_cmd} --gpu 1"         # a one-process job: one GPU
else
  device=cpu job_nproc=$nproc
  gpu_cmd=${train_cmd} gpu1_cmd=${train_cmd}
fi
# the launcher of a sharded job, followed by the module name: python -m, or torchrun -m
sharded=(python -m)
[ "$job_nproc" -gt 1 ] && sharded=(torchrun --standalone --nproc_per_node "$job_nproc" -m)
for _opt in train_sharding importance_sharding; do
  if [ -n "${!_opt}" ] && [ "$job_nproc" -le 1 ]; then
    echo "run.sh: --$_opt needs more than one process (--ngpu > 1, or --ngpu 0 --nproc > 1)" >&2
    exit 1
  fi
done
unset _opt
# the importance jobs' sharding option (stages 3, 6)
importance_shard_opts=()
[ -n "$importance_sharding" ] && importance_shard_opts=(--sharding_conf "$importance_sharding")

mkdir -p "$expdir"

# ---- one run per exp dir at a time ------------------------------------------------------------
# An exclusive flock(1) lock on $expdir/.run.lock, held on fd 9 until this run ends (taken after
# option parsing, so --help and bad options never wait for it). Every job this run starts
# inherits fd 9, which is intended: a job still running after its run.sh was killed keeps the
# dir busy. The kernel releases the lock when the last process holding it exits, so a killed
# run leaves no stale lock: the next run simply takes it over and overwrites .run.lock.info
# (the holder's pid, host, start time and command line, shown to whoever finds the dir busy).
lock_expdir() {
  local lock=$expdir/.run.lock info=$expdir/.run.lock.info
  if ! command -v flock >/dev/null 2>&1; then
    echo "run.sh: warning: flock (util-linux) not found; $expdir is not locked against" \
      "concurrent runs" >&2
    return 0
  fi
  exec 9>>"$lock"
  if ! flock -n 9; then
    local holder="another run (no details in $info)" pid host since cmd
    if [ -s "$info" ]; then
      pid=$(sed -n 's/^pid=//p' "$info"); host=$(sed -n 's/^host=//p' "$info")
      since=$(sed -n 's/^start=//p' "$info"); cmd=$(sed -n 's/^command=//p' "$info")
      holder="pid ${pid:-?} on host ${host:-?} since ${since:-?} (${cmd:-?})"
      # its run.sh gone but the lock still held: a job it started is still running
      if [ "$host" = "$HOSTNAME" ] && [ -n "$pid" ] &&
         ! kill -0 "$pid" 2>/dev/null && ! ps -p "$pid" >/dev/null 2>&1; then
        holder+=" [that run.sh has exited; a job it started still runs and holds the lock]"
      fi
    fi
    echo "run.sh: ${expdir%/}/ is in use by $holder; wait for it or use another --expdir" >&2
    exit 1
  fi
  local tmp=$info.tmp.$$  # one writer: the lock holder
  printf 'pid=%s\nhost=%s\nstart=%s\ncommand=%s\n' "$$" "$HOSTNAME" "$(date -u +%FT%TZ)" \
    "${0//$'\n'/ } ${run_args//$'\n'/ }" >"$tmp"
  mv -f "$tmp" "$info"
}
lock_expdir

[ "$cache_features" = false ] && [ "$warmup_from_preset" = true ] &&
  log "$model_preset encodes on the fly (encoder_conf.cache_features: false): no adaptor warm-up" \
    "(it trains on cached features); the paper's recipe has none"
stage_times=$expdir/stage_times.tsv
# a re-runnable record of how this experiment was produced
printf '%s\n' "cd $(pwd) && $0 $run_args" >>"$expdir/run.sh.cmd"

tag_of() { local b; b=$(basename "$1" .yaml); echo "${b#train_}"; }
# trained_runs: one "CONF TAG SEED" line per training run (SEED "-": the config's own seed):
# each --train_configs file once, or once per --seeds value (the first keeps the plain tag)
trained_runs() {
  local conf s first
  for conf in $train_configs; do
    if [ -z "$seeds" ]; then echo "$conf $(tag_of "$conf") -"; continue; fi
    first=true
    for s in $seeds; do
      if $first; then echo "$conf $(tag_of "$conf") $s"; first=false
      else echo "$conf $(tag_of "$conf")_seed$s $s"; fi
    done
  done
}
trained_tags() { trained_runs | cut -d' ' -f2 | paste -sd' ' -; }
all_sets() { echo "$train_set $valid_set $test_sets $unseen_test_sets"; }

# require_outputs STAGE MADE_BY WHAT PATH...: stage STAGE reads PATH..., which stage MADE_BY
# writes (WHAT, when not empty, says what they are, or the option that asks for them): die
# naming the first missing one and the stage to run, before the stage starts any job.
require_outputs() {
  local stage=$1 made_by=$2 what=$3 p
  shift 3
  for p in "$@"; do
    [ -e "$p" ] && continue
    echo "run.sh: stage $stage needs $p${what:+ ($what)}, which stage $made_by writes;" \
      "run ./run.sh --stage $made_by --stop_stage $made_by first (same options)" >&2
    exit 1
  done
}
# require_dumps STAGE SET...: stage 2's dump dir of each SET (written whole or not at all), made
# for this model preset's encoder mode: cached features (enc_feats.scp) or on the fly (the
# checked 16 kHz audio of wav.scp; its dump_report.json marks the finished dump)
require_dumps() {
  local stage=$1 s files=() made
  shift
  for s in "$@"; do
    if [ "$cache_features" = true ]; then files+=("$dumpdir/$s/enc_feats.scp")
    else files+=("$dumpdir/$s/dump_report.json"); fi
  done
  require_outputs "$stage" 2 "" "${files[@]}"
  for s in "$@"; do
    [ -f "$dumpdir/$s/dump_report.json" ] || continue
    made=$(conf_get "$dumpdir/$s/dump_report.json" cache_features true)
    [ "$made" = "$cache_features" ] && continue
    echo "run.sh: stage $stage needs $dumpdir/$s made with encoder_conf.cache_features" \
      "$cache_features ($model_preset), but it was made with $made; run ./run.sh --stage 2" \
      "--stop_stage 2 first (same options: it redoes such a dump)" >&2
    exit 1
  done
}

# ---- stage 1: data --------------------------------------------------------------------------
stage1() {
  stage_header 1 "local/data.sh ($data_source) -> $datadir/{$(all_sets | tr ' ' ,)}"
  local opts=(--data_source "$data_source" --datadir "$datadir" --skip_bad_utts "$skip_bad_utts")
  [ -n "$demo_max_utts" ] && opts+=(--max_utts_per_set "$demo_max_utts")
  [ "$data_source" = demo ] && opts+=(--demo_train "$demo_train" --demo_voices "$demo_voices")
  # shellcheck disable=SC2086
  ${train_cmd} "$expdir/log/data.log" local/data.sh "${opts[@]}" $local_data_opts
}

# ---- stage 2: pretrained models + frozen-encoder cache --------------------------------------
stage2() {
  stage_header 2 "$model_preset -> $expdir/pretrained; $datadir/<set> -> $dumpdir/<set>"
  local llm whisper
  llm=$(conf_get "$model_preset" pretrained.llm)
  whisper=$(conf_get "$model_preset" pretrained.whisper)
  ${train_cmd} "$expdir/log/prepare_pretrained.log" python -m espnet_ext.bin.prepare_pretrained \
    --llm "$llm" --encoder "$whisper" --out_dir "$expdir/pretrained"
  # the base model (No-FT system, stage-3 importance) as a task config
  python -m espnet_ext.bin.compose_config --preset "$model_preset" \
    --out "$expdir/pretrained/model.yaml" --pretrained_dir "$expdir/pretrained"
  local k pad
  k=$(conf_get "$model_preset" adaptor_conf.downsample_rate)
  # LLaMA-Omni's 30 s padding (3000 mel frames -> 1500 encoder frames) when the preset asks
  pad=$(conf_get "$model_preset" encoder_conf.pad_to_30s false)
  case $pad in
    true|false) ;;
    *) echo "run.sh: $model_preset: encoder_conf.pad_to_30s must be true or false, got '$pad'" >&2
       exit 1;;
  esac
  local io=() s
  for s in $(all_sets); do io+=(--data_dir "$datadir/$s" --out_dir "$dumpdir/$s"); done
  ${gpu1_cmd} "$expdir/log/dump_features.log" python -m espnet_ext.bin.dump_features \
    --whisper "$expdir/pretrained/whisper" --llm "$expdir/pretrained/llm" "${io[@]}" \
    --downsample_rate "$k" --pad_to_30s "$pad" --cache_features "$cache_features" --long_audio "$long_audio" \
    --skip_bad_utts "$skip_bad_utts" --device "$device"
  if [ "$transcription_mix" -gt 0 ]; then
    log "transcription mix (addition to the paper's recipe):" \
      "$transcription_mix utterances -> $dumpdir/${train_set}_mix"
    ${gpu1_cmd} "$expdir/log/mix_transcription.log" python -m espnet_ext.bin.mix_transcription \
      --config "$warmup_config" --model_config "$expdir/pretrained/model.yaml" \
      --num_utts "$transcription_mix" --train_dump "$dumpdir/$train_set" \
      --align_dump "$dumpdir/align_mix" --out_dir "$dumpdir/${train_set}_mix" --device "$device"
  fi
  if [ "$adaptor_warmup" = true ]; then
    log "adaptor warm-up (addition to the paper's recipe): $dumpdir/$train_set -> $expdir/warmup"
    ${gpu1_cmd} "$expdir/log/adaptor_warmup.log" python -m espnet_ext.bin.adaptor_warmup \
      --config "$warmup_config" --model_config "$expdir/pretrained/model.yaml" \
      --train_dump "$dumpdir/$train_set" --valid_dump "$dumpdir/$valid_set" \
      --align_dump "$dumpdir/align" --output_dir "$expdir/warmup" --device "$device"
  fi
}

# ---- stage 3: importance of the base LLM (eq. 2) and its validation (Table 1) --------------
stage3() {
  require_outputs 3 2 "" "$expdir/pretrained/model.yaml"
  require_dumps 3 "$train_set" "$valid_set"
  stage_header 3 "$dumpdir/$train_set (text) -> $expdir/importance/base"
  ${gpu_cmd} "$expdir/importance/base/score.log" "${sharded[@]}" espnet_ext.bin.importance_score \
    --config "$importance_config" --model_config "$expdir/pretrained/model.yaml" \
    --data_dir "$dumpdir/$train_set" --eval_dir "$dumpdir/$valid_set" \
    --output_dir "$expdir/importance/base" --device "$device" "${importance_shard_opts[@]}"
}

# ---- stage 4: stage-1 training, one run per training config --------------------------------
stage4() {
  local train_dump=$dumpdir/$train_set
  [ "$transcription_mix" -gt 0 ] && train_dump=$dumpdir/${train_set}_mix
  require_outputs 4 2 "" "$expdir/pretrained/llm" "$expdir/pretrained/whisper"
  require_dumps 4 "$valid_set"
  if [ "$transcription_mix" -gt 0 ]; then
    require_outputs 4 2 "--transcription_mix $transcription_mix" "$train_dump/enc_feats.scp" \
      "$train_dump/task"
  else
    require_dumps 4 "$train_set"
  fi
  [ "$adaptor_warmup" = true ] &&
    require_outputs 4 2 "--adaptor_warmup true" "$expdir/warmup/adaptor.pth"
  # every system's config first (one validation pass: fails before any training starts)
  local pairs=() conf tag seed
  while read -r conf tag seed; do
    mkdir -p "$expdir/$tag"
    pairs+=(--train_config "$conf" --out "$expdir/$tag/train.yaml" --seed "$seed")
  done < <(trained_runs)
  python -m espnet_ext.bin.compose_config --preset "$model_preset" --recipe_preset "$preset_file" \
    --pretrained_dir "$expdir/pretrained" --expdir "$expdir" "${pairs[@]}"
  # the importance report a system's composed config names (Layer-LR, ImpAnchor): stage 3's
  local key report
  for conf in $train_configs; do
    for key in layer_lr_conf anchor_conf; do
      report=$(conf_get "$expdir/$(tag_of "$conf")/train.yaml" "$key.importance_report" 2>/dev/null) ||
        continue
      [ -n "$report" ] || continue
      require_outputs 4 3 "$key.importance_report of $conf" "$report/summary.json"
    done
  done
  while read -r conf tag seed; do
    local dir=$expdir/$tag what=$conf
    [ "$seed" = - ] || what+=" (seed $seed)"
    stage_header 4 "$what + $model_preset -> $dir"
    # the speech input: cached encoder outputs, or the 16 kHz audio the model encodes on the fly;
    # text files line by line (indexed_text: ESPnet's text without loading the whole file)
    local data=() speech="enc_feats.scp,enc_feats,kaldi_ark"
    [ "$cache_features" = false ] && speech="wav.scp,speech,sound"
    for part in "$speech" "text,text,indexed_text" "answer,answer,indexed_text"; do
      data+=(--train_data_path_and_name_and_type "$train_dump/$part"
             --valid_data_path_and_name_and_type "$dumpdir/$valid_set/$part")
    done
    [ "$transcription_mix" -gt 0 ] &&
      data+=(--train_data_path_and_name_and_type "$train_dump/task,task,indexed_text")
    # ESPnet under torchrun: one process per GPU, each with --ngpu 1 (its cuda:$LOCAL_RANK)
    local launcher=(python -m espnet_ext.bin.speechllm_train) train_ngpu=$ngpu
    if [ "$job_nproc" -gt 1 ]; then
      local backend=gloo; [ "$ngpu" -gt 0 ] && backend=nccl train_ngpu=1
      launcher=("${sharded[@]}" espnet_ext.bin.speechllm_train
                --multiprocessing_distributed false --dist_backend "$backend")
    fi
    local cmd=("${launcher[@]}" --config "$dir/train.yaml" --output_dir "$dir" --ngpu "$train_ngpu"
               --resume true "${data[@]}"
               --train_shape_file "$train_dump/llm_len.speech"
               --valid_shape_file "$dumpdir/$valid_set/llm_len.speech")
    [ "$adaptor_warmup" = true ] && cmd+=(--init_param "$expdir/warmup/adaptor.pth::adaptor")
    [ -n "$train_sharding" ] && cmd+=(--sharding_conf "$train_sharding")
    # shellcheck disable=SC2206
    cmd+=($train_args)
    printf '%q ' "${cmd[@]}" >"$dir/train.sh.cmd"; echo >>"$dir/train.sh.cmd"
    ${cuda_cmd} --gpu "$ngpu" "$dir/train.log" "${cmd[@]}"
  done < <(trained_runs)
}

# ---- stage 5: decoding (No-FT: text only; trained systems: text and speech) -----------------
# decode_system TAG MODALITIES CONFIG [MODEL_FILE]: one job, the model loaded once; the
# batch size and max_new_tokens come from $decode_bs and $decode_mnt (set by stage5)
decode_system() {
  local tag=$1 modalities=$2 config=$3 model_file=${4:-}
  local io=() m s
  for m in $modalities; do
    local sets=$test_sets; [ "$m" = speech ] && sets+=" $unseen_test_sets"
    for s in $sets; do
      io+=(--modality "$m" --data_dir "$dumpdir/$s" --output_dir "$expdir/$tag/decode_${s}_$m")
    done
  done
  local model=(); [ -n "$model_file" ] && model=(--model_file "$model_file")
  # shellcheck disable=SC2086
  ${decode_job_cmd} "$expdir/$tag/decode.log" "${sharded[@]}" espnet_ext.bin.speechllm_inference \
    --config "$config" "${model[@]}" --batch_size "$decode_bs" --max_new_tokens "$decode_mnt" \
    --device "$device" "${io[@]}" $decode_args
}
stage5() {
  local decode_bs decode_mnt ckpt conf s decode_job_cmd=${decode_cmd}
  [ "$ngpu" -gt 0 ] && decode_job_cmd=${gpu_cmd}
  decode_bs=$(conf_get "$decode_config" batch_size)
  decode_mnt=$(conf_get "$decode_config" max_new_tokens)
  ckpt=$(conf_get "$decode_config" inference_model)
  # No-FT decodes text only; the cascade and the trained systems also speech (+ unseen sets)
  require_outputs 5 2 "" "$expdir/pretrained/model.yaml"
  # shellcheck disable=SC2086
  if [ "$cascade" = true ] || [[ $train_configs = *[![:space:]]* ]]; then
    require_dumps 5 $test_sets $unseen_test_sets
  else
    require_dumps 5 $test_sets
  fi
  if [ "$cascade" = true ]; then
    require_outputs 5 2 "" "$expdir/pretrained/whisper"
    for s in $test_sets $unseen_test_sets; do require_outputs 5 1 "" "$datadir/$s/wav.scp"; done
  fi
  local tag
  for tag in $(trained_tags); do
    require_outputs 5 4 "" "$expdir/$tag/config.yaml" "$expdir/$tag/$ckpt"
  done
  local t2t=text; [ "$t2t_chat" = true ] && t2t="text chat"
  stage_header 5 "No-FT ($expdir/pretrained/model.yaml) -> $expdir/noft/decode_*_{${t2t// /,}}"
  mkdir -p "$expdir/noft"
  decode_system noft "$t2t" "$expdir/pretrained/model.yaml"
  if [ "$cascade" = true ]; then
    stage_header 5 "$datadir/<test set>/wav.scp -> Whisper ASR -> No-FT -> $expdir/cascade/decode_*_speech"
    local sets=() s
    for s in $test_sets $unseen_test_sets; do sets+=(--data_dir "$datadir/$s" --dump_dir "$dumpdir/$s"); done
    mkdir -p "$expdir/cascade"
    ${decode_job_cmd} "$expdir/cascade/decode.log" "${sharded[@]}" espnet_ext.bin.cascade_decode \
      --whisper_dir "$expdir/pretrained/whisper" --config "$expdir/pretrained/model.yaml" \
      --output_dir "$expdir/cascade" --batch_size "$decode_bs" --max_new_tokens "$decode_mnt" \
      --device "$device" "${sets[@]}"
  fi
  for tag in $(trained_tags); do
    stage_header 5 "$expdir/$tag/$ckpt -> $expdir/$tag/decode_*_{${t2t// /,},speech}"
    decode_system "$tag" "$t2t speech" "$expdir/$tag/config.yaml" "$expdir/$tag/$ckpt"
  done
}

# ---- stage 6: scoring and RESULTS.md --------------------------------------------------------
# what spoke the data (recorded in RESULTS.md): the demo manifest's voice family and train source
data_description() {
  local m=$datadir/$train_set/demo_manifest.json
  if [ "$data_source" = demo ] && [ -f "$m" ]; then
    echo "demo, train source $(conf_get "$m" train_source), $(conf_get "$m" voices) voices"
  else
    echo "$data_source"
  fi
}
stage6() {
  local t0=$SECONDS systems="noft" conf trained=""
  [ "$cascade" = true ] && systems+=" cascade"
  trained=" $(trained_tags)"
  systems+="$trained"
  local ckpt tag s hyps=()
  ckpt=$(conf_get "$decode_config" inference_model)
  require_outputs 6 2 "" "$expdir/pretrained/model.yaml"
  # shellcheck disable=SC2086
  require_dumps 6 "$train_set" "$valid_set" $test_sets $unseen_test_sets
  # the analysis reads the base report and every trained system's model and system.json
  require_outputs 6 3 "" "$expdir/importance/base/summary.json" "$expdir/importance/base/scores.safetensors"
  for tag in $trained; do
    require_outputs 6 4 "" "$expdir/$tag/config.yaml" "$expdir/$tag/system.json" "$expdir/$tag/$ckpt"
  done
  # what stage 5 decodes with the same options: No-FT T2T, cascade S2T, trained T2T + S2T
  local t2t=text m; [ "$t2t_chat" = true ] && t2t="text chat"
  for tag in noft $trained; do
    for m in $t2t; do
      for s in $test_sets; do hyps+=("$expdir/$tag/decode_${s}_$m/hyp"); done
    done
  done
  for tag in ${systems#noft}; do
    for s in $test_sets $unseen_test_sets; do hyps+=("$expdir/$tag/decode_${s}_speech/hyp"); done
  done
  require_outputs 6 5 "" "${hyps[@]}"
  stage_header 6 "$expdir/{$(echo "$systems" | tr ' ' ,)}/decode_* -> $results_md"
  local args=()
  for tag in $systems; do
    for d in "$expdir/$tag"/decode_*; do
      [ -f "$d/hyp" ] || continue
      local s; s=$(basename "$d"); s=${s#decode_}; s=${s%_*}
      args+=(--decode_dir "$d" --ref_dir "$dumpdir/$s")
    done
  done
  ${train_cmd} "$expdir/log/score.log" python -m espnet_ext.bin.score_qa "${args[@]}"
  # textual importance of every trained system on the base report's utterances, its shift,
  # rank clustering and parameter changes (Fig. 1-4); redone only when inputs changed
  stage_header 6 "$expdir/{$(echo $trained | tr ' ' ,)}/$ckpt ->" \
    "$expdir/importance/<tag>, $expdir/results/{analysis.json,figures}"
  ${gpu_cmd} "$expdir/log/importance_analyze.log" "${sharded[@]}" espnet_ext.bin.importance_analyze \
    --config "$importance_config" --exp_dir "$expdir" --systems "$trained" \
    --base_model_config "$expdir/pretrained/model.yaml" --data_dir "$dumpdir/$train_set" \
    --eval_dir "$dumpdir/$valid_set" --checkpoint "$ckpt" --device "$device" "${importance_shard_opts[@]}"
  python -m espnet_ext.bin.make_results --exp_dir "$expdir" --systems "$systems" \
    --stage_times "$stage_times" --running_stage "6=$((SECONDS - t0))" --out_md "$results_md" \
    --meta "date=$(date -u +%Y-%m-%dT%H:%MZ)" --meta "machine=$(uname -m), $(nproc) CPU cores" \
    --meta "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --meta "command=./run.sh $run_args" \
    --meta "all commands of this exp dir=$(sed 's/^cd [^&]*&& //' "$expdir/run.sh.cmd" | paste -sd ';' -)" \
    --meta "model_preset=$model_preset" --meta "data=$(data_description)" \
    --meta "preset=$preset (adaptor_warmup=$adaptor_warmup, transcription_mix=$transcription_mix)"
  log "wrote $results_md"
}

for n in 1 2 3 4 5 6; do
  if [ "$stage" -le "$n" ] && [ "$stop_stage" -ge "$n" ]; then
    time_stage "$stage_times" "$n" "stage$n"
  fi
done
log "Successfully finished stages $stage-$stop_stage."
