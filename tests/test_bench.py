"""The benchmark (bench.py) and the CUDA-style deferred loss reads of train.py, exercised on the
CPU. Speeds are printed by `python -m resnet_cifar bench`, never asserted."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from conftest import page_code
from resnet_cifar import bench as B
from resnet_cifar import train as T
from resnet_cifar.cli import main as cli_main
from resnet_cifar.records import BENCH_FORMAT, load_records
from resnet_cifar.train import train

RECORDS = Path(__file__).resolve().parents[1] / "book" / "records"


def test_conventional_loader_matches_torchvision_recipe(dataset):
    """A PIL image per item through RandomCrop(32, padding=4), flip, ToTensor, Normalize: float
    batches of the right shape, per-channel normalized, labels unchanged."""
    from torchvision import transforms
    images, labels = dataset.train_images[:64], dataset.train_labels[:64]
    loader = B.conventional_loader(images, labels, batch_size=32, num_workers=0)
    assert len(loader) == 2 and len(loader.dataset) == 64 and loader.dataset[0][0].shape == (32, 32, 3)
    x, y = next(iter(loader))
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (32,)
    assert set(y.tolist()) <= set(labels.tolist())
    transform = loader.collate_fn.args[0]
    assert isinstance(transform.transforms[0], transforms.ToPILImage)
    # without augmentation the transform is exact: item 0 is image 0, normalized per channel
    transform.transforms = [t for t in transform.transforms
                            if not isinstance(t, (transforms.RandomCrop, transforms.RandomHorizontalFlip))]
    x0, y0 = B.transformed(transform, [loader.dataset[0]])
    norm = transform.transforms[-1]
    expected = (images[0].float() / 255 - torch.tensor(norm.mean).view(3, 1, 1)) / torch.tensor(norm.std).view(3, 1, 1)
    assert y0.tolist() == [labels[0].item()] and torch.allclose(x0[0], expected, atol=1e-5)


def test_variant_specs():
    assert B.parse_variant("bf16+cl+compile") == B.Variant("bfloat16", True, "default")
    assert B.parse_variant("TF32+CL+cudagraphs") == B.Variant("tf32", True, "reduce-overhead")
    assert B.parse_variant("fp64").dtype == "float64" and B.parse_variant(B.Variant()) == B.Variant()
    for spec in B.DEFAULT_VARIANTS:
        assert B.parse_variant(spec).label == spec
    for bad in ("fp16", "fp32+nhwc", "fp32+compile+cudagraphs"):
        with pytest.raises(ValueError, match=r"fp32, tf32, fp64 or bf16.*\+cl"):
            B.parse_variant(bad)


def test_variants_the_device_cannot_run_natively_are_skipped(monkeypatch, dataset):
    """bf16 on a CPU without AVX-512-BF16 or AMX is never timed: it is listed with the reason
    (so are TF32 and CUDA graphs off CUDA); the runnable variants are measured."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(B, "native_bf16", lambda device: False)
    assert "neither AVX-512-BF16 nor AMX" in B.skip_reason(B.parse_variant("bf16+cl"), cpu)
    assert "CUDA" in B.skip_reason(B.parse_variant("tf32"), cpu)
    assert "CUDA graphs" in B.skip_reason(B.parse_variant("fp32+cudagraphs"), cpu)
    assert B.skip_reason(B.parse_variant("fp32+cl+compile"), cpu) is None
    timed = []
    monkeypatch.setattr(B, "setup", lambda v, *a, **k: timed.append(v.label) or pytest.fail("no variant should run"))
    record = B.run_benchmark(device="cpu", batch_size=16, depth=8, variants=["bf16", "bf16+cl", "tf32"], workers=(),
                             train_images=32, dataset=dataset)
    assert timed == [] and record["variants"] == [] and record["conventional"] == []
    assert [s["variant"] for s in record["skipped"]] == ["bf16", "bf16+cl", "tf32"]
    assert all(s["reason"] for s in record["skipped"])


def test_bench_rejects_bad_sizes(dataset):
    with pytest.raises(ValueError, match="train_images"):
        B.run_benchmark(device="cpu", batch_size=128, train_images=64, dataset=dataset)
    with pytest.raises(ValueError, match="rounds must be a positive integer"):
        B.run_benchmark(device="cpu", rounds=0, dataset=dataset)


# ---------------------------------------------------------------- rounds, medians, flags

def test_race_times_the_steps_in_turns_round_by_round():
    calls = []
    steps = dict(a=lambda: calls.append("a"), b=lambda: calls.append("b"))
    rates, others = B.race(steps, dict(a=2, b=5), torch.device("cpu"), rounds=3, warmup=1, seconds=0.0)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # one warm-up call each, then one window each per round, in turns
    assert {k: len(r) for k, r in rates.items()} == dict(a=3, b=3) and all(x > 0 for r in rates.values() for x in r)
    assert others >= 0
    assert B.spread([4.0]) is None and B.spread([2.0, 3.0]) == 1.5
    assert not B.is_flagged([2.0, 2.4]) and B.is_flagged([2.0, 2.6]) and not B.is_flagged(None)
    assert B.rounds_note([2.0, 2.1]) == "1.05×" and B.rounds_note(dict(a=[2.0, 2.1], b=[1.0, 1.5])) == "1.50× flagged"
    assert B.rounds_note(None) == "not recorded"


def _record(fp32_library, fp32_conventional, cl_library):
    """fp32 timed with the conventional pipeline; fp32+cl, faster, in rounds of its own."""
    def row(variant, library):
        rounds = dict(library=library, model=[170.0, 171.0, 169.0], data=[9000.0, 9100.0, 9050.0])
        return dict(variant=variant, dtype="float32", channels_last="+cl" in variant, compile=None, numerics={},
                    library=statistics.median(library), model=170.0, data_ms=1000 * 128 / 9050,
                    rounds=rounds)
    fp32, cl = row("fp32", fp32_library), row("fp32+cl", cl_library)
    info = dict(device="cpu", device_name="test CPU", threads=2, batch_size=128, depth=32, rounds=3,
                date="2026-01-01 00:00", git_commit="abc1234", other_load=dict(before=0.0, during={}, limit=0.25))
    conv = [dict(variant="fp32", num_workers=0, library=fp32["library"],
                 images_per_s=statistics.median(fp32_conventional), rounds=fp32_conventional)]
    return dict(format=BENCH_FORMAT, info=info, variants=[fp32, cl], conventional=conv, skipped=[], errors=[])


def test_rounds_that_disagree_are_flagged_in_the_tables_and_the_appendix():
    recorded = page_code("appendix_performance").recorded
    agree = _record([39.0, 40.0, 41.0], [29.0, 30.0, 31.0], [160.0, 164.0, 168.0])
    tables = B.tables(agree)
    assert list(tables["variants"]["rounds max / min"]) == [f"{41 / 39:.2f}×", f"{168 / 160:.2f}×"]
    conv = tables["conventional"].iloc[0]
    assert conv["ratio"] == pytest.approx(40 / 30) and conv["rounds max / min"] == f"{31 / 29:.2f}×"  # the worse of two
    summary = recorded({"bench-test": agree}).data["bench-test.json"]
    assert summary["library / conventional"] == pytest.approx(40 / 30) and summary["fastest variant"] == "fp32+cl"
    assert summary["the paper's schedule, min"] == pytest.approx(64_000 * 128 / 164 / 60)
    disagree = _record([30.0, 40.0, 41.0], [29.0, 30.0, 31.0], [160.0, 164.0, 240.0])  # 41/30 and 240/160 > 1.25
    marks = dict(zip(*B.tables(disagree)["variants"][["variant", "rounds max / min"]].T.values))
    assert marks == {"fp32": f"{41 / 30:.2f}× flagged", "fp32+cl": f"{240 / 160:.2f}× flagged"}
    assert B.tables(disagree)["conventional"]["rounds max / min"][0] == f"{41 / 30:.2f}× flagged"
    assert recorded({"bench-test": disagree}).data["bench-test.json"]["rounds max / min"] == "1.50× flagged"


# ---------------------------------------------------------------- the benchmark, tiny

@pytest.fixture(scope="module")
def tiny_record(dataset):
    """One tiny real benchmark: two fp32 variants, the conventional pipeline for the first."""
    return B.run_benchmark(device="cpu", batch_size=16, depth=8, variants=["fp32", "fp32+cl"], conventional=["fp32"],
                           workers=(0, 1), seconds=0.05, rounds=2, warmup=1, train_images=64, dataset=dataset)


@pytest.mark.slow
def test_benchmark_numbers_are_consistent(tiny_record):
    r = tiny_record
    assert r["format"] == BENCH_FORMAT and [v["variant"] for v in r["variants"]] == ["fp32", "fp32+cl"]
    for v in r["variants"]:
        assert v["library"] > 0 and v["model"] > 0 and v["data_ms"] > 0
        assert {k: len(x) for k, x in v["rounds"].items()} == dict(library=2, model=2, data=2)
        assert v["library"] == pytest.approx(statistics.median(v["rounds"]["library"]))
        assert v["data_ms"] == pytest.approx(1000 * 16 / statistics.median(v["rounds"]["data"]))
        assert v["numerics"] == dict(dtype="float32", tf32_matmul=False, tf32_cudnn=False, cudnn_benchmark=False)
    conv = r["conventional"]
    assert [(c["variant"], c["num_workers"]) for c in conv] == [("fp32", 0), ("fp32", 1)]
    assert all(c["images_per_s"] > 0 and c["library"] == r["variants"][0]["library"] for c in conv)
    assert all(c["images_per_s"] == pytest.approx(statistics.median(c["rounds"])) for c in conv)
    other = r["info"]["other_load"]  # sampled before, then during each variant's rounds
    assert other["before"] >= 0 and set(other["during"]) == {"fp32", "fp32+cl"} and other["limit"] == B.LOAD_LIMIT
    tables = B.tables(r)
    assert list(tables["variants"]["variant"]) == ["fp32", "fp32+cl"] and len(tables["conventional"]) == 2
    assert all(note.endswith(("×", "× flagged", " · under load")) for note in tables["variants"]["rounds max / min"])
    share = tables["variants"]["data % of step"][0]
    assert share == pytest.approx(100 * r["variants"][0]["data_ms"] / (1000 * 16 / r["variants"][0]["library"]))


@pytest.mark.slow
def test_records_round_trip(tiny_record, tmp_path):
    (tmp_path / "bench-cpu.json").write_text(json.dumps(tiny_record))
    (tmp_path / "other.json").write_text("{}")  # not a record: ignored
    records = load_records(tmp_path)
    assert list(records) == ["bench-cpu"] and records["bench-cpu"] == tiny_record
    assert load_records(tmp_path / "missing") == {}
    (tmp_path / "bench-old.json").write_text(json.dumps({"info": {}}))
    with pytest.raises(ValueError, match="bench-old.json is not a benchmark record of format 3"):
        load_records(tmp_path)


def test_the_recorded_benchmarks_load_and_render():
    """book/records holds what the appendix shows: every record loads and gives its tables,
    the older fields (matmul peak, profile, several runs at once) ignored."""
    recorded = page_code("appendix_performance").recorded
    records = load_records(RECORDS)
    assert "bench-cpu" in records
    summary = recorded(records).data
    for name, record in records.items():
        s = summary[f"{name}.json"]
        assert s["library images/s"] > 0 and s["conventional images/s"] > 0 and s["date"] and s["device"]
        assert s["library / conventional"] == pytest.approx(s["library images/s"] / s["conventional images/s"])
        assert s["its images/s"] >= s["library images/s"]
        tables = B.tables(record)
        assert len(tables["variants"]) == len(record["variants"]) and len(tables["fused"]) == len(record["fused"])
    cpu = records["bench-cpu"]
    assert cpu["info"]["date"] == "2026-12-07 03:09" and cpu["info"]["git_commit"] == "fc8ed6e"
    assert summary["bench-cpu.json"]["library images/s"] == pytest.approx(294.6437285163383)
    assert summary["bench-cpu.json"]["fastest variant"] == "bf16+cl+compile"
    # measured on a quiet machine: the load was sampled before and during every variant's rounds
    other = cpu["info"]["other_load"]
    assert set(other["during"]) == {v["variant"] for v in cpu["variants"]} and B.under_load(cpu) is None
    assert max(other["before"], *other["during"].values()) < B.LOAD_LIMIT
    # every figure keeps its rounds: the tables give each row's spread
    assert all(note.endswith(("×", "× flagged")) for note in B.tables(cpu)["variants"]["rounds max / min"])
    # the plan's time estimates read the same records: eager variants, library rates
    from resnet_cifar.plan import bench_rates
    rates = {(r["dtype"], r["channels_last"]): r["rate"] for r in bench_rates(RECORDS, torch.device("cpu"))}
    assert rates[("float32", False)] == pytest.approx(cpu["variants"][0]["library"]) and len(rates) == 5


@pytest.mark.slow
def test_bench_command_writes_its_record(dataset, tmp_path, capsys):
    out = tmp_path / "records" / "bench-cpu.json"
    rc = cli_main(["bench", "--device", "cpu", "--batch-size", "16", "--depth", "8", "--variants", "fp32", "tf32",
                   "--workers", "0", "--seconds", "0.05", "--rounds", "1", "--warmup", "1", "--train-images", "32",
                   "--data-dir", str(dataset.root), "--json", str(out)])
    assert rc == 0
    record = json.loads(out.read_text())
    assert [v["variant"] for v in record["variants"]] == ["fp32"] and record["skipped"][0]["variant"] == "tf32"
    assert load_records(out.parent)["bench-cpu"] == record
    text = capsys.readouterr().out
    assert "library images/s" in text and "skipped tf32: TF32 is a CUDA tensor-core format" in text


@pytest.mark.slow
def test_bench_fused_with_variants_writes_both_in_one_record(dataset, tmp_path, capsys):
    """`bench --fused N --variants ...` (the GPU check's call): the fused lines first, then the
    variants, in one record that the appendix reads."""
    out = tmp_path / "bench-cpu.json"
    out.write_text(json.dumps({"format": 3, "fused": [{"n": 3, "ratio": 1.0}]}))  # replaced, not merged
    rc = cli_main(["bench", "--device", "cpu", "--batch-size", "16", "--depth", "8", "--fused", "2", "--variants",
                   "fp32", "--workers", "0", "--seconds", "0.05", "--rounds", "2", "--warmup", "1",
                   "--train-images", "32", "--data-dir", str(dataset.root), "--json", str(out)])
    assert rc == 0
    record = load_records(tmp_path)["bench-cpu"]
    assert [v["variant"] for v in record["variants"]] == ["fp32"] and [r["n"] for r in record["fused"]] == [2]
    text = capsys.readouterr().out
    assert text.startswith(f"fused 2: {record['fused'][0]['ratio']:.2f}× solo\n") and "N fused" in text


# ---------------------------------------------------------------- deferred loss reads (train.py)

def _force_deferred(monkeypatch):
    """Run train()'s GPU rhythm on the CPU: step results stay on the device and are read
    every 4 steps (and before evaluations and checkpoints)."""
    monkeypatch.setattr(T, "loss_read_interval", lambda device: 4)


def test_deferred_loss_reads_give_the_same_record(tiny, dataset, monkeypatch):
    settings = {**tiny, "iterations": 10, "eval_every": 5}
    ref = train(name="per-step", dataset=dataset, **settings)
    _force_deferred(monkeypatch)
    deferred = train(name="deferred", dataset=dataset, **settings)
    cols = ["iteration", "lr", "train_loss", "train_error", "val_error", "test_error"]
    assert deferred.status == "complete" and deferred.summary["iterations_done"] == 10
    assert deferred.history[cols].equals(ref.history[cols])
    assert deferred.lr_trace.equals(ref.lr_trace)


def test_deferred_loss_reads_name_the_diverging_iteration(tiny, dataset, monkeypatch):
    """lr 1e6 blows up within a few steps; with losses read only every 4 steps the run
    still reports the exact iteration, as the per-step path does."""
    settings = {**tiny, "iterations": 12, "eval_every": 12, "lr": 1e6, "momentum": 0.0}
    ref = train(name="per-step", dataset=dataset, **settings)
    assert ref.diverged, ref.summary
    _force_deferred(monkeypatch)
    deferred = train(name="deferred", dataset=dataset, **settings)
    assert deferred.diverged
    assert deferred.summary["status_detail"] == ref.summary["status_detail"]
    assert deferred.summary["iterations_done"] == ref.summary["iterations_done"]


def test_the_number_format_table_flags_the_rate_it_shows_and_its_sentence_leaves_it_out(tmp_path):
    """Chapter 5 shows one figure per variant, the library rate: its column of spreads is that
    figure's, and the sentence quotes exactly the variants whose library rounds agree."""
    from types import SimpleNamespace
    format_speeds = page_code("05_optimizers").format_speeds
    record = json.loads((RECORDS / "bench-cpu.json").read_text())
    fp32, cl = record["variants"][:2]
    fp32["rounds"].update(library=[200.0, 201.0, 202.0], data=[1e5, 2e5, 3e5])  # only its data work disagrees
    cl["rounds"]["library"] = [200.0, 260.0, 300.0]                              # its library rate disagrees
    (tmp_path / "bench-cpu.json").write_text(json.dumps(record))
    table, facts = format_speeds(SimpleNamespace(torch_device=torch.device("cpu")), tmp_path)
    notes = table.data["rounds max / min"].droplevel(0)
    assert notes[fp32["variant"]] == "1.01×" and notes[cl["variant"]] == "1.50× flagged"
    assert f"{fp32['variant']} {fp32['library']:,.0f}" in facts["opt_dtype_verdict"]
    assert f"{cl['variant']} " not in facts["opt_dtype_verdict"]


def test_other_load_counts_other_processes_and_not_this_ones():
    """A busy process that is not ours counts (about a core); our own busy child does not."""
    import subprocess
    import time
    busy = "end=$((SECONDS + 3)); while [ $SECONDS -lt $end ]; do :; done"
    start = B.cpu_clock()
    time.sleep(1.0)
    before = B.other_cores(start)
    child = subprocess.Popen(["bash", "-c", busy])
    start = B.cpu_clock()
    time.sleep(1.5)
    own = B.other_cores(start)
    child.wait()
    assert own <= before + 0.5  # our child's CPU is ours
    subprocess.run(["bash", "-c", f"(bash -c '{busy}' &)"], check=True)  # an orphan: another process
    start = B.cpu_clock()
    time.sleep(1.5)
    assert B.other_cores(start) >= 0.5


def test_a_record_taken_under_load_says_so_and_states_no_figure(tmp_path):
    """A benchmark record whose load samples show other processes at work: every table row says
    'under load', and no sentence of chapter 5 states one of its figures."""
    from types import SimpleNamespace
    recorded = page_code("appendix_performance").recorded
    format_speeds = page_code("05_optimizers").format_speeds
    record = json.loads((RECORDS / "bench-cpu.json").read_text())
    first = record["variants"][0]["variant"]
    quiet = {**record, "info": {**record["info"], "other_load": dict(before=0.02, during={first: 0.05},
                                                                     limit=B.LOAD_LIMIT)}}
    assert B.under_load(quiet) is None and not B.tables(quiet)["variants"]["rounds max / min"].str.contains("load").any()
    loaded = {**record, "info": {**record["info"], "other_load": dict(before=0.02, during={first: 1.6},
                                                                      limit=B.LOAD_LIMIT)}}
    assert B.under_load(loaded) == 1.6
    for table in B.tables(loaded)["variants"], B.tables(loaded)["conventional"]:
        assert table["rounds max / min"].str.endswith(" · under load").all()
    assert recorded({"bench-cpu": loaded}).data["bench-cpu.json"]["rounds max / min"].endswith(" · under load")
    (tmp_path / "bench-cpu.json").write_text(json.dumps(loaded))
    _, facts = format_speeds(SimpleNamespace(torch_device=torch.device("cpu")), tmp_path)
    assert facts["opt_dtype_verdict"].startswith("no figure of the committed benchmark records is stated: each was "
                                                 "taken under load")
