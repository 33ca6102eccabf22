"""Input pipelines shared by the pretraining and probe engines.

Raw tf.Examples are parsed and pushed through the Transform graph. The probe
streams them (`transformed_batches`: each image is embedded once). MAE
pretraining draws shuffled, augmented batches many times over
(`TrainingImages`): from the split held in memory when it fits the memory
budget (CIFAR-10 train is 586 MB as float32), otherwise streamed from the
example files through a shuffle buffer, so memory does not grow with the
data. Augmentation (random-resized-crop + flip, optionally colour jitter,
thumbnail resampling, two views of each image and small local views) is
vectorised over the batch with a different crop per image. Pretraining
reads only the image, so it also takes the examples of an unlabeled split.
"""

import dataclasses
import logging
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from models.examples import COMPRESSION, example_files, serialized_examples
from models import names, run_log
from models.names import IMAGE_KEY, LABEL_KEY
from models.preprocessing import decode_images

_READ_BATCH = 1024
# A multi-crop pretraining batch's parts (`Augmentation`).
VIEWS_KEY = "views"
LOCAL_VIEWS_KEY = "local_views"


def _transform_fn(tf_transform_output: tft.TFTransformOutput, labeled: bool = True):
  """Serialized tf.Examples [B] -> (images [B, S, S, 3] float32, labels [B] int64).

  Unlabeled (`labeled=False`, what pretraining reads: examples of an
  unlabeled split have only the image), every label is -1."""
  raw_spec = tf_transform_output.raw_feature_spec()
  feature_spec = {k: raw_spec[k] for k in ((IMAGE_KEY, LABEL_KEY) if labeled else (IMAGE_KEY,))}
  tft_layer = tf_transform_output.transform_features_layer()

  @tf.function
  def transform(serialized):
    transformed = tft_layer(tf.io.parse_example(serialized, feature_spec))
    images = transformed[IMAGE_KEY]
    if not labeled:
      return images, tf.fill(tf.shape(images)[:1], tf.constant(-1, tf.int64))
    return images, tf.cast(transformed[LABEL_KEY], tf.int64)

  return transform


def transformed_batches(
    file_patterns: List[str],
    tf_transform_output: tft.TFTransformOutput,
    max_examples: Optional[int] = None,
    batch_size: int = _READ_BATCH,
    labeled: bool = True,
) -> tf.data.Dataset:
  """Gzipped tf.Example files through the Transform graph, lazily, in file
  order: batches of (images [B, S, S, 3] float32 normalised, labels [B] int64;
  -1 when not `labeled`).
  """
  return (
      serialized_examples(file_patterns, max_examples)
      .batch(batch_size)
      .map(_transform_fn(tf_transform_output, labeled), num_parallel_calls=tf.data.AUTOTUNE)
      .prefetch(2)
  )


def load_transformed(
    file_patterns: List[str],
    tf_transform_output: tft.TFTransformOutput,
    max_examples: Optional[int] = None,
    labeled: bool = True,
) -> Tuple[np.ndarray, np.ndarray]:
  """`transformed_batches` held in memory: images [N, S, S, 3] float32
  (normalised), labels [N] int64."""
  images, labels = [], []
  for img, lab in transformed_batches(
      file_patterns, tf_transform_output, max_examples, labeled=labeled
  ):
    images.append(img.numpy())
    labels.append(lab.numpy())
  if not images:
    raise ValueError(f"No examples in {file_patterns}")
  images, labels = np.concatenate(images), np.concatenate(labels)
  logging.info("Loaded %d transformed examples from %s", len(labels), file_patterns)
  return images, labels


def channel_statistics(tf_transform_output: tft.TFTransformOutput) -> Tuple[np.ndarray, np.ndarray]:
  """(mean [3], std [3]) of the train pixels in [0, 1] that the Transform
  graph standardises with: read back by transforming a black and a white
  image (x -> (x - mean) / std maps 0 to -mean/std and 1 to (1 - mean)/std)."""
  black, white = (tf.io.encode_png(tf.fill([1, 1, 3], tf.constant(v, tf.uint8))) for v in (0, 255))
  images = tf_transform_output.transform_features_layer()(
      {IMAGE_KEY: tf.stack([black, white])[:, None]}
  )[IMAGE_KEY].numpy()
  low, high = images[0, 0, 0].astype(np.float64), images[1, 0, 0].astype(np.float64)
  std = 1.0 / (high - low)
  return -low * std, std


def load_raw_images(file_patterns: List[str], feature_spec, count: int, size: int) -> np.ndarray:
  """The first `count` images decoded to [count, size, size, 3] float32 in
  [0, 1] (what the Transform graph starts from): for pictures, and the
  images the near-duplicate projection is fit on."""
  serialized = tf.stack(list(serialized_examples(file_patterns, count)))
  return decode_images(tf.io.parse_example(serialized, feature_spec)[IMAGE_KEY], size).numpy()


def _uniforms(seed: tf.Tensor, count: int, shape, low=0.0, high=1.0):
  """`count` independent stateless uniform tensors of `shape` from one seed [2]."""
  return [
      tf.random.stateless_uniform(shape, s, low, high)
      for s in tf.unstack(tf.random.experimental.stateless_split(seed, count))
  ]


def random_resized_crop(
    images: tf.Tensor,
    min_scale: float,
    seed: tf.Tensor,
    ratio=(3 / 4, 4 / 3),
    max_scale: float = 1.0,
    size: Optional[int] = None,
) -> tf.Tensor:
  """Per-image RandomResizedCrop (area in [min_scale, max_scale]) + horizontal
  flip, a function of `seed` ([2] int; stateless, so a batch can be made again).

  [B, S, S, C] -> [B, size, size, C] (size: S when None); boxes are sampled
  in normalised coordinates.
  """
  b = tf.shape(images)[0]
  area, log_ratio, y, x, flip = _uniforms(seed, 5, [b])
  area = min_scale + (max_scale - min_scale) * area
  aspect = tf.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * log_ratio)
  w = tf.minimum(tf.sqrt(area * aspect), 1.0)
  h = tf.minimum(tf.sqrt(area / aspect), 1.0)
  y0, x0 = y * (1.0 - h), x * (1.0 - w)
  boxes = tf.stack([y0, x0, y0 + h, x0 + w], axis=1)  # [B, 4]
  out_size = [size, size] if size else images.shape[1:3].as_list()
  crops = tf.image.crop_and_resize(images, boxes, tf.range(b), out_size)
  return tf.where(flip[:, None, None, None] < 0.5, tf.reverse(crops, axis=[2]), crops)


def hue_rotation(turns: tf.Tensor) -> tf.Tensor:
  """[B] fractions of a turn -> [B, 3, 3]: rotations of RGB about the grey
  axis (1, 1, 1), which turn the hue and keep grey and brightness."""
  angle = 2.0 * math.pi * tf.reshape(turns, [-1, 1, 1])
  k = np.full([3, 1], 1 / math.sqrt(3), np.float32)
  cross = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], np.float32) / math.sqrt(3)
  return (
      tf.cos(angle) * np.eye(3, dtype=np.float32)
      + tf.sin(angle) * cross
      + (1 - tf.cos(angle)) * (k @ k.T)
  )  # Rodrigues


def color_jitter(
    images: tf.Tensor,
    strength: float,
    seed: tf.Tensor,
    apply_prob: float = 0.8,
    grayscale_prob: float = 0.2,
    hue: float = 0.0,
) -> tf.Tensor:
  """Per-image colour distortion (SimCLR's, in the Transform'ed space):
  with `apply_prob`, contrast and saturation scaled by 1 +- strength,
  brightness shifted by +- strength (in units of the channels' std) and the
  hue turned by +- `hue` of a turn; then grayscale with `grayscale_prob`.
  [B, S, S, 3] -> [B, S, S, 3], a function of `seed` ([2] int).

  The images are standardised per channel, and CIFAR-like data has about
  equal channel stds, so an affine change per image is a brightness and
  contrast change of the pixels, the channel mean is their grey, and a
  rotation about the grey axis is a change of hue."""
  b = tf.shape(images)[0]
  saturation, contrast, brightness, apply, grayscale, turn = _uniforms(seed, 6, [b, 1, 1, 1])
  if hue:
    images_hued = tf.einsum("bhwc,bdc->bhwd", images, hue_rotation(hue * (2 * turn - 1)))
  else:
    images_hued = images
  gray = tf.reduce_mean(images_hued, axis=-1, keepdims=True)  # [B, S, S, 1]
  saturated = gray + (1 + strength * (2 * saturation - 1)) * (images_hued - gray)
  mean = tf.reduce_mean(saturated, axis=[1, 2, 3], keepdims=True)
  jittered = (
      mean
      + (1 + strength * (2 * contrast - 1)) * (saturated - mean)
      + strength * (2 * brightness - 1)
  )
  out = tf.where(apply < apply_prob, jittered, images)
  out_gray = tf.tile(tf.reduce_mean(out, axis=-1, keepdims=True), [1, 1, 1, 3])
  return tf.where(grayscale < grayscale_prob, out_gray, out)


def random_downsample(
    images: tf.Tensor, prob: float, min_scale: float, seed: tf.Tensor, max_scale: float = 0.75
) -> tf.Tensor:
  """With probability `prob` per image, resized down to a side of f x S
  (area averaging; f uniform in [min_scale, max_scale], one per batch) and
  back up to S (bilinear), as a thumbnail scaled to the served size.
  [B, S, S, C] -> [B, S, S, C], a function of `seed` ([2] int)."""
  size = images.shape[1]
  pick_seed, scale_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  pick = tf.random.stateless_uniform([tf.shape(images)[0], 1, 1, 1], pick_seed)
  scale = tf.random.stateless_uniform([], scale_seed, min_scale, max_scale)
  small = tf.maximum(tf.cast(tf.round(scale * size), tf.int32), 1)
  down = tf.image.resize(images, tf.stack([small, small]), method="area")
  thumbnails = tf.image.resize(down, [size, size], method="bilinear")
  return tf.where(pick < prob, thumbnails, images)


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """What a pretraining batch is made of: `views` augmented views of each
  image (2 for a contrastive term: [B, 2, S, S, C]; else [B, S, S, C]), each
  a random-resized crop + flip, then a thumbnail's down-and-up sampling with
  `downsample_prob`, then colour jitter when `color_jitter` > 0. With
  `local_views` > 0 the batch is a dict: {"views": [B, 2, S, S, C],
  "local_views": [B, V, s, s, C]}, small crops (area in `local_crop_scale`)
  at side s = `local_view_size`, flipped and jittered the same way.
  Stateless: the same images and `seed` give the same batch."""

  crop_min_scale: float = 0.2
  color_jitter: float = 0.0
  views: int = 1
  hue_jitter: float = 0.0
  local_views: int = 0
  local_view_size: int = 16
  local_crop_scale: Tuple[float, float] = (0.05, 0.4)
  downsample_prob: float = 0.0
  downsample_min_scale: float = 0.35

  def __post_init__(self):
    if self.views not in (1, 2):
      raise ValueError(f"Augmentation.views must be 1 or 2, got {self.views}")
    if self.local_views and self.views != 2:
      raise ValueError("Augmentation.local_views need two global views")

  def view(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One augmented view, [B, S, S, C] -> [B, S, S, C]: crop + flip, a
    thumbnail's resampling with `downsample_prob`, then colour jitter when
    `color_jitter` > 0."""
    crop_seed, jitter_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    out = random_resized_crop(images, self.crop_min_scale, crop_seed)
    if self.downsample_prob:
      down_seed = tf.random.experimental.stateless_fold_in(seed, 1)
      out = random_downsample(out, self.downsample_prob, self.downsample_min_scale, down_seed)
    return self._jitter(out, jitter_seed)

  def local_view(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One local view, [B, S, S, C] -> [B, s, s, C]: a small crop + flip at
    side `local_view_size`, then colour jitter."""
    crop_seed, jitter_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    low, high = self.local_crop_scale
    out = random_resized_crop(images, low, crop_seed, max_scale=high, size=self.local_view_size)
    return self._jitter(out, jitter_seed)

  def _jitter(self, images, seed):
    if not self.color_jitter:
      return images
    return color_jitter(images, self.color_jitter, seed, hue=self.hue_jitter)

  def __call__(self, images: tf.Tensor, seed: tf.Tensor):
    """[B, S, S, C] -> one view [B, S, S, C], two [B, 2, S, S, C] (`views`),
    or with local views the dict of the class docstring."""
    if self.views == 1:
      return self.view(images, seed)
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 2 + self.local_views))
    views = tf.stack([self.view(images, seeds[0]), self.view(images, seeds[1])], axis=1)
    if not self.local_views:
      return views
    local = tf.stack([self.local_view(images, s) for s in seeds[2:]], axis=1)
    return {VIEWS_KEY: views, LOCAL_VIEWS_KEY: local}


def pretrain_dataset(
    images: np.ndarray, batch_size: int, augment: Augmentation, seed: int = 0, first_step: int = 0
) -> tf.data.Dataset:
  """Endless shuffled, augmented batches of images (no labels). Batch t is
  a function of (`seed`, t): epoch e is a permutation seeded by (seed, e),
  the augmentation is seeded by (seed, t), so a run resumed at `first_step`
  sees exactly the batches an uninterrupted run saw from there."""
  n = len(images)
  if n < batch_size:
    raise ValueError(f"Batch size {batch_size} is larger than the {n} training examples")
  steps_per_epoch = n // batch_size
  pool = tf.constant(images)

  def batch(step):
    epoch, position = step // steps_per_epoch, step % steps_per_epoch
    order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=[seed, epoch])
    idx = order[position * batch_size : (position + 1) * batch_size]
    return augment(tf.gather(pool, idx), seed=tf.stack([tf.cast(seed, tf.int64), step]))

  return (
      tf.data.Dataset.range(first_step, 2**62)
      .map(batch, num_parallel_calls=tf.data.AUTOTUNE)
      .prefetch(tf.data.AUTOTUNE)
  )


def streamed_pretrain_dataset(
    file_patterns: Sequence[str],
    tf_transform_output: tft.TFTransformOutput,
    batch_size: int,
    augment: Optional[Augmentation],
    shuffle_buffer: int,
    seed: int = 0,
    max_examples: Optional[int] = None,
) -> tf.data.Dataset:
  """Endless shuffled, augmented batches streamed from the example files:
  files read in parallel, serialized examples shuffled through a buffer of
  `shuffle_buffer`, then decoded, Transform'ed and augmented in parallel.
  Memory is the buffer's, whatever the number of examples. Each epoch is a
  permutation of the examples (`augment=None` shows them unaugmented). The
  order is seeded but a resumed run starts it afresh: unlike the in-memory
  batches, not the uninterrupted run's batches."""
  files = example_files(list(file_patterns))
  transform = _transform_fn(tf_transform_output, labeled=False)

  def prepare(step, serialized):
    images = transform(serialized)[0]
    return augment(images, seed=tf.stack([tf.cast(seed, tf.int64), step])) if augment else images

  records = tf.data.Dataset.from_tensor_slices(files).interleave(
      lambda f: tf.data.TFRecordDataset(f, compression_type=COMPRESSION),
      cycle_length=min(len(files), 4),
      num_parallel_calls=tf.data.AUTOTUNE,
  )
  return (
      records.take(max_examples or -1)
      .shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
      .repeat()
      .batch(batch_size, drop_remainder=True)
      .enumerate()
      .map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
      .prefetch(tf.data.AUTOTUNE)
  )


def count_examples(file_patterns: Sequence[str], max_examples: Optional[int] = None) -> int:
  """The number of examples in the files (a pass that decodes nothing)."""
  ds = serialized_examples(list(file_patterns), max_examples)
  return int(ds.reduce(np.int64(0), lambda n, _: n + 1))


@dataclasses.dataclass
class TrainingImages:
  """The Transform'ed images MAE pretraining draws its batches from: held in
  memory (`images`), or streamed from `file_patterns` through the graph."""

  count: int
  images: Optional[np.ndarray] = None
  file_patterns: Sequence[str] = ()
  tf_transform_output: Optional[tft.TFTransformOutput] = None
  max_examples: Optional[int] = None
  shuffle_buffer: Optional[int] = None  # examples (streamed only)

  @classmethod
  def in_memory(cls, images: np.ndarray) -> "TrainingImages":
    """`images` [N, S, S, 3], held in memory."""
    return cls(count=len(images), images=images)

  @property
  def streamed(self) -> bool:
    """Whether the batches are streamed from the files (no images in memory)."""
    return self.images is None

  def batches(
      self, batch_size: int, augment: Augmentation, seed: int = 0, first_step: int = 0
  ) -> tf.data.Dataset:
    """Endless shuffled, augmented batches (in memory: from batch
    `first_step` of the seeded sequence)."""
    if not self.streamed:
      return pretrain_dataset(self.images, batch_size, augment, seed, first_step)
    return streamed_pretrain_dataset(
        self.file_patterns,
        self.tf_transform_output,
        batch_size,
        augment,
        self.shuffle_buffer,
        seed,
        self.max_examples,
    )


def training_images(
    file_patterns: List[str],
    tf_transform_output: tft.TFTransformOutput,
    memory_budget_mb: float,
    shuffle_buffer: int,
    max_examples: Optional[int] = None,
) -> TrainingImages:
  """The train split for pretraining: in memory when its Transform'ed images
  (float32) fit `memory_budget_mb`, streamed otherwise. Says which."""
  # The count decides the path (and the streamed epoch's length); counting
  # decompresses the files but decodes nothing (~1 s for CIFAR-10's train).
  files = example_files(file_patterns)
  count = count_examples(files, max_examples)
  if count == 0:
    raise ValueError(f"No examples in {file_patterns}")
  shape = tf_transform_output.transformed_feature_spec()[IMAGE_KEY].shape
  megabytes = count * int(np.prod(shape)) * 4 / 2**20
  if megabytes <= memory_budget_mb:
    images, _ = load_transformed(files, tf_transform_output, max_examples, labeled=False)
    source = TrainingImages.in_memory(images)
    how = "held in memory"
  else:
    source = TrainingImages(count, None, files, tf_transform_output, max_examples, shuffle_buffer)
    how = (
        f"streamed from {len(files)} example file(s) "
        f"through a shuffle buffer of {shuffle_buffer}"
    )
  message = (
      f"{count} training images ({megabytes:.0f} MB as float32, memory budget "
      f"{memory_budget_mb} MB): {how}"
  )
  run_log.log.info("[%s] %s", names.MAE_TRAINER, message)
  return source
