"""Where a run's files live: a local folder or a Cloud Storage bucket (gs://).

Every path mae_jax reads or writes (the workdir and everything in it,
`init_from`, the data, conversion's input and output, plans' JSON) is a
string that may be a URL. This module is the one place that knows the
difference:

- `path(p)` is an `etils.epath.Path`, the path type orbax itself uses:
  local files through the OS, gs:// through gcsfs (EPATH_USE_TF=false,
  set in mae_jax/__init__.py; TensorFlow's own file system ignores the
  storage emulator the tests use and would load TensorFlow).
- `absolute(p)` is what orbax and tensorstore are handed: a local path
  made absolute, a URL left as it is (`os.path.abspath` would turn
  "gs://b/x" into "<cwd>/gs:/b/x").
- `join` joins with "/" (a URL never takes the OS separator).
- `AppendOnlyText` keeps a text file that only grows, where objects cannot
  be appended to (metrics.jsonl; docs/reliability.md says why this way).
"""

from __future__ import annotations

import os
import posixpath

from etils import epath

SCHEME_SEPARATOR = "://"


def is_url(location) -> bool:
  """gs://, s3://...: a path that the OS does not resolve."""
  return SCHEME_SEPARATOR in str(location)


def is_bucket(location) -> bool:
  return str(location).startswith("gs://")


def absolute(location) -> str:
  """A local path made absolute; a URL unchanged."""
  location = os.fspath(location)
  return location if is_url(location) else os.path.abspath(location)


def path(location, *parts) -> epath.Path:
  return epath.Path(location, *parts)


def join(location, *parts) -> str:
  location = os.fspath(location)
  if is_url(location):
    return posixpath.join(location, *parts)
  return os.path.join(location, *parts)


def parent(location) -> str:
  """The folder holding `location` (a local one made absolute first)."""
  location = absolute(location).rstrip("/")
  return posixpath.dirname(location) if is_url(location) else os.path.dirname(location)


def basename(location) -> str:
  return posixpath.basename(os.fspath(location).rstrip("/"))


def exists(location) -> bool:
  return path(location).exists()


def read_text(location) -> str:
  return path(location).read_text()


def write_text(location, text: str) -> None:
  """The whole file at once: on a bucket an upload replaces the object
  atomically; a local file is written beside and renamed over, so a reader
  (or a run killed mid-write) never sees half of it."""
  target = path(location)
  if is_url(location):
    target.write_text(text)
    return
  temporary = target.parent / f".{target.name}.{os.getpid()}.tmp"
  temporary.write_text(text)
  os.replace(temporary, target)


def read_bytes(location) -> bytes:
  return path(location).read_bytes()


def write_bytes(location, data: bytes) -> None:
  path(location).write_bytes(data)


def makedirs(location) -> None:
  """A local folder and its parents; nothing on a bucket, where folders are
  only name prefixes (gcsfs makes the bucket itself, never wanted here)."""
  if not is_url(location):
    os.makedirs(location, exist_ok=True)


def describe_error(error: BaseException, limit: int = 200) -> str:
  """One line of a storage error: its type and the first line of its text
  (gcsfs and the Google clients append response bodies and retry notes)."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  text = text if len(text) <= limit else text[: limit - 3] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


class WriteFailed(RuntimeError):
  """A run's output could not be written, after the storage client's own
  retries (a bucket unreachable for minutes, a full disk). What was written
  before is intact; the message says what to do. Exit status 74."""


class AppendOnlyText:
  """A text file that a run only adds lines to, on a disk or a bucket.

  A local file is appended to: each line reaches the disk as written and a
  crash loses nothing written before it. A Cloud Storage object cannot be
  appended to (gcsfs's mode "a" silently overwrites), so there the whole
  text is kept in memory and the object rewritten from it: every upload
  replaces the object atomically with the complete history, and a run
  killed between two uploads loses only the lines after the last one.
  """

  def __init__(self, location: str, kept_text: str = ""):
    self.location = location
    self._bucket = is_url(location)
    self._text = kept_text

  def append(self, line: str) -> None:
    if self._bucket:
      self._text += line
      path(self.location).write_text(self._text)
    else:
      with open(self.location, "a") as f:
        f.write(line)
