"""Training and evaluation never import TensorFlow (only building or
converting a TFDS dataset does): a short run of each job, in a fresh
process, then a look at sys.modules."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from tests.helpers import REPO, environment

SCRIPT = """
import sys
from configs import finetune, knn, linprobe
from mae_jax.jobs import run_job
from tests.test_eval_jobs import eval_config
from tests.helpers import tiny_config

workdir = sys.argv[1]
pretrained = workdir + "/pretrain"
run_job(
  tiny_config(num_train_steps=2, checkpoint_every_steps=2, num_reconstructions=0), pretrained
)
for name, module in (("linprobe", linprobe), ("finetune", finetune), ("knn", knn)):
  config = eval_config(module, init_from=pretrained)
  if name != "knn":
    config.num_train_steps = 2
  run_job(config, workdir + "/" + name)
loaded = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
print("TENSORFLOW MODULES:", loaded)
"""


def run_script(script: str, *args: str, env: dict, timeout: int) -> str:
  """Runs `script` in a fresh Python process; its stdout, once it succeeded."""
  result = subprocess.run(
    [sys.executable, "-c", script, *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  return result.stdout


def test_pretraining_and_every_evaluation_job_run_without_tensorflow(tmp_path):
  stdout = run_script(SCRIPT, str(tmp_path), env=environment(8), timeout=900)
  assert "TENSORFLOW MODULES: []" in stdout


GCS_SCRIPT = """
import sys
import mae_jax  # sets EPATH_USE_TF=false
from etils import epath
from etils.epath import backend

path = epath.Path("gs://some-bucket/tensorflow_datasets/imagenet2012")
assert path._backend is backend.fsspec_backend, path._backend
file_system = path._backend.fs(path)
print("FILE SYSTEM:", type(file_system).__module__, sorted(file_system.protocol))
print("TENSORFLOW LOADED:", "tensorflow" in sys.modules)
"""


def test_bucket_paths_go_through_gcsfs_even_with_tensorflow_installed():
  # The test environment has TensorFlow (to build TFDS datasets), which is
  # what would make epath pick TensorFlow's file system for gs://.
  assert importlib.util.find_spec("tensorflow") is not None
  env = environment(1)
  env.pop("EPATH_USE_TF", None)
  env["FSSPEC_GS_TOKEN"] = "anon"  # No network, no credentials lookup.
  stdout = run_script(GCS_SCRIPT, env=env, timeout=120)
  assert "FILE SYSTEM: gcsfs" in stdout and "'gs'" in stdout
  assert "TENSORFLOW LOADED: False" in stdout
