"""Image sources: every dataset the project reads, returned as uint8 NHWC RGB :class:`ImageSet` s.

``load_dataset(cfg["data"])`` dispatches on ``data.dataset``:

==================  ======================================================================
``digits``          scikit-learn's bundled 8x8 digits, upscaled to 32x32 RGB, fixed 70/30 split
``cifar10/100``     the official python tarballs (found, MD5-checked, extracted, or downloaded)
``folder``          ``<root>/train/<class>/<image>`` + ``<root>/test/...`` (or ``val/``)
``imagenet30``      the same class-folder reader (also accepts ``one_class_train/test``)
``labelfile``       ``<NAME>_train_img/`` + ``<NAME>_train_label.txt`` (the MindSpore release)
``tinyimagenet``    ``wnids.txt``, ``train/<wnid>/images/``, ``val/images`` + annotations
==================  ======================================================================

plus :func:`load_cifar_c` for Hendrycks' CIFAR-10-C / CIFAR-100-C ``.npy`` folders.

Resizing (``data.image_size``) always uses Pillow's BICUBIC filter to a square of that size,
without keeping the aspect ratio. Pillow widens the filter support by the scale factor when
it shrinks, so downscaling is antialiased (no aliasing from skipped pixels). JPEG files
that are at least twice the target size are first decoded at a reduced DCT scale
(``Image.draft``; 1/2, 1/4 or 1/8, never below the target size), which is what makes
ImageNet-sized folders fast to bring to 64x64.

One module per format: ``decode`` (the one image decoder and resizer), ``cifar``, ``folders``
(class folders and the label-file layout), ``tinyimagenet``, ``digits``, ``cifar_c``; this
package re-exports their public names. NumPy, Pillow and tqdm only: no torch import here.
"""
from __future__ import annotations

import urllib.request  # noqa: F401  (sources.urllib.request.urlopen is what downloads use)
from pathlib import Path
from typing import Any, Mapping

from sharpdro.data.sources.cifar import CIFAR_ARCHIVES, default_data_root, ensure_cifar, load_cifar
from sharpdro.data.sources.cifar_c import load_cifar_c
from sharpdro.data.sources.decode import decode_image, decode_images, resize_images, resized_set
from sharpdro.data.sources.digits import digits_split, load_digits
from sharpdro.data.sources.folders import IMAGE_EXTENSIONS, load_image_folder, load_labelfile
from sharpdro.data.sources.tinyimagenet import load_tinyimagenet
from sharpdro.data.types import ImageSet
from sharpdro.errors import DataError

__all__ = [
    "CIFAR_ARCHIVES",
    "IMAGE_EXTENSIONS",
    "default_data_root",
    "load_dataset",
    "load_cifar",
    "ensure_cifar",
    "load_image_folder",
    "load_labelfile",
    "load_tinyimagenet",
    "load_digits",
    "digits_split",
    "load_cifar_c",
    "decode_image",
    "decode_images",
    "resize_images",
]

def load_dataset(data_cfg: Mapping[str, Any], *, progress: bool = True) -> tuple[ImageSet, ImageSet]:
    """(train, test) of the source named by ``data_cfg["dataset"]`` (the ``data`` config section).

    Uses the keys ``dataset``, ``root``, ``download``, ``name`` and ``image_size``; a missing key
    takes the schema's default. With ``image_size`` set, every image of both splits is resized
    to ``image_size x image_size`` (Pillow BICUBIC, antialiased when shrinking).
    """
    dataset = data_cfg.get("dataset", "digits")
    root = data_cfg.get("root")
    size = data_cfg.get("image_size")
    if size is not None:
        size = int(size)
        if size < 1:
            raise DataError(f"data.image_size must be a positive number of pixels, got {size}")

    if dataset in ("cifar10", "cifar100"):
        train, test = load_cifar(dataset, root, download=bool(data_cfg.get("download", True)), progress=progress)
    elif dataset in ("folder", "imagenet30"):
        train, test = load_image_folder(_need_root(dataset, root), image_size=size, progress=progress,
                                        name=dataset)
    elif dataset == "labelfile":
        name = data_cfg.get("name")
        if not name:
            raise DataError("data.dataset='labelfile' needs data.name: the NAME in <NAME>_train_img/ and "
                            "<NAME>_train_label.txt")
        train, test = load_labelfile(_need_root(dataset, root), name, image_size=size, progress=progress)
    elif dataset == "tinyimagenet":
        train, test = load_tinyimagenet(_need_root(dataset, root), image_size=size, progress=progress)
    elif dataset == "digits":
        train, test = load_digits(image_size=size or 32)
    else:
        raise DataError(f"unknown data.dataset {dataset!r}; known: digits, cifar10, cifar100, folder, "
                        f"imagenet30, labelfile, tinyimagenet")

    if size is not None:
        train = resized_set(train, size, progress)
        test = resized_set(test, size, progress)
    return train, test


def _need_root(dataset: str, root) -> Path:
    if not root:
        raise DataError(f"data.dataset={dataset!r} needs data.root: the folder that holds it")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root {str(path)!r} (data.dataset={dataset!r}) is not a folder")
    return path
