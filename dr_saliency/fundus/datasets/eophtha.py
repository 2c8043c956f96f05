"""e-ophtha (Decencière et al., 2013): microaneurysm and exudate subsets, as distributed.

```
e_optha_MA/MA/<patient>/<image>.jpg               images with microaneurysms
e_optha_MA/Annotation_MA/<patient>/<image>.png    their MA masks (non-zero = lesion)
e_optha_MA/healthy/<patient>/<image>.jpg          images without microaneurysms
e_optha_EX/EX/<patient>/<image>.jpg               images with exudates
e_optha_EX/Annotation_EX/<patient>/<image>_EX.png their EX masks
e_optha_EX/healthy/<patient>/<image>.jpg          images without exudates
```

Annotations are matched to images by patient folder and stem, with or without a ``_MA``/``_EX``
suffix and whatever their suffix (the release mixes ``.jpg``, ``.JPG`` and ``.png``; it also
holds ``Thumbs.db`` files, ignored). An image is one record even where it is in both subsets:
its lesion dict holds the types of the subsets it is in (an image under ``MA/`` and
``e_optha_EX/healthy/`` gives ``{"MA": mask, "EX": all-false}``); a type of a subset it is not
in is absent, not empty. Record ids are ``<patient>_<stem>``. No grades, no split.
"""

import os

from dr_saliency.fundus.datasets.base import Record, list_files

NAME = "eophtha"
LOOKED_FOR = "e_optha_MA/ or e_optha_EX/ (eophtha)"
OPTIONS = ()

KINDS = ("MA", "EX")


def _subset(kind):
    return f"e_optha_{kind}"


def matches(root):
    """Whether ``root`` holds this layout: ``e_optha_MA/`` or ``e_optha_EX/``."""
    return any(os.path.isdir(os.path.join(root, _subset(k))) for k in KINDS)


def _walk(folder):
    # {(relative folder, stem): path} for the image files anywhere under folder.
    found = {}
    for here, dirs, _ in os.walk(folder):
        dirs.sort()
        rel = os.path.relpath(here, folder)
        rel = "" if rel == os.curdir else rel
        for stem, path in list_files(here).items():
            found[(rel, stem)] = path
    return found


def _record_id(key):
    rel, stem = key
    return "_".join([*[p for p in rel.split(os.sep) if p], stem])


def load(root, problems):
    """Read the e-ophtha records of both subsets, where present (paths only; nothing decoded).

    Args:
        root: str, the folder holding ``e_optha_MA/`` and/or ``e_optha_EX/``.
        problems: :class:`~dr_saliency.fundus.datasets.base.Problems`.

    Returns:
        list of :class:`~dr_saliency.fundus.datasets.base.Record`, grade and split None.
    """
    images, lesion_files = {}, {}
    for kind in KINDS:
        subset = os.path.join(root, _subset(kind))
        if not os.path.isdir(subset):
            continue
        annotations = {}
        for (rel, stem), path in _walk(os.path.join(subset, f"Annotation_{kind}")).items():
            suffix = "_" + kind
            key = (rel, stem[: -len(suffix)] if stem.upper().endswith(suffix) else stem)
            annotations.setdefault(key, path)
        unannotated = 0
        lesion_images = _walk(os.path.join(subset, kind))
        for key, path in lesion_images.items():
            images.setdefault(key, path)
            if key in annotations:
                lesion_files.setdefault(key, {})[kind] = annotations[key]
            else:
                # A lesion image without its mask: the type is not annotated for it (absent),
                # never "no lesion", which would be wrong.
                unannotated += 1
        for key, path in _walk(os.path.join(subset, "healthy")).items():
            images.setdefault(key, path)
            lesion_files.setdefault(key, {}).setdefault(kind, None)
        if unannotated:
            problems.warn(f"e-ophtha: {unannotated} images under {_subset(kind)}/{kind}/ have no "
                          f"annotation under Annotation_{kind}/ (their {kind} is left out)")
        orphans = len(set(annotations) - set(lesion_images))
        if orphans:
            problems.warn(f"e-ophtha: {orphans} annotation files under {_subset(kind)}/"
                          f"Annotation_{kind}/ match no image (ignored)")
    return [Record(_record_id(key), path, lesion_files=lesion_files.get(key) or None)
            for key, path in images.items()]
