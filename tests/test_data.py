"""CIFAR-10 loading, the 45k/5k split, subsets, normalization and augmentation."""
import pickle
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import CLASSES, missing, real_data_dir
from resnet_cifar import data as D
from resnet_cifar.config import TrainConfig
from resnet_cifar.data import prepare_data


# ---------------------------------------------------------------- loading

def test_load_synthetic_official_layout(cifar_folder):
    ds = D.load_cifar10(cifar_folder, expect_counts=(100, 30))
    assert ds.train_images.shape == (100, 3, 32, 32) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (30, 3, 32, 32) and ds.test_images.dtype == torch.uint8
    assert ds.train_labels.dtype == torch.int64 and ds.train_labels.shape == (100,)
    assert ds.classes == CLASSES
    assert ds.identity == "unverified-copy"
    assert ds.label == "CIFAR-10 (unverified copy)"
    assert ds.root == Path(cifar_folder)
    # the tensors are the pickled bytes, batch after batch, reshaped to (3, 32, 32)
    with open(cifar_folder / D.FOLDER / "data_batch_2", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    assert torch.equal(ds.train_images[20:40].reshape(20, -1), torch.from_numpy(batch[b"data"]))
    assert ds.train_labels[20:40].tolist() == batch[b"labels"]
    with open(cifar_folder / D.FOLDER / "test_batch", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    assert ds.test_labels.tolist() == batch[b"labels"]
    # channel-major layout: the first 1024 bytes are the red plane
    assert torch.equal(ds.test_images[3, 0].flatten(), torch.from_numpy(batch[b"data"][3, :1024]))


def test_expected_counts_are_checked(cifar_folder):
    with pytest.raises(D.DataError, match=r"expected 50000 training and 10000 test images, found 100 and 30"):
        D.load_cifar10(cifar_folder)


def test_real_copy_when_present():
    root = real_data_dir()
    if root is None:
        missing("no CIFAR-10 in $RESNET_CIFAR_DATA or ./data (make data)")
    ds = D.load_cifar10(root)
    assert (len(ds.train_labels), len(ds.test_labels)) == (50000, 10000)
    assert ds.train_images.shape == (50000, 3, 32, 32)
    assert torch.bincount(ds.train_labels).tolist() == [5000] * 10
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10
    assert ds.classes == CLASSES
    assert ds.identity in ("jpeg-q75-copy", "official")
    if ds.identity == "jpeg-q75-copy":
        assert "JPEG q75 copy" in ds.label
    else:
        assert "official" in ds.label


def test_resolve_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RESNET_CIFAR_DATA", raising=False)
    assert D.resolve_data_dir() == Path("data")
    monkeypatch.setenv("RESNET_CIFAR_DATA", "/somewhere/cifar")
    assert D.resolve_data_dir() == Path("/somewhere/cifar")
    assert D.resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_resolve_order_loads_from_env_then_cwd(tmp_path, monkeypatch):
    from conftest import write_cifar
    write_cifar(tmp_path / "data", per_batch=10, n_test=10, seed=1)
    write_cifar(tmp_path / "env", per_batch=10, n_test=20, seed=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RESNET_CIFAR_DATA", raising=False)
    assert len(D.load_cifar10(expect_counts=None).test_labels) == 10  # ./data
    monkeypatch.setenv("RESNET_CIFAR_DATA", str(tmp_path / "env"))
    assert len(D.load_cifar10(expect_counts=None).test_labels) == 20  # env beats ./data
    assert len(D.load_cifar10(tmp_path / "data", expect_counts=None).test_labels) == 10  # explicit beats env


def test_download_offline_fails_fast(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(D.DataError) as info:
        D.load_cifar10(tmp_path / "nowhere", download_if_missing=True)
    message = str(info.value)
    assert "download of CIFAR-10 failed (URLError" in message
    assert "RESNET_CIFAR_DATA" in message and str(tmp_path / "nowhere" / D.FOLDER) in message
    assert "cifar-10-python.tar.gz" in message
    assert len(calls) == 1 and "cs.toronto.edu" in calls[0][0]
    with pytest.raises(D.DataError, match="download of CIFAR-10 failed"):
        D.download(tmp_path / "nowhere")


# ---------------------------------------------------------------- split and subsets

def test_train_val_split():
    train, val = D.train_val_split(50000, 5000, seed=0)
    assert (len(train), len(val)) == (45000, 5000)
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(50000))
    again_train, again_val = D.train_val_split(50000, 5000, seed=0)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    _, other_val = D.train_val_split(50000, 5000, seed=1)
    assert not torch.equal(val, other_val)
    assert torch.equal(val, val.sort().values)
    with pytest.raises(ValueError, match="val_size"):
        D.train_val_split(100, 100)


def test_balanced_subset(dataset):
    labels = dataset.train_labels
    idx = D.balanced_subset(labels, 250)
    assert len(idx) == 250
    assert torch.bincount(labels[idx], minlength=10).tolist() == [25] * 10
    assert torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == 250
    # the first 25 of each class, in order
    for c in range(10):
        assert torch.equal(idx[labels[idx] == c], torch.nonzero(labels == c).flatten()[:25])
    assert torch.equal(D.balanced_subset(labels, None), torch.arange(len(labels)))
    with pytest.raises(ValueError, match="at least 10"):
        D.balanced_subset(labels, 5)


def test_prepare_data_subset_sizes(dataset):
    data = prepare_data(TrainConfig(subset=256), torch.device("cpu"), dataset)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (250, 250, 250)
    assert data.train_x.dtype == torch.float32 and data.train_x.shape == (250, 3, 32, 32)
    for y in (data.train_y, data.val_y, data.test_y):
        assert torch.bincount(y, minlength=10).tolist() == [25] * 10


# ---------------------------------------------------------------- normalization

def test_mean_image_is_per_pixel_mean_of_train_split(cifar_folder):
    ds = D.load_cifar10(cifar_folder, expect_counts=None)
    config = TrainConfig(val_size=20, split_seed=3)
    data = prepare_data(config, torch.device("cpu"), ds)
    train_idx, val_idx = D.train_val_split(100, 20, 3)
    expected = ds.train_images[train_idx].double().mean(0) / 255
    assert data.normalizer.kind == "per-pixel-mean"
    assert data.normalizer.mean.shape == (3, 32, 32)
    assert torch.allclose(data.normalizer.mean.double(), expected, atol=1e-6)
    # the validation images are not part of the mean
    assert not torch.allclose(data.normalizer.mean.double(), ds.train_images.double().mean(0) / 255, atol=1e-6)
    # the eval path is exactly normalizer(images): no augmentation, no other change
    assert torch.equal(data.val_x, data.normalizer(ds.train_images[val_idx]))
    assert torch.equal(data.test_x, data.normalizer(ds.test_images))
    assert torch.equal(data.train_x, data.normalizer(ds.train_images[train_idx]))
    assert torch.equal(data.val_y, ds.train_labels[val_idx])


def test_eval_without_mean_subtraction(cifar_folder):
    ds = D.load_cifar10(cifar_folder, expect_counts=None)
    data = prepare_data(TrainConfig(val_size=20, normalize_eval=False), torch.device("cpu"), ds)
    assert torch.equal(data.test_x, ds.test_images.float() / 255)
    assert data.train_x.mean().abs() < 1e-3  # training inputs still mean-subtracted


def test_per_channel_and_none(cifar_folder):
    ds = D.load_cifar10(cifar_folder, expect_counts=None)
    norm = D.Normalizer.fit(ds.train_images, "per-channel")
    assert norm.mean.shape == norm.std.shape == (3, 1, 1)
    x = norm(ds.train_images).double()
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3, dtype=torch.double), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3, dtype=torch.double), atol=1e-4)
    assert torch.equal(D.Normalizer.fit(ds.train_images, "none")(ds.train_images), ds.train_images.float() / 255)
    with pytest.raises(ValueError, match=r"normalization must be one of \('per-pixel-mean', 'per-channel', 'none'\)"):
        D.Normalizer.fit(ds.train_images, "zca")


# ---------------------------------------------------------------- augmentation

def _windows(x, pad=4):
    """All (2*pad+1)^2 32x32 windows of each zero-padded image: (N, 81, C, 32, 32)."""
    padded = F.pad(x, (pad, pad, pad, pad))
    return torch.stack([padded[:, :, dy:dy + 32, dx:dx + 32]
                        for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)], 1)


def test_crop_is_a_window_of_the_padded_image():
    x = torch.randn(200, 3, 32, 32)
    out = D.augment(x, torch.Generator().manual_seed(0), pad=4, crop=True, flip=False)
    assert out.shape == x.shape and out.dtype == x.dtype
    match = (_windows(x) == out[:, None]).flatten(2).all(2)  # (N, 81)
    assert match.any(1).all()
    offsets = match.float().argmax(1)
    dy, dx = offsets // 9, offsets % 9
    assert dy.min() == 0 and dy.max() == 8 and dx.min() == 0 and dx.max() == 8
    assert (offsets != 40).sum() > 150  # most crops are shifted


def test_crop_and_flip_together():
    x = torch.randn(100, 3, 32, 32)
    out = D.augment(x, torch.Generator().manual_seed(1))
    windows = _windows(x)
    plain = (windows == out[:, None]).flatten(2).all(2).any(1)
    mirrored = (windows == out.flip(3)[:, None]).flatten(2).all(2).any(1)
    assert (plain | mirrored).all()
    assert plain.any() and mirrored.any()


def test_flip_rate_is_one_half():
    n = 4000
    x = torch.randn(n, 1, 4, 32)
    out = D.augment(x, torch.Generator().manual_seed(2), crop=False, flip=True)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped ^ kept).all()
    # Binomial(4000, 0.5): mean 2000, sd 31.6; +-5 sd
    assert 1842 < flipped.sum().item() < 2158


def test_augment_switches_and_determinism():
    x = torch.randn(16, 3, 32, 32)
    assert torch.equal(D.augment(x, torch.Generator().manual_seed(0), crop=False, flip=False), x)
    assert torch.equal(D.augment(x, torch.Generator().manual_seed(0), pad=0, flip=False), x)
    a = D.augment(x, torch.Generator().manual_seed(5))
    b = D.augment(x, torch.Generator().manual_seed(5))
    c = D.augment(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_draws_then_gather_is_augment():
    """`augment` = `augment_draws` (CPU) + `apply_augment` (one gather on the device): the
    split lets the trainer draw a whole epoch at once and copy it to a GPU in one go."""
    x = torch.randn(64, 3, 32, 32)
    for crop, flip in [(True, True), (True, False), (False, True)]:
        draws = D.augment_draws(64, torch.Generator().manual_seed(3), 4, crop, flip)
        assert draws.shape == (64, 3) and draws.dtype == torch.long
        assert torch.equal(D.apply_augment(x, draws, 4), D.augment(x, torch.Generator().manual_seed(3), 4, crop, flip))
    dy, dx, mirror = D.augment_draws(2000, torch.Generator().manual_seed(4)).unbind(1)
    assert dy.min() == dx.min() == 0 and dy.max() == dx.max() == 8 and set(mirror.tolist()) == {0, 1}
    still = D.augment_draws(10, torch.Generator().manual_seed(4), pad=4, crop=False, flip=False)
    assert still.tolist() == [[4, 4, 0]] * 10  # the centre window: the original image
    assert torch.equal(D.apply_augment(x[:10], still, 4), x[:10])
    one = torch.tensor([[0, 8, 1]])  # top-right window of the padded image, mirrored
    expected = F.pad(x[:1], (4, 4, 4, 4))[:, :, 0:32, 8:40].flip(3)
    assert torch.equal(D.apply_augment(x[:1], one, 4), expected)


def _per_pixel_gather(x, draws, pad=4):
    """The augmentation written as one index per pixel dimension (the library's original
    formulation): the pixels every cheaper formulation must reproduce bit for bit."""
    n, c, h, w = x.shape
    dy, dx, mirror = draws.unbind(1)
    padded = F.pad(x, (pad, pad, pad, pad))
    i, j = torch.arange(h), torch.arange(w)
    rows = (dy[:, None] + i)[:, None, :, None]
    cols = (dx[:, None] + torch.where(mirror[:, None].bool(), w - 1 - j, j))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def test_augmentation_is_bit_identical_to_the_per_pixel_gather():
    """Every offset and mirror, several pads, float32/float64, NCHW and channels_last inputs."""
    g = torch.Generator().manual_seed(7)
    for pad, dtype, channels_last in [(4, torch.float32, False), (4, torch.float64, False), (4, torch.float32, True),
                                      (2, torch.float32, False), (0, torch.float32, False)]:
        x = torch.randn(300, 3, 32, 32, generator=g, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        draws = D.augment_draws(300, torch.Generator().manual_seed(pad), pad)
        out = D.apply_augment(x, draws, pad)
        assert out.dtype == dtype and torch.equal(out, _per_pixel_gather(x, draws, pad))
    # all 81 windows, each plain and mirrored
    x = torch.randn(162, 3, 32, 32, generator=g)
    every = torch.tensor([[dy, dx, m] for dy in range(9) for dx in range(9) for m in (0, 1)])
    assert torch.equal(D.apply_augment(x, every), _per_pixel_gather(x, every))


def test_trainer_batches_in_the_step_format(dataset):
    """channels_last and float64 steps get the same pixels, in their layout and dtype."""
    base = TrainConfig(subset=256, batch_size=32, seed=1)
    data = prepare_data(base, torch.device("cpu"), dataset)
    ref, _ = D.TrainBatches(data, base)(3)
    for channels_last, dtype in [(True, torch.float32), (False, torch.float64), (True, torch.float64)]:
        config = TrainConfig(subset=256, batch_size=32, seed=1, channels_last=channels_last)
        x, _ = D.TrainBatches(data, config, dtype=dtype)(3)
        assert x.dtype == dtype and x.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert torch.equal(x, ref.to(dtype))
