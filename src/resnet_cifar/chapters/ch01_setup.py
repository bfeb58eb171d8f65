"""Chapter 1's computations: the recipe as text values, the 45k/5k split, the per-pixel mean,
sample images, the machine and the data's identity."""
from __future__ import annotations

import os
import platform

import matplotlib.pyplot as plt
import pandas as pd
import torch

from .. import analysis as A
from .. import data as D
from ..devices import device_label
from ..records import shown_path


def recipe(ch) -> dict:
    """The configuration this profile trains with, as the page's `cfg_*` text values."""
    cfg = ch.config("recipe")
    values = {
        "lr": cfg.lr, "gamma": cfg.gamma, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay,
        "batch_size": cfg.batch_size, "iterations": f"{cfg.iterations:,}",
        "milestones": " and ".join(f"{m:,}" for m in cfg.milestones), "val_size": f"{cfg.val_size:,}",
        "pad": cfg.pad, "crop": cfg.crop, "flip": cfg.flip, "normalization": cfg.normalization,
        "normalize_eval": cfg.normalize_eval, "optimizer": cfg.optimizer, "shortcut": cfg.shortcut,
        "subset": "all images" if cfg.subset is None else f"{cfg.subset // 10 * 10:,} images per split",
        "profile": ch.profile,
    }
    return {f"cfg_{k}": str(v) for k, v in values.items()}


def split(ch) -> tuple[torch.Tensor, torch.Tensor]:
    """The 45k/5k split of this profile's configuration: (train indices, val indices)."""
    cfg = ch.config("split")
    return D.train_val_split(len(ch.dataset.train_labels), cfg.val_size, cfg.split_seed)


def split_counts(ch) -> tuple["pd.io.formats.style.Styler", dict]:
    """Images per class in the training split, the validation split and the test set
    (table), and the split sizes and this profile's subset sizes (the page's text values)."""
    ds, cfg = ch.dataset, ch.config("split")
    train_idx, val_idx = split(ch)
    used = {"train": ds.train_labels[train_idx], "val": ds.train_labels[val_idx], "test": ds.test_labels}
    facts = {"n_train": f"{len(train_idx):,}", "n_val": f"{len(val_idx):,}", "n_test": f"{len(ds.test_labels):,}"}
    facts.update({f"n_{k}_used": f"{len(D.balanced_subset(v, cfg.subset)):,}" for k, v in used.items()})
    counts = pd.DataFrame({name: torch.bincount(labels, minlength=10).tolist() for name, labels in
                           zip(("train split", "val split", "test set"), used.values())},
                          index=pd.Index(ds.classes, name="class"))
    counts.loc["total"] = counts.sum()
    return A.styled(counts, ch.caption("Images per class in the 45k/5k split and the test set")), facts


def mean_image(ch) -> tuple[object, dict]:
    """The per-pixel mean of the training split next to one training image (figure), and its
    channel averages (`mean_rgb`)."""
    train_idx, _ = split(ch)
    normalizer = D.Normalizer.fit(ch.dataset.train_images[train_idx], "per-pixel-mean")
    first = int(train_idx[0])
    fig = mean_image_panels(normalizer, ch.dataset.train_images[first],
                              ch.dataset.classes[int(ch.dataset.train_labels[first])],
                              title=ch.caption("Per-pixel mean of the training split"))
    rgb = ", ".join(f"{v:.3f}" for v in normalizer.mean.mean((1, 2)).tolist())
    return fig, {"mean_rgb": rgb}


def samples(ch, per_class: int):
    """The first `per_class` training images of each class, one column per class (figure)."""
    train_idx, _ = split(ch)
    return class_samples(ch.dataset, train_idx, per_class,
                           title=ch.caption(f"The first {per_class} training images of each class"))


def machine(ch) -> tuple["pd.io.formats.style.Styler", dict]:
    """The machine this page was built on (table) and its `machine_*` text values."""
    device = ch.torch_device
    rows = {"python": platform.python_version(), "torch": torch.__version__,
            "device requested": ch.device, "device used": str(device), "device name": device_label(device),
            "CUDA GPUs visible": torch.cuda.device_count(), "CPU cores": os.cpu_count(),
            "torch threads": torch.get_num_threads(), "operating system": platform.system()}
    facts = {"machine_" + k.replace(" ", "_"): str(v) for k, v in rows.items()}
    here = f"{device} ({rows['device name']}) with torch {rows['torch']} on {rows['CPU cores']} CPU cores"
    if ch.records is not None:  # a build from committed records trains nothing
        trained = sorted({r["device_name"] for r in ch.records.get("runs", {}).values() if r.get("device_name")})
        facts["machine_runs"] = (f"This build trains nothing: it reads the committed records of profile {ch.profile}, "
                                 f"trained on {', '.join(trained) or 'devices they do not name'} with "
                                 f"{ch.runs_label}. This machine (where make book PROFILE={ch.profile} would "
                                 f"train them again): {here}.")
    else:
        facts["machine_runs"] = f"So the runs of this build train on {here}."
    table = pd.DataFrame({"value": {k: str(v) for k, v in rows.items()}}).rename_axis("")
    return A.styled(table, ch.caption("The machine of this build")), facts


def data_identity(ch) -> dict:
    """Which CIFAR-10 this build read, and what that means for its numbers (`ds_*` values)."""
    ds = ch.dataset
    if ds.identity == "official":
        verdict = ("These are the official CIFAR-10 files. Error rates of the paper profile can be compared "
                   "with the paper's; those of the smoke and quick profiles cannot (shorter budgets).")
    else:
        verdict = (f"This is not the official CIFAR-10 but '{ds.label}'. Every image was re-encoded (for the "
                   "JPEG copy: JPEG quality 75 with 4:2:0 chroma subsampling), which blurs exactly the fine "
                   "detail a 32×32 classifier relies on. Error rates on it are NOT comparable with the "
                   "paper's 7.51 %. What the copy costs, as far as this book can tell: the data's notes "
                   "report that a reference ResNet-32 trained on the real CIFAR-10 (92.8 % test accuracy) "
                   "scores 82.6 % on this copy's test split, about 10 points lost; that is a model trained "
                   "on the real images and tested on the copy. No run of this book was trained on the "
                   "official data, so what training *and* testing on the copy costs is not measured here.")
    if ch.here():
        verdict += (f" The runs this build renders are published records trained and tested on {ch.runs_label}: "
                    "their numbers belong to that copy; this folder's images are what the figures show.")
    return {"ds_root": shown_path(ds.root), "ds_identity": ds.identity, "ds_label": ds.label,
            "ds_verdict": verdict}


def mean_image_panels(normalizer, image: torch.Tensor, class_name: str, title: str = ""):
    """The per-pixel mean and one uint8 image, at true scale and stretched to each panel's own
    range, and the image minus the mean (stretched)."""
    def stretch(img):
        return (img - img.min()) / (img.max() - img.min() + 1e-8)

    panels = {"mean image (true scale)": normalizer.mean, f"a {class_name} (true scale)": image.float() / 255,
              "mean image (stretched)": stretch(normalizer.mean),
              "the image minus the mean (stretched)": stretch(normalizer(image[None])[0])}
    fig, axes = plt.subplots(1, 4, figsize=(10, 3.2))
    for ax, (name, img) in zip(axes, panels.items()):
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(name, fontsize=10, wrap=True)
        ax.axis("off")
    if title:
        fig.suptitle(title, wrap=True)
    fig.tight_layout()
    return A.detached(fig)


def class_samples(dataset, indices: torch.Tensor, per_class: int, title: str = ""):
    """The first `per_class` images of each class among `indices`: one column per class."""
    labels = dataset.train_labels[indices]
    per = torch.stack([indices[labels == c][:per_class] for c in range(len(dataset.classes))])
    order = per.T.flatten()  # one row per rank, one column per class
    return A.image_grid(dataset.train_images[order], [dataset.classes[int(dataset.train_labels[i])] for i in order],
                      ncols=len(dataset.classes), title=title)


def verification(ch) -> tuple["pd.io.formats.style.Styler", dict]:
    """The committed check of a published run of this page's data (`records --verify`, saved in
    book/records/verify-*.json): its rows (record, here, difference) and `ver_*` text values."""
    import json
    from ..records import RECORDS, project_root
    found = [json.loads(p.read_text()) for p in sorted((project_root() / RECORDS).glob("verify-*.json"))]
    found = [v for v in found if v["dataset"] == ch.runs_data]
    if not found:
        return A.styled(pd.DataFrame(), "No committed verification for this data"), {
            "ver_command": "–", "ver_sentence": f"No committed run of {ch.runs_label} has been verified yet."}
    v = found[0]
    table = pd.DataFrame(v["rows"]).rename(columns={"diff": "|Δ|"}).set_index(["iteration", "quantity"])
    facts = {"ver_command": f".venv/bin/python -m resnet_cifar records --verify {v['run']} --iterations "
                            f"{v['iterations']}",
             "ver_sentence": f"{v['sentence'].rstrip('.')} (checked {v['checked']} at commit {v['commit']}, on "
                             f"{v['here_device']}, torch {v['here_torch']}; the record: {v['record_device']}, torch "
                             f"{v['record_torch']})."}
    return A.styled(table, f"records --verify {v['run']}: each value of the record's history rows and the "
                           f"retrained one — {D.dataset_label(v['dataset'])}", 6), facts
