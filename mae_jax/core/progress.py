"""Progress of a step loop: a tqdm bar on a terminal, plain lines otherwise,
nothing on hosts other than the first."""

from __future__ import annotations

import sys


class _Progress:
  """tqdm bar on a terminal, plain log lines otherwise."""

  def __init__(self, bar, start, total):
    self.bar, self.start, self.total = bar, start, total

  def update(self, step: int, summary: dict, throughput_key: str = "images_per_sec") -> None:
    text = (
      f"loss {summary['loss_avg']:.4f} lr {summary['learning_rate']:.2e} "
      f"{summary.get(throughput_key, 0):.0f} {throughput_key.split('_')[0]}/s"
    )
    if self.bar is not None:
      self.bar.n = step
      self.bar.set_postfix_str(text)
    else:
      print(f"step {step}/{self.total}: {text}", flush=True)

  def log(self, text: str) -> None:
    (self.bar.write if self.bar is not None else print)(text)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


class _Silent(_Progress):
  def update(self, step, summary, throughput_key="images_per_sec"):
    pass

  def log(self, text):
    pass


def make_progress(mode: str, start: int, total: int, is_main: bool) -> _Progress:
  if not is_main:
    return _Silent(None, start, total)
  if mode == "on" or (mode == "auto" and sys.stderr.isatty()):
    import tqdm

    return _Progress(
      tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True), start, total
    )
  return _Progress(None, start, total)
