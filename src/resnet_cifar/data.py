"""CIFAR-10 as uint8 tensors, the paper's split, per-pixel mean and augmentation (Sec. 4.2):

    "We follow the simple data augmentation in [24] for training: 4 pixels are padded on each
    side, and a 32x32 crop is randomly sampled from the padded image or its horizontal flip.
    For testing, we only evaluate the single view of the original 32x32 image."

The whole dataset (180 MB) is held as tensors on the training device and augmented a batch at a
time.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
# the MD5 of the official python-version files (data_batch_1 ... 5, test_batch), as torchvision's
OFFICIAL_MD5 = dict(zip(TRAIN_FILES + [TEST_FILE], [
    "c99cafc152244af753f735de768cd75f", "d4bba439e000b95fd0a9bffe97cbabec",
    "54ebc095f3ab1f0389bbae665268c751", "634d18415352ddfa80567beed471001a",
    "482c414d41f54cd18b22e5b47cb7c3cb", "40351d587109b95175f43aff81a1287e"]))
NORMALIZATIONS = ("per-pixel-mean", "per-channel", "none")


class DataError(ValueError):
    """The data folder is missing or holds something that is not CIFAR-10."""


@dataclass
class CIFAR10:
    """All 60,000 images, uint8 (N, 3, 32, 32), and int64 labels. `identity`: "official" (every
    MD5 matches), "jpeg-q75-copy" (the JPEG re-encoding) or "unverified-copy"."""
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    identity: str
    root: Path

    @property
    def label(self) -> str:
        return dataset_label(self.identity)


def dataset_label(identity: str) -> str:
    """The text every figure carries."""
    return {"official": "CIFAR-10 (official, MD5 verified)",
            "jpeg-q75-copy": "CIFAR-10 (JPEG q75 copy)"}.get(identity, "CIFAR-10 (unverified copy)")


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Explicit argument > $RESNET_CIFAR_DATA > ./data."""
    return Path(data_dir or os.environ.get("RESNET_CIFAR_DATA") or "data")


def download(data_dir=None) -> Path:
    """Fetch and unpack the official archive (torchvision checks its MD5)."""
    from torchvision.datasets.utils import download_and_extract_archive
    root = resolve_data_dir(data_dir)
    try:
        download_and_extract_archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                                     str(root), md5="c58f30108f718f92721af3b95e74349a")
    except Exception as e:  # offline, proxy, disk: all end the same way for the user
        raise DataError(
            f"download of CIFAR-10 failed ({type(e).__name__}: {e}). Without internet, unpack "
            f"cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) into {root}/, "
            f"so that {root / FOLDER}/ holds its files; or point RESNET_CIFAR_DATA / --data-dir at "
            f"a folder that holds {FOLDER}/.") from e
    return root


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return {k.decode() if isinstance(k, bytes) else k: v
                for k, v in pickle.load(f, encoding="bytes").items()}


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _unpickle(path)
        data, labels = np.asarray(d["data"]), np.asarray(d["labels"])
    except Exception as e:
        why = f"{type(e).__name__}: {e}"
        raise DataError(f"{path} is not a readable CIFAR-10 batch ({why}); it may be truncated or "
                        f"corrupted: download or rebuild the data folder.") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        problem = f"'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
    elif labels.shape != (len(data),):
        problem = f"{len(labels)} labels for {len(data)} images"
    elif len(labels) and (labels.min() < 0 or labels.max() > 9):
        problem = f"labels must be in 0..9, found {labels.min()}..{labels.max()}"
    else:
        return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)
    raise DataError(f"{path}: {problem}; rebuild the data folder.")


def _identity(folder: Path) -> str:
    if all(hashlib.md5((folder / name).read_bytes()).hexdigest() == md5
           for name, md5 in OFFICIAL_MD5.items()):
        return "official"
    batch_label = _unpickle(folder / TEST_FILE).get("batch_label", b"")
    batch_label = batch_label.decode() if isinstance(batch_label, bytes) else str(batch_label)
    return "jpeg-q75-copy" if "JPEG q75 copy" in batch_label else "unverified-copy"


def load_cifar10(data_dir=None, download_if_missing=False, expect_counts=(50000, 10000)) -> CIFAR10:
    """Read `<data_dir>/cifar-10-batches-py/` into tensors, checked; DataError says what to do."""
    root = resolve_data_dir(data_dir)
    folder = root / FOLDER
    if not all((folder / n).is_file() for n in TRAIN_FILES + [TEST_FILE, META_FILE]):
        if not download_if_missing:
            raise DataError(
                f"CIFAR-10 not found: expected {folder}/ with {', '.join(TRAIN_FILES)}, "
                f"{TEST_FILE}, {META_FILE}. Download it with `python -m resnet_cifar download "
                f"--data-dir {root}` (load_cifar10(download_if_missing=True) in Python), unpack "
                f"cifar-10-python.tar.gz there yourself, or point RESNET_CIFAR_DATA / --data-dir "
                f"at the folder that holds {FOLDER}/.")
        download(root)
    train = [_read_batch(folder / n) for n in TRAIN_FILES]
    test_x, test_y = _read_batch(folder / TEST_FILE)
    train_x, train_y = np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])
    if expect_counts and (len(train_x), len(test_x)) != tuple(expect_counts):
        raise DataError(f"{folder}: expected {expect_counts[0]} training and {expect_counts[1]} "
                        f"test images, found {len(train_x)} and {len(test_x)}; the folder is "
                        f"incomplete, rebuild it.")
    try:
        names = _unpickle(folder / META_FILE)["label_names"]
    except Exception as e:
        message = f"{folder / META_FILE} is not readable ({e}); rebuild the data folder."
        raise DataError(message) from e
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names]
    if len(classes) != 10:
        raise DataError(f"{folder / META_FILE}: expected 10 class names, found {len(classes)}.")
    return CIFAR10(*map(torch.from_numpy, (train_x, train_y, test_x, test_y)), classes,
                   _identity(folder), root)


def train_val_split(num_train: int = 50000, val_size: int = 5000, seed: int = 0):
    """The paper's 45k/5k split: (train, val) indices from a seeded permutation, each sorted."""
    if not 0 <= val_size < num_train:
        raise ValueError(f"val_size must be in [0, {num_train}), got {val_size}")
    perm = torch.randperm(num_train, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def balanced_subset(labels: torch.Tensor, n: int | None, num_classes: int = 10) -> torch.Tensor:
    """Indices of the first n/num_classes examples of each class, in their order (all for None)."""
    if n is None or n >= len(labels):
        return torch.arange(len(labels))
    if n < num_classes:
        raise ValueError(f"subset must be at least {num_classes} (one image per class), got {n}")
    per_class = [torch.nonzero(labels == c).flatten()[:n // num_classes]
                 for c in range(num_classes)]
    return torch.cat(per_class).sort().values


@dataclass
class Normalizer:
    """x -> (x/255 - mean) / std: "the per-pixel mean subtracted" (Sec. 3.4: a 3x32x32 mean image
    of the training split, std 1), per-channel mean and std (most reference code) or none."""
    mean: torch.Tensor
    std: torch.Tensor
    kind: str

    @classmethod
    def fit(cls, train_images: torch.Tensor, kind: str = "per-pixel-mean") -> Normalizer:
        x, ones = train_images.double() / 255, torch.ones(1, 1, 1)
        if kind == "per-pixel-mean":
            return cls(x.mean(0).float(), ones, kind)
        if kind == "per-channel":
            mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
            return cls(mean.float().view(3, 1, 1), std.float().view(3, 1, 1), kind)
        if kind == "none":
            return cls(torch.zeros(1, 1, 1), ones, kind)
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {kind!r}")

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(images_uint8.device), self.std.to(images_uint8.device)
        return (images_uint8.float() / 255 - mean) / std


def augment_draws(n: int, generator: torch.Generator, pad=4, crop=True, flip=True) -> torch.Tensor:
    """The random choices for n images, (n, 3) of (row offset, column offset, mirrored), drawn on
    the CPU so that every device sees the same batches; offset `pad` without crop (the original)."""
    dy = dx = torch.full((n,), pad)
    if crop and pad > 0:
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    mirror = (torch.rand(n, generator=generator) < 0.5).long() if flip else torch.zeros_like(dy)
    return torch.stack([dy, dx, mirror], 1)


def apply_augment(x: torch.Tensor, draws: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Pad-crop-flip of a batch on its device: zero-pad by `pad`, take each image's drawn window
    (one gather from an unfolded view of the padded batch) and mirror it where drawn."""
    n, c, h, w = x.shape
    dy, dx, mirror = draws.unbind(1)
    padded = F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x
    every_window = padded.unfold(2, h, 1).unfold(3, w, 1)  # a view: (n, c, 2pad+1, 2pad+1, h, w)
    windows = every_window[torch.arange(n, device=x.device), :, dy, dx]
    return torch.where(mirror.bool()[:, None, None, None], windows.flip(3), windows)


def augment(x: torch.Tensor, generator: torch.Generator, pad=4, crop=True, flip=True):
    """Random pad-crop-flip of a (normalized) batch: the padding is zeros after mean subtraction,
    as in fb.resnet.torch, so the border is the mean image."""
    return apply_augment(x, augment_draws(len(x), generator, pad, crop, flip).to(x.device), pad)


@dataclass
class PreparedData:
    """Normalized float32 tensors of the three splits, on the training device."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    normalizer: Normalizer
    dataset: CIFAR10


def prepare_data(config, device: torch.device, dataset: CIFAR10 | None = None) -> PreparedData:
    """A TrainConfig's splits (45k/5k, its subset) on `device`, normalized by the training split."""
    ds = dataset or load_cifar10(config.data_dir)
    train_idx, val_idx = train_val_split(len(ds.train_labels), config.val_size, config.split_seed)
    train_idx = train_idx[balanced_subset(ds.train_labels[train_idx], config.subset)]
    val_idx = val_idx[balanced_subset(ds.train_labels[val_idx], config.subset)]
    test_idx = balanced_subset(ds.test_labels, config.subset)
    norm = Normalizer.fit(ds.train_images[train_idx], config.normalization)
    eval_norm = norm if config.normalize_eval else Normalizer.fit(ds.train_images[:1], "none")

    def put(images, labels, index, normalizer):
        return normalizer(images[index].to(device)), labels[index].to(device)

    return PreparedData(*put(ds.train_images, ds.train_labels, train_idx, norm),
                        *put(ds.train_images, ds.train_labels, val_idx, eval_norm),
                        *put(ds.test_images, ds.test_labels, test_idx, eval_norm), norm, ds)


class TrainBatches:
    """`batches(it)`: iteration `it`'s training batch (this process's share), augmented, in the
    step's dtype and memory format. The order is seeded by (seed, epoch), the augmentation by (seed,
    iteration, rank): a resumed run sees the batches it would have seen. An epoch's draws go to the
    device in one copy."""

    def __init__(self, data: PreparedData, config, rank=0, world=1, dtype=torch.float32):
        self.x, self.y, self.config, self.dtype = data.train_x, data.train_y, config, dtype
        self.rank, self.world, self.epoch = rank, world, None
        self.per_epoch = len(self.y) // config.batch_size
        if self.per_epoch < 1:
            raise ValueError(f"the training split has {len(self.y)} images, fewer than one batch "
                             f"of {config.batch_size}; raise subset or lower batch_size")
        self.share = len(torch.arange(config.batch_size).chunk(world)[rank])

    def __call__(self, it: int) -> tuple[torch.Tensor, torch.Tensor]:
        c, device = self.config, self.x.device
        epoch, position = divmod(it, self.per_epoch)
        if epoch != self.epoch:
            g = torch.Generator().manual_seed(c.seed * 100_003 + epoch)
            self.order = torch.randperm(len(self.y), generator=g).to(device)
            gens = [torch.Generator().manual_seed((c.seed * 1_000_003 + i) * 64 + self.rank)
                    for i in range(epoch * self.per_epoch, (epoch + 1) * self.per_epoch)]
            draws = [augment_draws(self.share, gen, c.pad, c.crop, c.flip) for gen in gens]
            self.draws, self.epoch = torch.stack(draws).to(device), epoch
        batch = self.order[position * c.batch_size:(position + 1) * c.batch_size]
        index = batch.chunk(self.world)[self.rank]
        x = apply_augment(self.x[index], self.draws[position], c.pad)
        # dtype and memory format in one copy (none at all for an fp32 NCHW step)
        layout = torch.channels_last if c.channels_last else torch.contiguous_format
        return x.to(self.dtype, memory_format=layout), self.y[index]
