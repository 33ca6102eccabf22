"""The MAE reconstruction grid."""

import numpy as np

from models.config import get_profile
from models.joint_embedding import build_mae
from models.visualize import reconstruction_grid, to_pixel_scale


def test_pixel_scale_inverts_per_channel_standardisation():
  raw = np.random.RandomState(0).rand(4, 32, 32, 3)
  mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.25, 0.2, 0.3])
  np.testing.assert_allclose(
      to_pixel_scale((raw - mean) / std, raw)((raw - mean) / std), raw, atol=1e-9
  )


def test_grid_rows_are_original_masked_reconstruction():
  cfg = get_profile("smoke").model
  model = build_mae(cfg)
  raw = np.random.RandomState(1).rand(8, 32, 32, 3).astype(np.float32)
  normalised = (raw - 0.45) / 0.25
  grid = reconstruction_grid(model, normalised, raw, scale=1)
  assert grid.shape == (3 * 32 + 4, 8 * 32 + 7 * 2, 3) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[:32, :32], (raw[0] * 255).round())
  masked = grid[34:66, :32].astype(int)
  grey_patches = sum(
      np.all(masked[y : y + 4, x : x + 4] == 128) for y in range(0, 32, 4) for x in range(0, 32, 4)
  )
  assert grey_patches == 48  # 75% of the 64 patches hidden
  # Visible patches of the reconstruction row are the original pixels.
  recon = grid[68:100, :32].astype(int)
  visible = np.any(masked != 128, axis=-1)
  assert np.abs(recon[visible] - masked[visible]).max() <= 1
