"""Similarity search: the k nearest images of query images in an embeddings file.

  python -m serving.search --embeddings cifar10_test.npz \
      --model-dir outputs/serving_model/mae-tfx -k 5 cat.png dog.jpg [--json]

Queries are embedded by the model version that wrote the file (recorded in
it), under --model-dir; a query that is not an image is named in the error.
Each hit: rank, score (cosine similarity), class name, id.
"""

import argparse
import json
import os
import sys
from typing import Dict, List

from models import run_log

if __name__ == "__main__":
  # Before TensorFlow is imported: its start-up lines go through the filter too.
  run_log.install()

# pylint: disable=wrong-import-position
import tensorflow as tf

from models.names import SERVING_DEFAULT, serving_model_dir
from serving.embeddings import EmbeddingsFile
from serving.model_store import LoadedModel


def query_model(table: EmbeddingsFile, model_dir: str) -> LoadedModel:
  """The model version that made `table`, from `model_dir` (a base directory
  of versions) or, failing that, the path recorded in the file."""
  version = str(table.model_version)
  candidates = [os.path.join(model_dir, version), table.meta["model_dir"]]
  if os.path.basename(model_dir.rstrip("/")) == version:
    candidates.insert(0, model_dir)
  for candidate in candidates:
    if tf.io.gfile.exists(os.path.join(candidate, "saved_model.pb")):
      return LoadedModel(table.model_version, candidate)
  raise FileNotFoundError(
      f"the embeddings were made by model version {version}, which is not under "
      f"{model_dir} (nor at {table.meta['model_dir']}); re-embed with the current model"
  )


def search(
    table: EmbeddingsFile, model: LoadedModel, images: Dict[str, bytes], k: int
) -> Dict[str, List[Dict]]:
  """{query name: its k nearest entries}."""
  query_names = list(images)
  output = model.signature(SERVING_DEFAULT).output_names[0]
  outputs, _, errors = model.run_isolating_errors(SERVING_DEFAULT, [images[n] for n in query_names])
  if errors:
    raise ValueError(
        "; ".join(
            f"{query_names[i]}: not a decodable image ({message})"
            for i, message in sorted(errors.items())
        )
    )
  return dict(zip(query_names, table.index().search(outputs[output], k)))


def main(argv=None) -> Dict[str, List[Dict]]:
  """Prints the k nearest entries of each query image (as JSON with --json); returns them."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("images", nargs="+", help="query image files")
  p.add_argument("--embeddings", required=True, help="file from `python -m serving.embed`")
  p.add_argument(
      "--model-dir",
      default=serving_model_dir(),
      help="the pushed versions (default: the local run's)",
  )
  p.add_argument("-k", type=int, default=5)
  p.add_argument("--json", action="store_true", help="print JSON")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  table = EmbeddingsFile.load(args.embeddings)
  images = {}
  for path in args.images:
    with open(path, "rb") as f:
      images[path] = f.read()
  results = search(table, query_model(table, args.model_dir), images, args.k)
  if args.json:
    print(json.dumps(results, indent=2))
  else:
    for name, hits in results.items():
      print(name)
      for rank, hit in enumerate(hits, 1):
        print(f"  {rank:3d}. {hit['score']:.4f}  {hit['class_name']:12s} {hit['id']}")
  return results


if __name__ == "__main__":
  main()
