"""The package is a one-way stack, and the trainer, the AOT planner and the
benchmarks run one train step, not three copies of it.

Import graph: every `import` of a mae_jax module, at module level or inside
a function, is an edge. The graph has no cycle, and every edge points to a
lower layer (or stays within its own package), so no function-level import
can be there to dodge a cycle.
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import os
import re

import jax
import pytest

from mae_jax import aot
from mae_jax.core.plan import make_plan
from mae_jax.jobs import JOBS
from mae_jax.jobs.pretrain import train_and_evaluate
from mae_jax.jobs.pretrain_step import pretraining_program
from tests.helpers import REPO, tiny_config

# Bottom to top. A module may import from a lower layer or from its own
# package; packages on the same layer do not import each other.
LAYERS = (
  ("errors", "log_filters", "image_size", "storage", "stop_notice"),  # no mae_jax imports
  ("model",),  # the MAE in linen
  ("data",),  # Grain input pipeline
  ("core", "visualize"),  # what the jobs share: the step engine, loop, state, plan
  ("evaluate", "evaluators", "convert"),  # evaluation's pieces; evaluators; weights conversion
  ("jobs",),  # one module per job, and the job table
  ("cli",),  # what only the entry points need
  ("main", "aot", "build_native"),  # entry points
  ("benchmarks",),  # times the jobs' own programs; never imported by the package
)
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def module_name(path: str) -> str:
  relative = os.path.relpath(path, REPO)[: -len(".py")].replace(os.sep, ".")
  return relative.removesuffix(".__init__")


def package_modules() -> dict[str, str]:
  """The package's modules and the benchmarks' (which sit on top of it)."""
  paths = glob.glob(os.path.join(REPO, "mae_jax", "**", "*.py"), recursive=True)
  paths += glob.glob(os.path.join(REPO, "benchmarks", "*.py"))
  return {module_name(path): path for path in paths}


def imported_modules(path: str, name: str, modules: dict) -> set[str]:
  """The mae_jax modules `path` imports, anywhere in the file."""
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative import
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
      # `from pkg import sub` imports the submodule when there is one.
      targets = [
        f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
        for alias in node.names
      ]
    else:
      continue
    found.update(t for t in targets if t in modules and t != name)
  return found


def import_graph() -> dict[str, set[str]]:
  modules = package_modules()
  graph = {name: imported_modules(path, name, modules) for name, path in modules.items()}
  # The job table names its modules as "module:function" strings, imported
  # when used: they are edges too.
  graph["mae_jax.jobs"] |= {
    target.partition(":")[0]
    for job in JOBS.values()
    for target in dataclasses.astuple(job)
    if target
  }
  return graph


def top(name: str) -> str:
  """The stack entry a module belongs to: its mae_jax subpackage, or "benchmarks"."""
  if name.split(".")[0] == "benchmarks":
    return "benchmarks"
  return name.split(".")[1] if name.count(".") else "__init__"


def test_every_package_module_has_a_layer():
  unplaced = {top(name) for name in package_modules()} - set(LAYER_OF) - {"__init__"}
  assert not unplaced, f"add {sorted(unplaced)} to LAYERS"


def test_imports_point_down_the_stack():
  upward = [
    f"{source} imports {target}"
    for source, targets in import_graph().items()
    for target in targets
    if top(source) != "__init__"
    and top(source) != top(target)
    and LAYER_OF[top(target)] >= LAYER_OF[top(source)]
  ]
  assert not upward, "imports against the stack:\n" + "\n".join(sorted(upward))


def test_the_import_graph_has_no_cycle():
  graph = import_graph()
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for target in sorted(graph[node]):
      if state.get(target) == 1:
        return path[path.index(target) :] + [target]
      if target not in state and (cycle := visit(target)):
        return cycle
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_walker_sees_function_level_imports(tmp_path):
  """The checks above would pass vacuously if the walker missed imports in functions."""
  graph = import_graph()
  assert "mae_jax.cli.host_watch" in graph["mae_jax.main"]  # imported inside host_timeout
  assert "mae_jax.jobs.pretrain" in graph["mae_jax.jobs"]  # named by the job table
  assert "mae_jax.jobs.pretrain_step" in graph["mae_jax.jobs.pretrain"]
  assert {"mae_jax.core.sharding", "mae_jax.model.mae"} <= graph["mae_jax.core.state"]


# ------------------------------------------------------ one train step --


def _without_locations(text: str) -> str:
  """StableHLO text without debug locations (the dump has them, `as_text()` not)."""
  text = re.sub(r"^#loc.*\n?", "", text, flags=re.M)
  text = re.sub(r' loc\((?:"[^"]*"|#loc\d*|[^()"])*(?:\([^()]*\))?[^()]*\)', "", text)
  return text.strip()


def _only_module(directory) -> str:
  dumps = sorted(glob.glob(os.path.join(directory, "*jit_train_step*.mlir")))
  assert dumps, os.listdir(directory)
  texts = {_without_locations(open(path).read()) for path in dumps}
  assert len(texts) == 1, "the trainer lowered more than one train step"
  return texts.pop()


def test_trainer_aot_planner_and_benchmark_lower_the_same_train_step(tmp_path):
  """The program pretraining runs (captured from a real 1-step run through
  JAX's IR dump) is the one `mae_jax.aot` plans and the benchmark times."""
  from benchmarks.steps import MaeStep

  config = tiny_config(num_train_steps=1, eval_batches=1, num_reconstructions=0)
  config.mesh.fsdp = 2  # a sharded state, so the shardings are part of the comparison
  dump = tmp_path / "ir"
  jax.config.update("jax_dump_ir_to", str(dump))
  try:
    train_and_evaluate(config, str(tmp_path / "run"))
  finally:
    jax.config.update("jax_dump_ir_to", "")
  trainer = _only_module(dump)

  plan = make_plan(config, num_devices=jax.device_count(), process_count=1)
  mesh = plan.make_mesh()
  lowered = aot.step_program(config, plan, mesh).lower()
  assert _without_locations(lowered.as_text()) == trainer

  program = pretraining_program(config, plan, mesh)  # its optimizer, for the benchmark
  benchmark = MaeStep(
    plan.model,
    config.global_batch_size,
    mesh=dict(mesh.shape),
    seed=config.seed,
    execute=False,
    optimizer=(program.schedule, program.tx),
    pixels=program.pixels,
  )
  assert _without_locations(benchmark.lowered.as_text()) == trainer


@pytest.mark.parametrize(
  "job, changes",
  [
    ("finetune", {"grad_accum_steps": 2}),
    ("linprobe", {"cache_features": False}),  # the frozen encoder is an input of the step
  ],
)
def test_evaluation_jobs_run_the_step_the_aot_planner_plans(tmp_path, job, changes):
  """The fine-tuning and probe steps a real run lowers (IR dump) are the
  programs `mae_jax.aot` compiles for their configs: one builder per job."""
  from configs import finetune as finetune_config
  from configs import linprobe as linprobe_config
  from mae_jax.evaluate.plan import make_eval_plan
  from mae_jax.jobs import run_job
  from tests.helpers import TINY_MODEL

  module = {"finetune": finetune_config, "linprobe": linprobe_config}[job]
  config = module.get_config("digits")
  config.model.update(TINY_MODEL)
  config.data.image_size = 16
  config.update(
    baseline="random_init",
    init_from="",
    global_batch_size=16,
    num_train_steps=1,
    eval_every_steps=1,
    eval_batch_size=64,
    progress_bar="off",
    **changes,
  )
  config.mesh.fsdp = 2
  dump = tmp_path / "ir"
  jax.config.update("jax_dump_ir_to", str(dump))
  try:
    run_job(config, str(tmp_path / "run"))
  finally:
    jax.config.update("jax_dump_ir_to", "")
  plan = make_eval_plan(config, num_devices=jax.device_count(), process_count=1)
  mesh = plan.make_mesh()
  lowered = aot.step_program(config, plan, mesh).lower()
  assert _without_locations(lowered.as_text()) == _only_module(dump)


# ------------------------------------------------------------ the map --


def test_the_module_map_is_the_tree():
  """docs/architecture.md's module map names every module of mae_jax, and
  only those: a module added, moved or removed without its row fails."""
  text = open(os.path.join(REPO, "docs", "architecture.md")).read()
  table = text[text.index("## The module map") : text.index("\n## ", text.index("## The module"))]
  mapped = set(re.findall(r"^\| `([a-z_/]+\.py)`", table, flags=re.M))
  tree = {
    os.path.relpath(path, os.path.join(REPO, "mae_jax"))
    for path in glob.glob(os.path.join(REPO, "mae_jax", "**", "*.py"), recursive=True)
  }
  # A package's __init__ needs no row, unless it holds code (the job table does).
  tree = {p for p in tree if not p.endswith("__init__.py") and not p.endswith("aot/__main__.py")}
  mapped.discard("jobs/__init__.py")
  assert sorted(tree - mapped) == [], "modules missing from docs/architecture.md's map"
  assert sorted(mapped - tree) == [], "docs/architecture.md maps modules that do not exist"


def test_package_docstrings_point_to_the_one_map():
  """The map is written once: no package docstring lists its modules again."""
  for path in glob.glob(os.path.join(REPO, "mae_jax", "*", "__init__.py")):
    doc = ast.get_docstring(ast.parse(open(path).read())) or ""
    listed = re.findall(r"^\s*[a-z_]+\.py\s", doc, flags=re.M)
    assert not listed, f"{os.path.relpath(path, REPO)} lists modules {listed}: see the map"
