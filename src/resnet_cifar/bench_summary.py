"""What a benchmark record says (bench.py writes it): its figures, its tables and the sentences
the Performance appendix and chapter 5 glue. The rules hold in one place: a figure is the
median of its rounds; a ratio is stated only between figures of the same rounds; a figure
whose rounds disagree (max / min > measure.SPREAD_LIMIT) is flagged and kept out of sentences."""
from __future__ import annotations

from .config import PAPER_ITERATIONS
from .measure import LOAD_LIMIT, SPREAD_LIMIT, spread


def _spread(rounds) -> float | None:
    return spread(rounds) if rounds else None


def is_flagged(rounds) -> bool:
    """The figure's rounds disagree: max / min beyond SPREAD_LIMIT."""
    return (_spread(rounds) or 1.0) > SPREAD_LIMIT


def _row_rounds(row: dict) -> dict:
    """A variant row's rounds per figure (library, model, data, matmul; {} for no row)."""
    return row.get("rounds") or {}


def rounds_note(rounds: dict | list | None) -> str:
    """How a row's rounds agree, for the tables: '1.04×', '1.40× flagged' or 'not recorded'."""
    values = list(rounds.values()) if isinstance(rounds, dict) else [rounds] if rounds else []
    spreads = [_spread(r) for r in values if r]
    spreads = [x for x in spreads if x is not None]
    if not spreads:
        return "not recorded"
    worst = max(spreads)
    return f"{worst:.2f}×" + (" flagged" if worst > SPREAD_LIMIT else "")


def _grouped(labels: list[str]) -> str:
    """'fp32 library', 'fp32 model', 'bf16 data' -> 'fp32 (library, model); bf16 (data)' ('none' if empty)."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        variant, what = label.split(" ", 1)
        groups.setdefault(variant, []).append(what)
    return "; ".join(f"{v} ({', '.join(w)})" for v, w in groups.items()) or "none"


def under_load(record: dict) -> float | None:
    """The most CPU (in cores) other processes used while the record was measured, when more
    than its limit (measure.LOAD_LIMIT): then the record is not the machine's own speed. None
    when below, or for a record that did not sample it."""
    other = record["info"].get("other_load") or {}
    seen = [x for x in [other.get("before"), *(other.get("during") or {}).values()] if x is not None]
    worst = max(seen, default=None)
    return worst if worst is not None and worst > other.get("limit", LOAD_LIMIT) else None


def summarize(record: dict, base: str = "fp32") -> dict:
    """The figures the appendix quotes, as plain numbers and names (None where the record has
    none), and its sentences (`say_*`), written here so that the rules hold on every page:
    a figure is its rounds' median; a ratio is stated only between figures of the same
    rounds (one variant's); a figure whose rounds disagree (max / min > SPREAD_LIMIT) is left
    out of every sentence and listed in `flagged`. `base`: the variant compared with the
    conventional pipeline."""
    rows, best = {r["variant"]: r for r in record["variants"]}, {}
    for c in record["conventional"]:  # the fastest num_workers per variant
        if c["images_per_s"] > best.get(c["variant"], {}).get("images_per_s", 0):
            best[c["variant"]] = c
    base = base if base in rows else next(iter(best or rows), None)
    b, c = rows.get(base, {}), best.get(base, {})
    fastest32 = max((r for r in rows.values() if r["dtype"] == "float32"), key=lambda r: r["library"], default={})
    fastest = max(rows.values(), key=lambda r: r["library"], default={})
    info, ev = record["info"], record.get("evaluation") or {}
    prof, conc = record.get("profile") or {}, record.get("concurrent") or {}
    flagged = [f"{r['variant']} {k}" for r in rows.values() for k, v in _row_rounds(r).items() if is_flagged(v)]
    flagged += [f"{x['variant']} conventional (num_workers {x['num_workers']})" for x in record["conventional"]
                if is_flagged(x.get("rounds"))]
    flagged += [f"{ev['variant']} evaluation"] if is_flagged(ev.get("rounds")) else []
    worst = [r for r in rows.values() if r.get("data_share") is not None
             and not any(is_flagged(_row_rounds(r).get(k)) for k in ("library", "data"))]
    worst = max(worst, key=lambda r: r["data_share"], default={})
    fastest_conv = best.get(fastest.get("variant"), {})  # only a conventional figure from the fastest's own rounds
    host = rows.get(ev.get("variant"), b)  # the variant whose rounds held the evaluation

    def ratio(a, z):
        return a / z if a and z else None

    def schedule(rate):
        return PAPER_ITERATIONS * info["batch_size"] / rate / 60 if rate else None
    eval_s, epoch_s = ratio(15_000, ev.get("images_per_s")), ratio(45_000, host.get("library"))
    s = dict(
        device=info["device"], device_name=info["device_name"], date=info["date"], commit=info.get("git_commit"),
        threads=info["threads"],
        load=max((round(x, 1) for x in info.get("load_average", []) if x is not None), default=None),
        base=base, library=c.get("library"), conventional=c.get("images_per_s"), workers=c.get("num_workers"),
        ratio=ratio(c.get("library"), c.get("images_per_s")), model=b.get("model"),
        ceiling=ratio(b.get("model"), c.get("images_per_s")), data_ms=b.get("data_ms"), data_share=b.get("data_share"),
        max_data_share=worst.get("data_share"), max_data_share_variant=worst.get("variant"),
        gflops=b.get("gflops"), peak_share=b.get("peak_share"),
        peak=b.get("matmul_gflops") or record["peaks"].get(b.get("dtype")), peak_float32=record["peaks"].get("float32"),
        train_gflop_per_image=info.get("train_gflop_per_image"),
        fastest_fp32=fastest32.get("variant"), fastest_fp32_rate=fastest32.get("library"),
        fastest=fastest.get("variant"), fastest_rate=fastest.get("library"),
        fastest_vs_conventional=ratio(fastest_conv.get("library"), fastest_conv.get("images_per_s")),
        schedule_fp32_min=schedule(fastest32.get("library")), schedule_fastest_min=schedule(fastest.get("library")),
        skipped="; ".join(f"{s['variant']} ({s['reason']})" for s in record["skipped"]) or "none",
        errors="; ".join(f"{e['variant']} ({e['error']})" for e in record.get("errors", [])) or "none",
        conv_share=prof.get("by_kind", {}).get("convolution"), profile_time=prof.get("time"),
        eval_rate=ev.get("images_per_s"), eval_variant=host.get("variant"),
        eval_share=ratio(eval_s, eval_s + epoch_s) if eval_s and epoch_s else None,
        concurrent_runs=conc.get("runs"), concurrent_speedup=conc.get("speedup"),
        rounds=info.get("rounds"), spread_limit=SPREAD_LIMIT, flagged=_grouped(flagged))
    # each quoted figure: its value and rounds; a sentence names the figures it quotes
    figures = dict(
        library=(s["library"], _row_rounds(b).get("library")), conventional=(s["conventional"], c.get("rounds")),
        model=(s["model"], _row_rounds(b).get("model")), data=(s["data_ms"], _row_rounds(b).get("data")),
        peak=(s["peak"], _row_rounds(b).get("matmul")), evaluation=(s["eval_rate"], ev.get("rounds")),
        eval_library=(host.get("library"), _row_rounds(host).get("library")),
        fastest_fp32=(s["fastest_fp32_rate"], _row_rounds(fastest32).get("library")),
        fastest=(s["fastest_rate"], _row_rounds(fastest).get("library")),
        fastest_conventional=(fastest_conv.get("images_per_s"), fastest_conv.get("rounds")))
    labels = dict(library=f"{base} library", conventional=f"{base} conventional", model=f"{base} model-only",
                  data=f"{base} data-only", peak=f"{b.get('dtype')} matmul", evaluation="evaluation",
                  eval_library=f"{host.get('variant')} library", fastest_fp32=f"{s['fastest_fp32']} library",
                  fastest=f"{s['fastest']} library", fastest_conventional=f"{s['fastest']} conventional")

    loaded = under_load(record)
    s["other_load"] = loaded

    def say(names, text, what):
        """`text()` if every figure in `names` was measured and its rounds agree, on a machine no
        other process loaded; else why not."""
        missing = [n for n in names if figures[n][0] is None]
        if missing:
            return f"This record has no figure for {what}."
        if loaded:
            return (f"No figure is stated for {what}: other processes used up to {loaded:.1f} cores while this record "
                    "was measured, so its figures are not this machine's own speed; the tables mark it.")
        bad = [f"{labels[n]} {_spread(figures[n][1]):.2f}×" for n in names if is_flagged(figures[n][1])]
        if bad:
            return (f"No figure is stated for {what}: the rounds of {', '.join(bad)} (max / min) differ by more than "
                    f"{SPREAD_LIMIT:.2f}×, so the machine changed under them; the tables mark them.")
        return text()

    n = info.get("rounds")
    s["say_flagged"] = (
        f"The rounds of {s['flagged']} differed by more than {SPREAD_LIMIT:.2f}× (max / min): those figures are "
        f"flagged in the tables and left out of the sentences." if flagged else
        f"Every figure's rounds agreed within {SPREAD_LIMIT:.2f}× (max / min).") + (
        f" Other processes used up to {loaded:.1f} cores while it was measured (more than {LOAD_LIMIT:g}): the whole "
        "record is flagged, and no sentence states its figures." if loaded else "")
    s["say_rounds"] = (f"Each figure is the median of {n} rounds, timed in turns with the other figures of its "
                       f"variant, and ratios are stated only between figures of the same rounds. {s['say_flagged']}")
    s["say_library"] = say(("library", "conventional"), lambda: (
        f"With the {base} step the library trained at {s['library']:,.0f} images/s and the conventional pipeline at "
        f"{s['conventional']:,.0f} images/s with its fastest num_workers ({s['workers']}), timed in the same rounds: a "
        f"ratio of {s['ratio']:.2f}×."), f"the {base} library and conventional pipeline")
    s["say_model"] = say(("model", "conventional"), lambda: (
        f"The step alone, with no data work, ran at {s['model']:,.0f} images/s, {s['ceiling']:.2f}× the conventional "
        + ("pipeline: the most any data pipeline could gain with this step on this device." if s["ceiling"] >= 1 else
           "pipeline: no faster than the whole conventional pipeline in these rounds, so a faster data pipeline has "
           "nothing to gain here.")),
        f"the {base} step alone")
    s["say_data"] = say(("data", "library"), lambda: (
        f"It took {s['data_ms']:.1f} ms per batch, timed on its own: {s['data_share']:.1f} % of the library's "
        f"{base} step" + (f", and at most {s['max_data_share']:.1f} % of a step among the variants "
                          f"({s['max_data_share_variant']})." if worst else ".")), f"the {base} data work")
    if not fastest_conv:
        versus = "; it was not timed against the conventional pipeline in its rounds, so no ratio to that is stated."
    elif is_flagged(fastest_conv.get("rounds")):
        versus = (f"; its conventional pipeline's rounds differ by {_spread(fastest_conv['rounds']):.2f}× "
                  f"(max / min), more than {SPREAD_LIMIT:.2f}×, so no ratio to that is stated.")
    else:
        versus = (f"; timed in the same rounds with the conventional pipeline and the same step, the library ran "
                  f"{s['fastest_vs_conventional']:.2f}× as fast.")
    s["say_fastest"] = " ".join([
        say(("fastest_fp32",), lambda: (f"The fastest fp32 variant was {s['fastest_fp32']} at "
                                        f"{s['fastest_fp32_rate']:,.0f} images/s."), "the fastest fp32 variant"),
        say(("fastest",), lambda: f"The fastest of all was {s['fastest']} at {s['fastest_rate']:,.0f} images/s"
            + versus, "the fastest variant")])
    s["say_peak"] = say(("model", "peak"), lambda: (
        f"Here the {base} step ran at {s['gflops']:,.0f} GFLOP/s, {s['peak_share']:.0f} % of the {b['dtype']} matmul "
        f"peak measured in the same rounds ({s['peak']:,.0f} GFLOP/s)."), f"the {base} step's share of the matmul peak")
    s["say_evaluation"] = say(("evaluation", "eval_library"), lambda: (
        f"Here it ran at {s['eval_rate']:,.0f} images/s: evaluation is {s['eval_share']:.0%} of an epoch's time at "
        f"the library's {s['eval_variant']} training rate, timed in the same rounds."), "the evaluation rate")
    s["say_schedule"] = " ".join([
        say(("fastest_fp32",), lambda: (
            f"Its fastest fp32 variant, {s['fastest_fp32']}, would take {s['schedule_fp32_min']:,.0f} min of training "
            f"steps for the paper's {PAPER_ITERATIONS:,} iterations of batch {info['batch_size']}."),
            "the fastest fp32 variant"),
        say(("fastest",), lambda: (f"Its fastest variant in any numerics, {s['fastest']}, "
                                   f"{s['schedule_fastest_min']:,.0f} min."), "the fastest variant")])
    s["say_concurrent"] = "No figure is stated for several runs at once: the record was taken under load." if (
        loaded and conc) else (
        f"{conc['runs']} runs at once, {conc['threads_per_run']} thread(s) each, trained at {conc['total']:,.0f} "
        f"images/s in all against {conc['single']:,.0f} for one run alone on {conc['threads_single']} thread(s): "
        f"{conc['speedup']:.2f}× (one window each, no rounds)." if conc else
        "This record has no figure for several runs at once (`bench --concurrent K`).")
    return s


def tables(record: dict) -> dict:
    """The record's tables as DataFrames: 'variants', 'conventional', 'profile' (its top rows);
    'rounds max / min' marks the figures whose rounds disagree ('flagged')."""
    import pandas as pd
    names = dict(variant="variant", library="library images/s", model="model-only images/s",
                 data_ms="data ms/batch", data_share="data % of step", gflops="step GFLOP/s",
                 peak_share="% of matmul peak", warmup_s="warm-up s")
    conv = [{"variant": c["variant"], "num_workers": c["num_workers"], "conventional images/s": c["images_per_s"],
             "library images/s": c["library"], "library / conventional": c["library"] / c["images_per_s"],
             "rounds max / min": rounds_note(dict(library=_row_rounds(
                 next((r for r in record["variants"] if r["variant"] == c["variant"]), {})).get("library"),
                 conventional=c.get("rounds")))}
            for c in record["conventional"]]
    prof = [{"op": r["name"], "kind": r["kind"], "calls": r["calls"], "ms / step": r["ms_per_step"],
             "share %": r["share"]}
            for r in (record.get("profile") or {}).get("rows", [])]
    during = (record["info"].get("other_load") or {}).get("during") or {}
    loaded = " · under load" if under_load(record) else ""
    variants = [{**{new: r.get(old) for old, new in names.items()},
                 "rounds max / min": rounds_note(r.get("rounds")) + loaded,
                 "other processes, cores": during.get(r["variant"])} for r in record["variants"]]
    return dict(variants=pd.DataFrame(variants), conventional=pd.DataFrame(conv), profile=pd.DataFrame(prof))
