"""The blessed models a run builds on, resolved so that a re-run resolves
what the first run did (its steps' inputs are then unchanged, and they come
from the cache).

  LatestBlessedEarlierSpanStrategy  what a new span's MAE warm-starts from:
      the latest blessed model trained on an earlier span than this run's
      (a model's span is that of the Examples its Trainer read, its lineage
      in MLMD); none for the first span, or CIFAR-10's only one. The MAE
      Trainer checks what it gets (`engine_pretrain.warm_start_source`).
  LatestBlessedBeforeStrategy  the Evaluator's baseline: the latest model
      blessed before the candidate was trained. TFX's
      LatestBlessedModelStrategy would give a re-run its own first run's
      model, so the Evaluator (and the corpus embedding after it) would run
      again for nothing.
  BlessedModelStatisticsStrategy  what the AnomaliesGate compares a new
      span with: the statistics of the examples the latest blessed model
      was trained on (a span the gate stopped is never the reference).
  LatestSpansStrategy  what a Trainer reads: this run's span and the
      newest earlier spans the gate passed (a Transform read them), up to
      `num_spans` in all (0: every one).

TFX 1.16's Vertex AI compiler takes only TFX's own resolver policies: there
the first two are the latest blessed model (a model trained on the same
examples is refused by the MAE Trainer's data digest), and the statistics
the latest ones.
"""

from typing import Callable, Dict, List, Optional

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx.dsl.components.common import resolver
from tfx.types import artifact_utils, standard_artifacts

from models.names import SPAN_PROPERTY, TRAIN_SPLIT
from models.run_log import log

try:
  from tfx.components.evaluator import constants as eval_consts

  _CURRENT_MODEL_ID = eval_consts.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY
  _BLESSED = eval_consts.ARTIFACT_PROPERTY_BLESSED_KEY
except ImportError:  # the Evaluator's own constants, as TFX's strategy does
  _CURRENT_MODEL_ID, _BLESSED = "current_model_id", "blessed"

EXAMPLES, MODEL, MODEL_BLESSING, CANDIDATE, STATISTICS, CURRENT = (
    "examples",
    "model",
    "model_blessing",
    "candidate",
    "statistics",
    "current",
)


def _latest_blessed(
    input_dict: Dict[str, List[types.Artifact]],
    accept: Callable[[types.Artifact], bool] = lambda model: True,
) -> Dict[str, List[types.Artifact]]:
  """{model: [the newest blessed model `accept` takes], model_blessing: [its
  blessing]}, or both empty."""
  blessings = {
      b.get_int_custom_property(_CURRENT_MODEL_ID): b
      for b in input_dict[MODEL_BLESSING]
      if b.get_int_custom_property(_BLESSED) == 1
  }
  for model in sorted(input_dict[MODEL], key=lambda a: a.id, reverse=True):
    if model.id in blessings and accept(model):
      return {MODEL: [model], MODEL_BLESSING: [blessings[model.id]]}
  return {MODEL: [], MODEL_BLESSING: []}


def artifact_span(artifact) -> int:
  """The span of an Examples artifact (a types.Artifact or an MLMD proto):
  ExampleGen's driver sets it as a custom property; the `span` property
  stays 0 (so StatisticsGen's copy of it does too)."""
  proto = getattr(artifact, "mlmd_artifact", artifact)
  if SPAN_PROPERTY in proto.custom_properties:
    return int(proto.custom_properties[SPAN_PROPERTY].int_value)
  return int(proto.properties[SPAN_PROPERTY].int_value)


def _type_id(store: mlmd.MetadataStore, artifact_type) -> Optional[int]:
  """The MLMD id of an artifact type; None before any artifact of it exists."""
  try:
    return store.get_artifact_type(artifact_type.TYPE_NAME).id
  except mlmd.errors.NotFoundError:
    return None


def _neighbours(store: mlmd.MetadataStore, artifact_ids: List[int], upstream: bool) -> List[int]:
  """The ids of the inputs of the executions that wrote `artifact_ids`
  (`upstream`), or of the outputs of the executions that read them."""
  there, back = (
      (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.INPUT)
      if upstream
      else (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.OUTPUT)
  )
  executions = [
      e.execution_id for e in store.get_events_by_artifact_ids(artifact_ids) if e.type == there
  ]
  return [e.artifact_id for e in store.get_events_by_execution_ids(executions) if e.type == back]


def training_examples(
    store: mlmd.MetadataStore, model_id: int
) -> List[metadata_store_pb2.Artifact]:
  """The Examples read by the Trainer that wrote `model_id`."""
  examples_type = _type_id(store, standard_artifacts.Examples)
  return [
      a
      for a in store.get_artifacts_by_id(_neighbours(store, [model_id], upstream=True))
      if a.type_id == examples_type
  ]


def training_spans(store: mlmd.MetadataStore, model_id: int) -> List[int]:
  """The spans of the Examples read by the Trainer that wrote `model_id`."""
  return [artifact_span(a) for a in training_examples(store, model_id)]


class LatestBlessedEarlierSpanStrategy(resolver.ResolverStrategy):
  """{model: [the latest blessed model whose Trainer read only spans before
  this run's], model_blessing: [its blessing], examples: this run's}, or
  empty model and blessing when there is none."""

  def resolve_artifacts(
      self, store: mlmd.MetadataStore, input_dict: Dict[str, List[types.Artifact]]
  ) -> Optional[Dict[str, List[types.Artifact]]]:
    """This run's Examples, with the latest blessed model of earlier spans."""
    if not input_dict[EXAMPLES]:
      return {EXAMPLES: [], MODEL: [], MODEL_BLESSING: []}
    span = max(artifact_span(a) for a in input_dict[EXAMPLES])

    def earlier(model: types.Artifact) -> bool:
      spans = training_spans(store, model.id)
      return bool(spans) and max(spans) < span

    found = _latest_blessed(input_dict, earlier)
    if found[MODEL]:
      log.info(
          "[warm start] span %d: the latest blessed model of an earlier span is %s",
          span,
          found[MODEL][0].uri,
      )
    return {EXAMPLES: input_dict[EXAMPLES], **found}


class LatestBlessedBeforeStrategy(resolver.ResolverStrategy):
  """{model: [the latest blessed model older than the candidate],
  model_blessing: [its blessing], candidate: the candidate}, or empty model
  and blessing when none was blessed before it."""

  def resolve_artifacts(
      self, store: mlmd.MetadataStore, input_dict: Dict[str, List[types.Artifact]]
  ) -> Optional[Dict[str, List[types.Artifact]]]:
    """The candidate, with the latest blessed model older than it (a smaller id)."""
    del store
    if not input_dict[CANDIDATE]:
      return {CANDIDATE: [], MODEL: [], MODEL_BLESSING: []}
    candidate = max(a.id for a in input_dict[CANDIDATE])
    return {
        CANDIDATE: input_dict[CANDIDATE],
        **_latest_blessed(input_dict, lambda model: model.id < candidate),
    }


class BlessedModelStatisticsStrategy(resolver.ResolverStrategy):
  """{statistics: [the latest statistics of the Examples the latest blessed
  model was trained on (of this run's span when it read several)],
  examples: [those Examples], model, model_blessing: that model and its
  blessing}, or all empty when no model is blessed yet."""

  def resolve_artifacts(
      self, store: mlmd.MetadataStore, input_dict: Dict[str, List[types.Artifact]]
  ) -> Optional[Dict[str, List[types.Artifact]]]:
    """The latest blessed model and its blessing, with its training Examples
    and their statistics."""
    none = {STATISTICS: [], EXAMPLES: [], MODEL: [], MODEL_BLESSING: []}
    found = _latest_blessed(input_dict)
    read = training_examples(store, found[MODEL][0].id) if found[MODEL] else []
    if not read:
      return none
    # A Trainer that read a window of spans: the newest is that run's own.
    examples = max(read, key=lambda a: (artifact_span(a), a.id))
    computed = set(_neighbours(store, [examples.id], upstream=False))
    statistics = [s for s in input_dict[STATISTICS] if s.id in computed]
    if not statistics:
      return none
    return {
        STATISTICS: [max(statistics, key=lambda a: a.id)],
        EXAMPLES: [a for a in input_dict[EXAMPLES] if a.id == examples.id],
        **found,
    }


def _validated(store: mlmd.MetadataStore, examples: types.Artifact) -> bool:
  """Whether a Transform read `examples` (it runs only once the gate passed
  them): an execution that read them wrote a TransformGraph."""
  graph_type = _type_id(store, standard_artifacts.TransformGraph)
  written = _neighbours(store, [examples.id], upstream=False)
  return graph_type is not None and any(
      a.type_id == graph_type for a in store.get_artifacts_by_id(written)
  )


class LatestSpansStrategy(resolver.ResolverStrategy):
  """{examples: this run's Examples and, newest first, the newest Examples
  of each earlier span the gate passed, `num_spans` spans in all (0: all
  of them), current: this run's}. `examples` holds every Examples artifact
  of the pipeline; those with a train split are ExampleGen's (a search
  corpus has none)."""

  def __init__(self, num_spans: int = 1):
    self._num_spans = num_spans

  def resolve_artifacts(
      self, store: mlmd.MetadataStore, input_dict: Dict[str, List[types.Artifact]]
  ) -> Optional[Dict[str, List[types.Artifact]]]:
    """This run's Examples, then those of the newest earlier spans the gate passed."""
    current = input_dict[CURRENT]
    if not current or self._num_spans == 1:
      return {EXAMPLES: list(current), CURRENT: current}
    span = max(artifact_span(a) for a in current)
    newest: Dict[int, types.Artifact] = {}  # span -> its newest Examples the gate passed
    for a in sorted(input_dict[EXAMPLES], key=lambda a: a.id, reverse=True):
      a_span = artifact_span(a)
      if (
          a_span < span
          and a_span not in newest
          and TRAIN_SPLIT in artifact_utils.decode_split_names(a.split_names)
          and _validated(store, a)
      ):
        newest[a_span] = a
    earlier = [newest[s] for s in sorted(newest, reverse=True)]
    if self._num_spans:
      earlier = earlier[: self._num_spans - 1]
    return {EXAMPLES: list(current) + earlier, CURRENT: current}
