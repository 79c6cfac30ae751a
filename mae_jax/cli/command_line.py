"""The command line's --config, checked before absl parses it: a mistake in
the config file, its argument or a `--config.X=V` override is told in one
line (exit 2) instead of ml_collections' traceback. `mae_jax.main` and
`mae_jax.aot` parse their flags through `parse_flags`.
"""

import difflib
import importlib.util
import os
import sys

from absl import flags

from mae_jax.errors import USAGE_EXIT_CODE, ConfigError


def fail_for_user(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(USAGE_EXIT_CODE)


def config_paths(config, prefix: str = "") -> list[str]:
  """Every dotted field path of a (nested) ConfigDict: "model.mask_ratio", ..."""
  paths = []
  for key, value in config.items():
    path = f"{prefix}{key}"
    paths.append(path)
    if hasattr(value, "items"):
      paths.extend(config_paths(value, f"{path}."))
  return paths


def config_spec(argv: list[str]) -> str | None:
  """The value of --config (`--config=X` or `--config X`), or None."""
  for index, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and index + 1 < len(argv):
      return argv[index + 1]
  return None


def load_config_file(spec: str):
  """`get_config(arg)` of the file `spec` names ("path.py:arg"), as
  ml_collections calls it; a mistake in the file or the argument raises
  ConfigError with one line that names it."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--config={spec}: no config file {path!r}; e.g. configs/pretrain.py:digits.")
  module_spec = importlib.util.spec_from_file_location("_mae_jax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as error:  # A config file is user code: any mistake.
    raise ConfigError(f"--config={spec}: {path} does not load: {type(error).__name__}: {error}")
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(
      f"--config={spec}: {path} defines no get_config(); config files are the ones in "
      "configs/ (e.g. configs/pretrain.py:digits)."
    )
  try:
    return module.get_config(arg) if arg else module.get_config()
  except (TypeError, ValueError, KeyError) as error:
    raise ConfigError(f"--config={spec}: {error}")


def unknown_override(argv: list[str], config) -> str | None:
  """Why the first `--config.X=V` override names no field of `config`,
  with a did-you-mean: the field's full path, e.g. `model.mask_ratio` for
  a mistyped `--config.mask_ratoi`. None when every override names a field.
  """
  known = config_paths(config)
  by_leaf = {p.rsplit(".", 1)[-1]: p for p in known}
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config.") :].split("=", 1)[0]
    if key in known:
      continue
    leaf = key.rsplit(".", 1)[-1]
    close = [by_leaf[m] for m in difflib.get_close_matches(leaf, by_leaf, n=3)]
    close += [p for p in difflib.get_close_matches(key, known, n=3) if p not in close]
    hint = (
      f"did you mean {' or '.join(repr(c) for c in close[:3])}?"
      if close
      else ("see the config file for the fields it has.")
    )
    return f"{arg}: the config {config_spec(argv)} has no field {key!r}; {hint}"
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a mistake in --config or a --config.X
  override told in one line (ml_collections would print a traceback)."""
  spec = config_spec(argv)
  if spec is not None:
    try:
      config = load_config_file(spec)
    except ConfigError as error:
      fail_for_user(str(error))
    reason = unknown_override(argv, config)
    if reason:
      fail_for_user(reason)
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    fail_for_user(f"{str(error).rstrip('.')}. See --helpfull.")
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    # ml_collections raises these, chained three deep, for an override it
    # cannot apply (a value of the wrong type, say).
    fail_for_user(f"a --config override cannot be applied ({error}).")
