"""Chapter 5's computations: Adam's first steps against the weights' scale, Adam at a constant
learning rate, what a ReLU after the last FC layer does to the logits, BatchNorm's eps against
its running variances, and training speed per number format from the benchmark's records."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from .. import analysis as A
from ..analysis import fmt
from ..bench_summary import is_flagged, rounds_note, under_load
from ..compare import comparison, mean_std, values, verdict
from ..config import TrainConfig
from ..data import prepare_data
from ..devices import native_bf16
from ..models import build_model, multiply_adds
from ..records import RECORDS, load_records, project_root
from ..runs import RunResult


def adam_kick(ch, runs: dict[str, RunResult], high_lr: float) -> tuple["pd.io.formats.style.Styler", dict]:
    """RMS of the weights per stage at initialization and after each complete run of `runs`
    (table), and how far Adam's first ±lr step at `high_lr` moves the weights (`opt_*`)."""
    cfg = ch.config("init")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ch.seed)  # train() seeds, then builds the model: the same initialization
        init = A.weight_stats(build_model(cfg.arch, cfg.depth, cfg.shortcut))
    rms = {"at initialization": init["rms"]}
    rms.update({f"trained: {label}": A.weight_stats(run.load_model())["rms"]
                for label, run in runs.items() if run.has_weights})  # diverged runs, published records: none
    convs = init.drop(index="fc", errors="ignore")["rms"]
    facts = {"opt_init_rms_min": f"{convs.min():.3f}", "opt_init_rms_max": f"{convs.max():.3f}",
             "opt_adam_high_lr": f"{high_lr:g}", "opt_kick": f"{high_lr / convs.min():.1f}"}
    table = pd.DataFrame(rms).rename_axis("stage")
    return A.styled(table, ch.caption("RMS of conv/FC weights per stage", *runs.values()), 3), facts


def adam_facts(ch, runs: dict[str, RunResult], adam_lr: float, high_lr: float,
               constant: dict[str, RunResult] | None = None):
    """`adam_kick` for SGD and Adam at `adam_lr` and `high_lr`, with their errors and Adam's
    status at `high_lr` (the `opt_*` values). Where the profile trains Adam only at a constant
    learning rate (cpu), the `constant` runs of the same two rates stand in, and the status says so."""
    labels = ("SGD, momentum 0.9 (paper)", f"Adam, lr {adam_lr:g}", f"Adam, lr {high_lr:g}")
    sgd, low, high = (runs.get(k) for k in labels)  # None: an arm this profile does not train
    rms, facts = adam_kick(ch, {k: runs[k] for k in labels if k in runs}, high_lr)
    stand_in = high is None and low is None and bool(constant)
    if stand_in:
        low, high = (constant.get(f"Adam, constant lr {lr:g}") for lr in (adam_lr, high_lr))
    status = high.summary["status_detail"] if high else "not trained at this profile"
    if stand_in and high:
        status += " (at a constant learning rate: this profile trains Adam only without a schedule)"
    return rms, {**facts, "opt_adam_lr": f"{adam_lr:g}", "opt_adam_high_status": status,
                 **ch.errors({"opt_adam_high_err": high, "opt_adam_low_err": low, "opt_sgd_err": sgd})}


def adam_constant(ch, arms: dict[str, list[RunResult]], lrs,
                  sgd: list[RunResult] = ()) -> tuple["pd.io.formats.style.Styler", dict]:
    """Adam at each constant learning rate over seeds, against lr 1e-3 (the default) when
    it is among `lrs`, else the first; and that arm against the paper's SGD runs `sgd`
    (`adamc_vs_sgd`)."""
    reference = f"Adam, constant lr {1e-3:g}" if 1e-3 in lrs else next(iter(arms))
    table, facts = comparison(ch, arms, reference, "Adam at a constant learning rate", "adamc")
    adam, paper = values(arms[reference]), values(list(sgd))
    said = lambda xs: f"{mean_std(xs)[0]:.2f} % over {len(xs)} seed(s)" if xs else "no complete run"  # noqa: E731
    facts["adamc_vs_sgd"] = (f"{reference} ends at {said(adam)} and the paper's SGD recipe at {said(paper)}: "
                             + verdict(adam, paper, "the paper's SGD"))
    return table, {**facts, "opt_constant_lrs": ", ".join(f"{x:g}" for x in lrs)}


def relu_probe(ch, relu: RunResult, baseline: RunResult, images: int) -> dict:
    """The final-ReLU model's logits on the first `images` test images: dead logits, dead
    correct-class logits, all-dead images; and the baseline's share of negative logits."""
    probe = prepare_data(TrainConfig(**relu.config), ch.torch_device, ch.dataset)
    x, y = probe.test_x[:images], probe.test_y[:images]
    facts = dict(opt_zero=None, opt_label_zero=None, opt_all_zero=None, opt_base_negative=None)
    with torch.no_grad():
        if relu.has_weights:
            dead = relu.load_model().to(ch.torch_device)(x) == 0
            facts.update(opt_zero=100 * dead.float().mean().item(),
                         opt_label_zero=100 * dead.gather(1, y[:, None]).float().mean().item(),
                         opt_all_zero=100 * dead.all(1).float().mean().item())
        if baseline.has_weights:
            logits = baseline.load_model().to(ch.torch_device)(x)
            facts["opt_base_negative"] = 100 * (logits < 0).float().mean().item()
    facts = {k: fmt(v, ".0f") for k, v in facts.items()}
    loss = relu.history["train_loss"].iloc[-1] if len(relu.history) else None
    facts.update(opt_probe_n=f"{len(y):,}", opt_ln10=f"{math.log(10):.3f}", opt_relu_loss=fmt(loss, ".3f"))
    return facts


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


def format_speeds(ch, records_dir: Path | None = None) -> tuple["pd.io.formats.style.Styler", dict]:
    """Training speed per number format from the benchmark's records (book/records/bench-*.json,
    the appendix's measurements): one row per record and variant without torch.compile, its
    library images/s and how its rounds agree; the page's `opt_*` sentence. No ratio between
    variants: they are timed in different rounds (bench.py), and flagged figures stay out of it."""
    records = load_records(records_dir or project_root() / RECORDS)
    rows, sentences = {}, []
    for name, rec in records.items():
        info = rec["info"]
        variants = [v for v in rec["variants"] if "compile" not in v["variant"] and v.get("library")]
        rounds = {v["variant"]: (v.get("rounds") or {}).get("library") for v in variants}
        loaded = " · under load" if under_load(rec) else ""
        for v in variants:  # the one figure shown: the library rate, with its own rounds' spread
            rows[(info["device_name"], v["variant"])] = {
                "dtype": v["dtype"], "images/s": v["library"],
                "rounds max / min": rounds_note(rounds[v["variant"]]) + loaded,
                "record": f"{name}.json, {info['date']}, batch {info['batch_size']}"}
        parts = [f"{v['variant']} {v['library']:,.0f}" for v in variants
                 if not is_flagged(rounds[v["variant"]]) and not loaded]
        if parts:
            sentences.append(f"on {info['device_name']} ({name}.json, {info['date']}), images/s: " + ", ".join(parts))
    none = ("no benchmark record is committed, so this build has no measured speed per number format" if not records
            else "no figure of the committed benchmark records is stated: each was taken under load or its rounds "
                 "disagree (the table marks them)")
    facts = {"opt_dtype_verdict": "; ".join(sentences) or none,
             "opt_log_speed": f"{45000 / 10.32:,.0f}",  # the log: 45k training images in 10.3 s per epoch
             # ... with its ImageNet ResNet-34 on 32x32 images: a training step is about 3 passes of 2 FLOP per
             # multiply-add (forward, and backward for inputs and weights)
             "opt_log_macs": f"{multiply_adds('resnet34-imagenet') / 1e6:.0f}M",
             "opt_log_tflops": f"{6 * multiply_adds('resnet34-imagenet') * 45000 / 10.32 / 1e12:.1f}",
             "opt_native_bf16": "has" if native_bf16(ch.torch_device) else "has no"}
    table = pd.DataFrame(rows).T.rename_axis(["device", "variant"]) if rows else pd.DataFrame()
    return A.styled(table, "Number formats: training speed from the benchmark's records (appendix)", 2), facts


def chance_runs(arms: dict[str, list[RunResult]]) -> dict:
    """The seeds that never left chance (training loss within 0.02 of ln 10 at every evaluation)
    beside the seeds of the same setting that trained (`eps_chance`): a split that a mean over
    the seeds hides."""
    ln10, parts = math.log(10), []
    for label, runs in arms.items():
        stuck = [r for r in runs if len(r.history) and (r.history["train_loss"] - ln10).abs().max() < 0.02]
        if not stuck:
            continue
        trained = [r for r in runs if r not in stuck]
        seeds = lambda rs: ", ".join(f"seed {r.config['seed']} ({fmt(r.error())} %)" for r in rs)  # noqa: E731
        parts.append(f"with {label}, {seeds(stuck)} never left chance (training loss ln 10 = {ln10:.3f} at every "
                     "evaluation)" + (f" while {seeds(trained)} trained" if trained else ""))
    text = ("; ".join(parts)[:1].upper() + "; ".join(parts)[1:] + ". A mean over seeds that split like this "
            "describes neither of them." if parts else "No seed of these settings stayed at chance.")
    return {"eps_chance": text}
