"""Every experiment of the book, declared once: each chapter's arms as a function of its
parameters (their defaults are its `parameters` cell's values). A chapter trains what its function
returns for its values; `plan.py` calls it with the defaults, so the plan is what the default book
trains. A function returns sections (one per table or figure): label -> arm, an arm being run
name -> config overrides, one run per seed. Run names are the run folders: `<model>-seed<k>` for
the model runs, `<arm>` for the chapter's own seed and `<arm>-seed<k>` for the others.
"""
from __future__ import annotations

import hashlib
import inspect
import json
from functools import partial

from .config import TrainConfig, profile_config

# Seeds per compared arm and for the headline ResNet-32, by profile: a difference between two
# arms is only read as one when it is larger than the seeds' spread (analysis.verdict).
SEEDS_PER_ARM = {"smoke": 1, "cpu": 2, "quick": 3, "paper": 3}
HEADLINE_SEEDS = {"smoke": 2, "cpu": 3, "quick": 5, "paper": 5}
WARMUP_110 = 0.8  # ResNet-110 (Sec. 4.2): lr 0.01 until the training error is below 80 %

Arm = dict[str, dict]  # run name -> config overrides (seed included)
Sections = dict[str, dict[str, Arm]]  # section -> label -> arm


class ExperimentError(ValueError):
    """A profile, chapter, parameter or run that the experiments do not know."""


class CpuArm(dict):
    """An arm that the cpu profile trains too (see `cpu`)."""


def cpu(arm: Arm, trained: bool = True) -> Arm:
    """Mark `arm` (when `trained`) as one the cpu profile trains: a comparison its 1,600 iterations
    resolve within hours of a 2-core CPU. The cpu profile leaves a chapter's other default arms
    out (its page says which); arms that other parameter values add always train."""
    return CpuArm(arm) if trained else arm


def arm_seeds(profile: str, seed: int = 0) -> tuple[int, ...]:
    """The seeds each compared arm of a chapter trains with: `seed`, `seed + 1`, ..."""
    return tuple(range(seed, seed + SEEDS_PER_ARM[profile]))


def headline_seeds(profile: str) -> tuple[int, ...]:
    """The seeds of the headline ResNet-32 (introduction, chapters 6 and 7): 0, 1, ..."""
    return tuple(range(HEADLINE_SEEDS[profile]))


def _given(overrides: dict, seed: int) -> dict:
    """`overrides` without TrainConfig's own values, plus the seed: one spelling per run."""
    return {**{k: v for k, v in overrides.items() if getattr(TrainConfig, k) != v}, "seed": seed}


def seeded(profile: str, seed: int, name: str, **overrides) -> Arm:
    """Arm `name` over `arm_seeds`: `name` for the chapter's seed, `name-seed<k>` for the others."""
    return {(name if s == seed else f"{name}-seed{s}"): _given(overrides, s)
            for s in arm_seeds(profile, seed)}


def model_runs(seeds, model: str, **overrides) -> Arm:
    """The runs `<model>-seed<k>` of one model for each seed in `seeds`."""
    return {f"{model}-seed{s}": _given(overrides, s) for s in seeds}


def baseline(profile: str, seed: int) -> Arm:
    """The paper's ResNet-32 over the arm seeds: the reference of every comparison."""
    return cpu(model_runs(arm_seeds(profile, seed), "resnet32"))


# ---------------------------------------------------------------- the chapters

def model(profile: str = "smoke", seed: int = 0, fig6_depths=(20, 32), log_patience: int = 1000,
          plateau_threshold: float = 1e-5) -> Sections:
    """Chapter 2: the log's ImageNet ResNet-34 (paper schedule; the log's plateau; without crop)
    against ResNet-32, option A against B shortcuts, and Fig. 6's plain vs residual nets."""
    plateau = dict(schedule="plateau", plateau_patience=log_patience,
                   plateau_threshold=plateau_threshold)
    seeds, r34 = arm_seeds(profile, seed), "resnet34-imagenet"
    return {
        "imagenet": {
            "ResNet-32 (the paper's model)": baseline(profile, seed),
            "ResNet-34 (ImageNet), paper schedule": cpu(model_runs(seeds, r34, arch=r34)),
            "ResNet-34 (ImageNet), log's plateau":
                model_runs(seeds, f"{r34}-plateau", arch=r34, **plateau),
            "ResNet-34 (ImageNet), log's plateau, no crop":
                model_runs(seeds, f"{r34}-plateau-nocrop", arch=r34, crop=False, **plateau)},
        "shortcuts": {
            "ResNet-32, option A": baseline(profile, seed),
            "ResNet-32, option B": model_runs(seeds, "resnet32-optionB", shortcut="B"),
            "ResNet-32, option B without BN":
                model_runs(seeds, "resnet32-optionB-nobn", shortcut="B-no-bn")},
        "plain": {f"plain-{d}": cpu(model_runs([seed], f"plain{d}", arch="plain", depth=d), d == 20)
                  for d in fig6_depths},
        "residual": {f"ResNet-{d}": cpu(model_runs([seed], f"resnet{d}", depth=d), d in (20, 32))
                     for d in fig6_depths},
    }


def augmentation(profile: str = "smoke", seed: int = 0) -> Sections:
    """Chapter 3: the augmentation ablation and the input normalizations (the log's among them)."""
    base, arm = baseline(profile, seed), partial(seeded, profile, seed)
    return {
        "augmentation": {"no augmentation": arm("aug-none", crop=False, flip=False),
                         "flip only": arm("aug-flip", crop=False),
                         "crop + flip (paper)": base},
        "normalization": {
            "per-pixel mean (paper)": base,
            "per-channel mean/std": arm("norm-per-channel", normalization="per-channel"),
            "test without mean subtraction": arm("eval-without-mean", normalize_eval=False),
            "no mean subtraction (train and test)": arm("norm-none", normalization="none")},
    }


def schedule(profile: str = "smoke", seed: int = 0, long_patience: int = 1000,
             short_patience: int = 10, plateau_threshold: float = 1e-5) -> Sections:
    """Chapter 4: the paper's multistep schedule, the log's plateau (two patiences), cosine."""
    arm = partial(seeded, profile, seed)
    plateau = lambda p: arm(f"plateau-patience{p}", schedule="plateau",  # noqa: E731
                            plateau_patience=p, plateau_threshold=plateau_threshold)
    return {"schedules": {"multistep (paper)": baseline(profile, seed),
                          f"plateau, patience {long_patience}": plateau(long_patience),
                          f"plateau, patience {short_patience}": plateau(short_patience),
                          "cosine": arm("cosine", schedule="cosine")}}


def optimizers(profile: str = "smoke", seed: int = 0, adam_lr: float = 1e-3,
               adam_high_lr: float = 0.1, adamw_weight_decay: float = 0.05,
               bn_eps_values=(1e-3, 1e-1, 0.9), bn_momenta=(0.9, 0.01),
               adam_constant_lrs=(1e-4, 1e-3, 1e-2, 1e-1)) -> Sections:
    """Chapter 5: SGD against Adam-family optimizers, Adam at a constant learning rate (the
    log's), a ReLU after the last FC layer, and BatchNorm's eps and momentum."""
    arm, base = partial(seeded, profile, seed), baseline(profile, seed)
    lr, high, wd = f"{adam_lr:g}", f"{adam_high_lr:g}", f"{adamw_weight_decay:g}"
    return {
        "optimizers": {
            "SGD, momentum 0.9 (paper)": base,
            "SGD + Nesterov": arm("sgd-nesterov", nesterov=True),
            f"Adam, lr {lr}": arm(f"adam-lr{lr}", optimizer="adam", lr=adam_lr),
            f"Adam, lr {high}": arm(f"adam-lr{high}", optimizer="adam", lr=adam_high_lr),
            f"AdamW, lr {lr}, wd {wd}": arm(f"adamw-lr{lr}-wd{wd}", optimizer="adamw", lr=adam_lr,
                                            weight_decay=adamw_weight_decay),
            f"NAdam, lr {lr}": arm(f"nadam-lr{lr}", optimizer="nadam", lr=adam_lr)},
        "adam_constant": {
            f"Adam, constant lr {x:g}": cpu(arm(f"adam-constant-lr{x:g}", optimizer="adam", lr=x,
                                                schedule="constant"), x in (1e-3, 0.1))
            for x in adam_constant_lrs},
        "final_relu": {"no final ReLU (paper)": base,
                       "ReLU after the last FC": cpu(arm("final-relu", final_relu=True))},
        "batchnorm": {
            "eps 1e-5, momentum 0.1 (default)": base,
            **{f"eps {e:g}": cpu(arm(f"bn-eps{e:g}", bn_eps=e), e == 0.9) for e in bn_eps_values},
            **{f"momentum {m:g}": arm(f"bn-momentum{m:g}", bn_momentum=m) for m in bn_momenta}},
    }


def results(profile: str = "smoke", seed: int = 0, seeds=None) -> Sections:
    """Chapter 6 and the introduction: the headline ResNet-32, an arm per seed (HEADLINE_SEEDS)."""
    return {"headline": {f"seed {s}": cpu(model_runs([s], "resnet32"))
                         for s in (seeds or headline_seeds(profile))}}


def depth(profile: str = "smoke", seed: int = 0, table6_depths=(20, 32, 44, 56, 110),
          plain_depths=(20, 32, 44, 56)) -> Sections:
    """Chapter 7: Table 6 (ResNet-110 with the paper's warm-up rule), Fig. 6 over seeds,
    ResNet-32 trained on all 50k training images, and ResNet-20 and 56 on all 50k (one seed)."""
    seeds = arm_seeds(profile, seed)
    warm = lambda d: {"warmup_until_error": WARMUP_110} if d == 110 else {}  # noqa: E731
    return {
        "table6": {d: cpu(model_runs(seeds, f"resnet{d}", depth=d, **warm(d)), d in (20, 32, 56))
                   for d in table6_depths},
        "plain": {d: cpu(model_runs(seeds, f"plain{d}", arch="plain", depth=d), d in (20, 56))
                  for d in plain_depths},
        "all50k": {"45k/5k split": baseline(profile, seed),
                   "all 50k": model_runs(seeds, "resnet32-all50k", val_size=0)},
        # Table 6's other depths on the paper's protocol, one seed each as the paper reports them
        # (Table 6 shows every depth's run of profile paper beside the paper's row)
        "paper_protocol": {d: model_runs([seed], f"resnet{d}-all50k", depth=d, val_size=0)
                           for d in (20, 56)},
    }


CHAPTERS = {"02_model": model, "03_augmentation": augmentation, "04_schedule": schedule,
            "05_optimizers": optimizers, "06_results": results, "07_depth": depth, "intro": results}


# ---------------------------------------------------------------- chapters' runs

def defaults(chapter: str) -> dict:
    """The chapter's own parameters and their default values (its `parameters` cell's)."""
    params = inspect.signature(CHAPTERS[chapter]).parameters
    return {k: p.default for k, p in params.items() if k not in ("profile", "seed")}


def kind(value) -> str:
    """What a parameter value is, as an error names it: an integer, a number, a list, ..."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "an integer" if isinstance(value, int) else "a number"
    return "a list" if isinstance(value, (list, tuple)) else f"a {type(value).__name__}"


def fits(value, default) -> bool:
    """`value` is of `default`'s kind (an integer is a number too), a list's items as its first."""
    if default is None or (kind(value), kind(default)) == ("an integer", "a number"):
        return True
    if kind(value) != kind(default):
        return False
    return kind(value) != "a list" or not default or all(fits(v, default[0]) for v in value)


def flat(sections: Sections) -> Arm:
    """Every run of `sections`: name -> overrides."""
    return {n: o for arms in sections.values() for arm in arms.values() for n, o in arm.items()}


def sections(chapter: str, profile: str, seed: int = 0, **params) -> Sections:
    """The chapter's sections for `params` (the others at their defaults), on `profile`.

    A run name that the default parameters give other settings gets a suffix of its settings'
    hash (`plateau-patience10-seed0` stays the default's run; other values make another folder).
    On the cpu profile the default arms not marked `cpu` are left out."""
    known = defaults(chapter)
    for key, value in params.items():
        if key not in known:
            raise ExperimentError(f"chapter {chapter} has no parameter {key}; its parameters: "
                                  f"{', '.join(known) or 'none but profile and seed'}")
        if not (fits(value, known[key]) or value is None and kind(known[key]) != "a list"):
            hint = (f" (papermill -p passes text: give a list with -y '{key}: [...]')"
                    if kind(known[key]) == "a list" and isinstance(value, str) else "")
            raise ExperimentError(f"parameter {key} of chapter {chapter} must be "
                                  f"{kind(known[key])} like its default {known[key]!r}, "
                                  f"got {value!r} ({type(value).__name__}){hint}")
    given = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "(defaults)"
    try:
        ours = CHAPTERS[chapter](profile, seed, **params)
    except (TypeError, ValueError) as e:
        raise ExperimentError(f"chapter {chapter} cannot use {given}: {e}") from None
    default, kept = flat(CHAPTERS[chapter](profile, seed)), {key: {} for key in ours}
    for key, arms in ours.items():
        for label, arm in arms.items():
            new = {n: o for n, o in arm.items() if default.get(n) != o}  # not the defaults' runs
            for name, overrides in new.items():  # one no run can train: say which parameter made it
                try:
                    profile_config(profile, **overrides)
                except (TypeError, ValueError) as e:
                    raise ExperimentError(f"chapter {chapter}'s parameter {given} makes run {name} "
                                          f"impossible: {e}") from None
            if profile == "cpu" and not isinstance(arm, CpuArm):
                arm = new
            if arm:  # a name the defaults give other settings: another folder
                kept[key][label] = {(f"{n}-{_suffix(o)}" if n in new and n in default else n): o
                                    for n, o in arm.items()}
    return kept


def _suffix(overrides: dict) -> str:
    return hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:6]


def left_out(chapter: str, profile: str, seed: int = 0) -> list[str]:
    """The runs of the chapter's default arms that `profile` does not train (cpu: not `cpu`)."""
    kept = flat(sections(chapter, profile, seed))
    return [name for name in flat(CHAPTERS[chapter](profile, seed)) if name not in kept]
