"""Ctrl-C, in process: the first press asks the step loop to save and stop,
the second stops at once, a process started with Ctrl-C ignored keeps
ignoring it, and a stop outside the loop is one line with exit 130 (the
whole path through a terminal's Ctrl-C: tests/test_main_cli.py)."""

from __future__ import annotations

import signal

import pytest
from absl import flags

from mae_jax import main as main_lib
from mae_jax import stop_notice
from mae_jax.core.preemption import PreemptionWatcher
from mae_jax.errors import INTERRUPTED_EXIT_CODE


@pytest.fixture
def default_ctrl_c():
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, previous)


def test_first_ctrl_c_stops_at_the_step_the_second_at_once(default_ctrl_c, capfd):
  watcher = PreemptionWatcher()
  try:
    assert not watcher.reached(1) and not watcher.interrupted
    signal.raise_signal(signal.SIGINT)
    assert watcher.reached(2) and watcher.interrupted
    assert "Ctrl-C: saving a checkpoint after this step" in capfd.readouterr().err
    with pytest.raises(KeyboardInterrupt):
      signal.raise_signal(signal.SIGINT)
  finally:
    watcher.close()
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_is_a_preemption_not_an_interruption(default_ctrl_c):
  watcher = PreemptionWatcher()
  try:
    signal.raise_signal(signal.SIGTERM)
    assert watcher.reached(1) and not watcher.interrupted
  finally:
    watcher.close()
    stop_notice.clear()


def test_a_process_started_with_ctrl_c_ignored_keeps_ignoring_it():
  """launch/resumable.sh runs the job in the background (Ctrl-C ignored)
  and turns the script's own Ctrl-C into SIGTERM: a preemption, exit 75."""
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    watcher = PreemptionWatcher()
    signal.raise_signal(signal.SIGINT)
    assert not watcher.reached(1)
    watcher.close()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
  finally:
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_outside_the_loop_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
  def interrupted(config, workdir):
    raise KeyboardInterrupt

  monkeypatch.setattr(main_lib, "run_job", interrupted)
  for name in [name for name in flags.FLAGS if name.startswith("config.")]:
    delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()
  argv = ["mae_jax", "--config=configs/pretrain.py:digits", f"--workdir={tmp_path / 'run'}"]
  assert main_lib.cli(argv) == INTERRUPTED_EXIT_CODE == 130
  out = capsys.readouterr().out
  assert "INTERRUPTED: stopped without saving; rerun the same command to resume" in out
  assert "Traceback" not in out
