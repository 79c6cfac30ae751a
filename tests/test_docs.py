"""The README stays a first page, its test command is CI's, and every local
link in the docs points at a file that exists."""

from __future__ import annotations

import glob
import os
import re

from tests.helpers import REPO


def read(path: str) -> str:
  return open(os.path.join(REPO, path)).read()


def test_readme_is_a_first_page():
  assert len(read("README.md").splitlines()) <= 250


def test_ci_runs_exactly_the_readme_test_command():
  ci_command = read(".ci/run").strip().splitlines()[-1]
  assert f"```bash\n{ci_command}\n```" in read("README.md")


def test_local_links_resolve():
  broken = []
  for doc in ["README.md", "BENCHMARKS.md", *glob.glob("docs/*.md", root_dir=REPO)]:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", read(doc)):
      if "://" in target:
        continue
      if not os.path.exists(os.path.join(REPO, os.path.dirname(doc), target)):
        broken.append(f"{doc}: {target}")
  assert not broken, broken
