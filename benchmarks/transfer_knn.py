"""A second data set: k-NN on images the models never trained on, against raw pixels.

  python -m benchmarks.transfer_knn --shapes /tmp/shapes \
      --model-dir outputs/serving_model/mae-tfx [--model-dir <another> ...]
  python -m benchmarks.transfer_knn --digits /tmp/digits --model-dir ...
  python -m benchmarks.transfer_knn --images <root>/<label>/<image> --model-dir ...

`--shapes DIR` first generates (once; reused when DIR holds it) a labelled
set where colour and background say nothing about the class: six shapes
(disc, square, triangle, plus, ring, bar), 300 of each at 32 x 32, each at a
random size, position and angle, in a random colour on a random background
(a two-colour gradient with pixel noise), written as `<shape>/<index>.png`.
What separates the classes is form, which is what an embedding that "sees
objects, not colours" should follow.

`--digits DIR` writes (once) scikit-learn's bundled handwritten digits (1,797
images of 8 x 8, 10 classes; shipped with the package, nothing downloaded)
twice: `DIR/plain`, white on black and enlarged to 32 x 32, where raw
pixels are near perfect; and `DIR/coloured`, each digit at a random size
(16-28 px) and place in a random colour on a random colour with pixel noise,
where pixels say little and form says everything. Both are measured.

Each model embeds every image through its `serving_default` signature
(`serving.embed.embed_all`, as any caller would). The images split 80/20 by
a hash of their path (`models.image_files.hash_split`); the 20 % are
classified by the cosine k-NN (k = 20, `models.evaluation.evaluate_knn`)
among the 80 %. Raw pixels (the images flattened, cosine; and centred
per pixel, cosine) are the floor a useful embedding must clear.
"""

import argparse
import os
import sys
from typing import List

from models import run_log

if __name__ == "__main__":
  # Before TensorFlow is imported: its start-up lines go through the filter too.
  run_log.install()

# pylint: disable=wrong-import-position
import numpy as np

from benchmarks.host import host_line
from models import evaluation, image_files, names
from serving import embed
from serving.model_store import load_version, set_model_threads

SHAPES = ("disc", "square", "triangle", "plus", "ring", "bar")
SIZE = 32


def _polygon(cx, cy, radius, sides, angle):
  t = angle + 2 * np.pi * np.arange(sides) / sides
  return [(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in t]


def _bar(cx, cy, half_length, half_width, angle):
  """The corners of a rectangle centred at (cx, cy), its long side at `angle`."""
  d = np.array([np.cos(angle), np.sin(angle)]) * half_length
  w = np.array([-np.sin(angle), np.cos(angle)]) * half_width
  c = np.array([cx, cy])
  return [tuple(p) for p in (c + d + w, c + d - w, c - d - w, c - d + w)]


def draw_shape(shape: str, rng: np.random.Generator):
  """One SIZE x SIZE RGB PIL image of `shape` on a noisy gradient."""
  from PIL import Image, ImageDraw

  colours = rng.integers(0, 256, size=(3, 3))
  while np.abs(colours[0] - colours[1:].mean(0)).sum() < 120:  # the shape must show
    colours = rng.integers(0, 256, size=(3, 3))
  fg, bg_a, bg_b = colours
  ramp = np.linspace(0, 1, SIZE)[:, None, None]
  direction = rng.integers(2)
  ramp = ramp if direction else np.transpose(ramp, (1, 0, 2))
  background = bg_a * (1 - ramp) + bg_b * ramp + rng.normal(0, 12, (SIZE, SIZE, 3))
  image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(image)
  r = rng.uniform(6, 12)
  cx, cy = rng.uniform(r, SIZE - r, size=2)
  angle = rng.uniform(0, 2 * np.pi)
  colour = tuple(int(c) for c in fg)
  if shape == "disc":
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
  elif shape == "ring":
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, int(r / 3)))
  elif shape == "square":
    draw.polygon(_polygon(cx, cy, r * 1.2, 4, angle), fill=colour)
  elif shape == "triangle":
    draw.polygon(_polygon(cx, cy, r * 1.2, 3, angle), fill=colour)
  elif shape == "plus":
    for a in (angle, angle + np.pi / 2):
      draw.polygon(_bar(cx, cy, r, 0.3 * r, a), fill=colour)
  elif shape == "bar":
    draw.polygon(_bar(cx, cy, r, 0.25 * r, angle), fill=colour)
  else:
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
  return image


def write_shapes(root: str, per_class: int = 300, seed: int = 0) -> str:
  """Writes the shapes set to `root` (`<shape>/<index>.png`) unless it is there."""
  folders = [os.path.join(root, s) for s in SHAPES]
  if all(os.path.isdir(f) and len(image_files.list_images(f)) == per_class for f in folders):
    return root
  rng = np.random.default_rng(seed)
  for shape in SHAPES:
    os.makedirs(os.path.join(root, shape), exist_ok=True)
    for i in range(per_class):
      draw_shape(shape, rng).save(os.path.join(root, shape, f"{i:04d}.png"))
  return root


DIGIT_VARIANTS = ("plain", "coloured")


def digit_image(digit: np.ndarray, variant: str, rng: np.random.Generator) -> np.ndarray:
  """One 8 x 8 scikit-learn digit (values 0-16) as a SIZE x SIZE RGB uint8 image."""
  from PIL import Image

  def enlarged(side):
    ink = Image.fromarray((digit / 16.0 * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC)
    return np.asarray(ink, np.float64) / 255.0

  if variant == "plain":
    return (np.repeat(enlarged(SIZE)[..., None], 3, axis=-1) * 255).astype(np.uint8)
  if variant != "coloured":
    raise ValueError(f"unknown digits variant {variant!r}; expected one of {DIGIT_VARIANTS}")
  side = int(rng.integers(16, 29))
  fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
  while np.abs(fg - bg).sum() < 150:  # the digit must show
    fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
  ink = np.zeros((SIZE, SIZE))
  x, y = rng.integers(0, SIZE - side + 1, size=2)
  ink[y : y + side, x : x + side] = np.clip(enlarged(side), 0, 1)
  image = ink[..., None] * fg + (1 - ink[..., None]) * bg + rng.normal(0, 8, (SIZE, SIZE, 3))
  return np.clip(image, 0, 255).astype(np.uint8)


def write_digits(root: str, seed: int = 0) -> List[str]:
  """Writes both digit sets under `root` (`<variant>/<digit>/<index>.png`)
  unless they are there; returns their folders."""
  from PIL import Image
  from sklearn.datasets import load_digits

  digits = load_digits()
  folders = []
  for variant in DIGIT_VARIANTS:
    folder = os.path.join(root, variant)
    folders.append(folder)
    if os.path.isdir(folder) and len(embed.list_images(folder)[0]) == len(digits.target):
      continue
    rng = np.random.default_rng([seed, DIGIT_VARIANTS.index(variant)])
    for i, (digit, label) in enumerate(zip(digits.images, digits.target)):
      os.makedirs(os.path.join(folder, str(label)), exist_ok=True)
      Image.fromarray(digit_image(digit, variant, rng)).save(
          os.path.join(folder, str(label), f"{i:04d}.png")
      )
  return folders


def knn_accuracy(features: np.ndarray, labels: np.ndarray, is_test: np.ndarray) -> float:
  """Cosine 20-NN top-1 of the test rows among the train rows."""
  return evaluation.evaluate_knn(
      features[~is_test],
      labels[~is_test],
      features[is_test],
      labels[is_test],
      k=names.KNN_K,
      num_classes=int(labels.max()) + 1,
  )


def main(argv=None):
  """Prints the raw pixels' and each model's k-NN accuracy on the set."""
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--shapes", help="generate the shapes set here (once) and use it")
  source.add_argument(
      "--digits",
      help="write scikit-learn's digits here (once), plain and coloured, and use them",
  )
  source.add_argument("--images", help="a labelled folder, <root>/<label>/<image>")
  p.add_argument("--model-dir", action="append", default=[], help="a pushed version or base")
  p.add_argument("--per-class", type=int, default=300, help="--shapes: images per shape")
  args = p.parse_args(argv)

  if args.shapes:
    roots = [write_shapes(args.shapes, args.per_class)]
  elif args.digits:
    roots = write_digits(args.digits)
  else:
    roots = [args.images]
  print(host_line(), flush=True)
  set_model_threads(os.cpu_count() or 1)
  models = [load_version(model_dir) for model_dir in args.model_dir]
  for root in roots:
    measure(root, models)


def measure(root: str, models) -> None:
  """Prints the raw pixels' and each model's k-NN accuracy on the labelled folder `root`."""
  from PIL import Image

  paths, ids, labels_text = embed.list_images(root)
  classes = sorted(set(labels_text))
  labels = np.array([classes.index(t) for t in labels_text])
  is_test = np.array([image_files.hash_split(i, 0.2) == "test" for i in ids])
  print(
      f"{root}: {len(paths)} images, {len(classes)} classes, "
      f"{int((~is_test).sum())} bank / {int(is_test.sum())} queries; k-NN k = {names.KNN_K}"
  )
  pixels = np.stack([np.asarray(Image.open(f).convert("RGB").resize((SIZE, SIZE))) for f in paths])
  pixels = pixels.reshape(len(paths), -1).astype(np.float32) / 255.0
  print(
      f"  raw pixels, cosine:                 {100 * knn_accuracy(pixels, labels, is_test):.2f} %"
  )
  centred = pixels - pixels[~is_test].mean(0)
  print(
      f"  raw pixels centred, cosine:         {100 * knn_accuracy(centred, labels, is_test):.2f} %"
  )
  for model in models:
    features, kept = embed.embed_all(
        model,
        names.SERVING_DEFAULT,
        embed.image_batches(paths, 64),
        ids,
        progress=False,
        workers=os.cpu_count() or 1,
    )
    if len(kept) != len(paths):
      raise SystemExit(f"{model.path}: {len(paths) - len(kept)} images failed to embed")
    print(
        f"  {model.path}: {100 * knn_accuracy(features, labels, is_test):.2f} %",
        flush=True,
    )


if __name__ == "__main__":
  sys.exit(main())
