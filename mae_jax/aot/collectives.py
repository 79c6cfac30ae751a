"""The collectives of a compiled step: how many, how many bytes, over which
link, and how long they take at that link's bandwidth.

Read off the optimised HLO text. A collective's result shape gives its
size; its replica groups (explicit `{{0,1},...}`, iota `[2,4]<=[8]`, or the
mesh form `mesh['axis_0'=2,...] {'axis_1'}`) name the devices that take
part, as positions in the program's device assignment, which is the mesh's
device order. A group whose devices live on more than one GPU host (TPU
slice) crosses the network between hosts (the data-centre network, DCN);
otherwise NVLink (ICI).

Bytes on the link per device follow the ring algorithms NCCL and the TPU
runtime use for large messages: an all-reduce of S bytes over n devices
sends 2 (n - 1) / n x S, an all-gather or all-to-all (n - 1) / n of its
result, a reduce-scatter (n - 1) x its result (a shard), a
collective-permute its result. Times are bytes / the link's bandwidth: no
latency, no overlap with compute (the report says so).
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

OPS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {
  "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
  "f32": 4, "s64": 8, "u64": 8, "f64": 8, "f8e4m3fn": 1, "f8e5m2": 1,
}  # fmt: skip
_INSTRUCTION = re.compile(
  r"=\s*(?P<shape>.+?)\s+(?P<op>" + "|".join(OPS) + r")(?P<start>-start)?\((?P<rest>.*)$"
)
_MEGASCALE = re.compile(r"=\s*\((?P<shape>.+?)\)\s+send\(.*_xla_megascale_reduce_operation")
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")


@dataclasses.dataclass
class Link:
  """One kind of link: its name and bandwidth per device, one direction."""

  name: str
  bytes_per_second: float


@dataclasses.dataclass
class Collective:
  op: str
  result_bytes: int  # per device
  group_size: int
  groups: list  # lists of device positions, or [] when all devices take part
  across_slices: bool = False  # a megascale transfer: always between slices

  def link_bytes(self) -> float:
    """Bytes each device sends over the link (ring algorithms)."""
    n, size = self.group_size, self.result_bytes
    if n <= 1:
      return 0.0
    if self.op == "all-reduce":
      return 2 * (n - 1) / n * size
    if self.op == "reduce-scatter":
      return (n - 1) * size
    if self.op == "collective-permute":
      return float(size)
    return (n - 1) / n * size  # all-gather, all-to-all


def _top_level(text: str) -> list[str]:
  """'(a, (b, c)), d' -> ['(a, (b, c))', 'd']: split at depth-0 commas."""
  parts, depth, start = [], 0, 0
  for i, char in enumerate(text):
    depth += char in "([{"
    depth -= char in ")]}"
    if char == "," and depth == 0:
      parts.append(text[start:i].strip())
      start = i + 1
  parts.append(text[start:].strip())
  return [part for part in parts if part]


def _array_bytes(text: str) -> int:
  total = 0
  for dtype, dims in _ARRAY.findall(text):
    if dtype in DTYPE_BYTES:
      total += DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _result_bytes(shape: str, op: str, is_start: bool) -> int:
  """A collective's output bytes. An async all-gather-start or
  collective-permute-start returns (operands, outputs, ...): the outputs."""
  if is_start and op in ("all-gather", "collective-permute") and shape.startswith("("):
    elements = _top_level(shape[1:-1])
    if len(elements) >= 2:
      return _array_bytes(elements[1])
  return _array_bytes(shape)


def _iota(shape: list[int], perm: list[int] | None) -> np.ndarray:
  ids = np.arange(math.prod(shape)).reshape(shape)
  return ids.transpose(perm) if perm else ids


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x.strip()]


def parse_groups(rest: str) -> list[list[int]] | None:
  """The replica groups of an instruction's attributes; [] for 'all
  devices'; None when there are none to read (collective-permute)."""
  match = re.search(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}", rest)
  if match:
    return [_ints(group) for group in re.findall(r"\{([\d,]*)\}", match.group(1))]
  match = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", rest)
  if match:
    count, size = int(match.group(1)), int(match.group(2))
    ids = _iota(_ints(match.group(3)), _ints(match.group(4)) if match.group(4) else None)
    return ids.reshape(count, size).tolist()
  match = re.search(
    r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\(\[([\d,]+)\](?:T\(([\d,]+)\))?\))?"
    r"\s*\{([^}]*)\}",
    rest,
  )
  if match:
    axes = re.findall(r"'([^']+)'=(\d+)", match.group(1))
    names, dims = [a for a, _ in axes], [int(d) for _, d in axes]
    if match.group(2):
      ids = _iota(_ints(match.group(2)), _ints(match.group(3)) if match.group(3) else None)
      ids = ids.reshape(dims)
    else:
      ids = np.arange(math.prod(dims)).reshape(dims)
    chosen = [names.index(a) for a in re.findall(r"'([^']+)'", match.group(4))]
    others = [i for i in range(len(dims)) if i not in chosen]
    size = math.prod(dims[i] for i in chosen)
    return ids.transpose(others + chosen).reshape(-1, size).tolist()
  pairs = re.search(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}", rest)
  if pairs:
    return [_ints(pair) for pair in re.findall(r"\{(\d+,\d+)\}", pairs.group(1))]
  return [] if "replica_groups={}" in rest else None


def collectives_of(hlo_text: str, device_count: int, slices: int = 1) -> list[Collective]:
  """Every collective the program launches (an async pair once, by its -start)."""
  found = []
  for line in hlo_text.splitlines():
    across = _MEGASCALE.search(line)
    if across:  # the operand: the first element of (data, context, token)
      size = _array_bytes(_top_level(across.group("shape"))[0])
      found.append(Collective("all-reduce", size, max(slices, 2), [], across_slices=True))
      continue
    match = _INSTRUCTION.search(line)
    if not match:
      continue
    op, rest = match.group("op"), match.group("rest")
    groups = parse_groups(rest)
    if op == "collective-permute":
      size = 2  # a pair: one sends, one receives
    elif groups:
      size = len(groups[0])
    else:
      size = device_count
    found.append(
      Collective(
        op, _result_bytes(match.group("shape"), op, bool(match.group("start"))), size, groups or []
      )
    )
  return found


def crosses(collective: Collective, device_homes: list[int]) -> bool:
  """Whether any group holds devices of more than one host (slice);
  device_homes[i] is the host (slice) of the device at position i."""
  if collective.across_slices:
    return True
  groups = collective.groups or [list(range(len(device_homes)))]
  return any(len({device_homes[i] for i in group if i < len(device_homes)}) > 1 for group in groups)


def time_per_link(
  collectives: list[Collective], device_homes: list[int], near: Link, far: Link, repeat: int = 1
) -> dict:
  """{link name: {count, bytes, seconds}} per device, each collective put on
  the slower link when its groups span hosts (slices); `repeat` scales a
  program that runs `repeat` times per step (the unrolled twin of an
  accumulated step)."""
  totals: dict = {}
  for collective in collectives:
    link = far if crosses(collective, device_homes) else near
    entry = totals.setdefault(
      link.name, {"count": 0, "bytes": 0.0, "seconds": 0.0, "bandwidth": link.bytes_per_second}
    )
    sent = collective.link_bytes() * repeat
    entry["count"] += repeat
    entry["bytes"] += sent
    entry["seconds"] += sent / link.bytes_per_second
  return totals


def counts(collectives: list[Collective]) -> dict:
  """{op: how many}, in OPS order."""
  tally = {op: 0 for op in OPS}
  for collective in collectives:
    tally[collective.op] += 1
  return {op: n for op, n in tally.items() if n}
