#!/usr/bin/env bash
# Runs a command, and runs it again each time it exits 75 (resumable: it was
# preempted and saved a checkpoint, or another host of the run was lost), up
# to MAX_RERUNS times. The launch scripts run mae_jax.main through it.
#
#   MAX_RERUNS=3 launch/resumable.sh COMMAND [ARGS...]
#
# SIGTERM or SIGINT to this script reaches the command as SIGTERM (the job
# saves a checkpoint and exits 75), and that 75 is final: a stop that was
# asked for is not undone. Exit status: the command's last one.
set -uo pipefail

max=${MAX_RERUNS:-3}
if [[ ! "$max" =~ ^[0-9]+$ ]]; then
  echo "error: MAX_RERUNS=$max: expected a whole number of reruns, e.g. 3 (0: never rerun)." >&2
  exit 2
fi
if (($# == 0)); then
  echo "usage: MAX_RERUNS=N $0 COMMAND [ARGS...]" >&2
  exit 2
fi

stopping=0
child=0
# A background command of a script ignores SIGINT, so both arrive as SIGTERM,
# the signal the job answers with a checkpoint.
stop() {
  stopping=1
  if ((child)); then
    kill -TERM "$child" 2>/dev/null || true
  fi
}
trap stop TERM INT

reruns=0
while :; do
  "$@" &
  child=$!
  wait "$child"
  status=$?
  # A trapped signal interrupts `wait`: wait again for the command itself.
  while kill -0 "$child" 2>/dev/null; do
    wait "$child"
    status=$?
  done
  if ((stopping && status > 128)); then  # it ended between the signal and kill -0
    wait "$child" 2>/dev/null
    collected=$?
    ((collected == 127)) || status=$collected
  fi
  child=0
  if ((status != 75 || stopping)); then
    exit "$status"
  fi
  if ((reruns >= max)); then
    echo "resumable.sh: exit 75 again after $reruns reruns (MAX_RERUNS=$max): giving up;" \
      "run the same command again to resume from the last checkpoint." >&2
    exit 75
  fi
  reruns=$((reruns + 1))
  echo "resumable.sh: exit 75 (resumable): rerun $reruns of $max." >&2
done
