"""The profile registry: everything a profile means, in one place.

A `RunConfig` is a complete run: the MAE's shape, the pretraining schedule,
the linear probe, how to run (precision, strategy, XLA), how the Trainers
read their data, what drift between spans does, the Evaluator's gate and
the Beam arguments of the data components. `PROFILES` names complete
configurations; `get_profile(name, overrides)` returns one with
{section: {field: value}} overrides applied, and refuses unknown names.

  smoke     tiny model, a few steps: for the tests.
  cpu       default of `make pipeline`: sized for a 2-core CPU machine.
  cpu-long  the `cpu` recipe with 3.3x the epochs (issue 26's ~30-minute run).
  full      the official-style schedule (200 epochs) for a GPU/TPU or Vertex AI.

The pipeline passes the Trainers their sections (`trainer_config`) through
`custom_config`, so what a model was trained with is recorded in MLMD next to
it, and a change of gate or Beam arguments does not invalidate their cache.
"""

import dataclasses
import json
import types
from typing import Any, Dict, Optional, Tuple

IMAGE_SIZE = 32
IMAGE_CHANNELS = 3
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape of the MAE (encoder + decoder).

  The encoder is 4 blocks x 160 wide, at about the FLOPs of the 6 x 128
  reference size (`REFERENCE_MODEL`): on CIFAR-10 its wider embedding probes
  better (benchmarks/RESULTS.md, "Encoder shape").
  """

  image_size: int = IMAGE_SIZE
  patch_size: int = 4
  embed_dim: int = 160
  depth: int = 4
  num_heads: int = 4
  decoder_embed_dim: int = 64
  decoder_depth: int = 2
  decoder_num_heads: int = 4
  mlp_ratio: float = 4.0
  mask_ratio: float = 0.75
  norm_pix_loss: bool = True
  # A learned [CLS] token ahead of the patches (as in the official MAE): the
  # embedding is then its output token instead of the mean over patches. Off:
  # it probed worse than the patch mean (benchmarks/RESULTS.md).
  cls_token: bool = False
  # U-MAE (Zhang et al. 2022): + weight * the mean squared cosine similarity
  # (/ tau) between the batch's pooled visible-token embeddings, against the
  # collapse of MAE features into a few directions. 0: the pure MAE loss.
  uniformity_weight: float = 0.0
  uniformity_tau: float = 0.1
  # A contrastive term between two augmented, independently masked views of
  # each image (CAN, Mishra et al. 2022): + weight * InfoNCE (temperature
  # tau) of the pooled visible tokens through a projection MLP (D ->
  # projector_hidden -> projector_dim); the other images of the batch are
  # the negatives. > 0 makes each pretraining batch two views per image
  # (twice the compute per epoch). 0: the pure MAE loss. At equal time it
  # beat the pure MAE on LP and k-NN (benchmarks/RESULTS.md, issue 16).
  contrastive_weight: float = 0.03
  # 0.05, sharper than SimCLR's 0.1 to 0.5: it beat 0.1 and 0.2 at equal
  # time, on k-NN most (benchmarks/RESULTS.md, issue 26).
  contrastive_tau: float = 0.05
  # The projector's input: the pooled visible tokens of the last k encoder
  # blocks side by side (k * embed_dim; the served embedding is every
  # block's), so the term shapes what search uses, not only the last block.
  contrastive_blocks: int = 1
  projector_hidden: int = 512
  projector_dim: int = 128
  # A momentum teacher for the contrastive term (MoCo v3; iBOT is MIM +
  # self-distillation): the keys come from an exponential moving average of
  # the encoder and projector, fed the other view with `teacher_mask_ratio`
  # of its patches masked (0: the whole view), and each student projection
  # goes through a predictor MLP first. The teacher is never trained by
  # gradient: after each step teacher = m * teacher + (1 - m) * student, m
  # rising from `teacher_momentum` to 1 on a cosine over training. 0: off,
  # InfoNCE between the two student views.
  teacher_momentum: float = 0.0
  teacher_mask_ratio: float = 0.0
  # VICReg's variance and covariance terms (Bardes et al. 2022) on every
  # view's projections, + weight * (mean hinge of each dimension's std
  # below 1 + 1/25 x the squared off-diagonal covariances / P): keeps the
  # dimensions spread and decorrelated, which InfoNCE alone does not ask.
  # Needs contrastive_weight > 0 (the projector). 0: off.
  variance_covariance_weight: float = 0.0

  @property
  def num_prefix_tokens(self) -> int:
    """Tokens ahead of the patch tokens: 1 with a [CLS] token, else 0."""
    return int(self.cls_token)

  def architecture(self) -> Dict[str, Any]:
    """What shapes the weights: two configs with equal architectures load
    each other's weights (a warm start). The loss's settings are not part
    of it; the projector and the teacher are, by whether they exist."""
    arch = {k: v for k, v in dataclasses.asdict(self).items() if k not in LOSS_ONLY_FIELDS}
    arch.update(
        contrastive_weight=self.contrastive_weight > 0, teacher_momentum=self.teacher_momentum > 0
    )
    return arch

  @property
  def num_patches(self) -> int:
    """L, the patches per image: (image_size / patch_size)^2."""
    return (self.image_size // self.patch_size) ** 2


# ModelConfig fields that change the loss, not the weights.
LOSS_ONLY_FIELDS = (
    "mask_ratio",
    "norm_pix_loss",
    "uniformity_weight",
    "uniformity_tau",
    "contrastive_tau",
    "teacher_mask_ratio",
    "variance_covariance_weight",
)


def architecture_differences(saved: ModelConfig, current: ModelConfig) -> Dict[str, Tuple]:
  """{field: (saved, current)} where the two architectures differ."""
  a, b = saved.architecture(), current.architecture()
  return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


# The size the throughput targets are stated for (encoder 6 x 128, 4 heads;
# decoder 2 x 64; patch 4; mask 0.75; the pure MAE loss, one view per image):
# benchmarks/train_throughput.py's default. A profile's "model" overrides
# (`get_profile(name, {"model": dict(REFERENCE_MODEL)})`), read-only: every
# ModelConfig field but image_size, which follows data.image_size as for
# every model.
REFERENCE_MODEL = types.MappingProxyType(
    {
        field: value
        for field, value in dataclasses.asdict(
            ModelConfig(embed_dim=128, depth=6, contrastive_weight=0.0)
        ).items()
        if field != "image_size"
    }
)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The images' size, and how the Trainers read their examples."""

  # What Transform resizes every image to (centre crop to a square, area
  # resize); a multiple of model.patch_size. The MAE, the probe, the
  # signatures and the reconstructions follow it (model.image_size is set
  # from it); the served model still accepts images of any size.
  image_size: int = IMAGE_SIZE
  # The MAE Trainer holds the Transform'ed train split in memory (float32)
  # when it fits this budget, and streams it from the example files through
  # the Transform graph otherwise, so memory does not grow with the data.
  memory_budget_mb: int = 2048
  shuffle_buffer: int = 10_000  # examples, when streaming


WARM_START_MODES = ("auto", "never")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """MAE pretraining schedule (official recipe: AdamW, warmup + cosine)."""

  epochs: int = 10
  batch_size: int = 256
  base_lr: float = 1.5e-4  # lr = base_lr * batch_size / 256
  min_lr: float = 0.0
  warmup_epochs: float = 1.0
  weight_decay: float = 0.05  # decoupled, multiplied by the scheduled lr
  beta_1: float = 0.9
  beta_2: float = 0.95
  crop_min_scale: float = 0.2  # RandomResizedCrop scale range (min, 1.0)
  color_jitter: float = 0.4  # strength of data.color_jitter; 0: none
  hue_jitter: float = 0.1  # data.color_jitter's hue rotation, turns (SimCLR's)
  # Multi-crop (SwAV, DINO): beside the two global views, this many local
  # views of each image, random-resized crops of area in
  # [local_crop_min_scale, local_crop_max_scale] fed at their own size
  # `local_view_size` (16 at patch 4: 16 tokens, a masked global view's
  # count), flipped and colour-jittered like the global views; each is
  # pulled toward its image's global views (models/joint_embedding.py).
  # Needs model.contrastive_weight > 0. 0: none.
  local_views: int = 0
  local_view_size: int = 16
  local_crop_min_scale: float = 0.05
  local_crop_max_scale: float = 0.4
  # What search must forgive, as augmentation of the global views: with this
  # probability an image is resized down to a side of
  # [downsample_min_scale, 0.75] x its own (one factor per batch) and back
  # up, as a thumbnail scaled to the served size. 0.3: at equal time and
  # accuracy, 55 % of 0.5x thumbnails found as duplicates instead of 50 %
  # (benchmarks/RESULTS.md, issue 37). 0: never.
  downsample_prob: float = 0.3
  downsample_min_scale: float = 0.35
  steps_per_epoch: Optional[int] = None  # None: one pass over the train split
  max_train_examples: Optional[int] = None
  reconstruction_images: int = 8
  # A run on a new span starts from the MAE of the latest blessed model
  # trained on an earlier span, for `warm_start_epochs` instead of `epochs`
  # ("auto"; the model's architecture must equal this one's, else it trains
  # from scratch and says why), or always from scratch ("never").
  warm_start: str = "auto"
  warm_start_epochs: int = 3
  # Data laid out in spans: how many of the newest spans the MAE reads, this
  # run's and the earlier ones the gate passed (0: all). All: a warm start
  # keeps up with from scratch (within a point after five spans); 1, what
  # is new only, costs less and falls behind (benchmarks/continuous.py).
  span_window: int = 0

  def __post_init__(self):
    if self.warm_start not in WARM_START_MODES:
      raise ValueError(
          f"pretrain.warm_start must be one of {list(WARM_START_MODES)}, "
          f"got {self.warm_start!r}"
      )
    if self.warm_start_epochs < 1:
      raise ValueError(
          f"pretrain.warm_start_epochs must be at least 1, got {self.warm_start_epochs}"
      )
    if self.span_window < 0:
      raise ValueError(
          f"pretrain.span_window must be 0 (every span) or more, got {self.span_window}"
      )


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """Linear probe: BatchNorm (no affine) + Dense on the frozen embedding."""

  epochs: int = 90
  batch_size: int = 256
  # 1e-2 matches an L-BFGS logistic regression on the same features; 1e-3
  # under-fits (benchmarks/RESULTS.md, probe ablation).
  base_lr: float = 1e-2
  weight_decay: float = 0.0
  warmup_epochs: float = 5.0
  # The embedding: the pooled tokens of the last k encoder blocks side by
  # side (k * embed_dim values; None: every block). The MAE's best features
  # are not only in its last block (benchmarks/RESULTS.md, issue 16).
  feature_blocks: Optional[int] = None
  # The served embedding is the pooled tokens PCA-whitened with the train
  # features' statistics (models.evaluation.fit_whitening; no labels): the
  # probe, the k-NN and search all see it. Eigenvalues are shrunk by
  # whitening_shrinkage x the largest (benchmarks/RESULTS.md, issue 16).
  whitening: bool = True
  whitening_shrinkage: float = 1e-4
  # Directions (in the whitening) and features (in the probe head) whose
  # train variance is below this x the largest are dropped: they hold
  # rounding noise, not signal, and a classifier that reads them breaks
  # when the encoder computes less exactly (bfloat16, a GPU's TF32). On the
  # cpu model the 4 LayerNorm'ed blocks' constant directions sit near 1e-16
  # of the largest eigenvalue and the next above 1e-7: anything in between
  # drops those 4 and no more; 1e-5 dropped 279 and cost 2 points of LP
  # (benchmarks/RESULTS.md, issue 37).
  variance_floor: float = 1e-8
  # The k-NN classifier's bank (the first N train embeddings, saved with the
  # exported model so TFMA scores its predictions): 50,000 x 640 float16 is
  # 64 MB; a larger train split is measured against its first N.
  knn_bank_examples: int = 50_000
  # Data laid out in spans: how many of the newest spans the probe (and its
  # k-NN bank) learns from, as pretrain.span_window (0: all).
  span_window: int = 0

  def __post_init__(self):
    if self.span_window < 0:
      raise ValueError(f"probe.span_window must be 0 (every span) or more, got {self.span_window}")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
  """How to run, not what to learn."""

  # "auto" picks per machine (precision.resolve_precision): mixed_bfloat16 on
  # TPU and on CPUs with native bf16, mixed_float16 on GPU, else float32.
  precision: str = "float32"
  strategy: str = "default"  # default | mirrored | multi_worker | tpu
  jit_compile: bool = False
  # > 1 (with jit_compile): the MAE step's gradients as that many XLA programs
  # on equal micro-batches, run side by side (MaskedAutoencoder.train_step).
  xla_splits: int = 1
  seed: int = 0
  log_every_steps: int = 0  # 0: per-epoch log lines only

  def __post_init__(self):
    if self.precision not in PRECISIONS:
      raise ValueError(
          f"Unknown runtime.precision {self.precision!r}; expected one of {list(PRECISIONS)}"
      )


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
  """The Evaluator's gate on the linear probe's test accuracy."""

  min_accuracy: float = 0.45
  # Largest allowed drop against the model blessed before (none: no check).
  max_accuracy_drop: float = 0.01


DRIFT_ACTIONS = ("stop", "warn")


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
  """What the AnomaliesGate does when a span drifted from the previous one
  past the schema's drift comparators: stop the run (as for any anomaly),
  or warn and go on. Schema anomalies always stop it."""

  on_drift: str = "stop"

  def __post_init__(self):
    if self.on_drift not in DRIFT_ACTIONS:
      raise ValueError(
          f"validation.on_drift must be one of {list(DRIFT_ACTIONS)}, got {self.on_drift!r}"
      )


SEARCH_KINDS = ("auto", "exact", "scann", "faiss_hnsw")
REORDER_DTYPES = ("float32", "bfloat16", "int8")  # ScaNN re-scoring


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """The nearest-neighbour index over the corpus (models/search_index.py)
  and its gate: recall@k against exact cosine search on held-out queries."""

  kind: str = "auto"  # auto: exact below `exact_below` vectors, else scann
  exact_below: int = 20_000  # brute force is under ~2 ms a query there on 2 cores
  k: int = 10
  min_recall: float = 0.95  # blessed at recall@k >= this
  # Held-out queries (the test split's first): the index is tuned on the
  # first `tune_queries` and scored (and blessed) on the next `eval_queries`,
  # so the recall that blesses it is not the one it was tuned to reach.
  tune_queries: int = 1_000
  eval_queries: int = 1_000
  # ScaNN: partitions (0: about sqrt(N)), and the candidates re-scored
  # exactly; how many partitions a query searches is tuned at build time, the
  # fewest that reach min_recall on the held-out queries.
  num_leaves: int = 0
  reorder: int = 100
  # What the candidates are re-scored from: bfloat16 keeps float32's recall
  # in 5/8 of its memory (scores within ~5e-4 of the exact cosines); int8 in
  # 3/8, about 0.01 of recall lower (benchmarks/RESULTS.md).
  reorder_dtype: str = "bfloat16"
  # The corpus also in Vertex AI Vector Search's input format (JSON lines;
  # models/vector_search.py): on by default on Vertex AI.
  vector_search_json: bool = False
  # TensorBoard's Embedding Projector of each pushed version: at most this
  # many of its vectors, drawn at random, with their id, class and span and
  # a sprite of their thumbnails (models/projector.py). 0: none.
  projector_points: int = 10_000
  # Near-duplicate search's projection of the embedding (models/near_duplicates.py,
  # fit by the probe Trainer): `duplicate_dims` directions (0: none, cosine on
  # the embedding itself) fit on the first `duplicate_fit_images` train images
  # and their altered copies; its threshold flags at most `duplicate_max_fp`
  # of a corpus of 2,000 images, the median over `duplicate_calibration_draws`
  # corpora drawn from the other train images (benchmarks/RESULTS.md, issue 37).
  duplicate_dims: int = 96
  duplicate_fit_images: int = 5_000
  duplicate_calibration_draws: int = 25
  duplicate_max_fp: float = 0.01
  duplicate_shrinkage: float = 1e-3
  # A JPEG of each corpus image at most this many px on its longer side, in
  # a store the index carries (models/thumbnails.py; never enlarged:
  # CIFAR-10's stay 32 px, ~1 KB each, ~50 MB per 50,000 images), so that
  # the search page shows results as pictures (the server's thumbnails route).
  # 0: no store, for corpora too large to carry one: the page shows ids only.
  thumbnail_px: int = 64

  def __post_init__(self):
    if self.thumbnail_px < 0:
      raise ValueError(f"search.thumbnail_px must be >= 0 (0: none); got {self.thumbnail_px}")
    if self.duplicate_dims < 0 or self.duplicate_fit_images < 4:
      raise ValueError(
          "search.duplicate_dims must be >= 0 and search.duplicate_fit_images >= 4; "
          f"got {self.duplicate_dims}, {self.duplicate_fit_images}"
      )
    if not 0.0 <= self.duplicate_max_fp < 1.0 or self.duplicate_calibration_draws < 1:
      raise ValueError(
          "search.duplicate_max_fp must be in [0, 1) and "
          "search.duplicate_calibration_draws >= 1; "
          f"got {self.duplicate_max_fp}, {self.duplicate_calibration_draws}"
      )
    if self.kind not in SEARCH_KINDS:
      raise ValueError(f"Unknown search.kind {self.kind!r}; expected one of {list(SEARCH_KINDS)}")
    if self.reorder_dtype not in REORDER_DTYPES:
      raise ValueError(
          f"Unknown search.reorder_dtype {self.reorder_dtype!r}; expected "
          f"one of {list(REORDER_DTYPES)}"
      )
    if self.projector_points < 0:
      raise ValueError(
          f"search.projector_points must be >= 0 (0: no projector); got {self.projector_points}"
      )


# The DirectRunner in one process: on 2 cores the multi-process mode costs
# more in pickling than it gains, and in-process runs show errors with their
# traceback. Vertex AI replaces these with Dataflow's (pipeline/configs.py).
LOCAL_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")


@dataclasses.dataclass(frozen=True)
class BeamConfig:
  """Arguments of the Beam pipelines of ExampleGen, StatisticsGen,
  Transform and the Evaluator."""

  pipeline_args: Tuple[str, ...] = LOCAL_BEAM_ARGS

  def __post_init__(self):  # JSON gives a list; keep the config hashable
    object.__setattr__(self, "pipeline_args", tuple(self.pipeline_args))


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A complete run: the profile's name and one config per section
  (`SECTIONS`), checked together when built (ValueError)."""

  profile: str = "cpu"
  model: ModelConfig = ModelConfig()
  pretrain: PretrainConfig = PretrainConfig()
  probe: ProbeConfig = ProbeConfig()
  runtime: RuntimeConfig = RuntimeConfig()
  data: DataConfig = DataConfig()
  validation: ValidationConfig = ValidationConfig()
  evaluation: EvaluationConfig = EvaluationConfig()
  search: SearchConfig = SearchConfig()
  beam: BeamConfig = BeamConfig()

  def __post_init__(self):
    blocks = self.probe.feature_blocks
    if blocks is not None and not 1 <= blocks <= self.model.depth:
      raise ValueError(
          f"probe.feature_blocks must be in [1, model.depth "
          f"{self.model.depth}] or null (every block); got {blocks}"
      )
    if not 1 <= self.model.contrastive_blocks <= self.model.depth:
      raise ValueError(
          f"model.contrastive_blocks must be in [1, model.depth "
          f"{self.model.depth}]; got {self.model.contrastive_blocks}"
      )
    p = self.pretrain
    if (p.local_views or self.model.variance_covariance_weight) and not (
        self.model.contrastive_weight
    ):
      raise ValueError(
          "pretrain.local_views and model.variance_covariance_weight need "
          "model.contrastive_weight > 0 (two global views and the projector)"
      )
    size_ok = 0 < p.local_view_size <= self.data.image_size
    if p.local_views and (p.local_view_size % self.model.patch_size or not size_ok):
      raise ValueError(
          f"pretrain.local_view_size {p.local_view_size} must be a multiple of "
          f"model.patch_size {self.model.patch_size} and at most data.image_size "
          f"{self.data.image_size}"
      )
    if not 0.0 < p.local_crop_min_scale <= p.local_crop_max_scale <= 1.0:
      raise ValueError(
          "pretrain.local_crop_min_scale <= local_crop_max_scale must lie in (0, 1]; got "
          f"{p.local_crop_min_scale}, {p.local_crop_max_scale}"
      )
    if not 0.0 <= p.downsample_prob <= 1.0 or not 0.0 < p.downsample_min_scale <= 0.75:
      raise ValueError(
          f"pretrain.downsample_prob must be in [0, 1] and downsample_min_scale in (0, 0.75]; "
          f"got {p.downsample_prob}, {p.downsample_min_scale}"
      )
    if not 0.0 <= self.pretrain.hue_jitter <= 0.5:
      raise ValueError(
          f"pretrain.hue_jitter is a fraction of a turn in [0, 0.5]; "
          f"got {self.pretrain.hue_jitter}"
      )
    size, patch = self.data.image_size, self.model.patch_size
    if size < patch or size % patch:
      raise ValueError(
          f"data.image_size {size} must be a positive multiple of model.patch_size {patch}"
      )
    if self.model.image_size != size:
      raise ValueError(
          f"model.image_size {self.model.image_size} differs from "
          f"data.image_size {size}: set data.image_size, the model "
          "follows it"
      )

  @property
  def embedding_dim(self) -> int:
    """The served embedding's size: embed_dim per probed block."""
    return self.model.embed_dim * (self.probe.feature_blocks or self.model.depth)

  def to_dict(self) -> Dict[str, Any]:
    """Every section as a plain dict (`dataclasses.asdict`); `from_dict` reads it."""
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    """`to_dict` as JSON, keys sorted."""
    return json.dumps(self.to_dict(), sort_keys=True)

  def trainer_config(self) -> Dict[str, Any]:
    """The sections the Trainers use, as a plain dict for custom_config."""
    return {k: v for k, v in self.to_dict().items() if k in TRAINER_SECTIONS}

  @classmethod
  def from_dict(cls, d: Dict[str, Any]) -> "RunConfig":
    """The RunConfig of `d` (as `to_dict` gives it): missing sections and
    fields take their defaults, a missing profile is "custom"; raises
    ValueError naming unknown sections or fields."""
    unknown = sorted(set(d) - {"profile"} - set(SECTIONS))
    if unknown:
      raise ValueError(f"Unknown config section(s) {unknown}; expected some of {sorted(SECTIONS)}")
    return cls(
        profile=d.get("profile", "custom"),
        **{name: _build(section, d.get(name, {})) for name, section in SECTIONS.items()},
    )


SECTIONS = {
    "model": ModelConfig,
    "pretrain": PretrainConfig,
    "probe": ProbeConfig,
    "runtime": RuntimeConfig,
    "data": DataConfig,
    "validation": ValidationConfig,
    "evaluation": EvaluationConfig,
    "search": SearchConfig,
    "beam": BeamConfig,
}
TRAINER_SECTIONS = ("profile", "model", "pretrain", "probe", "runtime", "data")


def _build(cls, values: Dict[str, Any]):
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ValueError(f"Unknown {cls.__name__} field(s) {unknown}; expected some of {sorted(names)}")
  return cls(**values)


_CPU = RunConfig(
    profile="cpu",
    # base_lr 2.4e-3 is the official absolute lr 1.5e-4 x 4096/256 kept at
    # batch 256: it beat 6e-4 on CIFAR-10 (benchmarks/RESULTS.md). 6
    # epochs of two views: the pipeline's wall time of 14 pure-MAE epochs,
    # the new k-NN work included.
    # A new span's warm start: a third of the epochs (benchmarks/continuous.py).
    pretrain=PretrainConfig(
        epochs=6, batch_size=256, base_lr=2.4e-3, warmup_epochs=1.0, warm_start_epochs=2
    ),
    probe=ProbeConfig(epochs=60),
    # 2 XLA programs per step keep both cores busy. bf16 only where the
    # CPU has it natively: a CPU that emulates it gains nothing
    # (precision.resolve_precision).
    runtime=RuntimeConfig(precision="auto", jit_compile=True, xla_splits=2),
    evaluation=EvaluationConfig(min_accuracy=0.45, max_accuracy_drop=0.01),
)


PROFILES: Dict[str, RunConfig] = {
    "smoke": RunConfig(
        profile="smoke",
        model=ModelConfig(
            embed_dim=32,
            depth=2,
            num_heads=2,
            decoder_embed_dim=32,
            decoder_depth=1,
            decoder_num_heads=2,
        ),
        pretrain=PretrainConfig(
            epochs=2, batch_size=32, base_lr=1e-3, warmup_epochs=0.5, warm_start_epochs=1
        ),
        probe=ProbeConfig(epochs=5, batch_size=32, warmup_epochs=0.0),
        runtime=RuntimeConfig(precision="float32"),
        # A few hundred images for seconds: the gate only rules out a
        # broken model.
        evaluation=EvaluationConfig(min_accuracy=0.05, max_accuracy_drop=0.5),
        # Every output of the search steps, the cloud's included.
        search=SearchConfig(vector_search_json=True),
    ),
    "cpu": _CPU,
    # The same recipe, 3.3x the epochs: a `make pipeline` of about 30
    # minutes on the faster 2-core hosts (benchmarks/RESULTS.md, issue 26).
    "cpu-long": dataclasses.replace(
        _CPU,
        profile="cpu-long",
        pretrain=dataclasses.replace(
            _CPU.pretrain, epochs=20, warmup_epochs=2.0, warm_start_epochs=6
        ),
    ),
    "full": RunConfig(
        profile="full",
        pretrain=PretrainConfig(
            epochs=200, batch_size=256, base_lr=1.5e-4 * 4, warmup_epochs=10.0, warm_start_epochs=60
        ),
        probe=ProbeConfig(epochs=90),
        runtime=RuntimeConfig(precision="auto"),
        evaluation=EvaluationConfig(min_accuracy=0.60, max_accuracy_drop=0.005),
    ),
}


def get_profile(name: str, overrides: Optional[Dict[str, Dict[str, Any]]] = None) -> RunConfig:
  """Returns profile `name`, with `overrides` {section: {field: value}} applied."""
  if name not in PROFILES:
    raise ValueError(f"Unknown profile {name!r}; known profiles: {sorted(PROFILES)}")
  d = PROFILES[name].to_dict()
  for section, values in (overrides or {}).items():
    if section not in SECTIONS or not isinstance(values, dict):
      raise ValueError(
          f"Unknown config section {section!r}; expected one of "
          f"{sorted(SECTIONS)} with a {{field: value}} object"
      )
    d[section].update(values)
  if "image_size" in (overrides or {}).get("model", {}):
    raise ValueError(
        "model.image_size follows data.image_size: override "
        '{"data": {"image_size": ...}} instead'
    )
  d["model"]["image_size"] = d["data"]["image_size"]
  return RunConfig.from_dict(d)


# Keys of the Trainers' custom_config.
RUN_CONFIG_KEY = "run_config"
CHECKPOINT_ROOT_KEY = "checkpoint_root"


def from_custom_config(custom_config: Optional[Dict[str, Any]]) -> RunConfig:
  """The RunConfig a Trainer received from the pipeline."""
  if not custom_config or RUN_CONFIG_KEY not in custom_config:
    raise ValueError(
        f"Trainer custom_config must hold {RUN_CONFIG_KEY!r} "
        f"(got keys {sorted(custom_config or {})})"
    )
  return RunConfig.from_dict(custom_config[RUN_CONFIG_KEY])
