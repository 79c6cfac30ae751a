"""Adds ArrayRecord files to a TFDS copy stored as TFRecord (one command).

  python -m mae_jax.data.convert DATA_DIR/imagenet2012/5.1.0 [more dirs]

The pipeline reads TFDS datasets through `tfds.data_source`, which needs
random access, i.e. ArrayRecord files. A copy made with a plain `tfds build`
(the default file format is TFRecord) is converted here shard by shard,
beside the existing files (local or gs://); the TFRecord files stay, and the
dataset's metadata then lists ArrayRecord as an alternative format, which
`tfds.data_source` picks.

Resumable: each shard is written to a temporary name and renamed when
complete, and shards that already exist are skipped, so rerunning the same
command after an interruption continues where it stopped. A progress bar
counts examples. Needs TensorFlow to read TFRecord files: install the
optional `requirements-tfds.txt` (training itself needs no TensorFlow).

(`tfds convert_format` does the same job, but its module needs Apache
Beam even when Beam is not used.)
"""

from __future__ import annotations

import sys
from typing import Sequence

from etils import epath

from mae_jax.errors import INTERRUPTED_EXIT_CODE

ARRAY_RECORD = "array_record"


def convert_dataset_dir(dataset_dir: str, *, progress: bool = True) -> int:
  """Converts one dataset version directory; returns shards written now."""
  import tensorflow_datasets as tfds
  import tqdm
  from tensorflow_datasets.core import file_adapters

  builder = tfds.builder_from_directory(dataset_dir)
  info = builder.info
  source_format = getattr(info.file_format, "value", info.file_format)
  if source_format == ARRAY_RECORD:
    print(f"{dataset_dir} is already stored as ArrayRecord: nothing to do.")
    return 0
  reader = file_adapters.ADAPTER_FOR_FORMAT[info.file_format]
  writer = file_adapters.ArrayRecordFileAdapter
  jobs = []  # (source path, target path, examples)
  for split_info in info.splits.values():
    target_template = split_info.filename_template.replace(filetype_suffix=ARRAY_RECORD)
    targets = target_template.sharded_filepaths(len(split_info.shard_lengths))
    jobs.extend(zip(split_info.filepaths, targets, split_info.shard_lengths))
  done = sum(length for _, target, length in jobs if target.exists())
  total = sum(length for _, _, length in jobs)
  written = 0
  with tqdm.tqdm(
    total=total, initial=done, unit=" examples", desc=builder.name, disable=not progress
  ) as bar:
    for source, target, _ in jobs:
      if target.exists():
        continue
      partial = target.parent / f"{target.name}.incomplete"

      def records(source=source):
        for key, record in enumerate(reader.make_tf_data(source)):
          bar.update(1)
          yield key, record.numpy()

      writer.write_examples(partial, records())
      partial.rename(target)  # Complete shards only ever have the final name.
      written += 1
  if ARRAY_RECORD not in {getattr(f, "value", f) for f in info.alternative_file_formats}:
    info.add_alternative_file_format(ARRAY_RECORD)
    info.write_to_directory(epath.Path(dataset_dir))
  print(f"{dataset_dir}: {written} shard(s) converted, {len(jobs) - written} already there.")
  return written


def main(argv: Sequence[str]) -> int:
  dirs = [arg for arg in argv[1:] if not arg.startswith("-")]
  if not dirs or len(dirs) != len(argv) - 1:
    print(
      "usage: python -m mae_jax.data.convert DATA_DIR/<name>/<version> [...]\n"
      "Adds ArrayRecord files beside a TFDS copy stored as TFRecord.",
      file=sys.stderr,
    )
    return 2
  for dataset_dir in dirs:
    if not epath.Path(dataset_dir, "dataset_info.json").exists():
      print(
        f"{dataset_dir}: no dataset_info.json there; expected a TFDS dataset version "
        "directory such as DATA_DIR/imagenet2012/5.1.0.",
        file=sys.stderr,
      )
      return 2
    convert_dataset_dir(dataset_dir)
  return 0


def cli(argv: Sequence[str]) -> int:
  """`main`, with Ctrl-C told in one line (exit 130) instead of a traceback."""
  try:
    return main(argv)
  except KeyboardInterrupt:  # the finished shards are kept
    print(
      "\ninterrupted: the shards converted so far are kept; rerun the same command to finish.",
      file=sys.stderr,
    )
    return INTERRUPTED_EXIT_CODE


if __name__ == "__main__":
  sys.exit(cli(sys.argv))
