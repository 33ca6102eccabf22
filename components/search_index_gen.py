"""The search part of the DAG: CorpusEmbedder embeds the corpus with the
model the index ships with (Beam RunInference, so on Dataflow too),
SearchIndexer builds and scores the nearest-neighbour index over it
(`models.search_index`), and the Pusher ships the index inside a model
version folder.

The corpus is every image the pipeline accepted: the train (and unlabeled)
split of every span the gate passed, plus a SearchCorpusGen's images, less
the removed ids. When the candidate is blessed it embeds them all; when
not, the served version is kept and its index extended: only images it
lacks are embedded, by the served model, the rest reused from the served
index (and the Pusher pushes that model again with the new index); when
neither, nothing is embedded and nothing is pushed.

CorpusEmbedder writes, per corpus part, GZIP TFRecords of {id, class_name,
embedding, span, thumbnail} (`models.examples.embedding_example`), the
reused vectors with their thumbnails (`reused.npz`), and the first
`query_limit` examples of the held-out query split (test), on which
SearchIndexer tunes and scores recall against exact search. SearchIndexer
writes the corpus's thumbnails (`models.thumbnails`, search.thumbnail_px)
into the index folder, so they are pushed with it. An id is
`models.examples.search_id`: the image's file under its data root when the
examples carry it (image folders), otherwise `<split>/<index>`, as
`serving.embed --examples` numbers them; in spans, `span-<N>/` first.
With `vector_search_json` the embedded corpus is also written in Vertex AI
Vector Search's input format (`models.vector_search`), in
`<uri>/vector_search/`: the folder an index is created from.
"""

import io
import json
import os
from typing import Dict, FrozenSet, Iterator, List, NamedTuple, Optional, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf
from absl import logging
from tfx import v1 as tfx
from tfx.types import artifact, artifact_utils
from tfx.utils import path_utils
from tfx_bsl.public.beam import RunInference
from tfx_bsl.public.proto import model_spec_pb2

from models import config as config_lib
from models import names, search_index, thumbnails, vector_search
from models.names import SPAN_FOLDER_PREFIX
from models.examples import (
    COMPRESSION,
    embedding_example,
    example_files,
    read_embeddings,
    search_id,
)

EMBEDDED_PROPERTY = "embedded"  # 1: the corpus was embedded (the model is blessed)
BLESSED_PROPERTY = "blessed"  # 1: the index reached search.min_recall
INDEX_FOLDER = "index"  # the SearchIndex artifact's `models.search_index` folder


class Embeddings(artifact.Artifact):  # pylint: disable=abstract-method
  """Per split (Split-<name>/), TFRecords of {id, class_name, embedding}.
  Custom properties only: Vertex AI Pipelines takes no declared ones."""

  TYPE_NAME = names.EMBEDDINGS_TYPE


class SearchIndex(artifact.Artifact):  # pylint: disable=abstract-method
  """A `models.search_index` folder (<uri>/index) and its verdict."""

  TYPE_NAME = names.SEARCH_INDEX_TYPE


def is_blessed(marked: artifact.Artifact, key: str = BLESSED_PROPERTY) -> bool:
  """Whether `marked` has the custom property `key` set to 1 (a ModelBlessing's
  `blessed`, or this module's `embedded` and `blessed` verdicts)."""
  return marked.has_custom_property(key) and marked.get_int_custom_property(key) == 1


# ---- embedding in Beam -------------------------------------------------------------
def _count(path: str) -> int:
  return sum(1 for _ in tf.data.TFRecordDataset(path, compression_type=COMPRESSION))


Keyed = Tuple[Tuple[str, str], tf.train.Example]  # ((id, class name), example)


def _keyed_examples(
    file: Tuple[int, str], split: str, counts: List[int], limit: int, id_prefix: str
) -> Iterator[Keyed]:
  """((id, class name), example) of one file: the id is the example's file
  or its index in the split, after `id_prefix` (`span-<N>/`) unless it
  already starts with it."""
  number, path = file
  index = sum(counts[:number])
  for record in tf.data.TFRecordDataset(path, compression_type=COMPRESSION):
    if limit and index >= limit:
      return
    example = tf.train.Example.FromString(record.numpy())
    feature = example.features.feature
    path, class_name = (
        feature[key].bytes_list.value for key in (names.IMAGE_PATH_KEY, names.CLASS_NAME_KEY)
    )
    image_id = prefixed_id(
        search_id(path[0].decode("utf-8") if path else "", split, index), id_prefix
    )
    yield ((image_id, class_name[0].decode("utf-8") if class_name else ""), example)
    index += 1


def _with_thumbnail(keyed: Keyed, size: int) -> Tuple[Tuple[str, str, bytes], tf.train.Example]:
  """((id, class name, thumbnail), example): the image's JPEG at most `size`
  px (`models.thumbnails`) carried in the key through RunInference; b""
  when `size` is 0 or the image does not decode."""
  (image_id, class_name), example = keyed
  image = example.features.feature[names.IMAGE_KEY].bytes_list.value
  return (image_id, class_name, thumbnails.make(image[0], size) if size and image else b""), example


Embedded = Tuple[str, str, np.ndarray, bytes]  # (id, class name, embedding, thumbnail)


def _embedded(keyed_log) -> Embedded:
  (image_id, class_name, thumbnail), log = keyed_log
  return (
      image_id,
      class_name,
      tf.make_ndarray(log.predict_log.response.outputs[names.EMBEDDING_KEY])[0],
      thumbnail,
  )


class EmbedSplit(beam.PTransform):
  """The first `limit` (0: all) examples of one split, embedded by the
  SavedModel's `embed_examples` signature: `Embedded` tuples, except those
  whose id is in `skip` (their vectors are reused, or they are removed),
  each with its thumbnail at most `thumbnail_px` px (b"" with 0). With
  `ids_to`, every id the split holds is also written there (text)."""

  def __init__(
      self,
      examples_uri: str,
      split: str,
      model_path: str,
      limit: int = 0,
      id_prefix: str = "",
      skip: FrozenSet[str] = frozenset(),
      ids_to: str = "",
      thumbnail_px: int = 0,
  ):
    super().__init__()
    self.files = example_files(names.split_files(examples_uri, split))
    self.split, self.model_path, self.limit = split, model_path, limit
    self.id_prefix, self.skip, self.ids_to = id_prefix, skip, ids_to
    self.thumbnail_px = thumbnail_px

  def expand(self, pipeline):
    """Pipeline -> PCollection of `Embedded`: the files counted (the ids'
    indices follow file order), read, spread, thumbnailed and run through
    RunInference."""
    spec = model_spec_pb2.InferenceSpecType(
        saved_model_spec=model_spec_pb2.SavedModelSpec(
            model_path=self.model_path, signature_name=[names.EMBED_EXAMPLES]
        )
    )
    files = pipeline | "Files" >> beam.Create(list(enumerate(self.files)))
    counts = (
        files
        | "Count" >> beam.Map(lambda f: (f[0], _count(f[1])))
        | "Counts" >> beam.combiners.ToList()
        | "InOrder" >> beam.Map(lambda pairs: [n for _, n in sorted(pairs)])
    )
    keyed = files | "Read" >> beam.FlatMap(
        _keyed_examples,
        self.split,
        beam.pvalue.AsSingleton(counts),
        self.limit,
        self.id_prefix,
    )
    if self.ids_to:
      _ = (
          keyed
          | "Ids" >> beam.Map(lambda k: k[0][0])
          | "WriteIds" >> beam.io.WriteToText(self.ids_to, shard_name_template="")
      )
    skip = self.skip
    return (
        keyed
        | "New" >> beam.Filter(lambda k: k[0][0] not in skip)
        | "Spread" >> beam.Reshuffle()
        | "Thumbnail" >> beam.Map(_with_thumbnail, self.thumbnail_px)
        | "Embed" >> RunInference(spec)
        | "Unpack" >> beam.Map(_embedded)
    )


class CorpusPart(NamedTuple):
  """One split of one Examples artifact in the corpus, and what its records
  are called: the output split `name`, the ids' prefix and their span."""

  name: str
  examples_uri: str
  split: str
  id_prefix: str
  span: str


def corpus_parts(
    spans: List[artifact.Artifact],
    corpus_splits: List[str],
    span_ids: bool,
    search_corpus: Optional[artifact.Artifact] = None,
) -> List[CorpusPart]:
  """The corpus: the `corpus_splits` each Examples of `spans` has (named
  `span-<N>-<split>` and their ids `span-<N>/...` when `span_ids`, else as
  the split), but `unlabeled` once, the newest span's, ids as they are
  (every run reads the same --unlabeled folder); then the search corpus's
  images, ids as they are."""
  from components.model_resolvers import artifact_span

  parts = []
  spans = sorted(spans, key=artifact_span)
  for examples in spans:
    span = artifact_span(examples)
    available = artifact_utils.decode_split_names(examples.split_names)
    for split in (s for s in corpus_splits if s in available):
      if split == names.UNLABELED_SPLIT:
        if examples is spans[-1]:  # every run reads the same --unlabeled folder: once
          parts.append(CorpusPart(split, examples.uri, split, "", ""))
      elif span_ids:
        prefix = f"{SPAN_FOLDER_PREFIX}{span}"
        parts.append(CorpusPart(f"{prefix}-{split}", examples.uri, split, f"{prefix}/", str(span)))
      else:
        parts.append(CorpusPart(split, examples.uri, split, "", str(span)))
  if search_corpus is not None:
    parts.append(CorpusPart(names.CORPUS_SPLIT, search_corpus.uri, names.CORPUS_SPLIT, "", ""))
  return parts


class Served(NamedTuple):
  """The newest pushed version: its folder, and what its search index holds
  (read without loading the searcher: records, vectors, removed ids,
  thumbnails)."""

  folder: str
  records: Optional[search_index.Records] = None  # None: no index to reuse
  vectors: Optional[np.ndarray] = None  # None: saved before indexes kept them
  removed: Tuple[str, ...] = ()
  thumbnail_store: Optional[thumbnails.ThumbnailStore] = None  # None: it has none


def _served(served_models: str) -> Optional[Served]:
  """The newest version under `served_models` (the Pusher's base
  directory); None when nothing is pushed. An index that is missing or
  cannot be read is reused as none (logged)."""
  from components.versioned_pusher import newest_version  # it imports this module

  newest = served_models and newest_version(served_models)
  if not newest:
    return None
  folder = os.path.join(served_models, newest)
  index_dir = os.path.join(folder, names.SEARCH_INDEX_DIR)
  if not tf.io.gfile.exists(index_dir):
    return Served(folder)
  try:
    records = search_index.read_records(index_dir)
    return Served(
        folder,
        records,
        search_index.read_vectors(index_dir),
        tuple(search_index.read_removed(index_dir)),
        _served_thumbnails(index_dir, len(records.ids)),
    )
  except (OSError, ValueError, KeyError) as e:
    logging.warning("The served index cannot be reused, every image is embedded: %s", e)
    return Served(folder)


def _served_thumbnails(index_dir: str, count: int) -> Optional[thumbnails.ThumbnailStore]:
  """The thumbnail store of the served index of `count` records; None when
  it has none, or one that cannot be read or does not match its records
  (logged: the images whose vectors are reused then have none)."""
  try:
    return thumbnails.ThumbnailStore.load(index_dir, count)
  except (OSError, ValueError) as e:
    logging.warning("The served index's thumbnails cannot be reused, none kept: %s", e)
    return None


def prefixed_id(image_id: str, prefix: str) -> str:
  """An image's search id in the corpus: `prefix` (`span-<N>/`) first,
  unless it already starts with it (an image folder's path does)."""
  return image_id if image_id.startswith(prefix) else prefix + image_id


REUSED_FILE = "reused.npz"  # in the Embeddings artifact: vectors taken from the served index
# ... and their thumbnails: the JPEGs one after the other, and where each starts.
REUSED_THUMBNAILS, REUSED_THUMBNAIL_OFFSETS = "thumbnails", "thumbnail_offsets"


@tfx.dsl.components.component(use_beam=True)
def CorpusEmbedder(  # pylint: disable=invalid-name
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    model_blessing: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelBlessing],
    embeddings: tfx.dsl.components.OutputArtifact[Embeddings],
    corpus_splits: tfx.dsl.components.Parameter[str],
    query_split: tfx.dsl.components.Parameter[str],
    query_limit: tfx.dsl.components.Parameter[int],
    vector_search_json: tfx.dsl.components.Parameter[int] = 0,
    served_models: tfx.dsl.components.Parameter[str] = "",
    removed_ids: tfx.dsl.components.Parameter[str] = "",
    span_ids: tfx.dsl.components.Parameter[int] = 0,
    thumbnail_px: tfx.dsl.components.Parameter[int] = 0,
    corpus_spans: tfx.dsl.components.InputArtifact[
        List[tfx.types.standard_artifacts.Examples]
    ] = None,
    corpus_examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples] = None,
    beam_pipeline: tfx.dsl.components.BeamComponentParameter[beam.Pipeline] = None,
) -> None:
  """Embeds the search corpus with the model the index will ship with, and
  the first `query_limit` examples of the query split.

  The corpus: the `corpus_splits` (comma-separated) of every span in
  `corpus_spans` (the spans the gate passed; this run's `examples` when not
  given), plus the images of `corpus_examples`; ids `span-<N>/...` with
  `span_ids`; the ids in `removed_ids` (newline-separated) and those the
  served index removed are left out for good. Each corpus image gets a
  thumbnail at most `thumbnail_px` px (0: none; search.thumbnail_px).

  Which model: the candidate when blessed; otherwise the newest version
  under `served_models` (the Pusher's base directory), whose index is then
  extended (an index-only version); neither: nothing is embedded. Vectors
  of the served index are reused when it was made by that same model, so
  only images it lacks are embedded; their thumbnails come from its store
  (none where it has none). The case and the counts are logged
  and set as properties.
  """
  from components.versioned_pusher import same_saved_model  # it imports this module

  served = _served(served_models)
  if is_blessed(model_blessing):
    model_path = path_utils.serving_model_path(model.uri)
    case = "the new model, blessed: the whole corpus embedded by it"
  elif served:
    model_path = served.folder
    case = f"the model was not blessed: the served version {os.path.basename(served.folder)} kept"
  else:
    embeddings.set_int_custom_property(EMBEDDED_PROPERTY, 0)
    embeddings.set_string_custom_property(
        "case", "the model was not blessed and none is served: nothing embedded"
    )
    logging.info("Search corpus: the model was not blessed and none is served: nothing embedded")
    return
  removed = {line.strip() for line in removed_ids.splitlines() if line.strip()}
  reusable: Dict[str, int] = {}
  if served and served.records is not None:
    removed |= set(served.removed)
    if served.vectors is not None and same_saved_model(model_path, served.folder):
      reusable = {image_id: row for row, image_id in enumerate(served.records.ids)}
      if model_path != served.folder:
        case = "the blessed model is the one served: its vectors reused"
  parts = corpus_parts(
      corpus_spans or [examples], corpus_splits.split(","), bool(span_ids), corpus_examples
  )
  skip = frozenset(reusable) | frozenset(removed)
  ids_dir = os.path.join(embeddings.uri, "ids")
  with beam_pipeline as pipeline:
    for part in parts:
      embedded = pipeline | f"Embed[{part.name}]" >> EmbedSplit(
          part.examples_uri,
          part.split,
          model_path,
          id_prefix=part.id_prefix,
          skip=skip,
          ids_to=os.path.join(ids_dir, part.name),
          thumbnail_px=thumbnail_px,
      )
      _write(embedded, embeddings.uri, part.name, part.span, vector_search_json)
    queries = pipeline | f"Embed[{query_split}]" >> EmbedSplit(
        examples.uri, query_split, model_path, query_limit
    )
    _write(queries, embeddings.uri, query_split, "", False)
  # Which vectors of the served index stay: those of images still in the
  # corpus and not removed.
  seen = []
  for part in parts:
    with tf.io.gfile.GFile(os.path.join(ids_dir, part.name)) as f:
      seen += f.read().splitlines()
  seen_set = set(seen)
  kept_rows = sorted(
      row for image_id, row in reusable.items() if image_id in seen_set and image_id not in removed
  )
  if kept_rows:
    _write_reused(
        os.path.join(embeddings.uri, REUSED_FILE),
        served,
        kept_rows,
        bool(thumbnail_px) and served.thumbnail_store is not None,
    )
  added = len(seen_set - set(reusable) - removed)
  dropped = len(removed & (seen_set | set(reusable)))
  unknown = sorted(removed - seen_set - set(reusable))
  logging.info(
      "Search corpus (%s): %d images; %d vectors added, %d reused, %d removed",
      case,
      len(seen_set) - len(removed & seen_set),
      added,
      len(kept_rows),
      dropped,
  )
  if unknown:
    logging.warning(
        "%d removed id(s) are not in the corpus (ignored): %s",
        len(unknown),
        ", ".join(unknown[:20]) + (" ..." if len(unknown) > 20 else ""),
    )
  embeddings.set_string_custom_property("corpus_splits", ",".join(p.name for p in parts))
  embeddings.set_string_custom_property("corpus_parts", json.dumps([p._asdict() for p in parts]))
  embeddings.set_string_custom_property("corpus_examples", parts[0].examples_uri if parts else "")
  embeddings.set_string_custom_property("query_split", query_split)
  embeddings.set_string_custom_property("model_path", model_path)
  embeddings.set_string_custom_property("case", case)
  embeddings.set_int_custom_property(
      "index_only", int(bool(served) and model_path == served.folder)
  )
  embeddings.set_int_custom_property("added", added)
  embeddings.set_int_custom_property("reused", len(kept_rows))
  embeddings.set_int_custom_property("removed", dropped)
  embeddings.set_string_custom_property("removed_ids", "\n".join(sorted(removed)))
  embeddings.set_string_custom_property("unknown_removed", "\n".join(unknown))
  embeddings.set_int_custom_property(EMBEDDED_PROPERTY, 1)
  if vector_search_json:
    embeddings.set_string_custom_property(
        "vector_search", os.path.join(embeddings.uri, vector_search.FOLDER)
    )


def _write_reused(path: str, served: Served, rows: List[int], with_thumbnails: bool) -> None:
  """Writes the records and vectors of the served index's `rows` to `path`
  (REUSED_FILE, `read_corpus` reads it), with their thumbnails as the
  JPEGs' bytes one after the other and their offsets (no pickle)."""
  records = served.records
  arrays = dict(
      ids=records.ids[rows],
      class_names=records.class_names[rows],
      spans=records.spans[rows],
      vectors=np.asarray(served.vectors[rows], np.float32),
  )
  if with_thumbnails:
    arrays[REUSED_THUMBNAILS], arrays[REUSED_THUMBNAIL_OFFSETS] = thumbnails.pack(
        served.thumbnail_store.select(rows)
    )
  buffer = io.BytesIO()  # np.savez seeks: GFile (gs:// too) takes the bytes
  np.savez(buffer, **arrays)
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())


def _write(embedded, uri: str, name: str, span: str, vector_search_json: bool) -> None:
  """Writes `Embedded` tuples as the split `name` of the Embeddings at
  `uri` (their span `span`), and as Vector Search's input when asked."""
  _ = (
      embedded
      | f"Serialize[{name}]"
      >> beam.MapTuple(
          lambda i, c, v, t: embedding_example(i, c, v, span=span, thumbnail=t).SerializeToString()
      )
      | f"Write[{name}]"
      >> beam.io.WriteToTFRecord(
          os.path.join(names.split_dir(uri, name), "embeddings"),
          file_name_suffix=".gz",
          compression_type=beam.io.filesystem.CompressionTypes.GZIP,
      )
  )
  if vector_search_json:
    _ = (
        embedded
        | f"VectorSearchLines[{name}]"
        >> beam.MapTuple(lambda i, c, v, _: vector_search.json_line(i, c, v, span))
        | f"WriteVectorSearch[{name}]"
        >> beam.io.WriteToText(
            os.path.join(uri, vector_search.FOLDER, name),
            file_name_suffix=vector_search.FILE_SUFFIX,
        )
    )


class Corpus(NamedTuple):
  """The corpus an Embeddings artifact holds (`read_corpus`), row for row."""

  vectors: np.ndarray  # [N, D] float32
  records: search_index.Records
  thumbnails: List[bytes]  # JPEGs (`models.thumbnails`); b"" where an image has none


def read_corpus(uri: str, corpus_splits: List[str]) -> Corpus:
  """The corpus the Embeddings artifact at `uri` holds: the vectors it
  reused from the served index, then those it embedded, split by split."""
  vectors, ids, class_names, spans, jpegs = [], [], [], [], []
  reused = os.path.join(uri, REUSED_FILE)
  if tf.io.gfile.exists(reused):
    with tf.io.gfile.GFile(reused, "rb") as f, np.load(f) as data:
      vectors.append(data["vectors"])
      ids += list(data["ids"])
      class_names += list(data["class_names"])
      spans += list(data["spans"])
      jpegs += _reused_thumbnails(data)
  for split in corpus_splits:
    files = names.split_files(uri, split)
    part = read_embeddings(files) if _has_files(files) else None
    if part is None or not part.ids:
      continue
    vectors.append(part.vectors)
    ids += part.ids
    class_names += part.class_names
    spans += part.spans
    jpegs += part.thumbnails
  dim = next((v.shape[1] for v in vectors if v.size), 0)
  return Corpus(
      np.concatenate([v for v in vectors if v.size]) if dim else np.zeros([0, 0], np.float32),
      search_index.Records(ids, class_names, spans),
      jpegs,
  )


def _reused_thumbnails(reused) -> List[bytes]:
  """The thumbnails of REUSED_FILE's rows (`_write_reused`); b"" each when
  it has none."""
  count = len(reused["ids"])
  if REUSED_THUMBNAIL_OFFSETS not in reused:
    return [b""] * count
  store = thumbnails.ThumbnailStore(reused[REUSED_THUMBNAILS], reused[REUSED_THUMBNAIL_OFFSETS])
  return store.select(range(count))


def _has_files(file_patterns: List[str]) -> bool:
  return any(tf.io.gfile.glob(p) for p in file_patterns)


# ---- the index -------------------------------------------------------------------
@tfx.dsl.components.component
def SearchIndexer(  # pylint: disable=invalid-name
    embeddings: tfx.dsl.components.InputArtifact[Embeddings],
    search_index_artifact: tfx.dsl.components.OutputArtifact[SearchIndex],
    search_config: tfx.dsl.components.Parameter[str],
) -> None:
  """Builds the index the profile's `search` section asks for over the
  corpus, tunes it on the first `search.tune_queries` held-out queries,
  scores it on the next `search.eval_queries` against exact search, and
  blesses it at recall@k >= search.min_recall on those. With
  search.thumbnail_px, the corpus's thumbnails go into the index folder."""
  if not is_blessed(embeddings, EMBEDDED_PROPERTY):
    search_index_artifact.set_int_custom_property(BLESSED_PROPERTY, 0)
    search_index_artifact.set_string_custom_property(
        "reason", "the model was not blessed: no corpus was embedded"
    )
    return
  cfg = config_lib.SearchConfig(**json.loads(search_config))
  corpus_splits = embeddings.get_string_custom_property("corpus_splits").split(",")
  corpus = read_corpus(embeddings.uri, corpus_splits)
  queries = read_embeddings(
      names.split_files(embeddings.uri, embeddings.get_string_custom_property("query_split"))
  )
  index = search_index.build(
      corpus.vectors,
      corpus.records,
      cfg,
      queries.vectors,
      corpus_splits=corpus_splits,
      spans=sorted({s for s in corpus.records.spans if s}, key=lambda s: (len(s), s)),
  )
  index.removed = [i for i in embeddings.get_string_custom_property("removed_ids").split("\n") if i]
  index_dir = os.path.join(search_index_artifact.uri, INDEX_FOLDER)
  index.save(index_dir)
  if cfg.thumbnail_px:
    _write_thumbnails(index_dir, corpus.thumbnails, search_index_artifact)
  evaluation = index.info["evaluation"]
  search_index_artifact.set_int_custom_property(BLESSED_PROPERTY, int(evaluation["blessed"]))
  search_index_artifact.set_string_custom_property("kind", index.kind)
  search_index_artifact.set_string_custom_property("reason", index.info["reason"])
  search_index_artifact.set_float_custom_property("recall_at_k", evaluation["recall_at_k"])
  search_index_artifact.set_string_custom_property("summary", search_index.describe(index))
  # Which model the index was made by: the Pusher ships the two together.
  for key in ("model_path", "case"):
    search_index_artifact.set_string_custom_property(
        key, embeddings.get_string_custom_property(key)
    )
  search_index_artifact.set_int_custom_property(
      "index_only", embeddings.get_int_custom_property("index_only")
  )


def _write_thumbnails(index_dir: str, jpegs: List[bytes], marked: artifact.Artifact) -> None:
  """Writes the thumbnail store beside the index (row for row: b"" where an
  image has none) and sets its size as `marked`'s property."""
  size = thumbnails.write(index_dir, jpegs)
  marked.set_int_custom_property(names.THUMBNAIL_BYTES_PROPERTY, size)
  logging.info(
      "Thumbnails: %d of %d images, %.1f MB", sum(map(bool, jpegs)), len(jpegs), size / 1e6
  )
