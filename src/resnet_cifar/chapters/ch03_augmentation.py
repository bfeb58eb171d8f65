"""Chapter 3's computations: the log's test without the per-pixel mean, on the baseline's model."""
from __future__ import annotations

import torch

from .. import analysis as A
from .. import data as D
from ..analysis import fmt
from ..compare import comparison
from ..config import TrainConfig
from ..data import prepare_data
from ..runs import RunResult
from ..train import evaluate


def mean_probe(ch, baseline: RunResult, without_mean: RunResult | None) -> dict:
    """`baseline`'s final model evaluated on the test images with and without the mean
    subtracted (normalize_eval=False: the log's test), and how far the training errors of
    `without_mean` (a run that tests without the mean; None where the profile trains none)
    and the baseline differ: the `aug_*` values of chapter 3."""
    if without_mean is None:
        facts = {"aug_train_same": "its training is the baseline's, batch for batch (this profile does not train it, "
                                   "so no curve shows that)",
                 "aug_train_summary": "training never sees how the test images are normalized"}
    else:
        points = A.curve_gap(baseline, without_mean, "train_error")
        gap = fmt(points, ".2f")
        if points is not None and points < 0.5:
            facts = {"aug_train_same": "the training curves coincide (largest difference in training error between "
                                       f"the two runs: {gap} points)",
                     "aug_train_summary": "the training curves of the two runs match"}
        else:
            facts = {"aug_train_same": f"the training curves should coincide; here they differ by up to {gap} points "
                                       "of training error",
                     "aug_train_summary": f"the training curves of the two runs differ by up to {gap} points"}
    model = baseline.load_model().to(ch.torch_device) if baseline.has_weights else None
    for key, normalize_eval in (("with", True), ("without", False)):
        err = top = None
        if model is not None:
            config = TrainConfig(**{**baseline.config, "normalize_eval": normalize_eval})
            data = prepare_data(config, ch.torch_device, ch.dataset)
            result = evaluate(model, data.test_x, data.test_y)
            predicted = result["confusion"].sum(0)
            err, top = 100 * result["error"], 100 * predicted.max().item() / max(predicted.sum().item(), 1)
        facts.update({f"aug_err_{key}": fmt(err), f"aug_top_{key}": fmt(top, ".0f")})
    return facts


def augmentation_views(dataset, count: int, mean_sample: int, seed: int, title: str = ""):
    """One training image of each of the first `count` classes, then three draws of the paper's
    pad-4 crop + flip (the mean added back for display, so the padding shows as the mean)."""
    idx = D.balanced_subset(dataset.train_labels, 10)[:count]
    images = dataset.train_images[idx]
    normalizer = D.Normalizer.fit(dataset.train_images[:mean_sample], "per-pixel-mean")
    g = torch.Generator().manual_seed(seed)
    views = [normalizer(images)] + [D.augment(normalizer(images), g) for _ in range(3)]
    titles = [dataset.classes[int(c)] for c in dataset.train_labels[idx]]
    titles += [f"draw {k}" for k in (1, 2, 3) for _ in range(count)]
    pixels = [((v + normalizer.mean) * 255).round().clamp(0, 255).to(torch.uint8) for v in views]
    return A.image_grid(torch.cat(pixels), titles, ncols=count, title=title)


def normalization_facts(dataset, mean_sample: int, title: str = "") -> tuple[object, dict]:
    """The per-pixel mean of the first `mean_sample` training images next to one image and that
    image minus the mean (figure), and the mean's range, channel averages and the per-channel
    std (the augmentation chapter's `aug_*` values)."""
    sample = dataset.train_images[:mean_sample]
    pixel, channel = D.Normalizer.fit(sample, "per-pixel-mean"), D.Normalizer.fit(sample, "per-channel")
    first = int(D.balanced_subset(dataset.train_labels, 10)[0])
    image = dataset.train_images[first]
    panel = torch.stack([pixel.mean, image.float() / 255, pixel(image[None])[0]])
    example = dataset.classes[int(dataset.train_labels[first])]
    fig = A.image_grid(panel, ["mean image", f"a {example}", "minus the mean"], ncols=3, title=title)
    facts = {"aug_mean_n": f"{len(sample):,}", "aug_mean_min": f"{pixel.mean.min():.3f}",
             "aug_mean_max": f"{pixel.mean.max():.3f}",
             "aug_mean_rgb": ", ".join(f"{float(v):.3f}" for v in pixel.mean.mean((1, 2))),
             "aug_std_rgb": ", ".join(f"{float(v):.3f}" for v in channel.std.flatten())}
    return fig, facts


def augmentation_facts(ch, arms: dict[str, list[RunResult]]) -> tuple[object, dict]:
    """The augmentation ablation over seeds (table) and its `aug_*` text values: each arm's
    error ('–' for an arm this profile does not train) and the baseline's train/test gap."""
    own = ch.own_seed(arms)
    baseline = own["crop + flip (paper)"]
    table, facts = comparison(ch, arms, "crop + flip (paper)", "Augmentation ablation", "aug")
    facts.update(ch.errors({"aug_none_err": own.get("no augmentation"), "aug_cropflip_err": baseline,
                            "aug_flip_err": own.get("flip only")}))
    return table, {**facts, "aug_gap_train_test": A.train_test_gap(baseline)}
