"""create_pipeline: the mae-tfx DAG, the same for every orchestrator.

It is built in four stages, each a function returning its nodes:

data_stage: ExampleGen (CIFAR-10, image folder or TFRecord; a span of them)
  -> StatisticsGen -> ImportSchemaGen -> ExampleValidator -> AnomaliesGate
     (+ drift from the data of the latest blessed model) -> Transform
training_stage: Trainer(mae_pretrain; a new span warm-starts from the MAE of
  the latest blessed model of an earlier span) -> Trainer(linear_probe,
  base_model=MAE)
evaluation_stage: Evaluator (vs the model blessed before)
search_and_push_stage: CorpusEmbedder (every image accepted so far, by the
  model the index ships with) -> SearchIndexer -> Pusher: locally a
  versioned push of the blessed encoder with its index (or of the served
  one with its index extended), the pushed index also written as
  TensorBoard's Embedding Projector files in the pipeline root; on Vertex
  AI a deployment to an endpoint, the corpus written for Vector Search
  beside it (`python -m pipeline.vertex_runner index`)
"""

import dataclasses
import json
from typing import List, Optional

import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.proto import transform_pb2

from components.anomalies_gate import AnomaliesGate
from components.cifar10_example_gen import Cifar10ExampleGen
from components.image_folder_example_gen import ImageFolderExampleGen
from components.search_corpus_gen import SearchCorpusGen
from components.search_index_gen import CorpusEmbedder, SearchIndexer
from components.tfrecord_example_gen import TFRecordImageExampleGen
from components.model_resolvers import (
    BlessedModelStatisticsStrategy,
    LatestBlessedBeforeStrategy,
    LatestBlessedEarlierSpanStrategy,
    LatestSpansStrategy,
)
from components.versioned_pusher import VersionedPusher
from models import names
from models.names import (
    CLASS_NAME_KEY,
    CLASSIFY_EXAMPLES,
    KNN_PROBABILITIES_KEY,
    LABEL_KEY,
    PROBABILITIES_KEY,
    TEST_SPLIT,
    TRAIN_SPLIT,
    UNLABELED_SPLIT,
)
from pipeline import data_source
from pipeline.configs import PipelineConfig

PREPROCESSING_FN = "models.preprocessing.preprocessing_fn"
MAE_RUN_FN = "components.mae_trainer.run_fn"
PROBE_RUN_FN = "components.probe_trainer.run_fn"
SEARCH_CORPUS_GEN = "SearchCorpusGen"
PREVIOUS_STATISTICS_RESOLVER = "previous_statistics_resolver"
WARM_START_RESOLVER = "warm_start_model_resolver"
BASELINE_RESOLVER = "latest_blessed_model_resolver"
# (upstream, downstream) node ids ordered without an artifact between them:
# nothing is transformed or trained until the gate passed the data.
CONTROL_DEPENDENCIES = (("AnomaliesGate", "Transform"),)
CORPUS_SPANS_RESOLVER = "corpus_spans_resolver"


def eval_config(min_accuracy: float, max_drop: float) -> tfma.EvalConfig:
  """Accuracy of classify_examples' two classifiers, the linear probe and the
  k-NN, overall and per class (sliced by the examples' class name); bless
  when the linear probe is above `min_accuracy` and within `max_drop` of the
  baseline, the model blessed before it (ignored when there is none). The
  k-NN accuracy is reported, not gated."""
  # TFMA names each scored output by its key in the signature's outputs.
  return tfma.EvalConfig(
      model_specs=[
          tfma.ModelSpec(
              signature_name=CLASSIFY_EXAMPLES,
              label_keys={PROBABILITIES_KEY: LABEL_KEY, KNN_PROBABILITIES_KEY: LABEL_KEY},
          )
      ],
      slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[CLASS_NAME_KEY])],
      metrics_specs=[
          tfma.MetricsSpec(
              output_names=[PROBABILITIES_KEY],
              metrics=[
                  tfma.MetricConfig(class_name="ExampleCount"),
                  # The gate applies to the overall slice; per-class accuracies
                  # are reported, not gated (a class of 10 test images is too noisy).
                  tfma.MetricConfig(
                      class_name="SparseCategoricalAccuracy",
                      per_slice_thresholds=[
                          tfma.PerSliceMetricThreshold(
                              slicing_specs=[tfma.SlicingSpec()],
                              threshold=tfma.MetricThreshold(
                                  value_threshold=tfma.GenericValueThreshold(
                                      lower_bound={"value": min_accuracy}
                                  ),
                                  change_threshold=tfma.GenericChangeThreshold(
                                      direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                      absolute={"value": -max_drop},
                                  ),
                              ),
                          )
                      ],
                  ),
              ],
          ),
          tfma.MetricsSpec(
              output_names=[KNN_PROBABILITIES_KEY],
              metrics=[tfma.MetricConfig(class_name="SparseCategoricalAccuracy")],
          ),
      ],
  )


def example_gen(config: PipelineConfig):
  """The ExampleGen of the configured source."""
  source = config.source
  if source.format == data_source.CIFAR10:
    return Cifar10ExampleGen(input_base=config.data_root)
  common = dict(
      input_base=config.data_root,
      test_fraction=source.test_fraction,
      unlabeled_base=source.unlabeled_root,
      skip_bad_images=source.skip_bad_images,
      fingerprint=source.fingerprint,
      spans=source.spans,
      span=source.span,
  )
  if source.format == data_source.IMAGE_FOLDER:
    return ImageFolderExampleGen(**common)
  return TFRecordImageExampleGen(
      image_feature=source.image_feature, label_feature=source.label_feature, **common
  )


@dataclasses.dataclass
class DataStage:
  """Ingest, check and transform: the nodes, and what later stages read."""

  nodes: List
  examples: tfx.dsl.Channel  # this run's Examples
  schema: tfx.dsl.Channel
  transform_graph: tfx.dsl.Channel


@dataclasses.dataclass
class TrainingStage:
  """The two Trainers and the resolvers feeding them."""

  nodes: List
  model: tfx.dsl.Channel  # the probe Trainer's Model: the candidate


@dataclasses.dataclass
class EvaluationStage:
  """The Evaluator against the model blessed before."""

  nodes: List
  blessing: tfx.dsl.Channel


def data_stage(config: PipelineConfig) -> DataStage:
  """ExampleGen -> StatisticsGen -> ImportSchemaGen -> ExampleValidator ->
  AnomaliesGate (schema anomalies, and drift against the statistics of the
  data the latest blessed model was trained on) -> Transform.

  Vertex AI compiles only TFX's own resolvers: there the drift reference is
  the latest statistics, resolved before this run's exist."""
  examples_gen = example_gen(config)
  unlabeled = bool(config.source.unlabeled_root)
  if config.vertex:
    previous_statistics = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
        statistics=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ExampleStatistics),
    )
    previous_examples = None
  else:
    previous_statistics = tfx.dsl.Resolver(
        strategy_class=BlessedModelStatisticsStrategy,
        statistics=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ExampleStatistics),
        examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples),
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    )
    previous_examples = previous_statistics.outputs["examples"]
  previous_statistics = previous_statistics.with_id(PREVIOUS_STATISTICS_RESOLVER)
  statistics_gen = tfx.components.StatisticsGen(examples=examples_gen.outputs["examples"])
  statistics_gen.add_upstream_node(previous_statistics)
  schema_gen = tfx.components.ImportSchemaGen(schema_file=config.schema_path)
  # The unlabeled split has no label to check; its images were checked by
  # ExampleGen, and its statistics are there to look at.
  example_validator = tfx.components.ExampleValidator(
      statistics=statistics_gen.outputs["statistics"],
      schema=schema_gen.outputs["schema"],
      exclude_splits=[UNLABELED_SPLIT] if unlabeled else [],
  )
  anomalies_gate = AnomaliesGate(
      anomalies=example_validator.outputs["anomalies"],
      statistics=statistics_gen.outputs["statistics"],
      schema=schema_gen.outputs["schema"],
      examples=examples_gen.outputs["examples"],
      previous_statistics=previous_statistics.outputs["statistics"],
      previous_examples=previous_examples,
      on_drift=config.run_config.validation.on_drift,
  )
  # Analyse on train only; the Trainers apply the graph themselves, so the
  # 3,072-float images are not materialised.
  transform = tfx.components.Transform(
      examples=examples_gen.outputs["examples"],
      schema=schema_gen.outputs["schema"],
      preprocessing_fn=PREPROCESSING_FN,
      custom_config={names.IMAGE_SIZE_CONFIG_KEY: config.run_config.data.image_size},
      splits_config=transform_pb2.SplitsConfig(analyze=[TRAIN_SPLIT]),
      materialize=False,
      disable_statistics=True,
  )
  return DataStage(
      [
          examples_gen,
          previous_statistics,
          statistics_gen,
          schema_gen,
          example_validator,
          anomalies_gate,
          transform,
      ],
      examples_gen.outputs["examples"],
      schema_gen.outputs["schema"],
      transform.outputs["transform_graph"],
  )


def spans_resolver(config: PipelineConfig, node_id: str, examples, num_spans: int):
  """A resolver of this run's Examples and those of the newest spans the gate
  passed, `num_spans` in all (0: every one); None where a run reads its own
  span only: data not in spans, a window of 1, or Vertex AI (TFX's own
  resolvers only)."""
  if not config.source.spans or config.vertex or num_spans == 1:
    return None
  return tfx.dsl.Resolver(
      strategy_class=LatestSpansStrategy,
      config={"num_spans": num_spans},
      examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples),
      current=examples,
  ).with_id(node_id)


def blessed_model_resolver(
    config: PipelineConfig, node_id: str, strategy, **current
) -> tfx.dsl.Resolver:
  """A blessed model resolved by `strategy` (components/model_resolvers.py),
  so that a re-run gets what the first run got; on Vertex AI, which
  compiles only TFX's own resolvers, the latest blessed model."""
  if config.vertex:
    strategy, current = tfx.dsl.experimental.LatestBlessedModelStrategy, {}
  return tfx.dsl.Resolver(
      strategy_class=strategy,
      model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
      model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
      **current,
  ).with_id(node_id)


def training_stage(config: PipelineConfig, data: DataStage) -> TrainingStage:
  """Trainer(mae_pretrain) -> Trainer(linear_probe, base_model=the MAE).

  The MAE warm-starts from the MAE of the latest blessed model of an earlier
  span; each Trainer reads this run's span or the newest spans the gate
  passed (its `span_window`). On Vertex AI the Trainers run as Vertex AI
  Training jobs (with `vertex_training`) and read this run's span."""
  vertex = config.vertex
  run_config = config.run_config
  unlabeled = bool(config.source.unlabeled_root)

  def trainer(run_fn: str, examples, train_splits, **inputs) -> tfx.components.Trainer:
    custom_config = config.trainer_custom_config()
    component = tfx.components.Trainer
    if vertex and vertex.vertex_training:
      custom_config.update(vertex.trainer_custom_config())
      component = tfx.extensions.google_cloud_ai_platform.Trainer
    return component(
        run_fn=run_fn,
        examples=examples,
        transform_graph=data.transform_graph,
        schema=data.schema,
        train_args=tfx.proto.TrainArgs(splits=train_splits),
        eval_args=tfx.proto.EvalArgs(splits=[TEST_SPLIT]),
        custom_config=custom_config,
        **inputs,
    )

  windows = [
      spans_resolver(config, node_id, data.examples, num_spans)
      for node_id, num_spans in (
          ("mae_spans_resolver", run_config.pretrain.span_window),
          ("probe_spans_resolver", run_config.probe.span_window),
      )
  ]
  mae_examples, probe_examples = (w.outputs["examples"] if w else data.examples for w in windows)
  warm_start_resolver = blessed_model_resolver(
      config, WARM_START_RESOLVER, LatestBlessedEarlierSpanStrategy, examples=data.examples
  )
  # The MAE also learns from the unlabeled images; the probe only from labels.
  mae_trainer = trainer(
      MAE_RUN_FN,
      mae_examples,
      [TRAIN_SPLIT] + [UNLABELED_SPLIT] * unlabeled,
      base_model=warm_start_resolver.outputs["model"],
  ).with_id(names.MAE_TRAINER)
  probe_trainer = trainer(
      PROBE_RUN_FN, probe_examples, [TRAIN_SPLIT], base_model=mae_trainer.outputs["model"]
  ).with_id(names.PROBE_TRAINER)
  return TrainingStage(
      [warm_start_resolver, *[w for w in windows if w], mae_trainer, probe_trainer],
      probe_trainer.outputs["model"],
  )


def evaluation_stage(
    config: PipelineConfig, data: DataStage, training: TrainingStage
) -> EvaluationStage:
  """Evaluator: the candidate's two classifiers on this run's test split,
  blessed against `eval_config`'s floor and the model blessed before it."""
  baseline_resolver = blessed_model_resolver(
      config, BASELINE_RESOLVER, LatestBlessedBeforeStrategy, candidate=training.model
  )
  gate = config.run_config.evaluation
  evaluator = tfx.components.Evaluator(
      examples=data.examples,
      model=training.model,
      baseline_model=baseline_resolver.outputs["model"],
      example_splits=[TEST_SPLIT],
      eval_config=eval_config(gate.min_accuracy, gate.max_accuracy_drop),
  )
  return EvaluationStage([baseline_resolver, evaluator], evaluator.outputs["blessing"])


def search_and_push_stage(
    config: PipelineConfig,
    data: DataStage,
    training: TrainingStage,
    evaluation: EvaluationStage,
) -> List:
  """CorpusEmbedder -> SearchIndexer -> Pusher.

  Locally the index covers every image accepted so far (every span the gate
  passed, plus --search-corpus, less the removed ids), embedded by the
  model it ships with: the candidate when blessed, else the served version,
  pushed again with the extended index (components/search_index_gen.py);
  the Pusher also writes the Embedding Projector files of the index it
  pushed (`config.projector_dir`, a TensorBoard run in the pipeline root).
  On Vertex AI the index covers this run's span, the Pusher deploys the
  blessed model to an endpoint and the corpus is written for Vector Search
  beside it (`python -m pipeline.vertex_runner index`)."""
  vertex = config.vertex
  source = config.source
  search_config = config.run_config.search
  nodes = []
  search_corpus = None
  if source.search_corpus:
    search_corpus = SearchCorpusGen(
        input_base=source.search_corpus,
        image_feature=source.image_feature,
        label_feature=source.label_feature,
        skip_bad_images=source.skip_bad_images,
        fingerprint=source.search_corpus_fingerprint,
    ).with_id(SEARCH_CORPUS_GEN)
    nodes.append(search_corpus)
  corpus_spans = spans_resolver(config, CORPUS_SPANS_RESOLVER, data.examples, 0)
  nodes += [corpus_spans] if corpus_spans else []
  corpus_embedder = CorpusEmbedder(
      examples=data.examples,
      model=training.model,
      model_blessing=evaluation.blessing,
      corpus_splits=",".join([TRAIN_SPLIT] + [UNLABELED_SPLIT] * bool(source.unlabeled_root)),
      query_split=TEST_SPLIT,
      query_limit=search_config.tune_queries + search_config.eval_queries,
      vector_search_json=int(search_config.vector_search_json),
      served_models="" if vertex else config.serving_model_dir,
      removed_ids=source.removed_ids,
      span_ids=int(source.spans),
      thumbnail_px=search_config.thumbnail_px,
      corpus_spans=corpus_spans.outputs["examples"] if corpus_spans else None,
      corpus_examples=search_corpus.outputs["examples"] if search_corpus else None,
  )
  search_indexer = SearchIndexer(
      embeddings=corpus_embedder.outputs["embeddings"],
      search_config=json.dumps(dataclasses.asdict(search_config)),
  )
  if vertex:  # a Vertex AI endpoint, serving with a prebuilt TF container
    pusher = tfx.extensions.google_cloud_ai_platform.Pusher(
        model=training.model,
        model_blessing=evaluation.blessing,
        custom_config=vertex.pusher_custom_config(),
    )
  else:  # the index inside the model's version; its projector beside the Trainers' logs
    pusher = VersionedPusher(
        model=training.model,
        model_blessing=evaluation.blessing,
        base_directory=config.serving_model_dir,
        search_index=search_indexer.outputs["search_index_artifact"],
        projector_dir=config.projector_dir,
        projector_points=search_config.projector_points,
    )
  return nodes + [corpus_embedder, search_indexer, pusher]


def create_pipeline(
    config: PipelineConfig,
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    beam_pipeline_args: Optional[List[str]] = None,
) -> tfx.dsl.Pipeline:
  """The pipeline of the module docstring, for the data and profile `config`
  describes: the four stages in order, each holding its Vertex AI variant.

  With `config.vertex` set it is the Google Cloud variant: the Trainers as
  Vertex AI Training jobs (with `vertex_training`), only TFX's own resolvers, and
  a Pusher deploying to a Vertex AI endpoint.

  Args:
    config: the run: its source, profile, output folder and (set) Vertex AI.
    metadata_connection_config: the MLMD database; None where the
      orchestrator keeps its own (Vertex AI).
    beam_pipeline_args: Beam's arguments; None: `config.beam_args`.
  """
  data = data_stage(config)
  training = training_stage(config, data)
  evaluation = evaluation_stage(config, data, training)
  components = (
      data.nodes
      + training.nodes
      + evaluation.nodes
      + search_and_push_stage(config, data, training, evaluation)
  )
  by_id = {c.id: c for c in components}
  for upstream, downstream in CONTROL_DEPENDENCIES:
    by_id[downstream].add_upstream_node(by_id[upstream])
  return tfx.dsl.Pipeline(
      pipeline_name=config.pipeline_name,
      pipeline_root=config.pipeline_root,
      components=components,
      enable_cache=config.enable_cache,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=(config.beam_args if beam_pipeline_args is None else beam_pipeline_args),
  )
