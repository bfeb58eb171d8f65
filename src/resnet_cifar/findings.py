"""The numbers, tables and figures each chapter shows, computed from run records (the
`Chapter` methods a chapter calls in one line; book.py holds the chapters' set-up).

Every helper copes with runs that did not finish (diverged, failed, interrupted): their
errors show as "–" and they are left out of means, never turned into a crash."""
from __future__ import annotations

import math
import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from . import analysis as A
from . import data as D
from .config import TrainConfig
from .data import prepare_data
from .devices import device_label, native_bf16
from .records import RECORDS, project_root, shown_path
from .runs import RunResult
from .train import evaluate

PAPER_ITERATIONS, PAPER_BATCH = TrainConfig.iterations, TrainConfig.batch_size  # the recipe's defaults


def fmt(value, spec: str = ".1f", missing: str = "–") -> str:
    """`value` formatted with `spec`, or `missing` when there is no value (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


class Findings:
    """Chapter 1-6 computations, mixed into `book.Chapter` (they use its dataset, device,
    runs and captions)."""

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
    def errors(named: dict[str, RunResult | None], spec: str = ".1f") -> dict[str, str]:
        """Final test error (%) of each run, formatted, under its key; '–' for a run without one
        (or no run: an arm this profile does not train)."""
        return {key: fmt(run.error() if run is not None else None, spec) for key, run in named.items()}

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

    def imagenet_runs(self, arms: dict[str, list[RunResult]]) -> tuple["pd.io.formats.style.Styler", dict]:
        """The log's ResNet-34 against ResNet-32 over seeds (table), each change's verdict
        (`r34_architecture`, `r34_schedule`, `r34_augmentation`) and the runs this profile leaves out."""
        from .compare import comparison, values, verdict
        table, facts = comparison(self, arms, "ResNet-32 (paper)", "The log's ResNet-34", "r34")
        names = list(arms)
        for key, (a, b) in {"r34_architecture": (1, 0), "r34_schedule": (2, 1), "r34_augmentation": (3, 2)}.items():
            facts[key] = (f"{names[a]} against {names[b]}: " + verdict(values(arms[names[a]]), values(arms[names[b]]),
                                                                         names[b])
                          if len(names) > max(a, b) else "not trained at this profile")
        return table, {**facts, "r34_skipped": self.left_out("02_model")}

    def shortcut_facts(self, arms: dict[str, list[RunResult]]) -> tuple["pd.io.formats.style.Styler", dict]:
        """Option A against B over seeds (table) and the chapter's text values about them."""
        from .compare import comparison
        table, facts = comparison(self, arms, "ResNet-32, option A", "Shortcuts", "shortcut")
        own = {label: runs[0] for label, runs in arms.items()}
        a = own["ResNet-32, option A"]
        facts.update(self.errors({"err_A": a, "err_B": own.get("ResNet-32, option B"),
                                  "err_Bnobn": own.get("ResNet-32, option B without BN")}))
        return table, {**facts, "budget_note": self.budget_note(a), "opt_shortcut_n": facts["shortcut_n"],
                       "numerics": self.numerics(a)}

    def fig6_facts(self, plain: dict[str, RunResult], residual: dict[str, RunResult], depths) -> dict:
        """Chapter 2's Fig. 6 values: the depths and the deepest plain and residual nets' errors."""
        deepest = max(depths)
        return {"fig6_depths": " and ".join(map(str, depths)), "fig6_deepest": str(deepest),
                **self.errors({"fig6_plain_err": plain.get(f"plain-{deepest}"),
                               "fig6_resnet_err": residual.get(f"ResNet-{deepest}")})}

    # -- chapter 3: the log's test without mean subtraction
    def mean_probe(self, baseline: RunResult, without_mean: RunResult) -> dict:
        """`baseline`'s final model evaluated on the test images with and without the mean
        subtracted (`without_mean`'s configuration), and how far the two runs' training errors
        differ: the `aug_*` values of chapter 3."""
        facts = {"aug_train_diff": A.max_curve_gap(baseline, without_mean, "train_error")}
        model = baseline.load_model().to(self.torch_device) if baseline.has_weights else None
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
                    for label, run in runs.items() if run.has_weights})  # diverged runs, published records: none
        convs = init.drop(index="fc", errors="ignore")["rms"]
        facts = {"opt_init_rms_min": f"{convs.min():.3f}", "opt_init_rms_max": f"{convs.max():.3f}",
                 "opt_adam_high_lr": f"{high_lr:g}", "opt_kick": f"{high_lr / convs.min():.1f}"}
        table = pd.DataFrame(rms).rename_axis("stage")
        return A.styled(table, self.caption("RMS of conv/FC weights per stage", *runs.values()), 3), facts

    def adam_facts(self, runs: dict[str, RunResult], adam_lr: float, high_lr: float):
        """`adam_kick` for SGD and Adam at `adam_lr` and `high_lr`, with their errors and Adam's
        status at `high_lr` (the `opt_*` values)."""
        sgd, low, high = (runs[k] for k in ("SGD, momentum 0.9 (paper)", f"Adam, lr {adam_lr:g}",
                                            f"Adam, lr {high_lr:g}"))
        rms, facts = self.adam_kick({"SGD, momentum 0.9 (paper)": sgd, f"Adam, lr {adam_lr:g}": low,
                                     f"Adam, lr {high_lr:g}": high}, high_lr)
        return rms, {**facts, "opt_adam_lr": f"{adam_lr:g}", "opt_adam_high_status": high.summary["status_detail"],
                     **self.errors({"opt_adam_high_err": high, "opt_adam_low_err": low, "opt_sgd_err": sgd})}

    def adam_constant(self, arms: dict[str, list[RunResult]], lrs) -> tuple["pd.io.formats.style.Styler", dict]:
        """Adam at each constant learning rate over seeds, against lr 1e-3 (the default) when
        it is among `lrs`, else the first."""
        from .compare import comparison
        reference = f"Adam, constant lr {1e-3:g}" if 1e-3 in lrs else next(iter(arms))
        table, facts = comparison(self, arms, reference, "Adam at a constant learning rate", "adamc")
        return table, {**facts, "opt_constant_lrs": ", ".join(f"{x:g}" for x in lrs)}

    def relu_probe(self, relu: RunResult, baseline: RunResult, images: int) -> dict:
        """The final-ReLU model's logits on the first `images` test images: dead logits, dead
        correct-class logits, all-dead images; and the baseline's share of negative logits."""
        probe = prepare_data(TrainConfig(**relu.config), self.torch_device, self.dataset)
        x, y = probe.test_x[:images], probe.test_y[:images]
        facts = dict(opt_zero=None, opt_label_zero=None, opt_all_zero=None, opt_base_negative=None)
        with torch.no_grad():
            if relu.has_weights:
                dead = relu.load_model().to(self.torch_device)(x) == 0
                facts.update(opt_zero=100 * dead.float().mean().item(),
                             opt_label_zero=100 * dead.gather(1, y[:, None]).float().mean().item(),
                             opt_all_zero=100 * dead.all(1).float().mean().item())
            if baseline.has_weights:
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
        if not baseline.has_weights:
            return {"opt_var_median": "–", "opt_var_q01": "–", "opt_var_min": "–",
                    "opt_eps_factors": "(no baseline model)"}
        var = torch.cat([m.running_var.flatten() for m in baseline.load_model().modules()
                         if isinstance(m, torch.nn.BatchNorm2d)]).double()
        median = var.median().item()
        return {"opt_var_median": f"{median:.3g}", "opt_var_q01": f"{var.quantile(0.01).item():.3g}",
                "opt_var_min": f"{var.min().item():.3g}",
                "opt_eps_factors": ", ".join(f"{math.sqrt(median / (median + e)):.3f} for eps {e:g}"
                                             for e in [1e-5, *eps_values])}

    def format_speeds(self, records_dir: Path | None = None) -> tuple["pd.io.formats.style.Styler", dict]:
        """Training speed per number format from the benchmark's records (book/records/bench-*.json,
        the appendix's measurements): one row per record and variant without torch.compile, its
        library images/s and the ratio to the record's fp32; the page's `opt_*` sentence."""
        from .bench import load_records
        records = load_records(records_dir or project_root() / RECORDS)
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
        complete = {k: r for k, r in runs.items() if r.has_weights}  # published records carry no weights
        if not complete:
            facts = {k: "–" for k in ("res_eval_err", "res_test_n", "res_per_class", "res_class_step",
                                      "res_hardest", "res_easiest")}
            why = ("published records carry no weights" if any(r.complete for r in runs.values())
                   else "no run finished")
            facts.update(res_best=f"no run with weights ({why})", res_check=f"cannot be checked: {why}")
            return None, A.styled(pd.DataFrame(), f"No run with weights: {why}"), facts
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
    chapter: "Chapter"  # noqa: F821  (book.Chapter, which mixes in Findings)
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
