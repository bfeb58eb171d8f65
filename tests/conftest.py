"""Shared fixtures: a synthetic CIFAR-10 folder in the official python layout, the real
data (the JPEG q75 copy or the official files) when present, and tiny training configs.

Every test runs on the CPU with one thread (`RESNET_CIFAR_TEST_THREADS` overrides it), so
bit-for-bit comparisons between processes hold and several test runs can share a machine:
`make test` runs two test files at a time (pytest-xdist, `--dist loadfile`, so a module's
fixtures such as the book build are made once).
"""
from __future__ import annotations

import ast
import functools
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import nbformat
import numpy as np
import pytest
import torch

from resnet_cifar import data as D

THREADS = int(os.environ.get("RESNET_CIFAR_TEST_THREADS", "1"))
torch.set_num_threads(THREADS)

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def real_data_dir() -> Path | None:
    """$RESNET_CIFAR_DATA, then <project>/data, if it holds a complete cifar-10-batches-py/."""
    for candidate in (os.environ.get("RESNET_CIFAR_DATA"), ROOT / "data"):
        if candidate and all((Path(candidate) / D.FOLDER / n).is_file()
                             for n in D.TRAIN_FILES + [D.TEST_FILE, D.META_FILE]):
            return Path(candidate)
    return None


def synthetic_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """uint8 (N, 3072) images a small network can learn: a class colour plus noise."""
    rng = np.random.default_rng(seed)
    colours = np.random.default_rng(1234).integers(40, 216, size=(10, 3, 1, 1))
    x = colours[labels] + rng.normal(0, 30, size=(len(labels), 3, 32, 32))
    return np.clip(x, 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def write_cifar(root: Path, per_batch: int = 20, n_test: int = 30, seed: int = 0,
                batch_label: bytes = b"synthetic batch") -> Path:
    """Write `root/cifar-10-batches-py/` like the official python-2 pickles (bytes keys,
    uint8 (N, 3072) data, list labels): 5 training batches of `per_batch` images and a
    test batch of `n_test`. Returns `root`."""
    folder = Path(root) / D.FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, name in enumerate(D.TRAIN_FILES + [D.TEST_FILE]):
        n = n_test if name == D.TEST_FILE else per_batch
        labels = rng.permutation(np.arange(n) % 10)
        batch = {b"batch_label": batch_label, b"labels": [int(v) for v in labels],
                 b"data": synthetic_images(labels, seed * 10 + i),
                 b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}
    with open(folder / D.META_FILE, "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return Path(root)


@pytest.fixture
def cifar_folder(tmp_path):
    """A small synthetic data folder: 100 training and 30 test images."""
    return write_cifar(tmp_path / "cifar", per_batch=20, n_test=30)


@pytest.fixture(scope="session")
def training_data(tmp_path_factory):
    """(data_dir, expect_counts, dataset) for training tests: the real data when present,
    otherwise a synthetic folder big enough for the 45k/5k-style split of a subset run
    (6,000 training images, so val_size=5000 still leaves 1,000 to train on)."""
    root = real_data_dir()
    if root is not None:
        return root, (50000, 10000), D.load_cifar10(root)
    root = write_cifar(tmp_path_factory.mktemp("synthetic-cifar"), per_batch=1200, n_test=1000)
    return root, (6000, 1000), D.load_cifar10(root, expect_counts=(6000, 1000))


@pytest.fixture(scope="session")
def dataset(training_data):
    return training_data[2]


@pytest.fixture
def tiny(tmp_path, training_data):
    """Keyword arguments for a seconds-long CPU run: ResNet-8 (n=1), 250-image subsets,
    batch 32, runs under tmp_path/runs."""
    return dict(depth=8, subset=256, batch_size=32, iterations=6, eval_every=3, device="cpu",
                progress="none", runs_dir=str(tmp_path / "runs"), data_dir=str(training_data[0]))


# ---------------------------------------------------------------- what the user built is left alone

WATCHED = ("_build", "runs", "data")  # the user's book, runs and data: the tests work in temporary folders


def user_files() -> set[str]:
    """The files under the user's _build/, runs/ and data/ (a training's transient files aside)."""
    return {str(p.relative_to(ROOT)) for top in WATCHED for p in (ROOT / top).rglob("*")
            if p.is_file() and not p.name.endswith(".tmp") and p.name != ".lock"}


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # once, in the process that runs (or hands out) the tests
        session.config.user_files = user_files()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "user_files", None)
    if before is None or hasattr(session.config, "workerinput"):
        return
    after = user_files()
    changed = [f"+ {p}" for p in sorted(after - before)] + [f"- {p}" for p in sorted(before - after)]
    if changed:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = (f"the tests changed {len(changed)} file(s) of the user's {', '.join(WATCHED)} (they must work in "
                "temporary folders):\n" + "\n".join(changed[:20]))
        reporter.write_line(text, red=True) if reporter else print(text)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def missing(reason: str) -> None:
    """Skip a test whose data or records are not here, except in CI (CI=true), which has them
    all: there a missing input is a failure, never a silent skip."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (required when CI=true)")
    pytest.skip(reason)


DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.Assign)


@functools.cache
def page_code(page: str) -> SimpleNamespace:
    """The functions a page defines in its hidden cells (tagged hide-input, holding only imports,
    constants and functions), run on their own: the code the page runs, for tests."""
    namespace = {}
    for cell in nbformat.read(ROOT / "book" / f"{page}.ipynb", as_version=4).cells:
        body = ast.parse(cell.source).body if cell.cell_type == "code" else []
        if ("hide-input" in cell.metadata.get("tags", []) and any(isinstance(s, ast.FunctionDef) for s in body)
                and all(isinstance(s, DEFINITIONS) for s in body)):
            exec(compile(cell.source, f"{page}.ipynb", "exec"), namespace)
    return SimpleNamespace(**namespace)
