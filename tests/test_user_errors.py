"""Mistakes in the command, config, data, checkpoint or workdir: one line, exit 2.

Unexpected errors keep their traceback; user mistakes (`mae_jax.errors`)
print `error: ...` alone. Each case runs the real command line.
"""

import os
import subprocess
import sys

import pytest

from mae_jax import errors, main
from mae_jax.cli import command_line
from mae_jax.core.checkpointing import CheckpointSaveError
from mae_jax.data import DataConfigError
from tests.helpers import REPO  # noqa: E402


def run_main(tmp_path, *overrides):
  command = [
    sys.executable,
    "-m",
    "mae_jax.main",
    "--config=configs/pretrain.py:digits",
    f"--workdir={tmp_path / 'run'}",
    *overrides,
  ]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_user_errors_are_value_errors_and_save_failures_are_not():
  for cls in (errors.ConfigError, errors.CheckpointError, errors.WorkdirError, DataConfigError):
    assert issubclass(cls, errors.UserError) and issubclass(cls, ValueError)
  # A full disk is not a usage mistake: it keeps its own exit status (74).
  assert not issubclass(CheckpointSaveError, errors.UserError)


def test_unknown_job_is_a_config_error():
  class Config(dict):
    def get(self, key, default=None):
      return dict.get(self, key, default)

  with pytest.raises(errors.ConfigError, match="config.job='probe' is unknown"):
    main.run_job(Config(job="probe"), "/unused")


def test_did_you_mean_names_the_full_path(tmp_path):
  config = tmp_path / "tiny.py"
  config.write_text(
    "import ml_collections\n"
    "def get_config(arg=None):\n"
    "  return ml_collections.ConfigDict({'seed': 0, 'model': {'mask_ratio': 0.75}})\n"
  )
  argv = ["prog", f"--config={config}", "--config.model.mask_ratio=0.5", "--config.mask_ratoi=0.5"]
  loaded = command_line.load_config_file(str(config))
  message = command_line.unknown_override(argv, loaded)
  assert message.startswith("--config.mask_ratoi=0.5: the config")
  assert "did you mean 'model.mask_ratio'" in message
  assert command_line.unknown_override(argv[:3], loaded) is None


@pytest.mark.parametrize("job", ["linprobe", "finetune", "knn"])
def test_evaluation_configs_refuse_pretraining_only_fields(job):
  """Setting a field evaluation never reads is a mistake, not a silent no-op."""
  from configs.common import PRETRAINING_ONLY

  argv = ["prog", f"--config=configs/{job}.py:digits", "--config.device_prefetch=4"]
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    config = command_line.load_config_file(f"configs/{job}.py:digits")
    message = command_line.unknown_override(argv, config)
  finally:
    os.chdir(cwd)
  assert message.startswith(f"--config.device_prefetch=4: the config configs/{job}.py:digits")
  assert not set(PRETRAINING_ONLY) & set(config.keys())


CONFIG_FILE_MISTAKES = {
  "configs/pretrain.py:digitz": "config preset 'digitz' is unknown: choose one of ['digits',",
  "configs/pretrain.py:digits,epoch=3": "config option 'epoch' is unknown: known options are",
  "configs/pretrian.py:digits": "no config file 'configs/pretrian.py'; e.g. configs/pretrain.py",
  "configs/__init__.py": "configs/__init__.py defines no get_config(); config files are",
  "{broken}": "does not load: SyntaxError:",
}


@pytest.mark.parametrize("entry", ["mae_jax.main", "mae_jax.aot"])
def test_config_file_mistakes_are_one_line_and_exit_2(tmp_path, entry):
  """A mistyped path or preset, an unknown option, a file that is no config
  or does not load: ml_collections would print a traceback for each."""
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(arg=None)\n  return None\n")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  for spec, expected in CONFIG_FILE_MISTAKES.items():
    spec = spec.format(broken=broken)
    extra = ["--topology=cpu"] if entry == "mae_jax.aot" else [f"--workdir={tmp_path / 'run'}"]
    result = subprocess.run(
      [sys.executable, "-m", entry, "--config", spec, *extra],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert result.returncode == errors.USAGE_EXIT_CODE, (spec, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, spec
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: --config={spec}: ") and expected in line, line
  assert not (tmp_path / "run").exists()


def test_mistyped_override_is_one_line_and_exit_2(tmp_path):
  result = run_main(tmp_path, "--config.mask_ratoi=0.5")
  assert result.returncode == errors.USAGE_EXIT_CODE, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert (
    "error: --config.mask_ratoi=0.5: the config configs/pretrain.py:digits has no "
    "field 'mask_ratoi'; did you mean 'model.mask_ratio'"
  ) in result.stderr
  assert not (tmp_path / "run").exists()  # Refused before anything was written.


def test_data_mistake_is_one_line_and_exit_2(tmp_path):
  missing = tmp_path / "no_such_folder"
  result = run_main(
    tmp_path, "--config.data.source=image_folder", f"--config.data.data_dir={missing}"
  )
  assert result.returncode == errors.USAGE_EXIT_CODE, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert f"error: DataConfigError: data.data_dir='{missing}' does not exist" in result.stderr


def test_config_value_mistake_is_one_line_and_exit_2(tmp_path):
  result = run_main(tmp_path, "--config.nonfinite=ignore")
  assert result.returncode == errors.USAGE_EXIT_CODE, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert "error: ConfigError: config.nonfinite='ignore': 'stop' or 'skip'." in result.stderr


def test_log_filter_drops_absent_backend_and_library_info_but_keeps_warnings():
  import logging as std_logging

  from mae_jax.log_filters import LibraryInfoFilter

  def record(level, path, msg):
    return std_logging.LogRecord("x", level, path, 1, msg, (), None)

  keep = LibraryInfoFilter().filter
  tpu = "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so"
  assert not keep(record(std_logging.INFO, "/jax/_src/xla_bridge.py", tpu))
  assert not keep(record(std_logging.INFO, "/site/orbax/checkpoint/x.py", "saved"))
  assert keep(record(std_logging.WARNING, "/jax/_src/xla_bridge.py", tpu))
  assert keep(record(std_logging.INFO, "/mae_jax/core/loop.py", "First step took 3 s."))
