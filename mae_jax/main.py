r"""Entry point: `python -m mae_jax.main --config=configs/FILE.py:PRESET --workdir=DIR`.

Thin on purpose: flags, distributed start-up, logging, then the job named
by the config (`config.job`, default "pretrain") as a function
`(config, workdir)` that tests call directly.

  python -m mae_jax.main --config=configs/pretrain.py:digits --workdir=runs/digits
  python -m mae_jax.main --config=configs/pretrain.py:vit_large \
      --workdir=gs://BUCKET/mae/vit_large --config.model.dtype=bfloat16

Multi-host: Cloud TPU VMs and SLURM jobs are detected and
`jax.distributed.initialize()` is called on every process; anywhere else pass
--coordinator_address=HOST:PORT --num_processes=N --process_id=I.

Exit status: 0 done; 75 preempted, resumable (requeue the same command; a
SIGTERM at any moment is only noted (mae_jax.stop_notice) and answered
where stopping is safe: after the step in progress, with a checkpoint, or
before the first step, with nothing to save; a run that had finished its
steps ends as finished, 0);
75 also when another process of a multi-process run was lost (one line names
it and the last complete checkpoint; rerun on every host);
74 a checkpoint or metrics.jsonl could not be written (disk full, permissions, a
bucket unreachable past the client's retries): earlier
checkpoints are intact, fix the cause and rerun; 2 a mistake in the command,
config, data, checkpoint or workdir, a workdir another run holds (one line
says what and what to do, no traceback); 130 stopped by Ctrl-C (a checkpoint of the step in progress is
saved first, unless Ctrl-C is pressed twice; launchers do not rerun it);
1 anything else (a bug: the traceback is kept).
"""

import os
import sys

from mae_jax import stop_notice

if __name__ == "__main__":
  # Before the imports below (seconds: JAX, TensorFlow's protos): a SIGTERM
  # from here on is noted and answered with exit 75, never a bare 143.
  stop_notice.install()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mae_jax.cli.command_line import fail_for_user, parse_flags  # noqa: E402
from mae_jax.errors import INTERRUPTED_EXIT_CODE, ConfigError, UserError  # noqa: E402
from mae_jax.jobs import run_job  # noqa: E402

SAVE_FAILED_EXIT_CODE = 74  # sysexits' EX_IOERR

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file, e.g. configs/pretrain.py:digits.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (local path or gs://).")
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0, for multi-process runs."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")
_DISTRIBUTED = flags.DEFINE_enum(
  "distributed",
  "auto",
  ["auto", "on", "off"],
  "auto: initialise jax.distributed when a TPU pod or a SLURM job is detected.",
)


def cluster_detected(environ=os.environ) -> bool:
  """True on a multi-host TPU slice, a multi-slice GKE job, a multi-task SLURM
  job or an MPI launch. (The launch/ scripts pass --distributed=on anyway.)"""
  if "," in environ.get("TPU_WORKER_HOSTNAMES", ""):
    return True
  for size_var in ("MEGASCALE_NUM_SLICES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if int(environ.get(size_var, "1") or 1) > 1:
      return True
  return False


def host_timeout(config) -> float:
  """config.host_timeout_seconds, checked before any process waits for another."""
  from mae_jax.cli.host_watch import DEFAULT_TIMEOUT_SECONDS

  value = config.get("host_timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
    raise ConfigError(
      f"config.host_timeout_seconds={value!r}: expected a positive number of seconds "
      "(how long another process may be silent before it is declared lost), e.g. 60."
    )
  return float(value)


def initialize_distributed(timeout: float) -> None:
  import jax

  from mae_jax.cli.host_watch import jax_heartbeat_timeout

  # JAX's own heartbeat timeout, longer than the host watch's (see host_watch).
  heartbeat = {"heartbeat_timeout_seconds": jax_heartbeat_timeout(timeout)}

  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(value is not None for value in explicit) and None in explicit:
    raise app.UsageError(
      "--coordinator_address, --num_processes and --process_id go together: "
      "set all three (the same address and count on every process), or none."
    )
  if _COORDINATOR.value:
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
      **heartbeat,
    )
  elif _DISTRIBUTED.value == "on" or (_DISTRIBUTED.value == "auto" and cluster_detected()):
    jax.distributed.initialize(**heartbeat)


def exit_if_stop_noted(workdir: str) -> None:
  """A SIGTERM before the job began (imports, flags, distributed start-up):
  nothing was started that could be saved."""
  if stop_notice.received():
    from mae_jax.core.preemption import PREEMPTED_EXIT_CODE
    from mae_jax.core.workdir import checkpoint_dir

    stop_notice.clear()
    print(
      "PREEMPTED: preempted during start-up, before the job began: nothing to save; rerun the "
      f"same command to resume from the last complete checkpoint in {checkpoint_dir(workdir)} "
      "(if any).",
      flush=True,
    )
    sys.exit(PREEMPTED_EXIT_CODE)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required.")
  from mae_jax.log_filters import quiet_library_info

  quiet_library_info()
  try:
    timeout = host_timeout(_CONFIG.value)
  except UserError as mistake:
    fail_for_user(f"{type(mistake).__name__}: {mistake}")
  stop_notice.install()  # in-process callers (tests) too
  initialize_distributed(timeout)
  # On several processes JAX's preemption notifier now owns SIGTERM.
  exit_if_stop_noted(_WORKDIR.value)
  import jax

  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  logging.info(
    "JAX %s: %d processes, %d devices (%s).",
    jax.__version__,
    jax.process_count(),
    jax.device_count(),
    jax.devices()[0].device_kind,
  )
  from mae_jax.cli import compilation_cache, host_watch
  from mae_jax.core.checkpointing import CheckpointSaveError
  from mae_jax.core.preemption import PREEMPTED_EXIT_CODE, Preempted
  from mae_jax.core.workdir import checkpoint_dir
  from mae_jax.storage import WriteFailed

  watch = host_watch.start(timeout, checkpoint_dir(_WORKDIR.value))
  try:
    compilation_cache.enable(_CONFIG.value.get("compilation_cache", ""), _WORKDIR.value)
    run_job(_CONFIG.value, _WORKDIR.value)
    if stop_notice.received():  # during the final evaluation or teardown
      stop_notice.clear()
      logging.info("A stop was asked for (SIGTERM) after the last step: the run is complete.")
  except Preempted as preempted:
    if preempted.interrupted:  # Ctrl-C: a person stopped it, no requeue
      print(f"INTERRUPTED: {preempted}", flush=True)
      sys.exit(INTERRUPTED_EXIT_CODE)
    # Distinct status so schedulers and launch scripts can requeue the job.
    print(f"PREEMPTED: {preempted}", flush=True)
    sys.exit(PREEMPTED_EXIT_CODE)
  except KeyboardInterrupt:
    # Ctrl-C twice, or outside the step loop (start-up, compiling, k-NN).
    print(
      f"INTERRUPTED: stopped without saving; rerun the same command to resume from the "
      f"last complete checkpoint in {checkpoint_dir(_WORKDIR.value)} (if any).",
      flush=True,
    )
    sys.exit(INTERRUPTED_EXIT_CODE)
  except CheckpointSaveError as failure:
    # Not requeued like a preemption: a full disk needs a person first.
    logging.error("%s", failure)
    print(f"CHECKPOINT SAVE FAILED: {failure}", flush=True)
    sys.exit(SAVE_FAILED_EXIT_CODE)
  except WriteFailed as failure:  # metrics.jsonl: likewise
    logging.error("%s", failure)
    print(f"WRITE FAILED: {failure}", flush=True)
    sys.exit(SAVE_FAILED_EXIT_CODE)
  except UserError as mistake:
    # The message is the whole story; a traceback would only bury it.
    fail_for_user(f"{type(mistake).__name__}: {mistake}")
  except Exception:
    # A collective that failed because another host died (Gloo raises at
    # once): let the watch say so and exit 75, instead of a traceback.
    if watch is not None:
      watch.await_loss()
    raise
  finally:
    if watch is not None:
      watch.stop()


def cli(argv: list[str]) -> int:
  """The command line with `argv` (argv[0] the program): its exit status.
  What `python -m mae_jax.main` runs; tests call it in process."""
  # ml_collections finds the --config.* overrides in sys.argv itself.
  saved_argv, sys.argv = sys.argv, list(argv)
  try:
    app.run(main, argv=argv, flags_parser=parse_flags)
  except SystemExit as exit_:
    return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
  finally:
    sys.argv = saved_argv
  return 0


if __name__ == "__main__":
  sys.exit(cli(sys.argv))
