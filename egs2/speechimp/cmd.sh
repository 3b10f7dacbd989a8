# shellcheck shell=bash
# cmd.sh — how run.sh launches its jobs (sourced by run.sh).
#
# Every heavy step of run.sh goes through one of three launchers, in the run.pl
# calling convention of Kaldi/ESPnet:
#
#   ${train_cmd}  [opts] [JOB=1:N] <log> <command...>   # CPU jobs: data prep, importance, scoring
#   ${decode_cmd} [opts] [JOB=1:N] <log> <command...>   # decoding jobs (CPU, or GPU via --gpu)
#   ${cuda_cmd}   [opts] [JOB=1:N] <log> <command...>   # training jobs that want a GPU
#
# Options accepted by both backends (the call's options follow and override the ones
# set here): --num_threads N, --gpu N, --mem X, --time T, --max_jobs_run N; Slurm also
# takes --partition, --account, --qos, --constraint, --sbatch_opts "...".
# See utils/run_local.sh --help and utils/run_slurm.sh --help.
#
# Choosing the backend (environment variables, read when this file is sourced):
#   cmd_backend=local   (default) run on this machine; jobs run in parallel, at most
#                       local_max_jobs_run (default: nproc) at a time, each with
#                       local_num_threads (default: nproc) OpenMP/MKL threads.
#   cmd_backend=slurm   submit with `sbatch --wait` (one job array per call); logs and
#                       the recipe directory must be on a shared file system.
#     slurm_partition, slurm_gpu_partition, slurm_account, slurm_qos   optional; empty = cluster default
#     slurm_time        time limit per job (default 24:00:00)
#
# Example:  cmd_backend=slurm slurm_gpu_partition=gpu ./run.sh --stage 4 --stop_stage 4
#
# The launchers are addressed relative to the recipe directory, like ESPnet's
# utils/run.pl, so run.sh must be started from egs2/speechimp.

cmd_backend=${cmd_backend:-local}

case ${cmd_backend} in
  local)
    local_max_jobs_run=${local_max_jobs_run:-$(nproc 2>/dev/null || echo 1)}
    # run.sh starts one job at a time, so each job gets every core (local_num_threads);
    # a JOB=1:N array of CPU jobs should pass --num_threads 1 (N jobs share the cores).
    local_num_threads=${local_num_threads:-$(nproc 2>/dev/null || echo 1)}
    train_cmd="utils/run_local.sh --max_jobs_run ${local_max_jobs_run} --num_threads ${local_num_threads}"
    decode_cmd="utils/run_local.sh --max_jobs_run ${local_max_jobs_run} --num_threads ${local_num_threads}"
    # One GPU job at a time (a single local accelerator, or CPU fallback).
    cuda_cmd="utils/run_local.sh --max_jobs_run 1 --gpu 1 --num_threads ${local_num_threads}"
    ;;
  slurm)
    slurm_time=${slurm_time:-24:00:00}
    _slurm_common="--time ${slurm_time}"
    [ -n "${slurm_account:-}" ] && _slurm_common+=" --account ${slurm_account}"
    [ -n "${slurm_qos:-}" ] && _slurm_common+=" --qos ${slurm_qos}"
    _slurm_cpu="${_slurm_common}"
    [ -n "${slurm_partition:-}" ] && _slurm_cpu+=" --partition ${slurm_partition}"
    _slurm_gpu="${_slurm_common}"
    [ -n "${slurm_gpu_partition:-${slurm_partition:-}}" ] &&
      _slurm_gpu+=" --partition ${slurm_gpu_partition:-${slurm_partition:-}}"
    train_cmd="utils/run_slurm.sh ${_slurm_cpu} --mem 16G --num_threads 4"
    decode_cmd="utils/run_slurm.sh ${_slurm_cpu} --mem 16G --num_threads 4"
    cuda_cmd="utils/run_slurm.sh ${_slurm_gpu} --mem 32G --num_threads 8 --gpu 1"
    unset _slurm_common _slurm_cpu _slurm_gpu
    ;;
  *)
    echo "cmd.sh: unknown cmd_backend '${cmd_backend}' (expected: local or slurm)" >&2
    return 1 2>/dev/null || exit 1
    ;;
esac
export train_cmd decode_cmd cuda_cmd
