"""The benchmark (bench.py, measure.py) and the CUDA-style deferred loss reads of train.py,
exercised on the CPU. Speeds are printed by `python -m resnet_cifar bench`, never asserted."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from resnet_cifar import bench as B
from resnet_cifar import bench_summary as S
from resnet_cifar import measure as M
from resnet_cifar import train as T
from resnet_cifar.cli import main as cli_main
from resnet_cifar.records import BENCH_FORMAT, load_records
from resnet_cifar.train import train

RECORDS = Path(__file__).resolve().parents[1] / "book" / "records"


def test_conventional_loader_matches_torchvision_recipe(dataset):
    """PIL images through RandomCrop(32, padding=4), flip, ToTensor, Normalize: float
    batches of the right shape, per-channel normalized, labels unchanged."""
    images, labels = dataset.train_images[:64], dataset.train_labels[:64]
    loader = M.conventional_loader(images, labels, batch_size=32, num_workers=0)
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


def test_the_matmul_step_gives_a_plausible_peak_and_sets_the_numerics():
    cpu = torch.device("cpu")
    for numerics in ("float32", "float64"):
        step, flop = M.matmul_step(cpu, numerics, n=256)
        assert flop == 2 * 256 ** 3
        gflops = M.race({"matmul": step}, flop, cpu, rounds=2, warmup=1, seconds=0.05)["matmul"]["images_per_s"] / 1e9
        assert 0.1 < gflops < 1e5
        g = torch.Generator().manual_seed(0)  # the step's operands: it computes their product, not just its time
        a, b = (torch.randn(256, 256, generator=g).double() for _ in range(2))
        assert torch.allclose(step().double(), a @ b, rtol=1e-4, atol=1e-3)
    assert not torch.backends.cuda.matmul.allow_tf32  # float32 is true fp32


def test_macs_per_image_counts_convolutions_and_classifier():
    """ResNet-8: a 3->16 stem, three stages of one block (16, 32, 64 channels on 32, 16 and 8
    pixels), a 64->10 classifier; option A shortcuts add no multiply-adds."""
    stem = 32 * 32 * 16 * 3 * 9
    blocks = 32 * 32 * 16 * 16 * 9 * 2 + 16 * 16 * 32 * (16 + 32) * 9 + 8 * 8 * 64 * (32 + 64) * 9
    assert M.macs_per_image(8) == stem + blocks + 64 * 10
    assert M.macs_per_image(32) > 5 * M.macs_per_image(8)


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
                             train_images=32, dataset=dataset, profile=0)
    assert timed == [] and record["variants"] == [] and record["peaks"] == {}
    assert [s["variant"] for s in record["skipped"]] == ["bf16", "bf16+cl", "tf32"]
    assert all(s["reason"] for s in record["skipped"])
    assert "bf16 (" in S.summarize(record)["skipped"]


def test_bench_rejects_bad_sizes(dataset):
    with pytest.raises(ValueError, match="train_images"):
        B.run_benchmark(device="cpu", batch_size=128, train_images=64, dataset=dataset)
    with pytest.raises(ValueError, match="rounds must be a positive integer"):
        B.run_benchmark(device="cpu", rounds=0, dataset=dataset)


# ---------------------------------------------------------------- rounds, medians, flags

def test_race_takes_the_median_of_rounds_timed_in_turns():
    calls = []
    steps = dict(a=lambda: calls.append("a"), b=lambda: calls.append("b"))
    res = M.race(steps, dict(a=2, b=5), torch.device("cpu"), rounds=3, warmup=1, seconds=0.0)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # one warm-up call each, then one window each per round, in turns
    for name, r in res.items():
        assert len(r["rates"]) == 3 and r["images_per_s"] == statistics.median(r["rates"])
        assert r["spread"] == pytest.approx(max(r["rates"]) / min(r["rates"]))
    assert M.spread([4.0]) is None and M.spread([2.0, 3.0]) == 1.5


def _variant_row(variant, dtype, library, model, data, matmul, batch=128, macs=69_468_800):
    """A format-3 variant row from its rounds, derived as run_benchmark derives it."""
    med = {k: statistics.median(v) for k, v in dict(library=library, model=model, data=data, matmul=matmul).items()}
    gflops = 6 * macs * med["model"] / 1e9
    return dict(variant=variant, dtype=dtype, channels_last="+cl" in variant, compile=None, numerics={},
                library=med["library"], model=med["model"], data_ms=1000 * batch / med["data"],
                step_ms=1000 * batch / med["library"], data_share=100 * med["library"] / med["data"], gflops=gflops,
                matmul_gflops=med["matmul"], peak_share=100 * gflops / med["matmul"], warmup_s=1.0,
                rounds=dict(library=library, model=model, data=data, matmul=matmul))


def _record(fp32_library, fp32_conventional, cl_library):
    """fp32 timed with the conventional pipeline; fp32+cl, faster, in rounds of its own."""
    fp32 = _variant_row("fp32", "float32", fp32_library, [40.0, 41.0, 42.0], [9000.0, 9100.0, 9050.0],
                        [300.0, 310.0, 305.0])
    cl = _variant_row("fp32+cl", "float32", cl_library, [170.0, 171.0, 169.0], [9000.0, 9100.0, 9050.0],
                      [300.0, 310.0, 305.0])
    info = dict(device="cpu", device_name="test CPU", threads=2, load_average=[1.0], batch_size=128, depth=32,
                rounds=3, train_gflop_per_image=0.42, date="2026-01-01 00:00", git_commit="abc1234")
    conv = [dict(variant="fp32", num_workers=0, library=fp32["library"],
                 images_per_s=statistics.median(fp32_conventional), rounds=fp32_conventional)]
    return dict(format=BENCH_FORMAT, info=info, peaks=dict(float32=305.0), variants=[fp32, cl], conventional=conv,
                skipped=[], errors=[], notes=[], profile=None, concurrent=None,
                evaluation=dict(variant="fp32", images_per_s=1000.0, batch_size=256, images=512,
                                rounds=[990.0, 1000.0, 1010.0]))


def _sentences(s):
    return " ".join(v for k, v in s.items() if k.startswith("say_"))


def test_rounds_that_agree_give_their_medians_and_ratio():
    record = _record([39.0, 40.0, 41.0], [29.0, 30.0, 31.0], [160.0, 164.0, 168.0])
    s = S.summarize(record)
    assert s["flagged"] == "none" and s["library"] == 40.0 and s["conventional"] == 30.0
    assert s["ratio"] == pytest.approx(40 / 30)
    text = _sentences(s)
    assert f"{40 / 30:.2f}×" in s["say_library"] and "40 images/s" in s["say_library"]
    assert "median of 3 rounds" in s["say_rounds"] and f"within {M.SPREAD_LIMIT:.2f}×" in s["say_rounds"]
    # fp32+cl is the fastest, but its rounds held no conventional pipeline: no ratio between other rounds' figures
    assert s["fastest"] == "fp32+cl" and s["fastest_vs_conventional"] is None
    assert f"{164 / 30:.2f}" not in text and "no ratio to that is stated" in s["say_fastest"]
    assert "164 images/s" in s["say_fastest"]


def test_rounds_that_disagree_are_flagged_and_left_out_of_the_sentences():
    record = _record([30.0, 40.0, 41.0], [29.0, 30.0, 31.0], [160.0, 164.0, 240.0])  # 41/30 and 240/160 > 1.25
    s = S.summarize(record)
    assert s["flagged"].startswith("fp32 (library") and "fp32+cl (library" in s["flagged"]
    assert "conventional" not in s["flagged"]  # its rounds agree
    text = _sentences(s)
    for rate in (s["library"], s["fastest_rate"], s["fastest_fp32_rate"]):
        assert f" {rate:,.0f} images/s" not in text
    assert f"{s['ratio']:.2f}×" not in text and f"{s['ceiling']:.2f}×" in s["say_model"]  # model-only agrees
    assert "No figure is stated" in s["say_library"] and f"{41 / 30:.2f}×" in s["say_library"]  # the spread, named
    assert s["flagged"] in s["say_rounds"] and "flagged" in s["say_rounds"]
    assert s["say_rounds"].endswith(s["say_flagged"]) and "median" not in s["say_flagged"]
    # the evaluation share is a ratio to the fp32 library rate of its rounds: left out too
    assert "No figure is stated" in s["say_evaluation"]
    marks = dict(zip(S.tables(record)["variants"]["variant"], S.tables(record)["variants"]["rounds max / min"]))
    assert marks["fp32"].endswith("flagged") and marks["fp32+cl"] == f"{240 / 160:.2f}× flagged"


# ---------------------------------------------------------------- where the step's time goes

def _row(name, device_type, cpu_us=0.0, device_us=0.0, calls=1):
    return dict(name=name, calls=calls, device_type=device_type, self_cpu_us=cpu_us, self_device_us=device_us)


def test_cuda_profile_counts_kernel_rows_only():
    """An op row's device time is its kernels' time again: on CUDA only kernel rows count,
    cuDNN / implicit-GEMM kernels are convolutions, cuDNN batch-norm kernels batch norm."""
    events = [
        _row("aten::cudnn_convolution", "cpu", cpu_us=50, device_us=600),  # op row: its kernels below
        _row("aten::convolution_backward", "cpu", cpu_us=40, device_us=300),
        _row("sm90_xmma_fprop_implicit_gemm_f32f32_f32f32_f32_nhwckrsc_nchw", "cuda", device_us=500),
        _row("void cudnn::ops::nchwToNhwcKernel<float, float, float, false, true>", "cuda", device_us=100),
        _row("sm80_xmma_dgrad_implicit_gemm_indexed_f32f32", "cuda", device_us=200),
        _row("void cudnn::detail::implicit_convolve_sgemm<float, float, 128, 5, 5>", "cuda", device_us=100),
        _row("void cudnn::bn_fw_tr_1C11_kernel_NCHW<float, float, int, 512, true, 1>", "cuda", device_us=50),
        _row("void at::native::batch_norm_backward_kernel<float>", "cuda", device_us=50),
        _row("void at::native::multi_tensor_apply_kernel<...>", "cuda", device_us=100),
        _row("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n", "cuda", device_us=50),
        _row("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", "cuda", device_us=50),
        _row("cudaLaunchKernel", "cpu", cpu_us=300),
    ]
    p = M.profile_summary(events, cuda=True, steps=2)
    assert p["time"] == "CUDA kernel time" and p["ms_per_step"] == pytest.approx(1.2 / 2)  # 1,200 us of kernels
    assert p["by_kind"] == pytest.approx({"convolution": 75.0, "batch norm": 100 / 12, "optimizer": 100 / 12,
                                          "matmul": 50 / 12, "other": 50 / 12})
    assert sum(p["by_kind"].values()) == pytest.approx(100)
    assert all(not r["name"].startswith(("aten::", "cuda")) for r in p["rows"])
    assert p["rows"][0]["share"] == pytest.approx(500 / 12) and p["rows"][0]["kind"] == "convolution"


def test_cpu_profile_counts_op_self_time():
    events = [_row("aten::convolution_backward", "cpu", cpu_us=600),
              _row("aten::mkldnn_convolution", "cpu", cpu_us=200),
              _row("aten::native_batch_norm", "cpu", cpu_us=100), _row("aten::clamp_min", "cpu", cpu_us=50),
              _row("aten::index", "cpu", cpu_us=50), _row("aten::conv2d", "cpu", cpu_us=0)]
    p = M.profile_summary(events, cuda=False, steps=1, top=3)
    assert p["time"] == "self CPU time" and p["ms_per_step"] == pytest.approx(1.0)
    assert p["by_kind"] == pytest.approx({"convolution": 80, "batch norm": 10, "relu": 5, "other": 5})
    assert [r["name"] for r in p["rows"]] == ["aten::convolution_backward", "aten::mkldnn_convolution",
                                              "aten::native_batch_norm"]


# ---------------------------------------------------------------- the benchmark, tiny

@pytest.fixture(scope="module")
def tiny_record(dataset):
    """One tiny real benchmark: two fp32 variants, the conventional pipeline for the first."""
    return B.run_benchmark(device="cpu", batch_size=16, depth=8, variants=["fp32", "fp32+cl"], conventional=["fp32"],
                           workers=(0, 1), seconds=0.05, rounds=2, warmup=1, train_images=64, dataset=dataset,
                           profile=1)


@pytest.mark.slow
def test_benchmark_numbers_are_consistent(tiny_record):
    r = tiny_record
    assert r["format"] == BENCH_FORMAT and [v["variant"] for v in r["variants"]] == ["fp32", "fp32+cl"]
    for v in r["variants"]:
        assert v["library"] > 0 and v["model"] > 0 and v["data_ms"] > 0
        assert v["step_ms"] == pytest.approx(1000 * 16 / v["library"])
        assert v["data_share"] == pytest.approx(100 * v["data_ms"] / v["step_ms"])
        assert v["gflops"] == pytest.approx(6 * r["info"]["macs_per_image"] * v["model"] / 1e9)
        assert v["peak_share"] == pytest.approx(100 * v["gflops"] / v["matmul_gflops"])  # the peak of its rounds
        assert {k: len(x) for k, x in v["rounds"].items()} == dict(library=2, model=2, data=2, matmul=2)
        assert v["library"] == pytest.approx(statistics.median(v["rounds"]["library"]))
        assert v["numerics"] == dict(dtype="float32", tf32_matmul=False, tf32_cudnn=False, cudnn_benchmark=False)
    conv = r["conventional"]
    assert [(c["variant"], c["num_workers"]) for c in conv] == [("fp32", 0), ("fp32", 1)]
    assert all(c["images_per_s"] > 0 and c["library"] == r["variants"][0]["library"] for c in conv)
    assert all(c["images_per_s"] == pytest.approx(statistics.median(c["rounds"])) for c in conv)
    assert r["peaks"]["float32"] == max(v["matmul_gflops"] for v in r["variants"])
    assert r["evaluation"]["images_per_s"] > 0 and r["evaluation"]["batch_size"] == 256
    assert r["evaluation"]["variant"] == "fp32" and len(r["evaluation"]["rounds"]) == 2
    assert r["profile"]["time"] == "self CPU time" and r["profile"]["by_kind"]["convolution"] > 0
    assert r["info"]["macs_per_image"] == M.macs_per_image(8) and len(r["info"]["load_average"]) == 2
    s = S.summarize(r)
    best = max(conv, key=lambda c: c["images_per_s"])
    assert s["conventional"] == best["images_per_s"] and s["workers"] == best["num_workers"]
    assert s["ratio"] == pytest.approx(s["library"] / s["conventional"])
    assert s["ceiling"] == pytest.approx(r["variants"][0]["model"] / s["conventional"])
    assert s["fastest_fp32"] in ("fp32", "fp32+cl") and s["skipped"] == "none" and s["concurrent_runs"] is None
    assert s["rounds"] == 2 and all(s[k] for k in s if k.startswith("say_"))
    assert s["schedule_fp32_min"] == pytest.approx(64_000 * 16 / s["fastest_fp32_rate"] / 60)
    assert 0 < s["eval_share"] < 1
    tables = S.tables(r)
    assert list(tables["variants"]["variant"]) == ["fp32", "fp32+cl"] and len(tables["conventional"]) == 2
    assert all(note.endswith(("×", "× flagged", " · under load")) for note in tables["variants"]["rounds max / min"])
    assert len(tables["profile"]) >= 1


@pytest.mark.slow
def test_records_round_trip(tiny_record, tmp_path):
    (tmp_path / "bench-cpu.json").write_text(json.dumps(tiny_record))
    (tmp_path / "other.json").write_text("{}")  # not a record: ignored
    records = load_records(tmp_path)
    assert list(records) == ["bench-cpu"] and records["bench-cpu"] == tiny_record
    assert S.summarize(records["bench-cpu"]) == S.summarize(tiny_record)
    assert load_records(tmp_path / "missing") == {}
    (tmp_path / "bench-old.json").write_text(json.dumps({"info": {}}))
    with pytest.raises(ValueError, match="bench-old.json is not a benchmark record of format 3"):
        load_records(tmp_path)


def test_the_recorded_benchmarks_load_and_summarize():
    """book/records holds what the appendix shows: every record loads and gives its figures."""
    records = load_records(RECORDS)
    assert "bench-cpu" in records
    for record in records.values():
        s = S.summarize(record)
        assert s["library"] > 0 and s["conventional"] > 0
        assert s["ratio"] == pytest.approx(s["library"] / s["conventional"])
        assert s["fastest_rate"] >= s["fastest_fp32_rate"] > 0 and s["date"] and s["device_name"]
    cpu = records["bench-cpu"]
    assert cpu["info"]["date"] == "2026-12-07 03:09" and cpu["info"]["git_commit"] == "fc8ed6e"
    assert S.summarize(cpu)["library"] == pytest.approx(294.6437285163383)
    # measured on a quiet machine: the load was sampled before and during every variant's rounds
    other = cpu["info"]["other_load"]
    assert set(other["during"]) == {v["variant"] for v in cpu["variants"]} and S.under_load(cpu) is None
    assert max(other["before"], *other["during"].values()) < M.LOAD_LIMIT
    # every figure keeps its rounds: the tables give each row's spread, and flagged rows stay out of sentences
    assert S.summarize(cpu)["say_rounds"].startswith(f"Each figure is the median of {cpu['info']['rounds']} rounds")
    assert all(note.endswith(("×", "× flagged")) for note in S.tables(cpu)["variants"]["rounds max / min"])
    packed = cpu["concurrent"]  # `bench --concurrent 2`: stated with its own numbers
    assert S.summarize(cpu)["say_concurrent"].startswith(f"{packed['runs']} runs at once, 1 thread(s) each")
    assert f"{packed['speedup']:.2f}×" in S.summarize(cpu)["say_concurrent"]
    assert "no figure for several runs at once" in S.summarize(dict(cpu, concurrent=None))["say_concurrent"]
    # the plan's time estimates read the same records: eager variants, library rates
    from resnet_cifar.plan import bench_rates
    rates = {(r["dtype"], r["channels_last"]): r["rate"] for r in bench_rates(RECORDS, torch.device("cpu"))}
    assert rates[("float32", False)] == pytest.approx(cpu["variants"][0]["library"]) and len(rates) == 5


@pytest.mark.slow
def test_concurrent_runs_are_measured_against_one(dataset):
    """Two processes stepping their own ResNet-8 at once: each reports a rate, the total is
    their sum, the speedup the total over one process alone."""
    args = (B.parse_variant("fp32"), B.bench_dataset(dataset, 64), torch.device("cpu"), 16, 8, 0)
    c = M.measure_concurrent(2, B.library_step, args, torch.device("cpu"), 16, seconds=0.2)
    assert c["runs"] == 2 and len(c["per_run"]) == 2 and all(r > 0 for r in c["per_run"]) and c["single"] > 0
    assert c["total"] == pytest.approx(sum(c["per_run"])) and c["speedup"] == pytest.approx(c["total"] / c["single"])
    assert c["threads_per_run"] == max(1, c["threads_single"] // 2)


def test_concurrent_failure_is_reported(dataset):
    args = (B.parse_variant("fp32"), B.bench_dataset(dataset, 64), torch.device("cpu"), 16, 7, 0)  # depth 7: invalid
    with pytest.raises(RuntimeError, match="a concurrent run failed: ValueError: depth must be 6n\\+2"):
        M.measure_concurrent(2, B.library_step, args, torch.device("cpu"), 16, seconds=0.1)


@pytest.mark.slow
def test_bench_command_writes_its_record(dataset, tmp_path, capsys):
    out = tmp_path / "records" / "bench-cpu.json"
    rc = cli_main(["bench", "--device", "cpu", "--batch-size", "16", "--depth", "8", "--variants", "fp32", "tf32",
                   "--workers", "0", "--seconds", "0.05", "--rounds", "1", "--warmup", "1", "--train-images", "32",
                   "--profile", "0", "--data-dir", str(dataset.root), "--json", str(out)])
    assert rc == 0
    record = json.loads(out.read_text())
    assert [v["variant"] for v in record["variants"]] == ["fp32"] and record["skipped"][0]["variant"] == "tf32"
    text = capsys.readouterr().out
    assert "library images/s" in text and "skipped tf32: TF32 is a CUDA tensor-core format" in text


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
    from resnet_cifar.chapters.ch05_optimizers import format_speeds
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
    """OtherLoad: a busy process that is not ours counts (about a core); our own busy child does not."""
    import subprocess
    import time
    if M._busy_seconds() is None:
        pytest.skip("no /proc on this system: the load is not sampled")
    busy = "end=$((SECONDS + 3)); while [ $SECONDS -lt $end ]; do :; done"
    before = M.other_load_now(1.0)
    child = subprocess.Popen(["bash", "-c", busy])
    with M.OtherLoad() as own:
        time.sleep(1.5)
    child.wait()
    assert own.cores is not None and own.cores <= before + 0.5  # our child's CPU is ours
    subprocess.run(["bash", "-c", f"(bash -c '{busy}' &)"], check=True)  # an orphan: another process
    with M.OtherLoad() as other:
        time.sleep(1.5)
    assert other.cores >= 0.5


def test_a_record_taken_under_load_says_so_and_states_no_figure(tmp_path):
    """A benchmark record whose load samples show other processes at work: every table row says
    'under load', and no sentence of the appendix or chapter 5 states one of its figures."""
    from types import SimpleNamespace
    from resnet_cifar.chapters.ch05_optimizers import format_speeds
    record = json.loads((RECORDS / "bench-cpu.json").read_text())
    first = record["variants"][0]["variant"]
    quiet = {**record, "info": {**record["info"], "other_load": dict(before=0.02, during={first: 0.05},
                                                                     limit=M.LOAD_LIMIT)}}
    assert S.under_load(quiet) is None and S.summarize(quiet)["say_library"].startswith("With the fp32 step")
    loaded = {**record, "info": {**record["info"], "other_load": dict(before=0.02, during={first: 1.6},
                                                                      limit=M.LOAD_LIMIT)}}
    s = S.summarize(loaded)
    assert S.under_load(loaded) == 1.6 and s["other_load"] == 1.6
    for key in ("say_library", "say_model", "say_data", "say_peak", "say_evaluation"):
        assert s[key].startswith("No figure is stated for") and "other processes used up to 1.6 cores" in s[key], key
    assert "the whole record is flagged" in s["say_flagged"]
    table = S.tables(loaded)["variants"]
    assert table["rounds max / min"].str.endswith(" · under load").all()
    assert table.set_index("variant").loc[first, "other processes, cores"] == 1.6
    (tmp_path / "bench-cpu.json").write_text(json.dumps(loaded))
    _, facts = format_speeds(SimpleNamespace(torch_device=torch.device("cpu")), tmp_path)
    assert facts["opt_dtype_verdict"].startswith("no figure of the committed benchmark records is stated: each was "
                                                 "taken under load")
