"""Runs whose workdir, weights and data live in a Cloud Storage bucket,
against a real GCS JSON-API server on 127.0.0.1 (fake-gcs-server; the
`storage_server` and `bucket` fixtures in conftest.py start it, point
every client at it and fail a test that tried to reach anything else).

The command line pretrains into a bucket, is preempted after its first
checkpoint, resumes from the bucket and ends bit-identical to a local run
with one metrics history; a second run on the same bucket workdir is
refused by the lease; the evaluation jobs start from a checkpoint in a
bucket; conversion reads and writes buckets; data is read from a bucket;
a bucket that does not exist is one line and exit 2 before compiling.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from mae_jax import storage
from mae_jax.core.metrics import read_jsonl
from mae_jax.core.preemption import PREEMPTED_EXIT_CODE
from tests.helpers import REPO, environment, final_params, with_sigint
from tests.helpers import main_command as command

TOTAL = 96
STEPS = [
  f"--config.num_train_steps={TOTAL}",
  "--config.checkpoint_every_steps=16",
  "--config.log_every_steps=8",
  "--config.eval_every_steps=48",
  "--config.keep_checkpoints=10",
]
# Fields that measure time, not the computation.
TIMING = {"images_per_sec", "input_wait_fraction", "compile_seconds"}


def run(cmd: list[str], expect: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
  result = subprocess.run(
    cmd, cwd=REPO, env=env or environment(1), capture_output=True, text=True, timeout=600
  )
  assert result.returncode == expect, (result.stdout + result.stderr)[-3000:]
  return result


def complete_steps(workdir: str) -> list[int]:
  """Finalised steps: orbax renames a step to its number once it is complete."""
  directory = storage.path(workdir, "checkpoints")
  if not directory.exists():
    return []
  return sorted(int(entry.name) for entry in directory.iterdir() if entry.name.isdigit())


def history(workdir: str) -> list[dict]:
  """metrics.jsonl without its timing fields (and the rows that only time
  a compile: a resumed run compiles again)."""
  rows = [
    {k: v for k, v in row.items() if k not in TIMING}
    for row in read_jsonl(storage.join(workdir, "metrics.jsonl"))
  ]
  return [row for row in rows if set(row) != {"step"}]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp("local") / "run")
  run(command(workdir, *STEPS))
  return workdir


def start_and_sigterm_after_first_checkpoint(workdir: str) -> tuple[int, str]:
  process = subprocess.Popen(
    with_sigint(command(workdir, *STEPS)),
    cwd=REPO,
    env=environment(1),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  try:
    deadline = time.time() + 300
    while not complete_steps(workdir) and time.time() < deadline:
      time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
  finally:
    if process.poll() is None:
      process.kill()
  return process.returncode, output


def test_pretraining_in_a_bucket_preempted_and_rerun_equals_a_local_run(bucket, local_run):
  workdir = f"{bucket}/runs/digits"
  returncode, output = start_and_sigterm_after_first_checkpoint(workdir)
  assert returncode == PREEMPTED_EXIT_CODE, output[-3000:]
  saved = complete_steps(workdir)[-1]
  assert 16 <= saved < TOTAL and f"PREEMPTED: preempted at step {saved}" in output

  # The rerun without the suite's shared XLA cache keeps its own in the
  # bucket (config.compilation_cache "auto": WORKDIR/compilation_cache).
  env = {k: v for k, v in environment(1).items() if k != "JAX_COMPILATION_CACHE_DIR"}
  result = run(command(workdir, *STEPS), env=env)
  assert f"Pretraining finished at step {TOTAL}" in result.stdout
  assert f"checkpoints:     {workdir}/checkpoints" in result.stdout
  run_info = json.loads(storage.read_text(f"{workdir}/run_info.json"))
  assert run_info["resume"] == f"resuming from step {saved}"

  # One history, every row, equal to the local run's (timing aside).
  assert history(workdir) == history(local_run)
  assert [row["step"] for row in history(workdir) if "loss" in row] == list(range(8, TOTAL + 1, 8))
  jax.tree.map(
    np.testing.assert_array_equal, final_params(workdir, TOTAL), final_params(local_run, TOTAL)
  )
  periodic = list(range(16, TOTAL + 1, 16))
  assert complete_steps(local_run) == periodic
  assert complete_steps(workdir) == sorted(set(periodic) | {saved})  # + the preemption's
  for name in ("config.json", "reconstructions.png", "tensorboard", "compilation_cache"):
    assert storage.exists(f"{workdir}/{name}"), name
  assert list(storage.path(workdir, "tensorboard").iterdir())
  assert not storage.exists(f"{workdir}/lease.json")  # given back


def test_a_second_run_on_a_held_bucket_workdir_is_refused(bucket):
  from mae_jax.core import lease

  workdir = f"{bucket}/runs/held"
  held = lease.acquire(workdir)  # this process holds it, as a live run would
  try:
    result = run(command(workdir, "--config.num_train_steps=2"), expect=2)
  finally:
    held.release()
  assert "is in use by another run" in result.stderr
  assert "Traceback" not in result.stderr
  assert not complete_steps(workdir)


def test_a_bucket_that_does_not_exist_is_one_line_before_compiling(storage_server):
  result = run(command("gs://no-such-bucket-here/run", "--config.num_train_steps=2"), expect=2)
  assert "cannot write to --workdir='gs://no-such-bucket-here/run'" in result.stderr
  assert "Traceback" not in result.stderr
  assert "First step" not in result.stderr


# ------------------------------------------------------ data in a bucket --


def upload(local_dir, url: str) -> str:
  import gcsfs

  gcsfs.GCSFileSystem().put(str(local_dir), url.removeprefix("gs://"), recursive=True)
  return url


@pytest.mark.parametrize("source", ["image_folder", "tfds_array_record"])
def test_data_read_from_a_bucket_equals_the_local_copy(
  source, bucket, tmp_path, array_record_digits_dir
):
  from mae_jax import data
  from tests.test_data import batches, make_image_folder

  if source == "image_folder":
    local = str(make_image_folder(tmp_path / "images"))
    fields = dict(
      source="image_folder", image_size=16, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3
    )
  else:
    local = array_record_digits_dir
    fields = dict(source="tfds", name="mae_digits")
  remote = upload(local, f"{bucket}/data/{source}")
  configs = [data.default_data_config(data_dir=where, **fields) for where in (local, remote)]
  for config in configs:
    data.validate_data_config(config)
  assert data.dataset_info(configs[0]) == data.dataset_info(configs[1])
  for split, train in (("train", True), ("test", False)):
    got = [batches(c, 2, split=split, global_batch_size=8, train=train) for c in configs]
    for a, b in zip(*got):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])


# -------------------------------------------- weights in and out of a bucket --


@pytest.fixture(scope="module")
def bucket_checkpoint(storage_server, local_run) -> str:
  """The local run's workdir, copied into a bucket of its own."""
  from google.cloud import storage as gcs

  gcs.Client().create_bucket("mae-test-weights")
  return upload(local_run, "gs://mae-test-weights/pretrain")


@pytest.mark.parametrize("job", ["linprobe", "finetune", "knn"])
def test_evaluation_jobs_start_from_a_checkpoint_in_a_bucket(job, bucket, bucket_checkpoint):
  import importlib

  from mae_jax.jobs import run_job
  from tests.test_eval_jobs import eval_config

  workdir = f"{bucket}/{job}"
  config = eval_config(importlib.import_module(f"configs.{job}"), init_from=bucket_checkpoint)
  run_job(config, workdir)
  saved = json.loads(storage.read_text(f"{workdir}/results.json"))
  assert saved["checkpoint"]["path"].startswith(bucket_checkpoint)
  assert saved["checkpoint"]["step"] == TOTAL  # the encoder of the checkpoint's last step
  if job != "knn":
    assert complete_steps(workdir)[-1] == config.num_train_steps
    assert read_jsonl(f"{workdir}/metrics.jsonl")


def test_export_and_import_with_a_bucket_on_either_side(bucket, bucket_checkpoint, tmp_path):
  from mae_jax.convert.__main__ import main as convert
  from mae_jax.convert.files import load_state_dict
  from mae_jax.convert.pipeline import read_checkpoint_params

  exported = f"{bucket}/export/mae.safetensors"
  assert convert(["--input", bucket_checkpoint, "--output", exported]) == 0  # a workdir
  local_copy = str(tmp_path / "mae.safetensors")
  assert convert(["--input", f"{bucket_checkpoint}/checkpoints", "--output", local_copy]) == 0
  state = load_state_dict(exported)
  assert state.keys() == load_state_dict(local_copy).keys()
  for name, array in load_state_dict(local_copy).items():
    np.testing.assert_array_equal(state[name], array)
  with pytest.raises(Exception, match="already exists"):
    convert(["--input", bucket_checkpoint, "--output", exported])

  sizes = ["--patch_size=4", "--width=32", "--depth=1", "--heads=2", "--channels=1"]
  sizes += ["--decoder_width=32", "--decoder_depth=1", "--decoder_heads=2", "--image_size=16"]
  imported = f"{bucket}/imported"
  assert convert(["--input", exported, "--output", imported, *sizes]) == 0
  original, _ = read_checkpoint_params(f"{bucket_checkpoint}/checkpoints")
  round_trip, _ = read_checkpoint_params(imported)
  jax.tree.map(np.testing.assert_array_equal, original, round_trip)

  hf_dir = f"{bucket}/export/hf"
  assert convert(["--input", bucket_checkpoint, "--output", hf_dir, "--layout=transformers"]) == 0
  names = sorted(entry.name for entry in storage.path(hf_dir).iterdir())
  assert names == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
  assert json.loads(storage.read_text(f"{hf_dir}/config.json"))["hidden_size"] == 32


def test_reference_curves_read_and_draw_in_a_bucket(bucket_checkpoint, bucket):
  from benchmarks import reference_curves

  out = f"{bucket}/curves.png"
  reference_curves.main(["--metrics", f"{bucket_checkpoint}/metrics.jsonl", "--out", out])
  assert storage.read_bytes(out).startswith(b"\x89PNG")


# ------------------------------------------------- storage that misbehaves --


@pytest.fixture
def faulty(storage_server, bucket):
  """(a FaultyProxy in front of the test server, the environment that sends
  every client through it, a bucket)."""
  from benchmarks import storage_server as server_lib

  server, _ = storage_server
  proxy = server_lib.FaultyProxy(server.url)
  env = environment(1)
  for name in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL"):
    env[name] = proxy.url
  env["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = proxy.url
  yield proxy, env, bucket
  proxy.stop()


def run_with(env, cmd, expect) -> subprocess.CompletedProcess:
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == expect, (result.stdout + result.stderr)[-3000:]
  return result


@pytest.mark.parametrize("fault", ["unavailable", "drop"])
def test_a_few_seconds_of_failing_storage_during_a_save_lose_nothing(faulty, local_run, fault):
  """503s, or connections dropped unanswered, for 4 s from the first
  checkpoint's first upload: the clients retry and the run ends as the
  local one, every row and checkpoint there."""
  proxy, env, bucket = faulty
  workdir = f"{bucket}/flaky"
  proxy.misbehave(fault, when="checkpoints/16", seconds=4)
  run_with(env, command(workdir, *STEPS), expect=0)
  assert proxy.faults > 0
  assert history(workdir) == history(local_run)
  assert complete_steps(workdir) == complete_steps(local_run)


def test_storage_that_stays_down_ends_in_one_line_and_exit_74_then_resumes(faulty, local_run):
  """metrics.jsonl cannot be written for good after the first checkpoint:
  after gcsfs's retries the run stops with exit 74 and one line; the
  checkpoints already written restore, and the rerun ends as the local run."""
  proxy, env, bucket = faulty
  workdir = f"{bucket}/down"
  proxy.misbehave("unavailable", when="checkpoints/16", only="metrics.jsonl")
  result = run_with(env, command(workdir, *STEPS), expect=74)
  failure = [
    line for line in result.stdout.splitlines() if line.startswith(("WRITE", "CHECKPOINT"))
  ]
  assert len(failure) == 1 and "rerun the same command" in result.stdout, result.stdout[-2000:]
  assert "Traceback" not in result.stdout + result.stderr
  proxy.misbehave(None)
  run(command(workdir, *STEPS))
  assert history(workdir) == history(local_run)


def test_a_forbidden_bucket_is_one_line_and_exit_2_before_compiling(faulty):
  proxy, env, bucket = faulty
  proxy.misbehave("forbidden")
  result = run_with(env, command(f"{bucket}/forbidden", "--config.num_train_steps=2"), expect=2)
  assert f"cannot write to --workdir='{bucket}/forbidden'" in result.stderr
  assert "Traceback" not in result.stderr and "First step" not in result.stderr


def test_an_aot_plan_is_written_to_a_bucket(bucket):
  import sys

  from tests.helpers import TINY_OVERRIDES

  out = f"{bucket}/plans/digits.json"
  flags = [f"--config.{k}={v}" for k, v in {**TINY_OVERRIDES, "global_batch_size": 16}.items()]
  command = [sys.executable, "-m", "mae_jax.aot", "--config=configs/pretrain.py:digits"]
  run([*command, "--topology=cpu:1", "--noevaluations", f"--json={out}", *flags])
  assert json.loads(storage.read_text(out))["fits"]
