"""Tests of dr_saliency.grader.augment (OpenCV training augmentation)."""

import cv2
import numpy as np
import pytest

from dr_saliency.grader import augment
def fundus(size=64):
    img = np.zeros((size, size, 3), np.uint8)
    cv2.circle(img, (size // 2, size // 2), size // 2 - 4, (200, 100, 50), -1)
    return img


def test_batch_is_reproducible_from_its_seed():
    batch = np.stack([fundus(), fundus()])
    a = augment.augment_batch(batch, (1, 2))
    b = augment.augment_batch(batch, (1, 2))
    c = augment.augment_batch(batch, (1, 3))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == batch.shape and a.dtype == np.uint8
    assert not np.array_equal(a[0], a[1])  # each image draws its own parameters


def test_surround_stays_black_and_fundus_stays_a_fundus():
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = augment.augment_image(fundus(), rng)
        assert np.all(out[:3, :3] == 0) and np.all(out[-3:, -3:] == 0)
        centre = out[24:40, 24:40].reshape(-1, 3).mean(axis=0)
        # Colour jitter stays within brightness x contrast x gain bounds of (200, 100, 50).
        assert 130 < centre[0] < 255 and 60 < centre[1] < 140 and 25 < centre[2] < 75
        # Everything non-black lies inside the (possibly shifted, scaled) disc.
        assert (out.max(axis=2) > 0).sum() <= np.pi * (32 * 1.1) ** 2


def test_geometry_moves_a_marked_spot_consistently():
    img = fundus()
    img[20:24, 40:44] = (255, 255, 255)
    seen = set()
    rng = np.random.default_rng(3)
    for _ in range(10):
        out = augment.augment_image(img, rng)
        r, c = np.unravel_index(np.argmax(out.sum(axis=2)), out.shape[:2])
        seen.add((r // 8, c // 8))
    assert len(seen) > 3  # rotations and flips move the spot around


def test_all_black_image_passes_through():
    out = augment.augment_image(np.zeros((32, 32, 3), np.uint8), np.random.default_rng(0))
    assert not out.any()


def test_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8.*Received: shape=\(8, 8\), dtype=uint8"):
        augment.augment_image(np.zeros((8, 8), np.uint8), np.random.default_rng(0))
