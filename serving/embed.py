"""Batch embedding: a folder of images, or a split of the pipeline's examples,
to an embeddings file (`serving.embeddings`).

  python -m serving.embed --model-dir outputs/serving_model/mae-tfx \
      --images photos/ --out photos.npz
  python -m serving.embed --model-dir outputs/serving_model/mae-tfx \
      --examples "$(python -m pipeline.runs --examples)" --split test \
      --out cifar10_test.npz                   # a split of the newest run's Examples

Images (PNG/JPEG/BMP/GIF, any size) go through the model's `serving_default`
signature (`--precision bfloat16`: `serving_bfloat16`), compiled as the
server compiles it (`serving.compiled`), examples through `embed_examples`:
the same preparation as every other caller. A model with near-duplicate
search's projection (`models.near_duplicates`) puts it and its threshold in
the file, for `serving.duplicates`. In a folder laid out as
`<root>/<label>/<image>`, labels are the sub-folder names; ids are paths
relative to `<root>`. Examples' ids are the ones the pushed index gives them
(`models.examples.search_id`). An image that cannot be decoded stops the run
with its path named (`--skip-bad` skips and lists them instead); the output
file is written only when complete.
"""

import argparse
import collections
import concurrent.futures
import logging
import os
import sys
import time
from typing import Iterator, List, Tuple

from models import run_log

if __name__ == "__main__":
  # Before TensorFlow is imported: its start-up lines go through the filter too.
  run_log.install()

# pylint: disable=wrong-import-position
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from models import image_files, names
from models.examples import read_examples
from models.names import EMBED_EXAMPLES, SERVING_BFLOAT16, SERVING_DEFAULT
from serving.embeddings import EmbeddingsFile
from serving.model_store import MAX_BATCH, LoadedModel, cores, load_version, set_model_threads


class BadImages(ValueError):
  """Items that could not be embedded, named (`embed_all`)."""


def list_images(root: str) -> Tuple[List[str], List[str], List[str]]:
  """(paths, ids, labels) of the images under `root`, sorted by id; hidden
  files and folders and files without an image extension are left out."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{root} is not a directory")
  found = image_files.list_images(root, recursive=True)  # '/'-separated ids
  if not found:
    raise FileNotFoundError(f"no {'/'.join(image_files.IMAGE_EXTENSIONS)} files under {root}")
  labels = [image_files.folder_label(rel) for rel in found]
  return [os.path.join(root, rel) for rel in found], found, labels


def image_batches(paths: List[str], batch_size: int) -> Iterator[List[bytes]]:
  """File contents in batches, read ahead by parallel tf.data readers."""
  ds = (
      tf.data.Dataset.from_tensor_slices(paths)
      .map(tf.io.read_file, num_parallel_calls=tf.data.AUTOTUNE)
      .batch(batch_size)
      .prefetch(2)
  )
  for batch in ds:
    yield list(batch.numpy())


def embed_all(
    model: LoadedModel,
    signature: str,
    batches: Iterator[List[bytes]],
    ids: List[str],
    skip_bad: bool = False,
    progress: bool = True,
    workers: int = 1,
) -> Tuple[np.ndarray, List[int]]:
  """Embeds every batch, `workers` batches side by side (one per core when
  each model call has one intra-op thread: `set_model_threads`); returns
  (embeddings [N', D], indices of the embedded items). A batch with an
  undecodable item is re-run item by item to name it; it raises
  `BadImages` unless `skip_bad`."""
  output = model.signature(signature).output_names[0]
  chunks, kept, bad, start = [], [], [], 0
  with (
      tqdm(total=len(ids), unit="img", disable=not progress, file=sys.stderr) as bar,
      concurrent.futures.ThreadPoolExecutor(workers) as pool,
  ):
    running: "collections.deque" = collections.deque()

    def collect():
      nonlocal start
      values, future = running.popleft()
      outputs, ran, errors = future.result()
      if outputs is not None:
        chunks.append(outputs[output])
      kept.extend(start + i for i in ran)
      bad.extend(f"{ids[start + i]}: {message}" for i, message in sorted(errors.items()))
      start += len(values)
      bar.update(len(values))

    for values in batches:  # in order, at most 2 batches a worker in flight
      running.append((values, pool.submit(model.run_isolating_errors, signature, values)))
      if len(running) > 2 * workers:
        collect()
    while running:
      collect()
  if bad and not skip_bad:
    raise BadImages(
        f"{len(bad)} item(s) could not be embedded (use --skip-bad to "
        "skip them):\n  " + "\n  ".join(bad[:20])
    )
  for line in bad:
    logging.warning("skipped %s", line)
  if not chunks:
    raise BadImages("nothing could be embedded")
  return np.concatenate(chunks), kept


def main(argv=None) -> EmbeddingsFile:
  """Embeds the folder or split the flags name and writes the embeddings file; returns it."""
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
      "--model-dir", required=True, help="a pushed version, or the base directory (newest version)"
  )
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--images", help="folder of images (sub-folders = labels)")
  source.add_argument(
      "--examples",
      help="an Examples artifact folder (`python -m pipeline.runs "
      "--examples` prints the newest run's)",
  )
  p.add_argument(
      "--split", default=names.TEST_SPLIT, help="with --examples: which split (default %(default)s)"
  )
  p.add_argument("--out", required=True, help="embeddings file to write (.npz)")
  p.add_argument(
      "--batch-size",
      type=int,
      default=MAX_BATCH,
      help="images a model call; one call per core at once",
  )
  p.add_argument(
      "--precision",
      choices=["float32", "bfloat16"],
      default="float32",
      help="with --images: serving_default, or serving_bfloat16 (about twice "
      "as fast on a CPU with native bfloat16)",
  )
  p.add_argument("--skip-bad", action="store_true")
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)

  set_model_threads(cores())
  model = load_version(args.model_dir)
  if args.images:
    paths, ids, labels = list_images(args.images)
    signature = SERVING_BFLOAT16 if args.precision == "bfloat16" else SERVING_DEFAULT
    source = os.path.abspath(args.images)
    batches = image_batches(paths, args.batch_size)
  else:
    examples = args.examples
    if not tf.io.gfile.isdir(names.split_dir(examples, args.split)):
      splits = (
          names.split_names(tf.io.gfile.listdir(examples))
          if tf.io.gfile.isdir(examples)
          else "none (not a folder)"
      )
      raise SystemExit(f"--examples {examples}: no split {args.split!r}; its splits: {splits}")
    found = read_examples(names.split_files(examples, args.split))
    records = found.serialized
    labels = [str(x) if x >= 0 else "" for x in found.labels]
    ids = found.search_ids(args.split)
    signature, source = EMBED_EXAMPLES, names.split_dir(examples, args.split)
    batches = (records[i : i + args.batch_size] for i in range(0, len(records), args.batch_size))

  start = time.perf_counter()
  embeddings, kept = embed_all(
      model, signature, batches, ids, args.skip_bad, progress=not args.no_progress, workers=cores()
  )
  seconds = time.perf_counter() - start
  projection, threshold = model.duplicate_projection()
  table = EmbeddingsFile(
      embeddings,
      np.array(ids)[kept],
      np.array(labels)[kept],
      meta={
          "model_dir": os.path.abspath(model.path),
          "model_version": model.version,
          "signature": signature,
          "source": source,
          "count": len(kept),
          "skipped": len(ids) - len(kept),
          "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          **({} if threshold is None else {"duplicate_threshold": threshold}),
      },
      duplicate_projection=projection,
  )
  table.save(args.out)
  print(
      f"serving.embed: {len(kept)} embeddings of dim {embeddings.shape[1]} "
      f"(model version {model.version}) in {seconds:.1f} s, "
      f"{len(kept) / seconds:.0f} img/s -> {args.out}",
      flush=True,
  )
  return table


if __name__ == "__main__":
  main()
