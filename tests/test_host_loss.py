"""A lost host: the survivors say so in one line and exit 75 (resumable).

The watch itself (mae_jax.cli.host_watch) runs against a fake key-value
store and clock; the real case runs the CLI in 2 processes x 2 CPU devices
on localhost with the workdir in a bucket (the storage test server, as on
a TPU pod), SIGKILLs process 1 once a checkpoint is complete, and checks
that process 0 exits 75 within the configured timeout with one line naming
process 1 and that checkpoint, and that rerunning both resumes from it.
"""

from __future__ import annotations

import json
import signal
import time

from mae_jax import storage
from mae_jax.cli import host_watch
from mae_jax.core import checkpointing
from tests.test_multiprocess import PROCESSES, TINY, free_port, run_processes, start_process


class FakeStore:
  """The coordination service's key-value store, as the client sees it."""

  def __init__(self):
    self.values: dict[str, str] = {}
    self.down = False

  def key_value_set(self, key, value, allow_overwrite=False):
    if self.down:
      raise RuntimeError("UNAVAILABLE: failed to connect to the coordination service")
    assert allow_overwrite
    self.values[key] = value

  def key_value_try_get(self, key):
    if self.down:
      raise RuntimeError("UNAVAILABLE")
    if key not in self.values:
      raise RuntimeError(f"NOT_FOUND: {key}")
    return self.values[key]


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def watch_of(store, clock, me=0, processes=3, timeout=10.0, **kwargs):
  return host_watch.HostWatch(
    store, me, processes, timeout, "/nonexistent/checkpoints", clock=clock, **kwargs
  )


def beat(store, peer, value):
  store.values[f"mae_jax/heartbeat/{peer}"] = str(value)


def test_a_peer_is_lost_only_after_timeout_seconds_without_a_new_heartbeat():
  store, clock = FakeStore(), FakeClock()
  watch = watch_of(store, clock)
  for second in range(1, 9):  # both peers beat: nobody is lost
    clock.now = float(second)
    beat(store, 1, second)
    beat(store, 2, second)
    assert watch.check() is None
  assert store.values["mae_jax/heartbeat/0"] == "8"  # ours is published
  # Process 2 falls silent at t=8; process 1 goes on beating.
  for second in range(9, 19):
    clock.now = float(second)
    beat(store, 1, second)
    assert watch.check() is None, second
  clock.now = 18.5
  beat(store, 1, 19)
  assert watch.check() == 2


def test_a_peer_that_never_beat_is_lost_timeout_after_the_start():
  store, clock = FakeStore(), FakeClock()
  watch = watch_of(store, clock, processes=2)
  clock.now = 10.0
  assert watch.check() is None
  clock.now = 10.5
  assert watch.check() == 1


def test_a_finished_peer_is_never_lost_and_stop_says_done():
  store, clock = FakeStore(), FakeClock()
  watch = watch_of(store, clock, processes=2)
  store.values["mae_jax/heartbeat/1"] = "done"
  clock.now = 1000.0
  assert watch.check() is None
  watch.stop()
  assert store.values["mae_jax/heartbeat/0"] == "done"


def test_an_unreachable_coordination_service_is_process_0_lost():
  store, clock = FakeStore(), FakeClock()
  store.down = True
  assert watch_of(store, clock, me=1).check() == 0
  # Process 0 hosts the service: it cannot lose it to another process.
  assert watch_of(store, clock, me=0).check() is None


def test_the_thread_reports_the_lost_process_and_the_last_checkpoint(tmp_path):
  from mae_jax.core import checkpointing
  from mae_jax.model.config import ModelConfig

  checkpoints = str(tmp_path / "checkpoints")
  checkpointing.write_params(checkpoints, {"w": [0.0]}, ModelConfig(), source="test")
  lines = []
  watch = host_watch.HostWatch(
    FakeStore(), 0, 2, 0.3, checkpoints, interval=0.05, on_loss=lines.append
  ).start()
  assert watch.await_loss()
  assert lines == [
    f"HOST LOST: process 1 stopped answering (no heartbeat for 0.3 s). Last complete "
    f"checkpoint: step 0 in {checkpoints}. Exit 75: rerun the same command on every "
    "host to resume from it."
  ]
  assert "none in /x (a rerun starts from step 0)" in host_watch.last_complete_checkpoint("/x")


def test_jax_waits_longer_than_the_watch():
  for timeout in (1.0, 60.0, 300.0):
    assert host_watch.jax_heartbeat_timeout(timeout) > timeout + 10


TIMEOUT_S = 10


def test_killing_process_1_makes_process_0_exit_75_with_one_line_then_both_resume(tmp_path, bucket):
  workdir = f"{bucket}/run"
  checkpoints = storage.join(workdir, "checkpoints")
  port = free_port()
  overrides = {
    **TINY,
    "num_train_steps": 100_000,
    "num_reconstructions": 0,
    "host_timeout_seconds": TIMEOUT_S,
  }
  processes, logs = [], []
  try:
    for index in range(PROCESSES):
      logs.append(open(tmp_path / f"process{index}.log", "w+"))
      processes.append(start_process(workdir, overrides, port, index, logs[-1]))
    deadline = time.monotonic() + 300
    while 4 not in checkpointing.complete_steps(checkpoints):
      assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
      time.sleep(0.5)
    processes[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    status = processes[0].wait(timeout=TIMEOUT_S + 60)
    took = time.monotonic() - killed
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait(timeout=30)
  logs[0].seek(0)
  output = logs[0].read()
  assert status == 75, output[-3000:]
  assert took < TIMEOUT_S + 15, took
  lost = [line for line in output.splitlines() if "HOST LOST" in line]
  assert len(lost) == 1, output[-3000:]
  last = max(checkpointing.complete_steps(checkpoints))
  assert lost[0].startswith("HOST LOST: process 1 stopped answering")
  assert f"Last complete checkpoint: step {last} in {checkpoints}." in lost[0]
  assert "Traceback" not in output and "Fatal Python error" not in output

  # The same command on both hosts resumes from that checkpoint.
  outputs = run_processes(workdir, last + 2, logs_dir=str(tmp_path))
  assert f"Pretraining finished at step {last + 2}" in outputs[0]
  info = json.loads(storage.read_text(storage.join(workdir, "run_info.json")))
  assert info["resume"] == f"resuming from step {last}"
