"""Training and evaluation never import TensorFlow (only building or
converting a TFDS dataset does): a short run of each job, in a fresh
process, then a look at sys.modules."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO, environment

SCRIPT = """
import sys
from configs import finetune, knn, linprobe
from mae_jax.main import run_job
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


def test_pretraining_and_every_evaluation_job_run_without_tensorflow(tmp_path):
  result = subprocess.run(
    [sys.executable, "-c", SCRIPT, str(tmp_path)],
    cwd=REPO,
    env=environment(8),
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  assert "TENSORFLOW MODULES: []" in result.stdout
