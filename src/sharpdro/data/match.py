"""Does a data set fit a trained model? Labels are indices into the model's classes, so data whose
classes differ (other names, another order, another count) would be scored silently wrong."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from sharpdro.errors import DataError

# The datasets Hendrycks' CIFAR-C files belong to, by number of classes.
CIFAR_C_DATASETS = {10: "cifar10", 100: "cifar100"}
# CIFAR-10's classes in label order: a model trained on CIFAR-10 images from class folders has these names
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(map(str, names[:limit]))
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_classes_match(model_classes: Sequence[str] | None, num_classes: int, data_classes: Sequence[str],
                        where: str) -> None:
    """Refuse data whose class names (or count, when the model has no names) differ from the model's."""
    data_classes = [str(c) for c in data_classes]
    if model_classes is None:
        if len(data_classes) != num_classes:
            raise DataError(f"{where} has {len(data_classes)} classes but the model was trained on {num_classes}; "
                            f"evaluate on data with the model's classes")
        return
    model_classes = [str(c) for c in model_classes]
    if data_classes == model_classes:
        return
    missing = [c for c in model_classes if c not in data_classes]
    extra = [c for c in data_classes if c not in model_classes]
    parts = [f"{where} has {len(data_classes)} classes, the model {len(model_classes)}"]
    if missing:
        parts.append(f"the data lacks {_listing(missing)}")
    if extra:
        parts.append(f"the model does not know {_listing(extra)}")
    if not missing and not extra:
        moved = [c for i, c in enumerate(data_classes) if model_classes[i] != c]
        parts.append(f"the same names in another order ({_listing(moved)} move)")
    raise DataError("; ".join(parts) + ". Labels would be scored against the wrong classes: evaluate on data with "
                    "exactly the model's classes (" + _listing(model_classes) + ")")


def check_cifar_c_matches(run_dataset: str, num_classes: int, image_shape, folder, sets: dict,
                          model_classes: Sequence[str] | None = None) -> None:
    """CIFAR-C files carry no class names: their label count and image size must be the model's, and the run
    must have been trained on the dataset the files belong to (CIFAR-10-C: cifar10, CIFAR-100-C: cifar100),
    or, for CIFAR-10-C, on class folders named as CIFAR-10's classes in their order."""
    labels = np.concatenate([np.asarray(y) for _, y in sets.values()]) if sets else np.zeros(0, np.int64)
    n = int(labels.max()) + 1 if len(labels) else 0
    belongs = CIFAR_C_DATASETS.get(n)
    same_names = belongs == "cifar10" and model_classes is not None and tuple(model_classes) == CIFAR10_CLASSES
    if n != num_classes or not (belongs == run_dataset or same_names):
        what = f"CIFAR-{n}-C" if belongs else f"CIFAR-C style files with {n} label values"
        raise DataError(f"--cifar-c {folder}: these are {what} (labels 0..{n - 1}), but the model was trained on "
                        f"{run_dataset} with {num_classes} classes; CIFAR-10-C fits cifar10 runs and CIFAR-100-C "
                        f"cifar100 runs")
    first = next(iter(sets.values()))[0]
    if tuple(first.shape[1:]) != tuple(image_shape):
        raise DataError(f"--cifar-c {folder}: images are {tuple(first.shape[1:])} but the model takes "
                        f"{tuple(image_shape)}")
