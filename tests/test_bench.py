"""The benchmark's pieces (bench.py) and the CUDA-style deferred loss reads of train.py,
exercised on the CPU. Speeds are printed by `python -m resnet_cifar bench`, never asserted."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from resnet_cifar import bench as B
from resnet_cifar import train as T
from resnet_cifar.train import train


def test_conventional_loader_matches_torchvision_recipe(dataset):
    """PIL images through RandomCrop(32, padding=4), flip, ToTensor, Normalize: float
    batches of the right shape, per-channel normalized (mean ~0, std ~1 without the crop's
    zero border), labels unchanged."""
    images, labels = dataset.train_images[:64], dataset.train_labels[:64]
    loader = B.conventional_loader(images, labels, batch_size=32, num_workers=0)
    assert len(loader) == 2
    x, y = next(iter(loader))
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (32,)
    assert set(y.tolist()) <= set(labels.tolist())
    ds = loader.dataset
    assert len(ds) == 64 and ds.data.shape == (64, 32, 32, 3)
    # without augmentation the transform is exact: item 0 is image 0, normalized per channel
    from torchvision import transforms
    ds.transform.transforms = [t for t in ds.transform.transforms
                               if isinstance(t, (transforms.ToTensor, transforms.Normalize))]
    x0, y0 = ds[0]
    norm = ds.transform.transforms[-1]
    expected = (images[0].float() / 255 - torch.tensor(norm.mean).view(3, 1, 1)) / torch.tensor(norm.std).view(3, 1, 1)
    assert y0 == labels[0].item() and torch.allclose(x0, expected, atol=1e-5)


def test_matmul_peak_is_a_plausible_rate():
    gflops = B.matmul_peak(torch.device("cpu"), torch.float32, n=256, reps=2)
    assert 0.1 < gflops < 1e5


def test_variants_grid():
    labels = [v.label for v in B.default_variants()]
    assert labels[0] == "fp32" and "fp64" in labels and "bf16 autocast + channels_last" in labels
    assert "fp32 + compile" in labels and len(set(labels)) == len(labels)
    quick = [v.label for v in B.default_variants(quick=True)]
    assert not any("compile" in q or "fp64" in q for q in quick)
    assert not any(v.compile for v in B.default_variants(compile=False))


@pytest.mark.slow
def test_run_benchmark_tiny(dataset, tmp_path):
    """A tiny benchmark: both pipelines measured, ratio consistent with them, table and
    JSON complete. (Seconds on an idle CPU; speeds themselves are not asserted.)"""
    result = B.run_benchmark(device="cpu", batch_size=16, depth=8, steps=2, rounds=1, warmup=1, seconds=0.05,
                             variants=[B.Variant(), B.Variant("float32", True)], workers=(0, 1),
                             train_images=64, dataset=dataset, profile_steps=1, log=None)
    assert list(result.table["variant"]) == ["fp32", "fp32 + channels_last"]
    assert (result.table["library e2e images/s"] > 0).all() and (result.table["model-only images/s"] > 0).all()
    p = result.paper
    assert p["library"] > 0 and p["baseline"] > 0 and set(p["baseline_by_workers"]) == {0, 1}
    assert p["baseline"] == max(p["baseline_by_workers"].values())
    assert result.ratio == pytest.approx(p["library"] / p["baseline"])
    assert p["model_only"] > 0 and p["ceiling"] == pytest.approx(p["model_only"] / p["baseline"])
    assert 0 <= p["baseline_data_share"] < 1 and 0 <= p["library_data_share"] < 1
    assert result.peak_gflops["float32"] > 0 and 0 < result.table["% of matmul peak"].iloc[0]
    assert result.info["fvcore_flops_per_image"] > 0 and result.evaluation["images_per_s"] > 0
    assert set(result.best) == {"fp32", "any"} and result.best["fp32"]["ratio_vs_conventional"] > 0
    assert len(result.profile) > 0 and result.profile["share %"].sum() <= 100.0 + 1e-6
    text = result.report()
    assert "ratio" in text and "conventional" in text
    out = tmp_path / "bench.json"
    out.write_text(json.dumps(result.to_dict(), default=str))
    back = json.loads(out.read_text())
    assert back["ratio"] == pytest.approx(result.ratio) and len(back["variants"]) == 2


def test_bench_rejects_bad_sizes(dataset):
    with pytest.raises(ValueError, match="train_images"):
        B.run_benchmark(device="cpu", batch_size=128, train_images=64, dataset=dataset, log=None)


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


def test_parse_variant():
    assert B.parse_variant("bf16+cl+compile") == B.Variant("bfloat16", True, True)
    assert B.parse_variant("fp64") == B.Variant("float64") and B.parse_variant("FP32+CL").channels_last
    with pytest.raises(ValueError, match=r"fp32, fp64 or bf16.*\+cl"):
        B.parse_variant("fp16+cl")


@pytest.fixture(scope="module")
def tiny_bench(dataset):
    """One tiny real benchmark (two fp32 variants, one worker setting) shared by the tests
    of its sentences."""
    return B.run_benchmark(device="cpu", batch_size=32, depth=8, steps=2, seconds=0.1, quick=True,
                           variants=["fp32", "fp32+cl"], workers=(0,), train_images=256, dataset=dataset,
                           profile_steps=1, log=None)


@pytest.mark.slow
def test_benchmark_sentences_carry_its_numbers(tiny_bench):
    """The book's paragraphs (and the command's report) quote the measured numbers."""
    r = tiny_bench
    p, b32, e, i = r.paper, r.best["fp32"], r.evaluation, r.info
    findings = r.markdown("findings")
    for number in (f"**{p['library']:,.0f}** images/s", f"**{p['baseline']:,.0f}** images/s",
                   f"`num_workers={p['baseline_workers']}`", f"ratio **{r.ratio:.2f}×**",
                   f"{p['model_only']:,.0f} images/s, {p['ceiling']:.2f}×",
                   f"{100 * p['baseline_data_share']:.0f} % of the conventional",
                   f"({b32['variant']}; the paper's fp32 numerics): {b32['library']:,.0f} images/s",
                   f"**{b32['ratio_vs_conventional']:.2f}×**", f"{b32['ratio_same_settings']:.2f}× the conventional"):
        assert number in findings, number
    # only fp32 variants ran: the fastest variant is the fastest fp32 one, said once
    assert r.best["any"]["variant"] == b32["variant"] and "**Fastest variant**" not in findings
    assert "target is met at the paper's settings" in r.markdown("findings", target=0.0)
    assert f"target is **not** met: {r.ratio:.2f}× at equal" in r.markdown("findings", target=1e9)

    evaluation = r.markdown("evaluation")
    assert f"**{e['images_per_s']:,.0f}** images/s" in evaluation and f"{e['eval_s']:,.1f} s against" in evaluation
    assert f"**{100 * e['share_of_epoch']:.0f} %**" in evaluation and "15,000 images" in evaluation
    assert e["batch_size"] == 256 and "batches of 256" in evaluation  # train.eval_batch_size on a CPU
    peaks = r.markdown("peaks")
    assert f"float32 {r.peak_gflops['float32']:,.0f} GFLOP/s" in peaks and "2048³" in peaks
    assert f"{i['train_gflop_per_image']:.2f} GFLOP per image" in peaks and "ResNet-8" in peaks
    conv = r.profile[r.profile["op"].str.contains("convolution")]["share %"].sum()
    assert 0 < conv <= 100 and f"**{conv:.0f} %**" in r.markdown("profile")
    schedule = r.markdown("schedule")
    assert f"{b32['paper_schedule_min']:,.0f} min (fastest fp32 variant, {b32['variant']})" in schedule
    assert "64,000 iterations of batch 32" in schedule and i["device_name"] in schedule
    assert b32["paper_schedule_min"] == pytest.approx(64_000 * 32 / b32["library"] / 60)
    with pytest.raises(ValueError, match="findings"):
        r.markdown("speed")

    # the command prints the same sentences as plain text
    report = r.report()
    assert f"ratio {r.ratio:.2f}x" in report and f"{p['library']:,.0f} images/s" in report
    assert f"{e['images_per_s']:,.0f} images/s" in report and f"{conv:.0f} %" in report
    assert "**" not in report and "×" not in report


@pytest.mark.slow
def test_benchmark_notes_and_captions(tiny_bench, dataset):
    r = tiny_bench
    notes = r.measurement_notes("smoke")
    assert notes[0].startswith(f"Measured {r.info['date']} (commit ") and "on **cpu**" in notes[0]
    assert dataset.label in notes[0]
    assert f"best of {r.info['rounds']} timed windows of about {r.info['seconds']} s" in notes[0]
    assert any("shared with other work" in n for n in notes)
    cut = next(n for n in notes if "cut-down" in n)  # quick: neither float64 nor torch.compile ran
    assert cut.startswith("Profile **smoke**: a cut-down benchmark: 2 variants")
    assert "no float64, no torch.compile" in cut
    assert not any("Profile" in n for n in r.measurement_notes())
    box = r.notes_html("smoke")
    assert box._repr_html_().count("<div class='admonition note'>") == len(notes)
    assert "<b>cpu</b>" in box and "<code>python -m resnet_cifar bench</code>" in box and "**" not in box
    caption = r.caption("Training throughput", "smoke")
    assert caption == f"Training throughput — profile smoke · {dataset.label} · cpu ({r.info['device_name']})"


@pytest.mark.slow
def test_recorded_benchmark_reads_back_the_same(tiny_bench, tmp_path):
    """`bench --json` records load back (`load_records`) into a Benchmark that says exactly
    what the measured one said: the book shows recorded full benchmarks this way."""
    r = tiny_bench
    (tmp_path / "bench-cpu.json").write_text(json.dumps(r.to_dict(), default=str))
    (tmp_path / "other.json").write_text("{}")  # not a record: ignored
    records = B.load_records(tmp_path)
    assert list(records) == ["bench-cpu"]
    back = records["bench-cpu"]
    for section in B.Benchmark.SECTIONS:
        assert back.markdown(section) == r.markdown(section)
    assert back.measurement_notes() == r.measurement_notes()
    pd.testing.assert_frame_equal(back.table, r.table, rtol=1e-12)  # JSON keeps 15 significant digits
    pd.testing.assert_frame_equal(back.pipelines, r.pipelines, rtol=1e-12)
    assert B.load_records(tmp_path / "missing") == {}


@pytest.mark.slow
def test_styled_tables_for_the_book(tiny_bench):
    r = tiny_bench
    html = r.styled("variants", "Step variants — here").to_html()
    assert "Step variants — here" in html and "fp32 + channels_last" in html
    assert "channels_last</th>" not in html and "dtype</th>" not in html  # spelled out by the variant names
    assert f"{r.table['library e2e images/s'].iloc[0]:,.1f}" in html
    assert f"{r.pipelines['images/s'].iloc[0]:,.1f}" in r.styled("pipelines", "x").to_html()
    with pytest.raises(ValueError, match="table 'peaks': choose one of variants, pipelines, profile"):
        r.styled("peaks", "x")
