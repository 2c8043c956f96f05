"""DIARETDB1 v2.1 (Kauppi et al., 2007): expert markings as XML, fused into lesion masks.

```
ddb1_v02_01/images/diaretdb1_imageNNN.png
ddb1_v02_01/groundtruth/diaretdb1_imageNNN_0E.xml          E = expert 1..4
ddb1_v02_01/groundtruth/diaretdb1_imageNNN_0E_plain.xml    the same without the DTD reference
ddb1_v02_01/ddb1_v02_01_{train,test}[_plain].txt           the official split lists
```

There are no pixel masks: each expert drew regions, and each ``<marking>`` holds one of

- ``<circleregion><centroid><coords2d>x,y</coords2d></centroid><radius direction="x">r</radius>``
- ``<ellipseregion>`` the same with a ``direction="y"`` radius too and ``<angle>`` in degrees,
- ``<polygonregion><centroid>...</centroid><coords2d>x,y</coords2d>...`` (the vertices),

plus ``<representativepoint>``, ``<confidencelevel>`` (High/Medium/Low) and ``<markingtype>``
(Hard_exudates, Soft_exudates, Haemorrhages, Red_small_dots, Disc, IRMA, Neovascularisation,
Fundus_area). Coordinates are (x, y) pixels.

The dataset's evaluation protocol fuses the experts: each expert's map holds, at each pixel, the
highest confidence among their markings of a type there (0 where none), the maps are averaged
over the experts, and the mean is thresholded, at 0.75 by default. The numbers given to
High/Medium/Low are a parameter (``confidence``); the defaults (1.0, 0.75, 0.5) were NOT checked
against the dataset's own toolkit. With them, a pixel is lesion when at least three of the four
experts marked it with high confidence, or e.g. all four with at least medium confidence.

Ellipse angles: OpenCV's angle turns clockwise on screen (y points down); the annotation tool's
turns the other way. On the project's sample (139 ellipses) the representative point lies inside
every ellipse drawn with the negated angle, and outside 9 of them with the angle as written, so
the angle is negated here.
"""

import os
import re
import xml.etree.ElementTree as ET

import cv2
import numpy as np

from dr_saliency.fundus.datasets.base import LESION_TYPES, Record, compute_fov, list_files

NAME = "diaretdb1"
LOOKED_FOR = "ddb1_v02_01/ (diaretdb1)"
OPTIONS = ("threshold", "confidence")

BASE = "ddb1_v02_01"
DEFAULT_THRESHOLD = 0.75
DEFAULT_CONFIDENCE = {"High": 1.0, "Medium": 0.75, "Low": 0.5}
"""Value of each ``<confidencelevel>`` in the fused map. A choice, not the toolkit's (unverified)."""
MARKING_TYPES = {"Red_small_dots": "MA", "Haemorrhages": "HE", "Hard_exudates": "EX",
                 "Soft_exudates": "SE"}
"""DIARETDB1 marking type -> lesion type; other types (IRMA, Neovascularisation) are ignored."""
DISC = "Disc"
FUNDUS_AREA = "Fundus_area"
MIN_FUNDUS_FRACTION = 0.25
"""A Fundus_area union smaller than this fraction of the image is not taken as the field of
view (the sample's only Fundus_area marking is a 44 px circle, clearly not one); the FOV is
then computed from the image."""
N_EXPERTS = 4

# A mean of k equal confidences over n experts is not always exact in binary (3 * 0.1 / 4):
# compare with a little slack so that "threshold 0.75" means >= 0.75 as written.
_EPS = 1e-9
_XML_NAME = re.compile(r"^(?P<stem>.+)_(?P<expert>\d+)(?P<plain>_plain)?\.xml$", re.IGNORECASE)


def _base(root):
    # The folder holding images/ and groundtruth/: root/ddb1_v02_01, or root itself.
    nested = os.path.join(root, BASE)
    if os.path.isdir(os.path.join(nested, "groundtruth")):
        return nested
    if os.path.isdir(os.path.join(root, "groundtruth")) and os.path.isdir(os.path.join(root, "images")) \
            and any(name.startswith("ddb1_") for name in os.listdir(root)):
        return root
    return None


def matches(root):
    """Whether ``root`` holds this layout: ``ddb1_v02_01/``, or is that folder itself."""
    return _base(root) is not None


def check_confidence(confidence):
    """Complete and check a confidence mapping.

    Args:
        confidence: None, or a dict with some of the keys High, Medium, Low and values in
            [0, 1]; missing keys take ``DEFAULT_CONFIDENCE``.

    Returns:
        dict with the three keys, float values.

    Raises:
        TypeError, ValueError: for anything else.
    """
    if confidence is None:
        return dict(DEFAULT_CONFIDENCE)
    if not hasattr(confidence, "items"):
        raise TypeError(f"Expected a dict like {DEFAULT_CONFIDENCE}. Received: confidence={confidence!r}")
    unknown = sorted(set(confidence) - set(DEFAULT_CONFIDENCE))
    if unknown:
        raise ValueError(f"Expected confidence keys among {sorted(DEFAULT_CONFIDENCE)}. "
                         f"Received: confidence={dict(confidence)!r}")
    merged = dict(DEFAULT_CONFIDENCE)
    for key, value in confidence.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"Expected confidence values in [0, 1]. Received: confidence[{key!r}]={value!r}")
        merged[key] = float(value)
    return merged


def check_threshold(threshold):
    """Check a fusion threshold: a number in (0, 1]. Returns it as float."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not 0 < threshold <= 1:
        raise ValueError(f"Expected a threshold in (0, 1]. Received: threshold={threshold!r}")
    return float(threshold)


def _point(element, path):
    try:
        x, y = (float(v) for v in element.text.split(","))
    except (AttributeError, ValueError):
        raise ValueError(f"Expected 'x,y' coordinates in {path}. "
                         f"Received: coords2d={getattr(element, 'text', None)!r}") from None
    return x, y


def _region(marking, path):
    circle, ellipse, polygon = (marking.find(tag) for tag in
                                ("circleregion", "ellipseregion", "polygonregion"))
    if circle is not None:
        x, y = _point(circle.find("centroid/coords2d"), path)
        return ("circle", x, y, float(circle.findtext("radius")))
    if ellipse is not None:
        x, y = _point(ellipse.find("centroid/coords2d"), path)
        radii = {r.get("direction"): float(r.text) for r in ellipse.findall("radius")}
        return ("ellipse", x, y, radii["x"], radii.get("y", radii["x"]),
                float(ellipse.findtext("angle") or 0))
    if polygon is not None:
        # Direct coords2d children are the vertices; the one under <centroid> is not.
        return ("polygon", tuple(_point(c, path) for c in polygon.findall("coords2d")))
    raise ValueError("no region element")


def read_markings(path):
    """Parse one expert's DIARETDB1 XML file (no network: the DTD is never fetched).

    Args:
        path: str.

    Returns:
        list of dicts ``{"type": str, "confidence": str, "region": tuple}``; ``region`` is
        ``("circle", x, y, r)``, ``("ellipse", x, y, rx, ry, angle_degrees)`` or
        ``("polygon", ((x, y), ...))``.

    Raises:
        ValueError: for a file that is not such XML (the message names it).
    """
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as err:
        raise ValueError(f"Expected a DIARETDB1 ground-truth XML file. "
                         f"Received: path={path!r} ({err})") from None
    markings = []
    for marking in tree.getroot().iter("marking"):
        kind = (marking.findtext("markingtype") or "").strip()
        level = (marking.findtext("confidencelevel") or "").strip()
        try:
            region = _region(marking, path)
        except (TypeError, KeyError, ValueError) as err:
            raise ValueError(f"Expected a circle, ellipse or polygon region with its centre, radii "
                             f"or vertices in every marking of {path}. "
                             f"Received: a {kind!r} marking ({type(err).__name__}: {err})") from None
        markings.append({"type": kind, "confidence": level, "region": region})
    return markings


def _draw(mask, region):
    # Filled, value 1, on a uint8 mask (OpenCV wants integer pixel coordinates).
    if region[0] == "circle":
        _, x, y, r = region
        cv2.circle(mask, (round(x), round(y)), round(r), 1, thickness=-1)
    elif region[0] == "ellipse":
        _, x, y, rx, ry, angle = region
        cv2.ellipse(mask, (round(x), round(y)), (round(rx), round(ry)), -angle, 0, 360, 1,
                    thickness=-1)
    else:
        points = np.round(np.asarray(region[1], dtype=np.float64)).astype(np.int32)
        if len(points):
            cv2.fillPoly(mask, [points.reshape(-1, 1, 2)], 1)


def confidence_maps(experts, shape, kinds, confidence=None, *, path="markings"):
    """Fuse experts' markings into mean-confidence maps (DIARETDB1's protocol).

    Args:
        experts: list (one item per expert, including experts who marked nothing) of lists of
            markings as :func:`read_markings` returns.
        shape: (H, W) of the image.
        kinds: iterable of marking types (e.g. ``"Haemorrhages"``) to fuse.
        confidence: dict level -> value, see :func:`check_confidence`; None for the defaults.
        path: str naming the markings' source, for error messages.

    Returns:
        dict ``{kind: (H, W) float32}``: per pixel, the mean over experts of each expert's
        highest confidence among their markings of that kind covering the pixel (0 if none).

    Raises:
        ValueError: for a confidence level not in ``confidence``.
    """
    confidence = check_confidence(confidence)
    h, w = shape
    fused = {kind: np.zeros((h, w), np.float32) for kind in kinds}
    for markings in experts:
        for kind in fused:
            # One mask per confidence level, then the max over levels: an expert's overlapping
            # markings count once, at their highest confidence.
            best = np.zeros((h, w), np.float32)
            for level, value in confidence.items():
                regions = [m["region"] for m in markings if m["type"] == kind and m["confidence"] == level]
                if not regions:
                    continue
                mask = np.zeros((h, w), np.uint8)
                for region in regions:
                    _draw(mask, region)
                np.maximum(best, mask * np.float32(value), out=best)
            fused[kind] += best
        unknown = {m["confidence"] for m in markings if m["type"] in fused} - set(confidence)
        if unknown:
            raise ValueError(f"Expected confidence levels among {sorted(confidence)} in {path}. "
                             f"Received: confidencelevel={sorted(unknown)}")
    for kind in fused:
        fused[kind] /= max(len(experts), 1)
    return fused


class DiaretdbRecord(Record):
    """A DIARETDB1 image: lesion, optic-disc and FOV masks are rasterised from the experts' XML.

    ``load_lesions()`` gives all four types (DIARETDB1's experts marked all of them), all-false
    where the fused confidence stays below the threshold; ``load_fov()`` uses the experts'
    Fundus_area markings when they cover at least ``MIN_FUNDUS_FRACTION`` of the image, and
    computes the FOV otherwise.
    """

    def __init__(self, id, image_path, *, xml_files, threshold=DEFAULT_THRESHOLD,
                 confidence=None, split=None):
        """Create a record.

        Args:
            id: str.
            image_path: str.
            xml_files: list of str, one XML file per expert (empty: no annotation).
            threshold: float in (0, 1], see :func:`check_threshold`.
            confidence: dict, see :func:`check_confidence`.
            split: str or None.
        """
        super().__init__(id, image_path, split=split,
                         lesion_files={t: None for t in LESION_TYPES} if xml_files else None)
        self.xml_files = list(xml_files)
        self.threshold = check_threshold(threshold)
        self.confidence = check_confidence(confidence)
        self._markings = None

    def markings(self):
        """The experts' markings (parsed once and kept: they are small).

        Returns:
            list (one per expert XML file) of lists of dicts, see :func:`read_markings`.
        """
        if self._markings is None:
            self._markings = [read_markings(p) for p in self.xml_files]
        return self._markings

    def confidence_maps(self, kinds=tuple(MARKING_TYPES)):
        """Mean-confidence maps of this image, see :func:`confidence_maps`.

        Returns:
            dict ``{kind: (H, W) float32}``.
        """
        return confidence_maps(self.markings(), self.shape, kinds, self.confidence,
                               path=", ".join(self.xml_files))

    def _fused(self, kinds):
        maps = self.confidence_maps(kinds)
        return {kind: maps[kind] >= self.threshold - _EPS for kind in kinds}

    def load_lesions(self):
        """Fused lesion masks.

        Returns:
            dict ``{"MA"|"HE"|"EX"|"SE": (H, W) bool}``, or None without expert files.
        """
        if not self.xml_files:
            return None
        fused = self._fused(tuple(MARKING_TYPES))
        return {MARKING_TYPES[kind]: mask for kind, mask in fused.items()}

    def load_optic_disc(self):
        """The experts' fused ``Disc`` markings, ``(H, W)`` bool (None without expert files)."""
        if not self.xml_files:
            return None
        return self._fused((DISC,))[DISC]

    def load_fov(self, image=None):
        """Field of view: the union of the experts' Fundus_area markings when plausible (at
        least ``MIN_FUNDUS_FRACTION`` of the image), else computed from the image.

        Args:
            image: optional ``(H, W, 3)`` uint8 RGB, this record's decoded image.

        Returns:
            ``(H, W)`` bool.
        """
        regions = [m["region"] for ms in (self.markings() if self.xml_files else ())
                   for m in ms if m["type"] == FUNDUS_AREA]
        if regions:
            mask = np.zeros(self.shape, np.uint8)
            for region in regions:
                _draw(mask, region)
            if mask.mean() >= MIN_FUNDUS_FRACTION:
                return mask.astype(bool)
        return compute_fov(self.load_image() if image is None else image)


def _split_lists(base):
    # {image stem: "train"|"test"} from the official lists (plain or not: same images).
    splits = {}
    for name in sorted(os.listdir(base)):
        lower = name.lower()
        if not (lower.startswith("ddb1_") and lower.endswith(".txt")):
            continue
        split = "train" if "train" in lower else "test" if "test" in lower else None
        if split is None:
            continue
        with open(os.path.join(base, name), encoding="utf-8", errors="replace") as f:
            for line in f:
                tokens = line.split()
                if tokens:
                    splits[os.path.splitext(os.path.basename(tokens[0]))[0]] = split
    return splits


def _expert_files(groundtruth):
    # {image stem: [xml path per expert]}, the _plain variant preferred.
    found = {}
    try:
        names = sorted(os.listdir(groundtruth))
    except FileNotFoundError:
        return {}
    for name in names:
        match = _XML_NAME.match(name)
        if match:
            experts = found.setdefault(match["stem"], {})
            expert = int(match["expert"])
            if match["plain"] or expert not in experts:
                experts[expert] = os.path.join(groundtruth, name)
    return {stem: [experts[e] for e in sorted(experts)] for stem, experts in found.items()}


def load(root, problems, threshold=DEFAULT_THRESHOLD, confidence=None):
    """Read the DIARETDB1 records (paths and split; nothing decoded or parsed yet).

    Args:
        root: str, the folder holding ``ddb1_v02_01/``, or that folder itself.
        problems: :class:`~dr_saliency.fundus.datasets.base.Problems`.
        threshold: float in (0, 1], the fused-confidence threshold (default 0.75, the
            dataset's protocol).
        confidence: dict of values for High/Medium/Low (default ``DEFAULT_CONFIDENCE``).

    Returns:
        list of :class:`DiaretdbRecord`; grade None for all.

    Raises:
        ValueError, TypeError: for a bad threshold or confidence.
    """
    threshold = check_threshold(threshold)
    confidence = check_confidence(confidence)
    base = _base(root)
    images = list_files(os.path.join(base, "images"))
    experts = _expert_files(os.path.join(base, "groundtruth"))
    splits = _split_lists(base)
    records = [DiaretdbRecord(stem, path, xml_files=experts.get(stem, []), threshold=threshold,
                              confidence=confidence, split=splits.get(stem))
               for stem, path in images.items()]
    short = sorted(r.id for r in records if len(r.xml_files) != N_EXPERTS)
    if short:
        problems.warn(f"DIARETDB1: {len(short)} images do not have {N_EXPERTS} expert XML files "
                      f"(fused over the experts found; none: no lesion annotation): "
                      f"{', '.join(short[:10])}{', ...' if len(short) > 10 else ''}")
    orphans = len(set(experts) - set(images))
    problems.missing("DIARETDB1", orphans, len(experts), "annotated images", f"{BASE}/images/")
    return records
