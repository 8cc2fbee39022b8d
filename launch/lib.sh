# shellcheck shell=bash
# Helpers shared by launch/tpu_vm.sh and launch/gpu.sh (sourced, not run).
#
# Every command the launchers execute goes through `emit`/`emit_pipe`, which render it as one
# shell-quoted line. With DRY_RUN=1 the line is printed on stdout; otherwise it is echoed on stderr
# with a "+ " prefix and evaluated, so what --dry-run prints is exactly what a real run executes.

DRY_RUN=0

die() {
  printf '%s: error: %s\n' "${0##*/}" "$*" >&2
  exit 2
}

# quote WORD: WORD as one shell word; safe words stay bare, others are single-quoted.
quote() {
  local s=$1 q="'\"'\"'"
  if [[ -n $s && $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/"$q"}"
  fi
}

# quote_path PATH: like quote, but a leading "~/" stays unquoted so the (remote) shell expands it.
# shellcheck disable=SC2088
quote_path() {
  local p=$1
  if [[ $p == "~" ]]; then
    printf '~'
  elif [[ $p == "~/"* ]]; then
    printf '~/'
    [[ -n ${p#"~/"} ]] && quote "${p#"~/"}"
  else
    quote "$p"
  fi
  return 0
}

# quote_words WORD...: the words quoted and joined by single spaces.
quote_words() {
  local out="" w
  for w in "$@"; do
    out+="${out:+ }$(quote "$w")"
  done
  printf '%s' "$out"
}

# run_line LINE: print LINE (dry run) or echo it to stderr and evaluate it.
run_line() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '%s\n' "$1"
  else
    printf '+ %s\n' "$1" >&2
    eval "$1"
  fi
}

# emit WORD...: one command, each word quoted.
emit() {
  run_line "$(quote_words "$@")"
}

# emit_pipe WORD... [| WORD...]...: a pipeline; a bare "|" word separates the commands.
# Only for words the launchers build themselves (a user's "|" would become a pipe).
emit_pipe() {
  local line="" w
  for w in "$@"; do
    if [[ $w == "|" ]]; then
      line+=" |"
    else
      line+="${line:+ }$(quote "$w")"
    fi
  done
  run_line "$line"
}

# require VALUE FLAG [ENV]: stop with a message naming FLAG (and its env default) if VALUE is empty.
require() {
  if [[ -z $1 ]]; then
    if [[ -n ${3:-} ]]; then
      die "missing $2 (or set \$$3)"
    fi
    die "missing $2"
  fi
}

# check_git_tree DIR: stop unless DIR is a git work tree (the local copy ships `git ls-files`).
check_git_tree() {
  if [[ $DRY_RUN != 1 ]] && ! git -C "$1" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    die "$1 is not a git work tree; copying the local source lists its files with git ls-files"
  fi
}
