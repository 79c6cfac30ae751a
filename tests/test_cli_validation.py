"""Every raise of the model and mesh validators, through the CLI entry.

Each mistake must end in one line on stderr and exit status 2, before
anything compiles. The cases run in process through `mae_jax.main.cli`
(the function `python -m mae_jax.main` runs), traced: the test fails if a
`raise` of `ModelConfig.validate`, `sharding.mesh_shape` or
`main.host_timeout` is left unvisited, so a new check without a case here
fails too. One subprocess checks the real exit status.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import textwrap

import pytest
from absl import flags

from mae_jax import main as main_lib
from mae_jax.core import sharding
from mae_jax.errors import USAGE_EXIT_CODE
from mae_jax.model.config import ModelConfig
from tests.helpers import REPO, environment

VALIDATORS = (ModelConfig.validate, sharding.mesh_shape, main_lib.host_timeout)

# (override, a fragment of the message). The suite has 8 fake CPU devices.
CASES = [
  ("--config.model.depth=0", "model.depth=0: must be a positive integer"),
  (
    "--config.model.image_size=(32,0)",
    "model.image_size=(32, 0): must be a positive integer (square) or (height, width)",
  ),
  ("--config.model.channels=2", "model.channels=2: must be 1 or 3"),
  ("--config.model.patch_size=5", "not divisible by model.patch_size=5"),
  ("--config.model.heads=5", "model.heads=5 does not divide"),
  ("--config.model.width=30", "must be multiples of 4"),
  ("--config.model.mlp_ratio=0", "model.mlp_ratio=0"),
  ("--config.model.mask_ratio=nan", "model.mask_ratio=nan: must be in [0, 1)"),
  ("--config.model.mask_ratio=0.99", "keeps no patch"),
  ("--config.model.dtype=float8", "model.dtype='float8'"),
  ("--config.model.remat_policy=most", "model.remat_policy='most'"),
  ("--config.model.drop_path_rate=1.0", "model.drop_path_rate=1.0"),
  ("--config.model.attention_impl=flash", "model.attention_impl='flash'"),
  ("--config.model.attention_impl=cudnn", "cuDNN attention refuses odd sequence lengths"),
  ("--config.mesh.data=0", "sizes must be positive"),
  ("--config.mesh.fsdp=3", "does not divide the 8 devices"),
  ("--config.mesh.data=2", "needs 2 devices but 8 are present"),
  ("--config.host_timeout_seconds=0", "config.host_timeout_seconds=0.0: expected a positive"),
]


def raise_lines(function) -> set[tuple[str, int]]:
  """(file, line) of every `raise` statement in `function`."""
  source, first = inspect.getsourcelines(function)
  tree = ast.parse(textwrap.dedent("".join(source)))
  filename = inspect.getsourcefile(function)
  return {
    (filename, node.lineno + first - 1) for node in ast.walk(tree) if isinstance(node, ast.Raise)
  }


def cli(argv: list[str]) -> int:
  # A fresh parse, as a new process would do: ml_collections defines one
  # flag per config field at each parse, which a second parse would redefine.
  for name in [name for name in flags.FLAGS if name.startswith("config.")]:
    delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()
  return main_lib.cli(argv)


def test_every_validator_raise_is_one_line_and_exit_2(tmp_path, capsys):
  codes = {function.__code__ for function in VALIDATORS}
  visited: set[tuple[str, int]] = set()

  def tracer(frame, event, arg):
    if frame.f_code not in codes:
      return None

    def lines(frame, event, arg):
      if event == "line":
        visited.add((frame.f_code.co_filename, frame.f_lineno))
      return lines

    return lines

  for override, fragment in CASES:
    workdir = tmp_path / override.split("=")[0].rsplit(".", 1)[-1]
    argv = ["mae_jax", "--config=configs/pretrain.py:digits", f"--workdir={workdir}", override]
    sys.settrace(tracer)
    try:
      status = cli(argv)
    finally:
      sys.settrace(None)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == USAGE_EXIT_CODE, (override, err)
    assert len(err) == 1 and err[0].startswith("error: ConfigError: "), (override, err)
    assert fragment in err[0], (override, err[0])
    assert not (workdir / "checkpoints").exists(), override
  expected = set().union(*(raise_lines(function) for function in VALIDATORS))
  assert len(expected) == len(CASES)  # one case per raise
  missed = sorted(expected - visited)
  assert not missed, f"raises with no case in CASES: {missed}"


def test_a_mesh_mistake_on_one_device_exits_2_with_one_line(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "mae_jax.main",
      "--config=configs/pretrain.py:digits",
      f"--workdir={tmp_path / 'run'}",
      "--config.mesh.fsdp=3",
    ],
    cwd=REPO,
    env=environment(1),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == USAGE_EXIT_CODE, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert errors == [
    "error: ConfigError: config.mesh={'data': -1, 'fsdp': 3, 'tensor': 1}: the fixed axes "
    "use 3 devices, which does not divide the 1 devices present."
  ]


@pytest.mark.parametrize(
  "config, override, fragment",
  [
    ("pretrain.py:digits", "--config.num_train_steps=-5", "num_train_steps=-5: must be > 0, or -1"),
    ("pretrain.py:digits", "--config.eval_batches=0", "eval_batches=0: must be > 0, or -1"),
    ("linprobe.py:digits", "--config.eval_batch_size=-5", "eval_batch_size=-5: must be > 0"),
  ],
)
def test_a_sentinel_field_takes_only_its_own_value(tmp_path, capsys, config, override, fragment):
  """-1 means "unset"; any other value must be a real one: -5 is refused,
  not read as -1 (it used to run the epoch schedule)."""
  argv = ["mae_jax", f"--config=configs/{config}", f"--workdir={tmp_path / 'run'}", override]
  if config.startswith("linprobe"):
    argv.append("--config.init_from=/nonexistent")
  assert cli(argv) == USAGE_EXIT_CODE
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and fragment in err[0], err
