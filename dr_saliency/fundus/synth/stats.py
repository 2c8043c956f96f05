"""Lesion statistics of a dataset (synthetic or real): size and contrast of every lesion, for
the comparison tables of docs/synthetic.md."""

import csv
import os

import cv2
import numpy as np

from dr_saliency.fundus.datasets.folder import LABELS_FILE, LESION_TYPES
from dr_saliency.fundus.imio import read_image, read_mask


def measure_lesions(image, masks, ring=3):
    """Size and contrast of every lesion (8-connected mask component) of an image.

    Contrast is the largest, over R, G and B, absolute difference between the component's mean
    colour and the mean colour of a ring around it (``ring`` px wide, lesions excluded).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        masks: dict ``{type: (H, W) bool}``.
        ring: int, ring width in pixels.

    Returns:
        dict ``{type: {"area": (K,) int64 pixels, "contrast": (K,) float64 grey levels}}``.
    """
    image = np.asarray(image, np.float64)
    lesion_any = np.zeros(image.shape[:2], bool)
    for mask in masks.values():
        lesion_any |= np.asarray(mask, bool)
    outside = cv2.dilate(lesion_any.astype(np.uint8), np.ones((3, 3), np.uint8)) == 0
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring + 1, 2 * ring + 1))
    result = {}
    for kind, mask in masks.items():
        n, labels = cv2.connectedComponents(np.asarray(mask, np.uint8), connectivity=8)
        # Grey dilation of the label image gives each ring pixel the label of a lesion next to it.
        around = cv2.dilate(labels.astype(np.float32), disc).astype(np.int64)
        around[~outside] = 0
        area = np.bincount(labels.ravel(), minlength=n)[1:]
        ring_px = np.bincount(around.ravel(), minlength=n)[1:]
        contrast = np.zeros(n - 1)
        for c in range(3):
            inside = np.bincount(labels.ravel(), image[:, :, c].ravel(), minlength=n)[1:] / np.maximum(area, 1)
            near = np.bincount(around.ravel(), image[:, :, c].ravel(), minlength=n)[1:] / np.maximum(ring_px, 1)
            contrast = np.maximum(contrast, np.abs(inside - near))
        result[kind] = {"area": area, "contrast": contrast}
    return result


def lesion_statistics(source):
    """Lesion counts, sizes and contrasts per DR stage and lesion type.

    Measured from the pixels (``measure_lesions``), so the same numbers come from a generated
    folder and from ``SynthResult`` objects in memory.

    Args:
        source: a dataset folder (str or path; ``labels.csv``, ``images/``, ``masks/<TYPE>/``),
            or an iterable of ``SynthResult``.

    Returns:
        list of dicts, one per (stage, type) for the stages present, with keys ``stage``,
        ``type``, ``images`` (images of that stage), ``with_lesion`` (how many have at least one),
        ``count_mean``, ``count_min``, ``count_max`` (lesions per image), ``area_p10``,
        ``area_median``, ``area_p90`` (pixels per lesion) and ``contrast_p10``,
        ``contrast_median``, ``contrast_p90`` (grey levels); NaN where there is no lesion.
    """
    counts, areas, contrasts = {}, {}, {}
    for stage, image, masks in _samples(source):
        for kind, m in measure_lesions(image, masks).items():
            counts.setdefault((stage, kind), []).append(len(m["area"]))
            areas.setdefault((stage, kind), []).extend(m["area"])
            contrasts.setdefault((stage, kind), []).extend(m["contrast"])

    def pct(values, q):
        return float(np.percentile(values, q)) if len(values) else float("nan")

    rows = []
    for stage, kind in sorted(counts, key=lambda k: (k[0], LESION_TYPES.index(k[1]))):
        c = np.array(counts[stage, kind])
        a, k = areas[stage, kind], contrasts[stage, kind]
        rows.append({"stage": stage, "type": kind, "images": len(c), "with_lesion": int((c > 0).sum()),
                     "count_mean": float(c.mean()), "count_min": int(c.min()), "count_max": int(c.max()),
                     "area_p10": pct(a, 10), "area_median": pct(a, 50), "area_p90": pct(a, 90),
                     "contrast_p10": pct(k, 10), "contrast_median": pct(k, 50), "contrast_p90": pct(k, 90)})
    return rows


def _samples(source):
    """Yield (stage, image, masks) from a folder or from ``SynthResult`` objects."""
    if isinstance(source, (str, os.PathLike)):
        root = os.fspath(source)
        with open(os.path.join(root, LABELS_FILE), newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            image = read_image(os.path.join(root, "images", row["image"] + ".png"))
            paths = {t: os.path.join(root, "masks", t, row["image"] + ".png") for t in LESION_TYPES}
            masks = {t: read_mask(p, image.shape) for t, p in paths.items() if os.path.exists(p)}
            yield int(row["level"]), image, masks
    else:
        for result in source:
            yield result.stage, result.image, result.masks
