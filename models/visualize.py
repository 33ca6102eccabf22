"""Reconstruction grid of the MAE: original / masked / reconstruction rows."""

import io
from typing import Callable

import numpy as np
import tensorflow as tf
from PIL import Image

from models.mae import MaskedAutoencoder, patchify, unpatchify
from models import files, runtime

_GAP = 2


def to_pixel_scale(normalised: np.ndarray, raw: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
  """Per-channel affine map from Transform's normalised space back to [0, 1].

  The Transform graph standardises each channel, raw = a * x + b; `a` and `b`
  are recovered exactly by least squares from images seen in both spaces.
  """
  slope, offset = np.array(
      [np.polyfit(normalised[..., c].ravel(), raw[..., c].ravel(), 1) for c in range(3)]
  ).T
  return lambda x: np.clip(x * slope + offset, 0.0, 1.0)


def reconstruct(model: MaskedAutoencoder, images: np.ndarray, seed: int = 0):
  """-> (masked, reconstruction, hidden): [B, S, S, 3] in the model's input
  space, and a boolean [B, S, S, 3] that is True on masked pixels.

  Visible patches are shown as they are; masked ones as the decoder predicts
  them (de-normalised with the patch's own mean/std when the loss uses
  normalised pixels, as in the official visualisation).
  """
  cfg = model.cfg
  imgs = tf.constant(images, tf.float32)
  noise = tf.random.stateless_uniform([len(images), cfg.num_patches], [seed, 0])
  _, pred, mask = model(imgs, noise=noise)
  pred = tf.cast(pred, tf.float32)
  target = patchify(imgs, cfg.patch_size)
  if cfg.norm_pix_loss:
    mean, var = tf.nn.moments(target, axes=[-1], keepdims=True)
    pred = pred * tf.sqrt(var + 1e-6) + mean
  m = mask[..., None]  # [B, L, 1], 1 = masked
  masked = unpatchify(target * (1 - m), cfg.patch_size).numpy()
  recon = unpatchify(target * (1 - m) + pred * m, cfg.patch_size).numpy()
  hidden = unpatchify(tf.broadcast_to(m, target.shape), cfg.patch_size).numpy() > 0
  return masked, recon, hidden


def reconstruction_grid(
    model: MaskedAutoencoder, images: np.ndarray, raw_images: np.ndarray, scale: int = 3
) -> np.ndarray:
  """uint8 [rows, cols, 3] grid: originals, masked inputs (grey), reconstructions."""
  to_pixels = to_pixel_scale(images, raw_images)
  masked, recon, hidden = reconstruct(model, images)
  masked_pixels = np.where(hidden, 0.5, to_pixels(masked))
  rows = [raw_images, masked_pixels, to_pixels(recon)]
  n, s = images.shape[0], images.shape[1]
  grid = np.ones((3 * s + 2 * _GAP, n * s + (n - 1) * _GAP, 3), np.float32)
  for r, row in enumerate(rows):
    for i in range(n):
      y, x = r * (s + _GAP), i * (s + _GAP)
      grid[y : y + s, x : x + s] = row[i]
  grid = (grid * 255).round().astype(np.uint8)
  return np.kron(grid, np.ones((scale, scale, 1), np.uint8))


def write_png(grid: np.ndarray, path: str) -> None:
  """Writes a uint8 [H, W, 3] image (a grid) to `path` as PNG, atomically."""
  buf = io.BytesIO()
  Image.fromarray(grid).save(buf, format="PNG")
  files.write_atomically(path, buf.getvalue())


class ReconstructionLogger(tf.keras.callbacks.Callback):
  """Writes the reconstruction grid to TensorBoard after every epoch of
  `engine_pretrain.pretrain` (whose model's `.mae` is the MAE)."""

  def __init__(self, images: np.ndarray, raw_images: np.ndarray, log_dir: str):
    super().__init__()
    self.images, self.raw_images = images, raw_images
    self.writer = tf.summary.create_file_writer(log_dir + "/reconstructions")

  def on_epoch_end(self, epoch, logs=None):
    """On the chief: the grid of the MAE's reconstructions, to TensorBoard."""
    if not runtime.is_chief(self.model.distribute_strategy):
      return
    grid = reconstruction_grid(self.model.mae, self.images, self.raw_images)
    with self.writer.as_default():
      tf.summary.image("original_masked_reconstruction", grid[None], step=epoch + 1)
