#!/usr/bin/env bash
# Cloud TPU VM launcher for teacherlm_jax: create a (multi-host) TPU VM, install the package on
# every worker, run the same command on all workers, read the log, move checkpoints to and from
# gs://, delete. --dry-run prints the gcloud commands instead of running them.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh SUBCOMMAND [OPTIONS] [-- COMMAND...]

Subcommands:
  create   create the TPU VM (gcloud compute tpus tpu-vm create), or a queued resource
           with --queued (gcloud compute tpus queued-resources create)
  status   describe the TPU VM (or the queued resource with --queued)
  setup    on every worker: fetch the source (copy of this work tree, or --repo), create a
           Python venv with uv and pip install -e '.[tpu]'
  run      run COMMAND (the words after --, argv kept exactly) on all workers (--worker=all),
           detached with nohup, output to --log; jax.distributed finds the TPU topology itself
  logs     tail the log written by run on one worker
  copy     copy files between a worker and gs:// (gcloud storage cp -r, run on the worker)
  delete   delete the TPU VM (or the queued resource and its TPU with --queued)

Options for every subcommand:
  --name NAME               TPU VM name (env TPU_NAME); required
  --zone ZONE               zone, e.g. us-central2-b (env ZONE); required
  --project PROJECT         project (env PROJECT); default: gcloud's configured project
  --dry-run                 print the commands, one per line, instead of running them
  -h, --help                this help
create:
  --accelerator-type TYPE   e.g. v4-32, v5litepod-16 (env ACCELERATOR_TYPE); required
  --version VERSION         TPU runtime version, e.g. tpu-ubuntu2204-base, v2-alpha-tpuv5-lite
                            (env RUNTIME_VERSION); required
  --queued                  request through queued resources (node id = NAME)
  --spot                    Spot capacity (preemptible)
status, delete:
  --queued                  act on the queued resource NAME instead of the TPU VM
setup:
  --repo URL                git clone URL on the workers instead of copying this work tree
  --branch BRANCH           branch or tag of --repo (default: its default branch)
  --dir DIR                 source directory on the workers (default ~/teacherlm_jax)
  --venv DIR                virtual environment on the workers (default ~/teacherlm_venv)
  --python-version X.Y      Python for the venv, fetched by uv if missing (default 3.11)
run:
  --dir DIR, --venv DIR     as for setup; COMMAND runs in DIR with the venv active
  --log FILE                log file on each worker (default ~/teacherlm_run.log)
  --foreground              stay attached: stream the output (also written to --log) and
                            return COMMAND's exit status
logs:
  --log FILE                as for run
  --worker N                worker to read (default 0)
  --lines N                 lines to show (default 100)
  --follow                  keep following the file (tail -F)
copy:
  --from SRC --to DST       one of them a gs:// URL, the other a path on the worker
  --worker N|all            worker(s) to copy on (default 0; use all to give every host a
                            copy of a downloaded checkpoint)

Examples:
  launch/tpu_vm.sh create --name tlm --zone us-central2-b --accelerator-type v4-32 \
      --version tpu-ubuntu2204-base
  launch/tpu_vm.sh setup --name tlm --zone us-central2-b
  launch/tpu_vm.sh run --name tlm --zone us-central2-b -- python -m teacherlm_jax.main \
      --config configs/train.py --workdir gs://my-bucket/runs/tlm
  launch/tpu_vm.sh logs --name tlm --zone us-central2-b --follow
  launch/tpu_vm.sh copy --name tlm --zone us-central2-b --from ~/out --to gs://my-bucket/out
  launch/tpu_vm.sh delete --name tlm --zone us-central2-b
EOF
}

SUBCOMMANDS=" create status setup run logs copy delete "
# allowed_options SUBCOMMAND: the options it accepts besides --name, --zone, --project, --dry-run.
allowed_options() {
  case $1 in
    create) echo " --accelerator-type --version --queued --spot " ;;
    status | delete) echo " --queued " ;;
    setup) echo " --repo --branch --dir --venv --python-version " ;;
    run) echo " --dir --venv --log --foreground " ;;
    logs) echo " --log --worker --lines --follow " ;;
    copy) echo " --from --to --worker " ;;
  esac
}

sub="" name=${TPU_NAME:-} zone=${ZONE:-} project=${PROJECT:-}
accel=${ACCELERATOR_TYPE:-} version=${RUNTIME_VERSION:-}
# Remote paths keep a literal "~/": it expands on the worker, not here.
# shellcheck disable=SC2088
queued=0 spot=0 repo="" branch="" dir="~/teacherlm_jax" venv="~/teacherlm_venv"
# shellcheck disable=SC2088
python_version=3.11 log="~/teacherlm_run.log" foreground=0 worker=0 lines=100 follow=0
src="" dst=""
given=()
command_words=()
have_command=0

while (($#)); do
  arg=$1
  shift
  if [[ $arg == "--" ]]; then
    have_command=1
    command_words=("$@")
    break
  fi
  flag=${arg%%=*}
  value_inline=0
  [[ $arg == --*=* ]] && value_inline=1
  case $flag in
    --name | --zone | --project | --accelerator-type | --version | --repo | --branch | --dir | \
      --venv | --python-version | --log | --worker | --lines | --from | --to)
      if ((value_inline)); then
        value=${arg#*=}
      else
        (($#)) || die "$flag needs a value"
        value=$1
        shift
      fi
      ;;
    --queued | --spot | --foreground | --follow | --dry-run | -h | --help)
      ((value_inline)) && die "$flag takes no value"
      ;;
    -*) die "unknown option $arg (see --help)" ;;
    *)
      [[ -z $sub ]] || die "unexpected argument '$arg' (a command to run goes after --)"
      [[ $SUBCOMMANDS == *" $arg "* ]] || die "unknown subcommand '$arg' (one of:$SUBCOMMANDS)"
      sub=$arg
      continue
      ;;
  esac
  given+=("$flag")
  case $flag in
    --name) name=$value ;;
    --zone) zone=$value ;;
    --project) project=$value ;;
    --accelerator-type) accel=$value ;;
    --version) version=$value ;;
    --repo) repo=$value ;;
    --branch) branch=$value ;;
    --dir) dir=$value ;;
    --venv) venv=$value ;;
    --python-version) python_version=$value ;;
    --log) log=$value ;;
    --worker) worker=$value ;;
    --lines) lines=$value ;;
    --from) src=$value ;;
    --to) dst=$value ;;
    --queued) queued=1 ;;
    --spot) spot=1 ;;
    --foreground) foreground=1 ;;
    --follow) follow=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
  esac
done

if [[ -z $sub ]]; then
  usage >&2
  die "missing subcommand (one of:$SUBCOMMANDS)"
fi
for flag in ${given[@]+"${given[@]}"}; do
  case $flag in
    --name | --zone | --project | --dry-run) ;;
    *) [[ $(allowed_options "$sub") == *" $flag "* ]] || die "$flag does not apply to '$sub' (see --help)" ;;
  esac
done
if ((have_command)) && [[ $sub != run ]]; then
  die "only 'run' takes a command after --"
fi
require "$name" --name TPU_NAME
require "$zone" --zone ZONE

# Flags every gcloud call on this TPU takes.
location=("--zone=$zone")
[[ -n $project ]] && location+=("--project=$project")

# ssh_workers WORKER SCRIPT: run SCRIPT (one shell line) on WORKER ("all" or an index).
ssh_workers() {
  emit gcloud compute tpus tpu-vm ssh "$name" "${location[@]}" "--worker=$1" --command "$2"
}

check_worker() {
  [[ $worker == all || $worker =~ ^[0-9]+$ ]] || die "--worker must be 'all' or a worker index, got '$worker'"
}

# Remote paths as shell words (a leading ~/ expands on the worker).
r_dir=$(quote_path "$dir")
r_venv=$(quote_path "$venv")
r_log=$(quote_path "$log")

case $sub in
  create)
    require "$accel" --accelerator-type ACCELERATOR_TYPE
    require "$version" --version RUNTIME_VERSION
    extra=()
    ((spot)) && extra+=(--spot)
    if ((queued)); then
      emit gcloud compute tpus queued-resources create "$name" "--node-id=$name" "${location[@]}" \
        "--accelerator-type=$accel" "--runtime-version=$version" ${extra[@]+"${extra[@]}"}
    else
      emit gcloud compute tpus tpu-vm create "$name" "${location[@]}" \
        "--accelerator-type=$accel" "--version=$version" ${extra[@]+"${extra[@]}"}
    fi
    ;;
  status)
    if ((queued)); then
      emit gcloud compute tpus queued-resources describe "$name" "${location[@]}"
    else
      emit gcloud compute tpus tpu-vm describe "$name" "${location[@]}"
    fi
    ;;
  delete)
    if ((queued)); then
      emit gcloud compute tpus queued-resources delete "$name" "${location[@]}" --force --quiet
    else
      emit gcloud compute tpus tpu-vm delete "$name" "${location[@]}" --quiet
    fi
    ;;
  setup)
    [[ -n $branch && -z $repo ]] && die "--branch needs --repo"
    [[ $python_version =~ ^3\.[0-9]+(\.[0-9]+)?$ ]] || die "--python-version must look like 3.11, got '$python_version'"
    if [[ -n $repo ]]; then
      ref=${branch:-HEAD}
      clone=(git clone --depth 1)
      [[ -n $branch ]] && clone+=(--branch "$branch")
      fetch="if [ -d $r_dir/.git ]; then git -C $r_dir fetch --depth 1 origin $(quote "$ref")"
      fetch+=" && git -C $r_dir checkout --force FETCH_HEAD; else $(quote_words "${clone[@]}" "$repo") $r_dir; fi"
    else
      check_git_tree "$ROOT"
      tarball="${TMPDIR:-/tmp}/teacherlm_jax_src_$name.tar.gz"
      remote_tarball="teacherlm_jax_src.tar.gz"
      emit_pipe git -C "$ROOT" ls-files -z -c -o --exclude-standard "|" \
        tar -czf "$tarball" -C "$ROOT" --null -T -
      emit gcloud compute tpus tpu-vm scp "$tarball" "$name:$remote_tarball" "${location[@]}" --worker=all
      emit rm -f "$tarball"
      fetch="mkdir -p $r_dir && tar -xzf ~/$remote_tarball -C $r_dir && rm -f ~/$remote_tarball"
    fi
    uv_install="if ! command -v uv >/dev/null; then curl -LsSf https://astral.sh/uv/install.sh | sh; fi"
    install="uv venv --allow-existing --python $python_version $r_venv"
    install+=" && cd $r_dir && uv pip install --python $r_venv/bin/python -e '.[tpu]'"
    ssh_workers all "set -euo pipefail; export PATH=\"\$HOME/.local/bin:\$PATH\"; $uv_install; $fetch; $install"
    ;;
  run)
    ((have_command && ${#command_words[@]})) || die "run needs the command after --, e.g. run ... -- python -m teacherlm_jax.main --config ..."
    cmd=$(quote_words "${command_words[@]}")
    prefix="cd $r_dir && . $r_venv/bin/activate"
    if ((foreground)); then
      ssh_workers all "set -o pipefail; $prefix && $cmd 2>&1 | tee $r_log"
    else
      ssh_workers all "$prefix && (nohup $cmd > $r_log 2>&1 < /dev/null &) && echo \"started on \$(hostname), log:\" $(quote "$log")"
    fi
    ;;
  logs)
    check_worker
    [[ $worker != all ]] || die "logs reads one worker; --worker must be an index"
    [[ $lines =~ ^[0-9]+$ ]] || die "--lines must be a number, got '$lines'"
    tail=(tail -n "$lines")
    ((follow)) && tail+=(-F)
    ssh_workers "$worker" "$(quote_words "${tail[@]}") $r_log"
    ;;
  copy)
    require "$src" --from
    require "$dst" --to
    check_worker
    [[ $src == gs://* || $dst == gs://* ]] || die "copy needs a gs:// URL in --from or --to (got '$src' -> '$dst')"
    ends=()
    for path in "$src" "$dst"; do
      if [[ $path == gs://* ]]; then ends+=("$(quote "$path")"); else ends+=("$(quote_path "$path")"); fi
    done
    ssh_workers "$worker" "gcloud storage cp -r ${ends[0]} ${ends[1]}"
    ;;
esac
