# shellcheck shell=bash
# shellcheck disable=SC2034  # COMMAND and MAIN_FLAGS are read by the sourcing script
# Shared by the launch scripts (sourced, not run): --dry-run, required
# variables with a clear refusal, and printing each command before it runs.

DRY_RUN=0
COMMAND=""
MAIN_FLAGS=()
MISSING=()

# parse_args "$@": --dry-run (sets DRY_RUN=1) and -h/--help anywhere before
# `--`; the first other word is the COMMAND; words after `--` are MAIN_FLAGS,
# passed on to `python -m mae_jax.main`.
parse_args() {
  while (($#)); do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      -h | --help) usage 0 ;;
      --)
        shift
        MAIN_FLAGS=("$@")
        return
        ;;
      *)
        [[ -z "$COMMAND" ]] || die "unexpected argument $1 (flags for mae_jax.main go after --)"
        COMMAND=$1
        ;;
    esac
    shift
  done
}

# The script's leading comment block is its usage text: on stdout for --help,
# on stderr (exit 2) after a wrong command.
usage() {
  if (("${1:-2}" == 0)); then
    sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
    exit 0
  fi
  echo "error: unknown or missing command; usage:" >&2
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0" >&2
  exit 2
}

die() {
  echo "error: $*" >&2
  exit 2
}

# need VAR "what it is": records VAR as missing when it is unset or empty.
need() {
  if [[ -z "${!1:-}" ]]; then
    MISSING+=("$(printf '  %-18s %s' "$1" "$2")")
  fi
}

# Refuses to go on (dry run included) while any `need`ed variable is missing.
check_needed() {
  if ((${#MISSING[@]})); then
    {
      echo "error: $(basename "$0") $COMMAND needs these variables, which are not set:"
      printf '%s\n' "${MISSING[@]}"
      echo "Set them in the environment, e.g. VAR=value $0 $COMMAND (see $0 --help)."
    } >&2
    exit 2
  fi
}

# One word as the shell would need it: bare when safe, else in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints the command (quoted, so it can be pasted); runs it unless --dry-run.
run() {
  printf '+'
  for word in "$@"; do
    printf ' %s' "$(quote "$word")"
  done
  printf '\n'
  if ((!DRY_RUN)); then
    "$@"
  fi
}
