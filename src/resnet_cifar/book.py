"""What the book's chapters share: run profiles, parameter checks, and the tables, figures and
numbers each chapter shows, computed here from the run records so that a chapter's cells are
one-line calls.

Profiles set budgets; explicit chapter parameters override them:
    smoke  CPU (one thread), 250-image subsets (25 per class), 20 iterations: seconds per run (what CI builds)
    quick  full data, 1/10 of the paper's schedule (6.4k iterations): minutes on a GPU
    paper  the paper's recipe: 64k iterations, ÷10 at 32k and 48k
The milestones scale with the iterations (at 50 % and 75 %), as in the paper.
All profiles run the step in channels_last memory format.

Every helper copes with runs that did not finish (diverged, failed, interrupted): their
errors show as "–" and they are left out of means, never turned into a crash.
"""
from __future__ import annotations

import builtins
import math
import os
import platform
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from . import analysis as A
from . import data as D
from .config import TrainConfig
from .data import prepare_data
from .devices import device_label, native_bf16, pick_device
from .runs import RunResult
from .train import evaluate, train

PROFILES = {
    "smoke": dict(iterations=20, batch_size=32, subset=250, eval_every=10),
    "quick": dict(iterations=6400),
    "paper": dict(),
}
# CPU threads a profile's runs train with (None: PyTorch's default, every core). Smoke runs are
# batch-32 steps that gain little from a second thread and lose many times over when the CPU is
# shared: on a busy 2-core machine a smoke ResNet-32 run took 6 s on one thread, 40-50 s on two.
PROFILE_THREADS = {"smoke": 1}
PAPER_ITERATIONS, PAPER_BATCH = 64000, 128
GLUE_PREFIX = "application/papermill.record/"  # myst-nb's glue outputs (display=False)

# Warnings a chapter's reader cannot act on, silenced once by `chapter()`.
KNOWN_WARNINGS = [
    dict(message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning),  # fvcore's tracing
]


def profile_config(profile: str, **overrides) -> TrainConfig:
    """A TrainConfig for `profile`, milestones scaled to its iterations, then `overrides`."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {tuple(PROFILES)}, got {profile!r}")
    # channels_last changes how the step runs, not what it computes (it is not part of a run's
    # identity): the benchmark appendix measures it faster on CPUs, as it is on GPUs.
    settings = {"channels_last": True, **PROFILES[profile], **overrides}
    iterations = settings.get("iterations", TrainConfig.iterations)
    settings.setdefault("milestones", (iterations // 2, iterations * 3 // 4))
    return TrainConfig(**settings).validate()


def profiles_table() -> "pd.io.formats.style.Styler":
    """The profiles side by side: budget, learning-rate drops, batch, training images."""
    rows = {}
    for name in PROFILES:
        cfg = profile_config(name)
        rows[name] = {"iterations": f"{cfg.iterations:,}",
                      "lr ÷10 at iterations": " and ".join(f"{m:,}" for m in cfg.milestones),
                      "batch size": cfg.batch_size,
                      "training images": "all 45,000" if cfg.subset is None else
                                         f"{cfg.subset // 10 * 10:,} ({cfg.subset // 10} per class)"}
    return A.styled(pd.DataFrame(rows).T.rename_axis("profile"), "The profiles (resnet_cifar.book.PROFILES)")


def project_root(start: Path | None = None) -> Path:
    """The folder holding _toc.yml (the book's root), searched upwards from `start`."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "_toc.yml").is_file():
            return folder
    return start


def data_folder(data_dir=None, root: Path | None = None) -> Path:
    """`data.resolve_data_dir` (argument > $RESNET_CIFAR_DATA > data), a relative result taken
    from the project root, so that a chapter finds ./data wherever its kernel was started."""
    path = D.resolve_data_dir(data_dir)
    return path if path.is_absolute() else (root or project_root()) / path


def shown_path(path: Path, root: Path | None = None) -> str:
    """A path as the book may print it: relative to the project root when inside it, else only
    its own name (the builder's folders are nobody's business)."""
    path, root = Path(path), (root or project_root())
    for candidate in (path, path.resolve()):
        try:
            return candidate.relative_to(root).as_posix() or "."
        except ValueError:
            continue
    return "…/" + path.name


def fmt(value, spec: str = ".1f", missing: str = "–") -> str:
    """`value` formatted with `spec`, or `missing` when there is no value (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


@dataclass
class Chapter:
    """One chapter's parameters, checked, with the dataset loaded once.

    Runs go to `<runs_dir>/<dataset identity>/<profile>/<name>`, so smoke runs, JPEG-copy
    runs and official-data runs never mix."""
    profile: str
    device: str
    dataset: D.CIFAR10
    runs_dir: Path
    seed: int
    records: dict | None = None  # the records.json of published records (read only), else None

    # -- runs
    def config(self, name: str, **overrides) -> TrainConfig:
        settings = dict(name=name, device=self.device, data_dir=str(self.dataset.root),
                        runs_dir=str(self.runs_dir), seed=self.seed, progress="log", wait=True)
        return profile_config(self.profile, **{**settings, **overrides})

    def run(self, name: str, **overrides) -> RunResult:
        """The run `name` of the plan (plan.py) on this chapter's profile: read from published
        records, or trained (reused, resumed) on the CPU with the profile's PROFILE_THREADS (the
        kernel's own setting is restored afterwards). `overrides` must restate the plan's
        settings; a run that is not in the plan is an error."""
        from .plan import planned_config
        execution = dict(device=self.device, data_dir=str(self.dataset.root), runs_dir=str(self.runs_dir),
                         progress="log", wait=True)
        config = planned_config(name, self.profile, self.seed, overrides, **execution)
        if self.records is not None:
            from .records import load_record
            return load_record(self.runs_dir, config, self.profile)
        threads = PROFILE_THREADS.get(self.profile) if pick_device(config.device).type == "cpu" else None
        before = torch.get_num_threads()
        torch.set_num_threads(threads or before)
        try:
            return train(config, dataset=self.dataset)
        finally:
            torch.set_num_threads(before)

    def plan_table(self, chapter: str | None = None):
        """The plan's runs of `chapter` ('02', '05_optimizers'; default: every chapter) as a
        DataFrame: status in this chapter's runs folder, time measured or estimated."""
        from .plan import table
        return table(self.profile, self.runs_dir, self.device, project_root() / "book" / "records",
                     seed=self.seed, chapters=[chapter] if chapter else None)

    @property
    def torch_device(self) -> torch.device:
        return pick_device(self.device)

    # -- labels
    def source(self, *runs: RunResult) -> str:
        """'profile smoke · CIFAR-10 (JPEG q75 copy) · cpu (...)': where a figure came from
        (with no runs: the device this chapter would train on, marked 'no training')."""
        devices = sorted({f"{r.summary['device']} ({r.summary['device_name']})" for r in runs})
        if not runs:  # a data-only figure: name the device this chapter would train on
            devices = [f"{self.torch_device} ({device_label(self.torch_device)}), no training"]
        where = ", ".join(devices)
        if self.records is not None:  # published records: say which (the devices stay last)
            from .records import source_text
            where = f"{source_text(self.records, runs)} · {where}"
        return f"profile {self.profile} · {self.dataset.label} · {where}"

    def caption(self, text: str, *runs: RunResult) -> str:
        return f"{text} — {self.source(*runs)}"

    def caveats(self) -> list[str]:
        """What a reader must know before reading this chapter's numbers (HTML fragments):
        the smoke budget, and data that is not the official CIFAR-10."""
        budget, notes = self.config("budget"), []
        if self.profile == "smoke":
            notes.append(f"Profile <b>smoke</b>: every run in this chapter is {budget.iterations} iterations of batch "
                         f"{budget.batch_size} on {budget.subset}-image subsets, so every error below is noise from "
                         "seconds of training. It shows that the code runs end to end; it does not rank the methods "
                         "and it is <b>not</b> a result of the paper. Rebuild with profile <code>quick</code> or "
                         "<code>paper</code> on a GPU for numbers that mean something.")
        if self.dataset.identity != "official":
            notes.append(f"Data: <b>{self.dataset.label}</b>, not the official CIFAR-10. Error rates on it are "
                         "not comparable with the paper's.")
        return notes

    def caveats_box(self) -> "HTML":
        """`caveats()` as warning boxes: the last expression of a notebook cell shows them."""
        return admonitions(self.caveats(), "warning", "Read the numbers with care")

    def noise(self) -> str:
        """' (with the smoke budget, noise)' on the smoke profile, else '': for sentences that
        quote a number."""
        return " (with the smoke budget, noise)" if self.profile == "smoke" else ""

    def parameters(self, **knobs) -> "pd.io.formats.style.Styler":
        """The parameters this page was built with, as a table (the data folder by its label, the
        device as resolved), plus the chapter's own `knobs`."""
        rows = {"profile": self.profile, "device": f"{self.device} → {self.torch_device}",
                "data": f"{self.dataset.label}, {shown_path(self.dataset.root)}",
                "runs": shown_path(self.runs_dir), "seed": self.seed}
        rows.update({k: ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in knobs.items()})
        table = pd.DataFrame({"value": {k: str(v) for k, v in rows.items()}}).rename_axis("parameter")
        return A.styled(table, "This page's parameters (papermill -p NAME VALUE changes them)")

    def header(self, **knobs) -> "HTML":
        """The page's parameters table and, for budgets or data that are not the paper's, the
        warning boxes: the cell after `chapter(...)` shows it. Glues `noise` (see `noise()`)."""
        self.glue({"noise": self.noise()})
        return HTML(self.parameters(**knobs).to_html() + self.caveats_box())

    # -- tables and figures of runs
    def table(self, runs: dict[str, RunResult], title: str, columns=A.RUN_COLUMNS, precision: int = 1):
        """`analysis.runs_table` with `columns`, formatted, captioned with the runs' source."""
        return A.styled(A.runs_table(runs)[list(columns)], self.caption(title, *runs.values()), precision)

    def curves(self, runs: dict[str, RunResult], title: str, **kwargs):
        """`analysis.error_curves` titled with the runs' source."""
        return A.error_curves(runs, title=self.caption(title, *runs.values()), **kwargs)

    @staticmethod
    def glue(facts: dict) -> None:
        """Glue every item of `facts` for the page's text ({glue:text}`name`), showing nothing.

        The outputs are myst-nb's glue outputs (`myst_nb.glue(name, value, display=False)`:
        the value's display data under the papermill-record MIME prefix, named in the
        `scrapbook` metadata), published through the running IPython kernel; outside a
        kernel there is no page to glue into and nothing happens."""
        shell = getattr(builtins, "get_ipython", lambda: None)()
        if shell is None:
            return
        for name, value in facts.items():
            data, metadata = shell.display_formatter.format(value)
            shell.display_pub.publish(data={GLUE_PREFIX + mime: v for mime, v in data.items()},
                                      metadata={**metadata, "scrapbook": dict(name=name, mime_prefix=GLUE_PREFIX)})

    def figure(self, name: str, fig, caption: str, *runs: RunResult) -> None:
        """Glue `fig` as `name` and its captioned text as `cap_<name>` for a {glue:figure}."""
        import matplotlib.pyplot as plt
        self.glue({name: fig, f"cap_{name}": self.caption(caption, *runs)})
        plt.close(fig)

    # -- chapter 1: recipe, data, machine
    def recipe(self) -> dict:
        """The configuration this profile trains with, as the page's `cfg_*` text values."""
        cfg = self.config("recipe")
        values = {
            "lr": cfg.lr, "gamma": cfg.gamma, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay,
            "batch_size": cfg.batch_size, "iterations": f"{cfg.iterations:,}",
            "milestones": " and ".join(f"{m:,}" for m in cfg.milestones), "val_size": f"{cfg.val_size:,}",
            "pad": cfg.pad, "crop": cfg.crop, "flip": cfg.flip, "normalization": cfg.normalization,
            "normalize_eval": cfg.normalize_eval, "optimizer": cfg.optimizer, "shortcut": cfg.shortcut,
            "subset": "all images" if cfg.subset is None else f"{cfg.subset // 10 * 10:,} images per split",
            "profile": self.profile,
        }
        return {f"cfg_{k}": str(v) for k, v in values.items()}

    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 45k/5k split of this profile's configuration: (train indices, val indices)."""
        cfg = self.config("split")
        return D.train_val_split(len(self.dataset.train_labels), cfg.val_size, cfg.split_seed)

    def split_counts(self) -> tuple["pd.io.formats.style.Styler", dict]:
        """Images per class in the training split, the validation split and the test set
        (table), and the split sizes and this profile's subset sizes (the page's text values)."""
        ds, cfg = self.dataset, self.config("split")
        train_idx, val_idx = self.split()
        used = {"train": ds.train_labels[train_idx], "val": ds.train_labels[val_idx], "test": ds.test_labels}
        facts = {"n_train": f"{len(train_idx):,}", "n_val": f"{len(val_idx):,}", "n_test": f"{len(ds.test_labels):,}"}
        facts.update({f"n_{k}_used": f"{len(D.balanced_subset(v, cfg.subset)):,}" for k, v in used.items()})
        counts = pd.DataFrame({name: torch.bincount(labels, minlength=10).tolist() for name, labels in
                               zip(("train split", "val split", "test set"), used.values())},
                              index=pd.Index(ds.classes, name="class"))
        counts.loc["total"] = counts.sum()
        return A.styled(counts, self.caption("Images per class in the 45k/5k split and the test set")), facts

    def mean_image(self) -> tuple[object, dict]:
        """The per-pixel mean of the training split next to one training image (figure), and its
        channel averages (`mean_rgb`)."""
        train_idx, _ = self.split()
        normalizer = D.Normalizer.fit(self.dataset.train_images[train_idx], "per-pixel-mean")
        first = int(train_idx[0])
        fig = A.mean_image_panels(normalizer, self.dataset.train_images[first],
                                  self.dataset.classes[int(self.dataset.train_labels[first])],
                                  title=self.caption("Per-pixel mean of the training split"))
        rgb = ", ".join(f"{v:.3f}" for v in normalizer.mean.mean((1, 2)).tolist())
        return fig, {"mean_rgb": rgb}

    def samples(self, per_class: int):
        """The first `per_class` training images of each class, one column per class (figure)."""
        train_idx, _ = self.split()
        return A.class_samples(self.dataset, train_idx, per_class,
                               title=self.caption(f"The first {per_class} training images of each class"))

    def machine(self) -> tuple["pd.io.formats.style.Styler", dict]:
        """The machine this page was built on (table) and its `machine_*` text values."""
        device = self.torch_device
        rows = {"python": platform.python_version(), "torch": torch.__version__,
                "device requested": self.device, "device used": str(device), "device name": device_label(device),
                "CUDA GPUs visible": torch.cuda.device_count(), "CPU cores": os.cpu_count(),
                "torch threads": torch.get_num_threads(), "operating system": platform.system()}
        facts = {"machine_" + k.replace(" ", "_"): str(v) for k, v in rows.items()}
        table = pd.DataFrame({"value": {k: str(v) for k, v in rows.items()}}).rename_axis("")
        return A.styled(table, self.caption("The machine of this build")), facts

    def data_identity(self) -> dict:
        """Which CIFAR-10 this build read, and what that means for its numbers (`ds_*` values)."""
        ds = self.dataset
        if ds.identity == "official":
            verdict = ("These are the official CIFAR-10 files. Error rates of the paper profile can be compared "
                       "with the paper's; those of the smoke and quick profiles cannot (shorter budgets).")
        else:
            verdict = (f"This is not the official CIFAR-10 but '{ds.label}'. Every image was re-encoded (for the "
                       "JPEG copy: JPEG quality 75 with 4:2:0 chroma subsampling), which blurs exactly the fine "
                       "detail a 32×32 classifier relies on. Error rates on it are NOT comparable with the "
                       "paper's 7.51 %: the data's notes report that a reference ResNet-32 scoring 92.8 % on "
                       "the real test set scores 82.6 % on this copy's test split.")
        return {"ds_root": shown_path(ds.root), "ds_identity": ds.identity, "ds_label": ds.label,
                "ds_verdict": verdict}

    def budget_note(self, run: RunResult) -> str:
        """One sentence on whether `run`'s budget and data allow comparing networks."""
        if self.profile == "paper" and self.dataset.identity == "official":
            return "These runs follow the paper's full recipe on the official data."
        s = run.summary
        return (f"With profile {self.profile} ({s['iterations']:,} iterations on {s['train_size']:,} training "
                f"images of {self.dataset.label}) these numbers show that the code runs, not how the networks "
                "compare: rebuild with profile quick or paper to compare them.")

    @staticmethod
    def numerics(run: RunResult) -> str:
        """How `run` computed, from its summary's `numerics`: dtype, TF32 for matmuls and cuDNN
        convolutions, cuDNN autotuning."""
        n, onoff = run.summary.get("numerics") or {}, lambda v: "–" if v is None else ("on" if v else "off")  # noqa: E731
        if not n:
            return f"{run.summary.get('name', 'this run')}'s summary records no numerics."
        return (f"dtype {n.get('dtype')}, TF32 matmuls {onoff(n.get('tf32_matmul'))}, TF32 cuDNN convolutions "
                f"{onoff(n.get('tf32_cudnn'))}, cudnn.benchmark {onoff(n.get('cudnn_benchmark'))} "
                f"(run {run.run_dir.name}, on {run.summary.get('device_name')})")

    @staticmethod
    def errors(named: dict[str, RunResult], spec: str = ".1f") -> dict[str, str]:
        """Final test error (%) of each run, formatted, under its key; '–' for a run without one."""
        return {key: fmt(run.error(), spec) for key, run in named.items()}

    # -- chapter 2: the model
    @staticmethod
    def model_facts(model: torch.nn.Module) -> dict:
        """ResNet-32's weighted layers, parameters, FLOPs (total and per stage) and what option B
        shortcuts add: the model chapter's text values."""
        from .models import count_parameters, resnet
        layers = A.layer_table(model, ["conv1", "stage1", "stage2", "stage3", "fc"])
        params, params_b = count_parameters(model), count_parameters(resnet(32, shortcut="B"))
        stages = A.module_flops(model, ["stage1", "stage2", "stage3"])
        return {"weighted_layers": str(layers.loc["total", "weighted layers"]), "params32": f"{params:,}",
                "stage_flops": ", ".join(f"{v:.1f}" for v in stages.values()),
                "flops32": f"{A.flop_count(model) / 1e6:.1f}M",
                "b_extra": f"{params_b - params:,}", "b_extra_pct": f"{100 * (params_b - params) / params:.1f}"}

    # -- chapter 3: the log's test without mean subtraction
    def mean_probe(self, baseline: RunResult, without_mean: RunResult) -> dict:
        """`baseline`'s final model evaluated on the test images with and without the mean
        subtracted (`without_mean`'s configuration), and how far the two runs' training errors
        differ: the `aug_*` values of chapter 3."""
        facts = {"aug_train_diff": A.max_curve_gap(baseline, without_mean, "train_error")}
        model = baseline.load_model().to(self.torch_device) if baseline.status == "complete" else None
        for key, run in (("with", baseline), ("without", without_mean)):
            err = top = None
            if model is not None:
                data = prepare_data(TrainConfig(**run.config), self.torch_device, self.dataset)
                result = evaluate(model, data.test_x, data.test_y)
                predicted = result["confusion"].sum(0)
                err, top = 100 * result["error"], 100 * predicted.max().item() / max(predicted.sum().item(), 1)
            facts.update({f"aug_err_{key}": fmt(err), f"aug_top_{key}": fmt(top, ".0f")})
        return facts

    # -- chapter 4: schedules and the validation split
    def schedule_facts(self, base: RunResult, **plateau_runs: RunResult) -> dict:
        """The step schedule's budget and evaluation rhythm, and what each plateau run's
        scheduler did, under its keyword: `sch_<key>_patience`, `sch_<key>_verdict`."""
        cfg = self.config("schedule")
        per_epoch = max(base.summary["train_size"] // cfg.batch_size, 1)
        facts = {"sch_iterations": f"{cfg.iterations:,}", "sch_milestones": " and ".join(f"{m:,}" for m in cfg.milestones),
                 "sch_eval_every": f"{cfg.eval_every or per_epoch:,}", "sch_iters_per_epoch": f"{per_epoch:,}",
                 "sch_evaluations": f"{len(base.history):,}"}
        for key, run in plateau_runs.items():
            patience = run.config["plateau_patience"]
            facts[f"sch_{key}_patience"] = f"{patience:,}"
            facts[f"sch_{key}_verdict"] = A.plateau_verdicts({key: run})[patience]
        return facts

    def selection(self, runs: dict[str, RunResult], base_label: str) -> tuple["pd.io.formats.style.Styler", dict]:
        """Final vs validation-selected vs peeked test error per run (table), and the step
        schedule's three numbers with the validation split's resolution (`sch_*`)."""
        columns = ["status", "final test error %", "best val error %", "test error at best val %",
                   "lowest test error seen %"]
        table = A.runs_table(runs)[columns]
        base = runs[base_label]
        h = base.history.dropna(subset=["val_error"]) if len(base.history) else base.history
        best_iteration = int(h.loc[h["val_error"].idxmin(), "iteration"]) if len(h) else None
        val_size = base.summary["val_size"]
        facts = {"sch_final": fmt(base.error()),
                 "sch_at_best_val": fmt(base.error("test_error_at_best_val")),
                 "sch_best_val_iteration": fmt(best_iteration, ","), "sch_peek": fmt(table.loc[base_label, columns[-1]]),
                 "sch_val_size": f"{val_size:,}", "sch_val_step": f"{100 / max(val_size, 1):.2f}"}
        return A.styled(table, self.caption("Final vs validation-selected vs peeked test error", *runs.values())), facts

    # -- chapter 5: optimizers, final ReLU, BN eps, number formats
    def adam_kick(self, runs: dict[str, RunResult], high_lr: float) -> tuple["pd.io.formats.style.Styler", dict]:
        """RMS of the weights per stage at initialization and after each complete run of `runs`
        (table), and how far Adam's first ±lr step at `high_lr` moves the weights (`opt_*`)."""
        cfg = self.config("init")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # train() seeds, then builds the model: the same initialization
            from .models import build_model
            init = A.weight_stats(build_model(cfg.arch, cfg.depth, cfg.shortcut))
        rms = {"at initialization": init["rms"]}
        rms.update({f"trained: {label}": A.weight_stats(run.load_model())["rms"]
                    for label, run in runs.items() if run.status == "complete"})  # a diverged run has no weights
        convs = init.drop(index="fc", errors="ignore")["rms"]
        facts = {"opt_init_rms_min": f"{convs.min():.3f}", "opt_init_rms_max": f"{convs.max():.3f}",
                 "opt_adam_high_lr": f"{high_lr:g}", "opt_kick": f"{high_lr / convs.min():.1f}"}
        table = pd.DataFrame(rms).rename_axis("stage")
        return A.styled(table, self.caption("RMS of conv/FC weights per stage", *runs.values()), 3), facts

    def relu_probe(self, relu: RunResult, baseline: RunResult, images: int) -> dict:
        """The final-ReLU model's logits on the first `images` test images: dead logits, dead
        correct-class logits, all-dead images; and the baseline's share of negative logits."""
        probe = prepare_data(TrainConfig(**relu.config), self.torch_device, self.dataset)
        x, y = probe.test_x[:images], probe.test_y[:images]
        facts = dict(opt_zero=None, opt_label_zero=None, opt_all_zero=None, opt_base_negative=None)
        with torch.no_grad():
            if relu.status == "complete":
                dead = relu.load_model().to(self.torch_device)(x) == 0
                facts.update(opt_zero=100 * dead.float().mean().item(),
                             opt_label_zero=100 * dead.gather(1, y[:, None]).float().mean().item(),
                             opt_all_zero=100 * dead.all(1).float().mean().item())
            if baseline.status == "complete":
                logits = baseline.load_model().to(self.torch_device)(x)
                facts["opt_base_negative"] = 100 * (logits < 0).float().mean().item()
        facts = {k: fmt(v, ".0f") for k, v in facts.items()}
        loss = relu.history["train_loss"].iloc[-1] if len(relu.history) else None
        facts.update(opt_probe_n=f"{len(y):,}", opt_ln10=f"{math.log(10):.3f}", opt_relu_loss=fmt(loss, ".3f"))
        return facts

    @staticmethod
    def bn_variances(baseline: RunResult, eps_values) -> dict:
        """The baseline's BatchNorm running variances (median, 1st percentile, smallest) and how
        much each eps shrinks a channel of median variance (`opt_var_*`, `opt_eps_factors`)."""
        if baseline.status != "complete":
            return {"opt_var_median": "–", "opt_var_q01": "–", "opt_var_min": "–",
                    "opt_eps_factors": "(no baseline model)"}
        var = torch.cat([m.running_var.flatten() for m in baseline.load_model().modules()
                         if isinstance(m, torch.nn.BatchNorm2d)]).double()
        median = var.median().item()
        return {"opt_var_median": f"{median:.3g}", "opt_var_q01": f"{var.quantile(0.01).item():.3g}",
                "opt_var_min": f"{var.min().item():.3g}",
                "opt_eps_factors": ", ".join(f"{math.sqrt(median / (median + e)):.3f} for eps {e:g}"
                                             for e in [1e-5, *eps_values])}

    def can_train(self, dtype: str) -> bool:
        """Whether this chapter's device trains runs in `dtype` (`plan.dtype_supported`)."""
        from .plan import dtype_supported
        return dtype_supported(dtype, self.torch_device)

    def format_speeds(self, records_dir: Path | None = None) -> tuple["pd.io.formats.style.Styler", dict]:
        """Training speed per number format from the benchmark's records (book/records/bench-*.json,
        the appendix's measurements): one row per record and variant without torch.compile, its
        library images/s and the ratio to the record's fp32; the page's `opt_*` sentence."""
        from .bench import load_records
        records = load_records(records_dir or project_root() / "book" / "records")
        rows, sentences = {}, []
        for name, rec in records.items():
            info = rec["info"]
            variants = [v for v in rec["variants"] if "compile" not in v["variant"] and v.get("library")]
            fp32 = next((v["library"] for v in variants if v["variant"] == "fp32"), None)
            for v in variants:
                rows[(info["device_name"], v["variant"])] = {
                    "dtype": v["dtype"], "images/s": v["library"], "× fp32": v["library"] / fp32 if fp32 else None,
                    "record": f"{name}.json, {info['date']}, batch {info['batch_size']}"}
            parts = [f"{v['variant']} {v['library']:,.0f} images/s ({v['library'] / fp32:.2f}× fp32)"
                     for v in variants if fp32 and v["variant"] != "fp32"]
            if fp32:
                sentences.append(f"on {info['device_name']} ({name}.json, {info['date']}): fp32 {fp32:,.0f} images/s, "
                                 + ", ".join(parts))
        facts = {"opt_dtype_verdict": "; ".join(sentences) or "no benchmark record is committed, so this build has "
                                                               "no measured speed per number format",
                 "opt_log_speed": f"{45000 / 10.32:,.0f}",  # the log: 45k training images in 10.3 s per epoch
                 "opt_native_bf16": "has" if native_bf16(self.torch_device) else "has no"}
        table = pd.DataFrame(rows).T.rename_axis(["device", "variant"]) if rows else pd.DataFrame()
        return A.styled(table, "Number formats: training speed from the benchmark's records (appendix)", 2), facts

    # -- chapter 6: where the errors are, timing
    def class_errors(self, runs: dict[str, RunResult]) -> tuple[object, "pd.io.formats.style.Styler", dict]:
        """The complete run with the lowest validation error, evaluated again on its test split:
        confusion matrix (figure), per-class error (table) and the `res_*` text values. Without a
        complete run: no figure, an empty table, and text that says so."""
        complete = {k: r for k, r in runs.items() if r.status == "complete"}
        if not complete:
            facts = {k: "–" for k in ("res_eval_err", "res_test_n", "res_per_class", "res_class_step",
                                      "res_hardest", "res_easiest")}
            facts.update(res_best="no complete run", res_check="cannot be checked: no run finished")
            return None, A.styled(pd.DataFrame(), "No complete run"), facts
        key = lambda k: (complete[k].summary["best_val_error"] is None,  # noqa: E731
                         complete[k].summary["best_val_error"] or complete[k].summary["final_test_error"] or 1.0)
        label = min(complete, key=key)
        best = complete[label]
        data = prepare_data(TrainConfig(**best.config), self.torch_device, self.dataset)
        result = evaluate(best.load_model().to(self.torch_device), data.test_x, data.test_y)
        recorded = best.error()
        diff = 100 * result["error"] - recorded
        counts = result["confusion"].sum(1)
        per_class = pd.DataFrame({"test images": counts.tolist(),
                                  "error %": [100 * (1 - a) for a in result["per_class_accuracy"]]},
                                 index=pd.Index(self.dataset.classes, name="class")).sort_values("error %", ascending=False)
        facts = {"res_best": label, "res_eval_err": f"{100 * result['error']:.2f}",
                 "res_check": "matches the error recorded at the end of training" if abs(diff) < 1e-6 else
                 f"differs from the {recorded:.2f} % recorded at the end of training by {diff:+.2f} points "
                 "(non-deterministic GPU kernels)",
                 "res_test_n": f"{int(counts.sum()):,}", "res_per_class": f"{int(counts.min()):,}",
                 "res_class_step": f"{100 / max(int(counts.min()), 1):.1f}",
                 "res_hardest": f"{per_class.index[0]} ({per_class['error %'].iloc[0]:.1f} %)",
                 "res_easiest": f"{per_class.index[-1]} ({per_class['error %'].iloc[-1]:.1f} %)"}
        fig = A.confusion_matrix(result["confusion"], self.dataset.classes,
                                 title=self.caption(f"Test confusion (% of each true class), {label}", best))
        return fig, A.styled(per_class, self.caption(f"Per-class test error, {label}", best)), facts

    def timing(self, runs: dict[str, RunResult]) -> tuple["pd.io.formats.style.Styler", dict]:
        """Training time and speed per run (table), and the paper's schedule extrapolated from
        the mean speed (`res_paper_hours`, `res_device`)."""
        table = A.runs_table(runs)[["iterations", "train time s", "ms / iteration", "images/s"]]
        speeds = [r.summary["train_images_per_s"] for r in runs.values() if r.summary["train_images_per_s"]]
        hours = PAPER_ITERATIONS * PAPER_BATCH / statistics.mean(speeds) / 3600 if speeds else None
        devices = sorted({f"{r.summary['device']} ({r.summary['device_name']})" for r in runs.values()})
        facts = {"res_paper_hours": fmt(hours), "res_device": ", ".join(devices)}
        return A.styled(table, self.caption("Training time and speed", *runs.values())), facts

    def headline(self, runs: dict[str, RunResult]) -> "Headline":
        """The paper's ResNet-32 recipe, one run per seed (`runs`: label -> run): what the
        introduction and chapter 6 report."""
        return Headline(self, runs)


# Other published numbers for ResNet-32 on CIFAR-10, for the introduction's table.
REFERENCES = [
    {"result": "He et al. 2016, Table 6", "test error %": f"{A.PAPER_ERROR['ResNet-32']:.2f}",
     "data": "official CIFAR-10 (schedule chosen on a 45k/5k split)",
     "budget": "64k iterations × batch 128 (2 GPUs)", "comparable": "reference"},
    {"result": "akamaster/pytorch_resnet_cifar10", "test error %": "7.37",
     "data": "official CIFAR-10, all 50k training images (no validation split), ImageNet mean/std normalization",
     "budget": "200 epochs × batch 128 (≈78k iterations); reports the best test accuracy over epochs",
     "comparable": "no: trains on 50k images, normalizes differently and picks its epoch on the test set"},
]


@dataclass
class Headline:
    """ResNet-32 with the paper's recipe over several seeds: the book's headline number. The
    mean and spread use the runs that finished (status complete); the others are listed with
    their status and left out."""
    chapter: Chapter
    runs: dict[str, RunResult]

    @property
    def errors(self) -> list[float]:
        """Final test error (%) of every complete run."""
        return [r.error() for r in self.runs.values() if r.complete and r.error() is not None]

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.errors) if self.errors else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.errors) if len(self.errors) > 1 else None

    def reasons(self) -> list[str]:
        """Why these numbers cannot be compared with the paper's (empty when they can)."""
        ch = self.chapter
        return ([f"{ch.profile} budget"] if ch.profile != "paper" else []) + \
               (["not the official data"] if ch.dataset.identity != "official" else [])

    def facts(self) -> dict:
        """The `head_*` text values of the introduction and chapter 6."""
        ch, runs = self.chapter, list(self.runs.values())
        first, budget = runs[0].summary, ch.config("results")
        paper = A.PAPER_ERROR["ResNet-32"]
        mean = self.mean
        if not self.errors:
            verdict = (f"None of the {len(runs)} runs finished ({', '.join(r.summary['status_detail'] for r in runs)}), "
                       "so this build has no test error to report.")
        elif not self.reasons():
            verdict = "These numbers use the paper's recipe on the official data and can be compared with 7.51 %."
        else:
            verdict = (f"Not comparable with the paper. This build used profile {ch.profile} "
                       f"({first['iterations']:,} iterations on {first['train_size']:,} training images) and "
                       f"{ch.dataset.label}; its {mean:.2f} % shows that the pipeline runs end to end, not what "
                       "ResNet-32 reaches.")
        context = []
        if ch.profile == "smoke":
            context.append(f"the smoke profile trains for {budget.iterations} iterations on {budget.subset}-image "
                           "subsets, a budget at which any network is still near chance (90 % error), so this "
                           "number only shows that the pipeline runs.")
        elif ch.profile != "paper":
            context.append(f"the {ch.profile} profile trains for {budget.iterations:,} iterations instead of 64k.")
        if ch.dataset.identity == "jpeg-q75-copy":
            context.append("The data is the JPEG q75 copy: JPEG compression at quality 75 blurs and blocks 32×32 "
                           "images. Its notes report that a ResNet-32 trained on the real CIFAR-10 (92.8 % test "
                           "accuracy) scores 82.6 % on this copy's test split: that measures a model trained on "
                           "the real data and tested on the copy; how far a model trained and tested on the copy "
                           "lands from the paper has not been measured here.")
        elif ch.dataset.identity != "official":
            context.append(f"The data ({ch.dataset.label}) is not verified to be the official CIFAR-10.")
        return {**self.checks(), "head_profile": ch.profile, "head_data": ch.dataset.label,
                "head_devices": ch.source(*runs).split(" · ")[-1], "head_source": ch.source(*runs),
                "head_mean": fmt(mean, ".2f"), "head_std": fmt(self.std, ".2f", "–"),
                "head_gap": fmt(None if mean is None else mean - paper, "+.2f"),
                "head_n": str(len(self.errors)), "head_runs": str(len(runs)),
                "head_iterations": f"{budget.iterations:,}", "head_batch": str(budget.batch_size),
                "head_verdict": verdict,
                "head_context": " ".join(context) or "both hold here, so this is a like-for-like comparison."}

    def checks(self) -> dict:
        """`head_best` and `head_checks`: same data? same budget? the paper's 7.51 % within the
        seeds' spread (their std plus the paper's only reported spread, ResNet-110's 0.16)?"""
        ch, budget, paper = self.chapter, self.chapter.config("results"), A.PAPER_ERROR["ResNet-32"]
        same_data = ch.dataset.identity == "official"
        same_budget = (budget.iterations, budget.batch_size, budget.subset) == (PAPER_ITERATIONS, PAPER_BATCH, None)
        parts = [f"same data: {'yes' if same_data else 'no'} ({ch.dataset.label})",
                 f"same budget: {'yes' if same_budget else 'no'} ({budget.iterations:,} iterations × batch "
                 f"{budget.batch_size}" + ("" if budget.subset is None else f" on {budget.subset}-image subsets")
                 + f"; the paper: {PAPER_ITERATIONS:,} × {PAPER_BATCH})"]
        if self.mean is None:
            parts.append("within the spread of the paper's 7.51 %: cannot say, no run finished")
        else:
            spread, gap = (self.std or 0.0) + 0.16, abs(self.mean - paper)
            parts.append(f"within the spread of the paper's 7.51 %: {'yes' if gap <= spread else 'no'} (|Δ| {gap:.2f} "
                         f"{'≤' if gap <= spread else '>'} {spread:.2f} = this build's std "
                         f"{fmt(self.std, '.2f', 'unknown (one seed)')} + 0.16, the paper's ResNet-110 std; the paper "
                         f"reports no spread for ResNet-32)")
        return {"head_best": fmt(min(self.errors) if self.errors else None, ".2f"), "head_checks": "; ".join(parts) + "."}

    def comparison(self):
        """The paper, a reimplementation and this build's runs (the introduction's table)."""
        ch, comparable = self.chapter, ("NO: " + " and ".join(self.reasons())) if self.reasons() else "yes"
        rows = list(REFERENCES)
        for label, run in self.runs.items():
            s = run.summary
            error = run.error() if run.complete else None
            rows.append({"result": f"this book, {label}",
                         "test error %": fmt(error, ".2f", f"– ({s['status']})"),
                         "data": f"{s['dataset_label']}: {s['train_size']:,} training / {s['test_size']:,} test images",
                         "budget": f"{s['iterations_done']:,} iterations × batch {run.config['batch_size']}",
                         "comparable": comparable})
        table = pd.DataFrame(rows).set_index("result")
        return A.styled(table, ch.caption("ResNet-32 on CIFAR-10: the paper, a reimplementation, this book",
                                          *self.runs.values()))

    def seeds_table(self):
        """One row per seed, the mean ± standard deviation, and the paper (chapter 6's table)."""
        ch = self.chapter
        table = A.runs_table(self.runs)[["status", "iterations", "final test error %", "test error at best val %"]]
        at_val = [v for v in table["test error at best val %"] if v is not None and not pd.isna(v)]
        table.loc["mean ± std"] = [f"{len(self.errors)} of {len(self.runs)} complete", None,
                                   f"{fmt(self.mean, '.2f')} ± {fmt(self.std, '.2f')}",
                                   statistics.mean(at_val) if at_val else None]
        table.loc["best"] = [None, None, min(self.errors) if self.errors else None, min(at_val) if at_val else None]
        table.loc["He et al. 2016, Table 6"] = ["reference", PAPER_ITERATIONS, A.PAPER_ERROR["ResNet-32"], None]
        return A.styled(table, ch.caption("ResNet-32 test error per seed, mean ± std, and the paper",
                                          *self.runs.values()), 2)

    def figure(self):
        """Training and test error of every seed, with the paper's 7.51 % as a dotted line."""
        return A.error_curves(self.runs, title=self.chapter.caption("ResNet-32, one curve per seed",
                                                                    *self.runs.values()),
                              reference=(A.PAPER_ERROR["ResNet-32"], "paper: 7.51 %"))


class HTML(str):
    """A string that Jupyter displays as HTML (through `_repr_html_`; no IPython import)."""

    def _repr_html_(self) -> str:
        return str(self)


def admonitions(texts: list[str], kind: str = "note", title: str | None = None) -> HTML:
    """HTML fragments as the book theme's admonition boxes (`kind`: note, warning, ...)."""
    head = f"<p class='admonition-title'>{title}</p>" if title else ""
    return HTML("".join(f"<div class='admonition {kind}'>{head}<p>{text}</p></div>" for text in texts))


def quiet() -> None:
    """Silence the warnings of KNOWN_WARNINGS and give figures the book's font sizes."""
    for spec in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", **spec)
    A.use_book_style()


def chapter(profile: str = "smoke", device: str = "auto", data_dir: str | None = None,
            runs_dir: str | None = None, seed: int = 0) -> Chapter:
    """Check a chapter's papermill parameters, set up the page (known warnings silenced,
    figure style) and load the data. data_dir follows `data.resolve_data_dir` (argument >
    $RESNET_CIFAR_DATA > data); relative paths are taken from the project root (the folder
    with _toc.yml)."""
    checks = dict(profile=(profile, str), device=(device, str), seed=(seed, int))
    for key, (value, kind) in checks.items():
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(f"parameter {key} must be {kind.__name__}, got {value!r} ({type(value).__name__}); "
                            f"e.g. papermill ... -p {key} {'smoke' if kind is str else 0}")
    if profile not in PROFILES:
        raise ValueError(f"parameter profile must be one of {tuple(PROFILES)}, got {profile!r}")
    if seed < 0:
        raise ValueError(f"parameter seed must be >= 0, got {seed}")
    for key, value in dict(data_dir=data_dir, runs_dir=runs_dir).items():
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"parameter {key} must be a path string, got {value!r}")
    TrainConfig(device=device).validate()
    quiet()
    root = project_root()
    dataset = D.load_cifar10(data_folder(data_dir, root))
    # explicit runs_dir > published records of this dataset and profile (not smoke) > <root>/runs
    from .records import resolve_runs
    runs, records = resolve_runs(root, profile, dataset.identity, runs_dir)
    return Chapter(profile, device, dataset, runs, seed, records)
