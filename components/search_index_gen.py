"""The search part of the DAG: CorpusEmbedder embeds the corpus with the
blessed model (Beam RunInference, so on Dataflow too), SearchIndexer builds
and scores the nearest-neighbour index over it (`models.search_index`), and
the Pusher ships the index inside the model's version folder.

CorpusEmbedder writes, per split, GZIP TFRecords of {id, class_name,
embedding} (`models.examples.embedding_example`): the corpus splits (train,
and unlabeled when there is one; or, when given, the `corpus` split of a
SearchCorpusGen's examples) and the first `query_limit` examples of the
held-out query split (test), on which SearchIndexer measures recall against
exact search. An id is `models.examples.search_id`: the image's file under
its data root when the examples carry it (image folders), otherwise
`<split>/<index>`, as `serving.embed --examples` numbers them. With
`vector_search_json` the corpus is also written in Vertex AI Vector
Search's input format (`models.vector_search`), in `<uri>/vector_search/`:
the folder an index is created from.
When the Evaluator did not bless the model, nothing is embedded and the
index is marked not blessed: the Pusher pushes neither.
"""

import json
import os
from typing import Iterator, List, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import artifact, artifact_utils
from tfx.utils import path_utils
from tfx_bsl.public.beam import RunInference
from tfx_bsl.public.proto import model_spec_pb2

from models import config as config_lib
from models import names, search_index, vector_search
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


def _keyed_examples(
    file: Tuple[int, str], split: str, counts: List[int], limit: int
) -> Iterator[Tuple[Tuple[str, str], tf.train.Example]]:
  """((id, class name), example) of one file: the id is the example's file
  or its index in the split."""
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
    yield (
        (
            search_id(path[0].decode("utf-8") if path else "", split, index),
            class_name[0].decode("utf-8") if class_name else "",
        ),
        example,
    )
    index += 1


Embedded = Tuple[str, str, np.ndarray]  # (id, class name, embedding)


def _embedded(keyed_log) -> Embedded:
  (image_id, class_name), log = keyed_log
  return (
      image_id,
      class_name,
      tf.make_ndarray(log.predict_log.response.outputs[names.EMBEDDING_KEY])[0],
  )


class EmbedSplit(beam.PTransform):
  """The first `limit` (0: all) examples of one split, embedded by the
  SavedModel's `embed_examples` signature: `Embedded` tuples."""

  def __init__(self, examples_uri: str, split: str, model_path: str, limit: int = 0):
    super().__init__()
    self.files = example_files(names.split_files(examples_uri, split))
    self.split, self.model_path, self.limit = split, model_path, limit

  def expand(self, pipeline):
    """Pipeline -> PCollection of `Embedded`: the files counted (the ids'
    indices follow file order), read, spread and run through RunInference."""
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
    return (
        files
        | "Read"
        >> beam.FlatMap(_keyed_examples, self.split, beam.pvalue.AsSingleton(counts), self.limit)
        | "Spread" >> beam.Reshuffle()
        | "Embed" >> RunInference(spec)
        | "Unpack" >> beam.Map(_embedded)
    )


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
    corpus_examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples] = None,
    beam_pipeline: tfx.dsl.components.BeamComponentParameter[beam.Pipeline] = None,
) -> None:
  """Embeds the corpus splits of `examples` (comma-separated; those it has),
  or the `corpus` split of `corpus_examples` when given, and the first
  `query_limit` of the query split, with the blessed model;
  `vector_search_json` 1: the corpus also as Vector Search's input."""
  if not is_blessed(model_blessing):
    embeddings.set_int_custom_property(EMBEDDED_PROPERTY, 0)
    return
  corpus = corpus_examples or examples
  available = artifact_utils.decode_split_names(corpus.split_names)
  wanted = [names.CORPUS_SPLIT] if corpus_examples else corpus_splits.split(",")
  splits = [s for s in wanted if s in available]
  model_path = path_utils.serving_model_path(model.uri)
  with beam_pipeline as pipeline:
    for split in splits + [query_split]:
      limit, source = (query_limit, examples) if split == query_split else (0, corpus)
      embedded = pipeline | f"Embed[{split}]" >> EmbedSplit(source.uri, split, model_path, limit)
      _ = (
          embedded
          | f"Serialize[{split}]" >> beam.Map(lambda e: embedding_example(*e).SerializeToString())
          | f"Write[{split}]"
          >> beam.io.WriteToTFRecord(
              os.path.join(names.split_dir(embeddings.uri, split), "embeddings"),
              file_name_suffix=".gz",
              compression_type=beam.io.filesystem.CompressionTypes.GZIP,
          )
      )
      if vector_search_json and split != query_split:
        _ = (
            embedded
            | f"VectorSearchLines[{split}]" >> beam.MapTuple(vector_search.json_line)
            | f"WriteVectorSearch[{split}]"
            >> beam.io.WriteToText(
                os.path.join(embeddings.uri, vector_search.FOLDER, split),
                file_name_suffix=vector_search.FILE_SUFFIX,
            )
        )
  embeddings.set_string_custom_property("corpus_splits", ",".join(splits))
  embeddings.set_string_custom_property("corpus_examples", corpus.uri)
  embeddings.set_string_custom_property("query_split", query_split)
  embeddings.set_int_custom_property(EMBEDDED_PROPERTY, 1)
  if vector_search_json:
    embeddings.set_string_custom_property(
        "vector_search", os.path.join(embeddings.uri, vector_search.FOLDER)
    )


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
  blesses it at recall@k >= search.min_recall on those."""
  if not is_blessed(embeddings, EMBEDDED_PROPERTY):
    search_index_artifact.set_int_custom_property(BLESSED_PROPERTY, 0)
    search_index_artifact.set_string_custom_property(
        "reason", "the model was not blessed: no corpus was embedded"
    )
    return
  cfg = config_lib.SearchConfig(**json.loads(search_config))
  corpus_splits = embeddings.get_string_custom_property("corpus_splits").split(",")
  corpus = [read_embeddings(names.split_files(embeddings.uri, s)) for s in corpus_splits]
  queries = read_embeddings(
      names.split_files(embeddings.uri, embeddings.get_string_custom_property("query_split"))
  )
  records = search_index.Records(
      sum((c.ids for c in corpus), []), sum((c.class_names for c in corpus), [])
  )
  index = search_index.build(
      np.concatenate([c.vectors for c in corpus]),
      records,
      cfg,
      queries.vectors,
      corpus_splits=corpus_splits,
  )
  index.save(os.path.join(search_index_artifact.uri, INDEX_FOLDER))
  evaluation = index.info["evaluation"]
  search_index_artifact.set_int_custom_property(BLESSED_PROPERTY, int(evaluation["blessed"]))
  search_index_artifact.set_string_custom_property("kind", index.kind)
  search_index_artifact.set_string_custom_property("reason", index.info["reason"])
  search_index_artifact.set_float_custom_property("recall_at_k", evaluation["recall_at_k"])
  search_index_artifact.set_string_custom_property("summary", search_index.describe(index))
