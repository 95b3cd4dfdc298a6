"""Class names in the model's output order, and the check that they are in that order.

A probe set's class ids are the positions of its class names: by default the sorted folder
names (torchvision's ``ImageFolder`` rule), or the list a study gives (``[probe] classes``, or a
``classes.txt`` with one name per line). Every class-dependent result (importance, reversion,
the class view, evaluation by class) reads logit ``c`` as class ``c``, so the two orders must
agree. Nothing in a folder tree says which output is which class; the model's predictions do:
:func:`check_class_order` compares the probe accuracy with the accuracy of the best
relabelling of the outputs (an assignment problem on the confusion matrix), and says when the
order probably differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import ConfigError
from ..schema import check_class_names  # noqa: F401 (part of this module's API)

CLASS_FILE = "classes.txt"


def read_class_list(path: str | Path) -> list[str]:
    """Class names from a text file: one per line, in the model's output order; blank lines
    and lines starting with ``#`` are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"class list {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"class list {path} is not UTF-8 text ({e})") from None
    except OSError as e:
        raise ConfigError(f"cannot read class list {path}: {e}") from None
    names = [line.strip() for line in text.splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    check_class_names(names, str(path))
    return names


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int,
                     n_outputs: int) -> np.ndarray:
    """int64 [n_classes, n_outputs]: images of class i predicted as output j (predictions
    of -1, no prediction, are left out)."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    ok = (predicted >= 0) & (predicted < n_outputs)
    flat = labels[ok] * n_outputs + predicted[ok]
    return np.bincount(flat, minlength=n_classes * n_outputs).reshape(n_classes, n_outputs)


@dataclass
class ClassOrderCheck:
    """Probe accuracy of a checkpoint and what the best relabelling of its outputs would give.

    Attributes
    ----------
    accuracy : top-1 accuracy with output c read as class c.
    chance : accuracy of always predicting the largest class.
    best_accuracy : accuracy under the best one-to-one relabelling of the outputs.
    best_order : [n_outputs] the class name each output stands for under that relabelling
        (None for an output that no class takes, when the outputs outnumber the classes).
    n_images, n_outputs : images with a prediction, outputs of the model.
    """

    accuracy: float
    chance: float
    best_accuracy: float
    best_order: list[str | None]
    n_images: int
    n_outputs: int
    classes: list[str] = field(default_factory=list)

    @property
    def order_suspect(self) -> bool:
        """The best relabelling scores far higher: the class order probably differs."""
        return self.best_accuracy - self.accuracy >= 0.2 and \
            self.best_accuracy >= 1.5 * self.accuracy and \
            self.best_accuracy >= self.chance + 0.2

    @property
    def near_chance(self) -> bool:
        """Within a tenth of the way from chance to perfect."""
        return self.accuracy < self.chance + 0.1 * (1 - self.chance)

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "chance": self.chance,
                "best_accuracy": self.best_accuracy, "best_order": self.best_order,
                "n_images": self.n_images, "n_outputs": self.n_outputs,
                "order_suspect": self.order_suspect, "near_chance": self.near_chance}


def check_class_order(labels: np.ndarray, predicted: np.ndarray, classes: list[str]
                      ) -> ClassOrderCheck | None:
    """Compare the probe accuracy with that of the best relabelling of the model's outputs.

    Parameters
    ----------
    labels : int64 [n] class ids of the probe images.
    predicted : int [n] the model's top-1 output per image (-1: none).
    classes : the probe set's class names (ids index them).

    Returns None when no image has a prediction.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    ok = predicted >= 0
    if not ok.any():
        return None
    n_classes = len(classes)
    n_outputs = max(int(predicted[ok].max()) + 1, n_classes)
    conf = confusion_matrix(labels, predicted, n_classes, n_outputs)
    n = int(conf.sum())
    diagonal = int(np.trace(conf[:, :n_classes]))
    rows, cols = linear_sum_assignment(conf, maximize=True)
    best = int(conf[rows, cols].sum())
    order: list[str | None] = [None] * n_outputs
    for r, c in zip(rows, cols):
        order[c] = classes[r]
    chance = float(np.bincount(labels[ok], minlength=n_classes).max() / n)
    return ClassOrderCheck(diagonal / n, chance, best / n, order, n, n_outputs, list(classes))


def class_order_message(check: ClassOrderCheck, what: str, source: str) -> str | None:
    """The warning for ``what`` (e.g. "run 'a' epoch 9"), or None when nothing is suspect.
    ``source`` says where the class order came from (e.g. "the sorted folder names")."""
    if check.order_suspect:
        order = ", ".join(f'"{name}"' for name in check.best_order if name is not None)
        return (f"{what}: probe accuracy {check.accuracy:.1%}, but {check.best_accuracy:.1%} "
                f"with the model's outputs read in another order: the class order ({source}) "
                "probably differs from the model's output order. Set [probe] classes = "
                f"[{order}] (the folder names in output order, as these predictions suggest) "
                f"or write them, one per line, in {CLASS_FILE} in the probe folder")
    if check.near_chance:
        return (f"{what}: probe accuracy {check.accuracy:.1%} is near chance "
                f"({check.chance:.1%}): the model has not learned yet, it diverged, or its "
                f"inputs differ from training (check [probe] image_size, mean and std) or its "
                f"classes are not the probe folders ({source})")
    return None
