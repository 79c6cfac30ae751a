"""config.compilation_cache: where the persistent XLA cache goes."""

from __future__ import annotations

import jax
import pytest

from mae_jax.cli import compilation_cache
from mae_jax.errors import ConfigError


def test_auto_is_inside_the_workdir_a_path_is_kept_and_empty_is_off():
  assert compilation_cache.cache_dir("auto", "runs/x") == "runs/x/compilation_cache"
  assert compilation_cache.cache_dir("gs://b/cache", "runs/x") == "gs://b/cache"
  assert compilation_cache.cache_dir("", "runs/x") is None
  with pytest.raises(ConfigError, match="compilation_cache=3"):
    compilation_cache.cache_dir(3, "runs/x")


def test_enable_sets_jax_and_leaves_an_environment_choice_alone(monkeypatch):
  updates = []
  monkeypatch.setattr(jax.config, "update", lambda name, value: updates.append((name, value)))
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/chosen")
  assert compilation_cache.enable("auto", "w") == "/chosen" and updates == []
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
  assert compilation_cache.enable("auto", "w") == "w/compilation_cache"
  assert updates == [("jax_compilation_cache_dir", "w/compilation_cache")]
  assert compilation_cache.enable("", "w") is None and len(updates) == 1
