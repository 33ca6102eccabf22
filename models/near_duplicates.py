"""The duplicate projection: a linear map of the served embedding under which
an image and its altered copies (re-compressed, rescaled, cropped by a few
pixels) score close to 1 and different images do not.

The served embedding is made for classes: whitened, every direction counts,
including the ones a thumbnail or a 3 px crop moves most. Near-duplicate
search wants the opposite weighting. The projection is learned whitening
from matching pairs (Mikolajczyk & Matas 2007; Radenovic et al., "Fine-tuning
CNN image retrieval with no human annotation", 2018), with the pairs made
here instead of mined: each fit image against its copies under
`FIT_ALTERATIONS`, drawn from ranges wider than any one benchmark setting.

  1. C_S, the covariance of (copy - original) over all pairs: how copies move.
  2. P1 = C_S^(-1/2), shrunk by `shrinkage` x its mean eigenvalue: directions
     copies barely move are scaled up, the ones they move a lot down.
  3. The `dims` leading principal directions of the originals under P1:
     the most variance between images per unit of variance within copies.

`calibrate_threshold` then picks the cosine similarity that at most
`max_false_positives` of a corpus of held-out images reach with a different
image of it. `models.engine_probe.fit_duplicate_projection` fits both
on the train split and saves them with the served model;
`serving.duplicates` searches on them.
"""

import io
from typing import List, Sequence

import numpy as np

from models.evaluation import l2_normalise

# One entry per copy made of each fit image: the crop appears three times
# because it is the alteration with most ways to happen (side, width, a second
# side) and the one the embedding moves most with.
FIT_ALTERATIONS = ("jpeg", "downscale", "upscale", "crop", "crop", "crop")
JPEG_QUALITY = (30, 95)  # drawn uniformly, both ends included
DOWNSCALE = (0.35, 0.7)  # x the side, drawn uniformly
UPSCALE = (1.5, 3.0)
CROP_PIXELS = (1, 6)  # off one side; half the crops lose 1-3 px off a second side too
RESAMPLING = ("bilinear", "bicubic", "lanczos", "box")  # PIL filters, drawn per copy
# The false-positive share a threshold is calibrated for is that of a corpus
# of this many images (it grows with the corpus: more images, closer pairs);
# benchmarks/near_duplicates.py measures on as many.
CALIBRATION_CORPUS = 2_000


def encode(image: np.ndarray, fmt: str = "PNG", **options) -> bytes:
  """[H, W, 3] uint8 RGB image -> the bytes of an image file in `fmt` (a PIL
  format name; `options` are PIL's, e.g. quality=70 for JPEG)."""
  from PIL import Image

  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8), mode="RGB").save(buf, format=fmt, **options)
  return buf.getvalue()


def _crop(image: np.ndarray, pixels: int, side: int) -> np.ndarray:
  """`image` without `pixels` rows or columns off one side (top, bottom, left, right)."""
  return [image[pixels:], image[:-pixels], image[:, pixels:], image[:, :-pixels]][side]


def alter(image: np.ndarray, kind: str, rng: np.random.Generator) -> bytes:
  """The file of a copy of `image` [H, W, 3] uint8 under alteration `kind`
  (one of FIT_ALTERATIONS), its settings drawn from `rng`."""
  from PIL import Image

  if kind == "jpeg":
    return encode(image, "JPEG", quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
  if kind in ("downscale", "upscale"):
    scale = rng.uniform(*(DOWNSCALE if kind == "downscale" else UPSCALE))
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resampling = getattr(Image.Resampling, RESAMPLING[int(rng.integers(len(RESAMPLING)))].upper())
    return encode(np.asarray(Image.fromarray(image).resize(size, resampling)))
  if kind == "crop":
    copy = _crop(image, int(rng.integers(CROP_PIXELS[0], CROP_PIXELS[1] + 1)), int(rng.integers(4)))
    if rng.random() < 0.5:
      copy = _crop(copy, int(rng.integers(1, 4)), int(rng.integers(4)))
    return encode(np.ascontiguousarray(copy))
  raise ValueError(f"unknown alteration {kind!r}; expected one of {sorted(set(FIT_ALTERATIONS))}")


def altered_copies(images: np.ndarray, seed: int) -> List[List[bytes]]:
  """[len(FIT_ALTERATIONS)] lists of the files of each image's copy under
  that alteration; draws seeded per image and copy."""
  return [
      [alter(image, kind, np.random.default_rng([seed, k, i])) for i, image in enumerate(images)]
      for k, kind in enumerate(FIT_ALTERATIONS)
  ]


def fit_projection(
    originals: np.ndarray, copies: np.ndarray, dims: int, shrinkage: float = 1e-3
) -> np.ndarray:
  """Learned whitening from matching pairs: originals [N, D] and copies
  [A, N, D] (copy a of original i at [a, i]) -> the projection [D, dims]
  float32 (columns best first). `dims` is capped at D."""
  originals = originals.astype(np.float64)
  differences = (copies.astype(np.float64) - originals[None]).reshape(-1, originals.shape[1])
  within = differences.T @ differences / len(differences)  # C_S [D, D]
  eigenvalues, eigenvectors = np.linalg.eigh(within)
  eigenvalues = np.maximum(eigenvalues, 0.0) + shrinkage * np.trace(within) / len(within) + 1e-12
  inverse_root = eigenvectors / np.sqrt(eigenvalues)  # P1 = C_S^(-1/2) [D, D]
  between = np.cov(originals @ inverse_root, rowvar=False)  # the images' spread under P1
  _, directions = np.linalg.eigh(between)  # ascending
  return (inverse_root @ directions[:, ::-1][:, : min(dims, len(within))]).astype(np.float32)


def _lowest_flagging_at_most(vectors: np.ndarray, max_false_positives: float) -> float:
  """The lowest similarity on a 1e-3 grid that at most `max_false_positives`
  of the rows of `vectors` reach with another row."""
  unit = l2_normalise(np.asarray(vectors, np.float64))
  similarities = unit @ unit.T
  np.fill_diagonal(similarities, -np.inf)
  nearest = np.sort(similarities.max(axis=1))[::-1]  # each image's most similar other
  flagged = int(np.floor(max_false_positives * len(nearest)))  # allowed at or above
  # Just above the (flagged + 1)-th highest: at most `flagged` rows reach it.
  return float(min(1.0, np.ceil((nearest[flagged] + 1e-9) * 1000) / 1000))


def calibrate_threshold(
    vectors: np.ndarray,
    max_false_positives: float,
    corpus: int = CALIBRATION_CORPUS,
    draws: int = 9,
    seed: int = 0,
) -> float:
  """The lowest cosine similarity (on a 1e-3 grid) at which at most
  `max_false_positives` of a corpus of `corpus` different images have
  another image of it at or above: flagged there, at most that share of
  such a corpus has a pair that is not a duplicate. `vectors` [N, k] are
  the held-out images: with more than `corpus`, the median over `draws`
  random corpora of them (one corpus's tail is a handful of images, so its
  threshold alone wanders by about 0.01); with fewer, all of them."""
  if len(vectors) < 2:
    raise ValueError(f"calibrating a threshold takes at least 2 images, got {len(vectors)}")
  if len(vectors) <= corpus:
    return _lowest_flagging_at_most(vectors, max_false_positives)
  rng = np.random.default_rng(seed)
  return float(
      np.median(
          [
              _lowest_flagging_at_most(
                  vectors[rng.choice(len(vectors), corpus, replace=False)], max_false_positives
              )
              for _ in range(draws)
          ]
      )
  )


def project(embeddings: np.ndarray, projection: Sequence) -> np.ndarray:
  """[N, D] embeddings -> [N, k] duplicate vectors (float32)."""
  return (np.asarray(embeddings, np.float32) @ np.asarray(projection, np.float32)).astype(
      np.float32
  )
