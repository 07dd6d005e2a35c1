"""Scene classes of a dataset's images (``dataset.classes``), for the scene-class loss
(``trainer.class_loss``); the per-class breakdown of scores (``captioning.evaluation.breakdown
--classes ucm``) uses the same UCM rule.

A rule (``CLASS_RULES`` names its classes, ``LABELLERS`` labels an image id) maps an image id to
one of a fixed list of class names. ``ucm``: UCM-Captions numbers its
2,100 images class by class, 100 per class, from 1 (``N.jpg`` is class ``(N-1)//100``, the 21
UC Merced Land Use classes in their alphabetical order). The list is fixed by the rule, not read
from the data, so a model rebuilt from a run's config has the same class head.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from captioning import ConfigError

# UC Merced Land Use, in its (alphabetical) class order.
UCM_CLASSES = (
    "agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral",
    "denseresidential", "forest", "freeway", "golfcourse", "harbor", "intersection",
    "mediumresidential", "mobilehomepark", "overpass", "parkinglot", "river", "runway",
    "sparseresidential", "storagetanks", "tenniscourt")
UCM_NAME = re.compile(r"^(\d+)\.(jpg|tif)$")

# dataset.classes -> the class names, in label order
CLASS_RULES = {"ucm": UCM_CLASSES}


def is_ucm(image_id: str) -> bool:
    m = UCM_NAME.match(image_id)
    return bool(m) and 1 <= int(m.group(1)) <= 100 * len(UCM_CLASSES)


def class_names(rule: str | None) -> tuple[str, ...]:
    """The rule's classes, in label order; () for null."""
    if rule is None:
        return ()
    if rule not in CLASS_RULES:
        raise ConfigError(f"dataset.classes must be null or one of {', '.join(CLASS_RULES)}. "
                          f"Received: {rule}")
    return CLASS_RULES[rule]


def class_loss_problem(class_loss: float, rule: str | None) -> str | None:
    """Why ``trainer.class_loss`` cannot train, or None: it needs a rule naming the classes
    (``check_config``, and ``build_model`` for models built without that check)."""
    if not class_loss or rule is not None:
        return None
    return (f"trainer.class_loss={class_loss} predicts each image's scene class and so needs "
            f"dataset.classes, and dataset.classes is null: name the rule (dataset.classes=ucm "
            f"for UCM-Captions), or set trainer.class_loss=0.")


def labeller(rule: str) -> Callable[[str], int]:
    """An image id -> its class index under ``rule``; an id the rule cannot name raises a
    ConfigError that says which image and what names the rule expects."""
    class_names(rule)
    return LABELLERS[rule]


def _ucm(image_id: str) -> int:
    if not is_ucm(image_id):
        raise ConfigError(f"dataset.classes=ucm names classes from UCM-Captions' image names "
                          f"(1.jpg ... 2100.jpg, 100 per class); {image_id!r} is not one. Set "
                          f"dataset.classes=null for this dataset (and trainer.class_loss=0 "
                          f"to train).")
    return (int(UCM_NAME.match(image_id).group(1)) - 1) // 100


LABELLERS = {"ucm": _ucm}         # dataset.classes -> its image id -> class index
