"""What one pipeline run produced, found through MLMD and loaded for a person
to look at: `make report` (`pipeline.report`) and the notebooks read runs
through this, and draw them with `pipeline.figures`.

  run = RunOutputs.load()                     # the newest run under outputs/
  run = RunOutputs.load(output_dir, run_id="20261130-110518.886888")
  run.statistics("train"), run.schema(), run.anomalies(), run.channel_statistics()
  run.summary("mae_pretrain")["history"]      # loss, lr, img/s per epoch
  test = run.predictions("test", limit=2000)  # images, labels, probabilities, embeddings
  run.search_index().search(test.embeddings, k=10)   # the index pushed with the model
  run.search_corpus_images()["train/12"]              # the image an id names

Predictions come from the linear_probe Trainer's model, the one the
Evaluator scored (the pushed model may be another run's).
"""

import dataclasses
import json
import os
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from models import names
from models.examples import read_examples
from pipeline import runs

_PREDICT_BATCH = 500


def _split_names(artifact_uri: str) -> List[str]:
  """The splits of an artifact written as Split-<name>/ folders."""
  return names.split_names(os.listdir(artifact_uri))


class Predictions(NamedTuple):
  """A model's outputs on a run's examples, in example order (`RunOutputs.predictions`)."""

  images: List[bytes]  # [N] encoded images
  labels: np.ndarray  # [N] class ids
  probabilities: Optional[np.ndarray]  # [N, classes] the linear probe's
  knn_probabilities: Optional[np.ndarray]  # [N, classes] the k-NN's votes
  embeddings: np.ndarray  # [N, E] the served embedding


def tfma_accuracy(evaluation_uri: str, baseline: bool = False) -> Dict[str, Dict[str, float]]:
  """{classifier: {slice: accuracy}} from an Evaluator output, of the model
  it judged, or (`baseline`) of the model it was compared with, on the same
  examples ({} when there was none); the classifiers are
  classify_examples' outputs (names.PROBABILITIES_KEY, the linear probe;
  names.KNN_PROBABILITIES_KEY, the k-NN)."""
  import tensorflow_model_analysis as tfma

  model_name = None
  if baseline:
    from tensorflow_model_analysis.writers import eval_config_writer

    eval_config = eval_config_writer.load_eval_run(evaluation_uri)[0]
    names_ = [spec.name for spec in eval_config.model_specs if spec.is_baseline]
    if not names_:
      return {}
    model_name = names_[0]
  result = tfma.load_eval_result(evaluation_uri, model_name=model_name)
  accuracies = {}
  for slice_key, metrics in result.slicing_metrics:
    name = "overall" if not slice_key else ",".join(f"{k}={v}" for k, v in slice_key)
    for output, metric_set in metrics.items():
      for per_key in metric_set.values():
        value = per_key.get("sparse_categorical_accuracy")
        if value is not None:
          accuracies.setdefault(output, {})[name] = value.get("doubleValue")
  return accuracies


def gate_failures(evaluation_uri: str) -> List[str]:
  """Why the Evaluator did not bless the model: for each threshold that
  failed, the classifier, the value and the threshold ([] when blessed)."""
  import tensorflow_model_analysis as tfma

  result = tfma.load_validation_result(evaluation_uri)
  lines = []
  for per_slice in result.metric_validations_per_slice:
    for failure in per_slice.failures:
      key, threshold = failure.metric_key, failure.metric_threshold
      value = failure.metric_value.double_value.value
      classifier = names.CLASSIFIER_TITLES.get(key.output_name, key.output_name or "model")
      metric = "accuracy" if key.name == "sparse_categorical_accuracy" else key.name
      if key.is_diff:  # the change against the model blessed before it
        allowed = abs(threshold.change_threshold.absolute.value)
        lines.append(
            f"{classifier} {metric} {value:+.4f} against the model blessed before "
            f"it, where at most {allowed:g} lower is allowed"
        )
      elif threshold.HasField("value_threshold"):
        lines.append(
            f"{classifier} {metric} {value:.4f} is below the floor "
            f"{threshold.value_threshold.lower_bound.value:g}"
        )
      else:
        lines.append(f"{classifier} {metric} {value:.4f}: {failure.message}")
  if not lines and not result.validation_ok:
    lines.append("no validation result for the gated metrics")
  return lines


@dataclasses.dataclass
class RunOutputs:
  """One run of a pipeline, as MLMD records it; its outputs are read on demand."""

  output_dir: str
  metadata_path: str
  run_id: str
  pipeline: str
  executions: List[Dict]  # `runs.last_run_executions` rows, in start order

  @classmethod
  def load(
      cls,
      output_dir: Optional[str] = None,
      run_id: Optional[str] = None,
      pipeline_name: Optional[str] = None,
  ) -> "RunOutputs":
    """Run `run_id` (None: the newest) of the runs written to `output_dir`
    (None: $MAE_TFX_OUTPUT or outputs/)."""
    output_dir = os.path.abspath(output_dir or names.default_output_dir())
    metadata_path = names.metadata_path(output_dir)
    run = runs.find_run(metadata_path, pipeline_name, run_id)
    if run is None:
      raise LookupError(f"{metadata_path} has no run yet: run `make pipeline` first")
    return cls(
        output_dir,
        metadata_path,
        run["run_id"],
        run["pipeline"],
        runs.last_run_executions(metadata_path, run["pipeline"], run["run_id"]),
    )

  # ---- where things are ---------------------------------------------------
  def node(self, name: str) -> Dict:
    """The run's execution of node `name` ("ExampleGen": whichever source's)."""
    by_node = {r["node"]: r for r in self.executions}
    row = runs.example_gen_row(by_node) if name == "ExampleGen" else by_node.get(name)
    if row is None:
      raise LookupError(
          f"run {self.run_id} of {self.pipeline} has no {name} execution "
          f"(it has {list(by_node)})"
      )
    return row

  def uri(self, node: str, artifact_type: str) -> str:
    """Where node `node` wrote its `artifact_type` output; LookupError if it has none."""
    row = self.node(node)
    if not row["outputs"].get(artifact_type):
      raise LookupError(
          f"{node} of run {self.run_id} has no {artifact_type} output "
          f"(state {row['state']}): did it finish?"
      )
    return row["outputs"][artifact_type][0]

  def edges(self) -> List[Tuple[str, str]]:
    """The run's DAG: data flow from MLMD plus the pipeline's ordering-only
    dependencies."""
    from pipeline.pipeline import CONTROL_DEPENDENCIES

    present = {r["node"] for r in self.executions}
    return runs.run_edges(self.executions) + [
        edge for edge in CONTROL_DEPENDENCIES if set(edge) <= present
    ]

  # ---- the data -------------------------------------------------------------
  def splits(self) -> List[str]:
    """The splits ExampleGen wrote."""
    return _split_names(self.uri("ExampleGen", "Examples"))

  def statistics(self, split: str):
    """StatisticsGen's DatasetFeatureStatisticsList of one split."""
    import tensorflow_data_validation as tfdv

    return tfdv.load_stats_binary(
        os.path.join(
            names.split_dir(self.uri("StatisticsGen", "ExampleStatistics"), split),
            "FeatureStats.pb",
        )
    )

  def schema(self):
    """The Schema proto the run imported (ImportSchemaGen)."""
    from models import schema

    return schema.read_schema(os.path.join(self.uri("ImportSchemaGen", "Schema"), "schema.pbtxt"))

  def class_names(self) -> List[str]:
    """The class names in id order, as the run's schema lists them."""
    from models import schema

    return schema.class_names(self.schema())

  def anomalies(self) -> Dict[str, object]:
    """{split: ExampleValidator's Anomalies proto}."""
    from components.anomalies_gate import split_anomalies

    uri = self.uri("ExampleValidator", "ExampleAnomalies")
    return {split: split_anomalies(uri, split) for split in _split_names(uri)}

  def examples(self, split: str, limit: Optional[int] = None):
    """`models.examples.ExampleRecords` of the run's split."""
    return read_examples(names.split_files(self.uri("ExampleGen", "Examples"), split), limit)

  def search_corpus_images(self) -> Dict[str, bytes]:
    """{search id: encoded image} of the images the run's search index
    covers (the CorpusEmbedder's corpus: the train split, with `unlabeled`,
    or a --search-corpus), by the ids the index gives
    (`models.examples.search_id`)."""
    corpus = self.node("CorpusEmbedder")["output_properties"][names.EMBEDDINGS_TYPE][0]
    images = {}
    if corpus.get("corpus_parts"):  # each split of each span, and --search-corpus
      from components.search_index_gen import prefixed_id

      for part in json.loads(corpus["corpus_parts"]):
        records = read_examples(names.split_files(part["examples_uri"], part["split"]))
        images.update(
            (prefixed_id(i, part["id_prefix"]), image)
            for i, image in zip(records.search_ids(part["split"]), records.images)
        )
      return images
    # Runs before --search-corpus existed embedded their ExampleGen's examples.
    examples = corpus.get("corpus_examples") or self.uri("ExampleGen", "Examples")
    for split in corpus["corpus_splits"].split(","):
      records = read_examples(names.split_files(examples, split))
      images.update(zip(records.search_ids(split), records.images))
    return images

  def corpus_embeddings(self):
    """The CorpusEmbedder's vectors of the search corpus as a
    `serving.embeddings.EmbeddingsFile`, with the probe model's duplicate
    projection and threshold: what `serving.embed` writes for them."""
    from components.search_index_gen import read_corpus
    from serving.embeddings import EmbeddingsFile

    node = self.node("CorpusEmbedder")["output_properties"][names.EMBEDDINGS_TYPE][0]
    uri = self.uri("CorpusEmbedder", names.EMBEDDINGS_TYPE)
    corpus = read_corpus(uri, node["corpus_splits"].split(","))
    projection, threshold = self.probe_model().duplicate_projection()
    return EmbeddingsFile(
        corpus.vectors,
        corpus.records.ids,
        corpus.records.class_names,
        meta={
            "model_version": 0,
            **({} if threshold is None else {"duplicate_threshold": threshold}),
        },
        duplicate_projection=projection,
    )

  def transform_output(self):
    """Transform's graph (a `tft.TFTransformOutput`)."""
    import tensorflow_transform as tft

    return tft.TFTransformOutput(self.uri("Transform", "TransformGraph"))

  def channel_statistics(self) -> Tuple[np.ndarray, np.ndarray]:
    """(mean [3], std [3]) of the train pixels in [0, 1], as Transform froze them."""
    from models.data import channel_statistics

    return channel_statistics(self.transform_output())

  # ---- training and evaluation ---------------------------------------------
  def summary(self, trainer: str) -> Dict:
    """A Trainer's train_summary.json (history per epoch, accuracies)."""
    path = os.path.join(self.uri(trainer, "ModelRun"), names.SUMMARY_FILE)
    with open(path) as f:
      return json.load(f)

  def reconstructions_png(self) -> bytes:
    """The MAE Trainer's PNG grid of test images: originals, masked, reconstructed."""
    with open(
        os.path.join(self.uri(names.MAE_TRAINER, "ModelRun"), names.RECONSTRUCTIONS_FILE), "rb"
    ) as f:
      return f.read()

  def eval_result(self):
    """The Evaluator's TFMA EvalResult."""
    import tensorflow_model_analysis as tfma

    return tfma.load_eval_result(self.uri("Evaluator", "ModelEvaluation"))

  def tfma_accuracy(self) -> Dict[str, Dict[str, float]]:
    """{classifier output: {slice: accuracy}} the Evaluator computed."""
    return tfma_accuracy(self.uri("Evaluator", "ModelEvaluation"))

  def blessed(self) -> bool:
    """Whether the Evaluator blessed the run's model."""
    return os.path.exists(os.path.join(self.uri("Evaluator", "ModelBlessing"), "BLESSED"))

  def search_index(self):
    """The SearchIndexer's index (`models.search_index.SearchIndex`): the
    one the Pusher ships inside the model's version when it is blessed."""
    from components.search_index_gen import INDEX_FOLDER
    from models import search_index

    return search_index.load(
        os.path.join(self.uri("SearchIndexer", names.SEARCH_INDEX_TYPE), INDEX_FOLDER)
    )

  def probe_model(self):
    """The linear_probe Trainer's exported model (`serving.model_store.LoadedModel`)."""
    from tfx.utils import path_utils
    from serving.model_store import LoadedModel

    return LoadedModel(0, path_utils.serving_model_path(self.uri(names.PROBE_TRAINER, "Model")))

  def predictions(
      self, split: str, limit: Optional[int] = None, model=None, classify: bool = True
  ) -> Predictions:
    """The probe model's (or `model`'s) outputs on (the first `limit`)
    examples of `split`: embeddings, and with `classify` both classifiers'
    probabilities (else None)."""
    model = model or self.probe_model()
    records = self.examples(split, limit)
    signatures = ((names.CLASSIFY_EXAMPLES,) if classify else ()) + (names.EMBED_EXAMPLES,)
    out: Dict[str, List[np.ndarray]] = {}
    for i in range(0, len(records.serialized), _PREDICT_BATCH):
      batch = records.serialized[i : i + _PREDICT_BATCH]
      for signature in signatures:
        for key, value in model.run(signature, batch).items():
          out.setdefault(key, []).append(value)
    joined = {k: np.concatenate(v) for k, v in out.items()}
    return Predictions(
        records.images,
        records.labels,
        joined.get(names.PROBABILITIES_KEY),
        joined.get(names.KNN_PROBABILITIES_KEY),
        joined[names.EMBEDDING_KEY],
    )

  def probe_against_random_init(
      self, train_limit: int, test_limit: int, log_dir: str
  ) -> Dict[str, Dict]:
    """{"pretrained" | "random init": linear_probe summary}: the run's probe
    (same config: whitening, k-NN bank, epochs) on the first `train_limit`
    train and `test_limit` test images, once on the pretrained encoder and
    once on a randomly initialised one, so each accuracy stands beside the
    figure the same probe gets without pretraining."""
    import tensorflow as tf
    from tfx.utils import path_utils
    from models import config as config_lib
    from models import data, engine_pretrain, engine_probe
    from models.joint_embedding import build_mae

    cfg = config_lib.RunConfig.from_dict(self.summary(names.MAE_TRAINER)["run_config"])
    pretrained = engine_pretrain.load_mae(
        path_utils.serving_model_path(self.uri(names.MAE_TRAINER, "Model"))
    )
    tf.keras.utils.set_random_seed(cfg.runtime.seed)
    encoders = {
        "pretrained": pretrained.encoder,
        "random init": build_mae(pretrained.cfg).encoder,
    }
    files = {
        s: names.split_files(self.uri("ExampleGen", "Examples"), s)
        for s in (names.TRAIN_SPLIT, names.TEST_SPLIT)
    }
    tft_output, class_names = self.transform_output(), self.class_names()
    return {
        name: engine_probe.linear_probe(
            cfg,
            encoder,
            class_names,
            data.transformed_batches(files[names.TRAIN_SPLIT], tft_output, train_limit),
            data.transformed_batches(files[names.TEST_SPLIT], tft_output, test_limit),
            os.path.join(log_dir, name.replace(" ", "_")),
        ).summary
        for name, encoder in encoders.items()
    }
