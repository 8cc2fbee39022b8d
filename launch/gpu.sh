#!/usr/bin/env bash
# Single-node multi-GPU launcher for teacherlm_jax: optionally installs '.[gpu]', sets the XLA
# environment for GPUs and runs `python -m teacherlm_jax.main` here or on --host over ssh.
# One process drives all local GPUs, so no jax.distributed setup is needed. --dry-run prints the
# commands instead of running them.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

DEFAULT_XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true"

usage() {
  cat <<EOF
Usage: launch/gpu.sh --config CONFIG --workdir WORKDIR [OPTIONS] [-- MAIN_ARGS...]

Runs: python -m teacherlm_jax.main --config CONFIG --workdir WORKDIR MAIN_ARGS...
(MAIN_ARGS, e.g. --config.num_train_steps=100, are passed through unchanged.)

Options:
  --config CONFIG       config file[:variant], e.g. configs/train.py:tiny; required
  --workdir WORKDIR     output directory (local path or gs://); required
  --setup               first pip install -e '.[gpu]' (with --host: copy this work tree to
                        --dir on the host first)
  --host USER@NODE      run on NODE over ssh instead of here
  --dir DIR             source directory on --host (default ~/teacherlm_jax); CONFIG is
                        relative to it there
  --python PYTHON       interpreter (default python3; e.g. ~/venv/bin/python)
  --gpus LIST           CUDA_VISIBLE_DEVICES, e.g. 0,1,2,3 (default: all GPUs)
  --mem-fraction F      XLA_PYTHON_CLIENT_MEM_FRACTION, share of each GPU's memory JAX
                        preallocates (default 0.9)
  --xla-flags FLAGS     XLA_FLAGS (default $DEFAULT_XLA_FLAGS;
                        '' leaves XLA_FLAGS as it is)
  --dry-run             print the commands, one per line, instead of running them
  -h, --help            this help

Examples:
  launch/gpu.sh --setup --config configs/train.py --workdir /data/runs/r1
  launch/gpu.sh --host me@gpu-node --gpus 0,1,2,3 --config configs/train.py \\
      --workdir gs://my-bucket/runs/r1 -- --config.num_train_steps=1000
EOF
}

config="" workdir="" setup=0 host="" dir="" python=python3 gpus="" mem_fraction=0.9
xla_flags=$DEFAULT_XLA_FLAGS
main_args=()

while (($#)); do
  arg=$1
  shift
  if [[ $arg == "--" ]]; then
    main_args=("$@")
    break
  fi
  flag=${arg%%=*}
  value_inline=0
  [[ $arg == --*=* ]] && value_inline=1
  case $flag in
    --config | --workdir | --host | --dir | --python | --gpus | --mem-fraction | --xla-flags)
      if ((value_inline)); then
        value=${arg#*=}
      else
        (($#)) || die "$flag needs a value"
        value=$1
        shift
      fi
      ;;
    --setup | --dry-run | -h | --help)
      ((value_inline)) && die "$flag takes no value"
      ;;
    *) die "unknown argument '$arg' (arguments for teacherlm_jax.main go after --; see --help)" ;;
  esac
  case $flag in
    --config) config=$value ;;
    --workdir) workdir=$value ;;
    --host) host=$value ;;
    --dir) dir=$value ;;
    --python) python=$value ;;
    --gpus) gpus=$value ;;
    --mem-fraction) mem_fraction=$value ;;
    --xla-flags) xla_flags=$value ;;
    --setup) setup=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
  esac
done

require "$config" --config
require "$workdir" --workdir
[[ -z $dir || -n $host ]] || die "--dir applies only with --host"
[[ -z $gpus || $gpus =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus must be a comma-separated list of GPU indices, got '$gpus'"
[[ $mem_fraction =~ ^(0?\.[0-9]*[1-9][0-9]*|1(\.0*)?)$ ]] || die "--mem-fraction must be in (0, 1], got '$mem_fraction'"

env_words=()
[[ -n $gpus ]] && env_words+=("CUDA_VISIBLE_DEVICES=$gpus")
env_words+=("XLA_PYTHON_CLIENT_MEM_FRACTION=$mem_fraction")
[[ -n $xla_flags ]] && env_words+=("XLA_FLAGS=$xla_flags")
main_words=(-m teacherlm_jax.main --config "$config" --workdir "$workdir" ${main_args[@]+"${main_args[@]}"})

if [[ -z $host ]]; then
  ((setup)) && emit "$python" -m pip install -e "${ROOT}[gpu]"
  emit env "${env_words[@]}" "$python" "${main_words[@]}"
else
  # shellcheck disable=SC2088  # "~/" expands on the host
  r_dir=$(quote_path "${dir:-~/teacherlm_jax}")
  r_python=$(quote_path "$python")
  if ((setup)); then
    check_git_tree "$ROOT"
    emit_pipe git -C "$ROOT" ls-files -z -c -o --exclude-standard "|" \
      tar -czf - -C "$ROOT" --null -T - "|" \
      ssh "$host" "mkdir -p $r_dir && tar -xzf - -C $r_dir"
    emit ssh "$host" "cd $r_dir && $r_python -m pip install -e '.[gpu]'"
  fi
  # -t: a terminal on the host, so Ctrl-C stops the job there too.
  emit ssh -t "$host" "cd $r_dir && $(quote_words env "${env_words[@]}") $r_python $(quote_words "${main_words[@]}")"
fi
