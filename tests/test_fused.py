"""Fused training: a run trained in a group is the run trained alone (same initial weights and
batches bit for bit, the same training to float tolerance), keeps its own record, survives a
kill, and leaves the group when it diverges; the runner, plan and bench expose it."""
import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from resnet_cifar import fused as FU
from resnet_cifar.config import PROFILES
from resnet_cifar.experiments import HEADLINE_SEEDS
from resnet_cifar import runs as R
from resnet_cifar import train as T
from resnet_cifar.cli import main as cli_main
from resnet_cifar.config import TrainConfig
from resnet_cifar.runs import load_run
from resnet_cifar.train import train

# Measured on a 2-core CPU, one thread, ResNet-8, batch 32: in float64 the fused and solo weights
# agree to ~3e-14 (relative norm) after 10 iterations, so the mechanism computes the same function
# and gradient; in float32 they agree to ~1e-5 after 3 iterations, but early training amplifies
# rounding (~1e-2 after 10 iterations), so float32 is pinned over 3 iterations.
FLOAT64_RTOL = 1e-10
FLOAT32_RTOL, FLOAT32_ITERATIONS = 1e-4, 3


def _weights(run):
    return torch.load(run.run_dir / "model.pt", weights_only=True)


def _relative(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over all the floating-point tensors of two state dicts (weights and BN
    statistics); the BN step counters must be equal."""
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if not a[k].is_floating_point())
    flat = [torch.cat([d[k].double().flatten() for k in a if a[k].is_floating_point()]) for d in (a, b)]
    return ((flat[0] - flat[1]).norm() / flat[1].norm()).item()


def _same_run(group_run, solo_run, rtol):
    assert group_run.status == solo_run.status and group_run.summary["iterations_done"] == \
        solo_run.summary["iterations_done"]
    assert _relative(_weights(group_run), _weights(solo_run)) < rtol
    for column in ("iteration", "lr"):
        assert group_run.history[column].tolist() == solo_run.history[column].tolist()
    for column in ("train_loss", "train_error", "val_loss", "test_loss", "test_error"):
        assert group_run.history[column].to_numpy() == pytest.approx(solo_run.history[column].to_numpy(), rel=rtol,
                                                                     nan_ok=True)
    assert group_run.lr_trace.equals(solo_run.lr_trace)
    assert group_run.summary["lr_warmup_ended_at"] == solo_run.summary["lr_warmup_ended_at"]


@pytest.fixture
def base(tiny):
    return TrainConfig(**{**tiny, "iterations": 10, "eval_every": 2})


# float64 runs are slow on a CPU (no fast float64 convolutions) and an evaluation costs more than
# the steps between two: the float64 tests train on 120 images, test on 120, without validation.
FLOAT64 = dict(dtype="float64", subset=128, val_size=0)


# ---------------------------------------------------------------- grouping

def test_groups_split_by_architecture_and_size(base):
    seeds = [dataclasses.replace(base, seed=s) for s in range(5)]
    deep, plain = dataclasses.replace(base, depth=14), dataclasses.replace(base, arch="plain")
    made = FU.groups([seeds[0], deep, *seeds[1:], plain], 2)
    assert [[c.run_name() for c in g] for g in made] == [
        [seeds[0].run_name()], [seeds[1].run_name(), seeds[2].run_name()],
        [seeds[3].run_name(), seeds[4].run_name()], [deep.run_name()], [plain.run_name()]]
    assert [len(g) for g in FU.groups(seeds, 4)] == [2, 3]  # the fewest groups, balanced
    assert [len(g) for g in FU.groups(seeds, 1)] == [1] * 5
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="fuse must be a whole number of runs per group, at least 1"):
            FU.groups(seeds, bad)
    with pytest.raises(ValueError, match="differ in depth: they cannot train as one fused model"):
        FU.train_group([base, deep])


# ---------------------------------------------------------------- the same runs

def test_same_initial_weights_and_batches(base, dataset, tmp_path, monkeypatch):
    """The one step function trains both: solo steps see (batch, ...), fused steps (runs, batch, ...)."""
    configs = [dataclasses.replace(base, seed=s, iterations=2, val_size=0, runs_dir=str(tmp_path / "g"))
               for s in (0, 1)]
    seen = {"solo": [], "fused": []}
    real_step = T.train_step

    def step(model, optimizers, x, y, *args):
        if y.dim() == 2:
            seen["fused"].append([({k: v.clone() for k, v in m.state_dict().items()}, x[i].clone(), y[i].clone())
                                  for i, m in enumerate(model.args[0])])  # the models the step calls as one
        else:
            seen["solo"].append(({k: v.clone() for k, v in model.state_dict().items()}, x.clone(), y.clone()))
        return real_step(model, optimizers, x, y, *args)
    monkeypatch.setattr(T, "train_step", step)
    FU.train_group(configs, dataset=dataset)
    for c in configs:
        train(dataclasses.replace(c, runs_dir=str(tmp_path / "solo")), dataset=dataset)
    assert len(seen["fused"]) == 2 and len(seen["solo"]) == 4
    for step in range(2):
        for member in range(2):
            (w_f, x_f, y_f), (w_s, x_s, y_s) = seen["fused"][step][member], seen["solo"][2 * member + step]
            assert torch.equal(x_f, x_s) and torch.equal(y_f, y_s)
            if step == 0:  # the initial weights and BN buffers
                assert all(torch.equal(w_f[k], w_s[k]) for k in w_s)
    assert not torch.equal(seen["fused"][0][0][1], seen["fused"][0][1][1])  # two seeds, two batches


VARIANTS = {  # per run within one group: schedules, optimizer settings, augmentation, normalization, BN
    "multistep": dict(milestones=(3, 6), weight_decay=5e-4, momentum=0.5, nesterov=True, bn_momentum=0.5),
    "cosine": dict(schedule="cosine", crop=False, normalization="per-channel", normalize_eval=False, seed=1),
    "plateau": dict(schedule="plateau", plateau_patience=0, plateau_threshold=0.5, flip=False, lr=0.05, seed=2),
    "warmup-rule": dict(warmup_until_error=1.0, warmup_lr=0.02, seed=3),
}


def test_a_mixed_group_trains_each_run_as_alone_float64(base, dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(T, "WARMUP_RULE_EVERY", 4)  # the warm-up rule decides within the run
    configs = {k: dataclasses.replace(base, runs_dir=str(tmp_path / "group"), iterations=9, eval_every=3,
                                      **{**FLOAT64, **v}) for k, v in VARIANTS.items()}
    group = dict(zip(configs, FU.train_group(list(configs.values()), dataset=dataset)))
    for key, config in configs.items():
        solo = train(dataclasses.replace(config, runs_dir=str(tmp_path / "solo")), dataset=dataset)
        _same_run(group[key], solo, FLOAT64_RTOL)
        assert group[key].summary["fused_group"] == [c.run_name() for c in configs.values()]
    assert group["warmup-rule"].summary["lr_warmup_ended_at"] == 4
    assert group["plateau"].lr_trace["lr"].min() < 0.05  # the plateau scheduler did lower it
    assert group["multistep"].lr_trace["lr"].iloc[-1] == pytest.approx(base.lr * 0.01)


@pytest.mark.parametrize("arch, shortcut", [("plain", "A"), ("resnet", "B")])
def test_plain_and_projection_nets_float64(base, dataset, tmp_path, arch, shortcut):
    configs = [dataclasses.replace(base, arch=arch, shortcut=shortcut, iterations=4, eval_every=4, seed=s,
                                   runs_dir=str(tmp_path / "group"), **FLOAT64) for s in (0, 1)]
    for run, c in zip(FU.train_group(configs, dataset=dataset), configs):
        _same_run(run, train(dataclasses.replace(c, runs_dir=str(tmp_path / "solo")), dataset=dataset),
                  FLOAT64_RTOL)


def test_float32_group_within_tolerance(base, dataset, tmp_path):
    configs = [dataclasses.replace(base, iterations=FLOAT32_ITERATIONS, eval_every=FLOAT32_ITERATIONS, seed=s,
                                   runs_dir=str(tmp_path / "group")) for s in (0, 1)]
    for run, c in zip(FU.train_group(configs, dataset=dataset), configs):
        _same_run(run, train(dataclasses.replace(c, runs_dir=str(tmp_path / "solo")), dataset=dataset),
                  FLOAT32_RTOL)


# ---------------------------------------------------------------- records, reuse, kill, divergence

def test_records_are_solo_records_and_reused_both_ways(base, dataset, tmp_path, monkeypatch):
    configs = [dataclasses.replace(base, iterations=4, seed=s) for s in (0, 1)]
    group = FU.train_group(configs, dataset=dataset)
    for run, config in zip(group, configs):
        assert {p.name for p in run.run_dir.iterdir()} >= {"config.json", "history.csv", "lr_trace.csv",
                                                           "summary.json", "checkpoint.pt", "model.pt"}
        assert not (run.run_dir / ".lock").exists()
        model = run.load_model()  # the ordinary solo model
        assert sum(p.numel() for p in model.parameters()) == run.summary["params"]
        assert run.summary["fused_group"] == [c.run_name() for c in configs]
        assert R.decide(config, run.run_dir) == "reuse"
    monkeypatch.setattr(T, "fit", lambda *a, **k: pytest.fail("a finished fused run was retrained"))
    assert train(configs[1], dataset=dataset).summary == group[1].summary
    monkeypatch.undo()
    solo = train(dataclasses.replace(configs[0], seed=7), dataset=dataset)
    monkeypatch.setattr(T, "fit", lambda *a, **k: pytest.fail("a finished solo run was retrained"))
    assert FU.train_group([dataclasses.replace(configs[0], seed=7)], dataset=dataset)[0].summary == solo.summary


def test_killed_group_resumes_to_the_uninterrupted_result(base, dataset, tmp_path, monkeypatch):
    settings = dict(iterations=8, eval_every=4, checkpoint_every=2)
    configs = [dataclasses.replace(base, seed=s, runs_dir=str(tmp_path / "killed"), **settings) for s in (0, 1)]
    real, calls = T.train_step, []

    def step(*args):
        if len(calls) == 5:
            raise KeyboardInterrupt
        for c in configs:  # each run's lock is held while the group trains it
            assert R.lock_owner(Path(c.runs_dir) / c.run_name()) == os.getpid()
        calls.append(1)
        return real(*args)
    with monkeypatch.context() as mp:
        mp.setattr(T, "train_step", step)
        with pytest.raises(KeyboardInterrupt):
            FU.train_group(configs, dataset=dataset)
    for c in configs:
        run = load_run(Path(c.runs_dir) / c.run_name())
        assert run.status == "failed" and run.summary["iterations_done"] == 4  # its checkpoint's
        assert run.summary["status_detail"] == "interrupted at iteration 5; its checkpoint holds iteration 4, where it resumes"
        assert not (run.run_dir / ".lock").exists() and not (run.run_dir / "model.pt").exists()
        assert R.decide(c, run.run_dir) == "resume"
    resumed = FU.train_group(configs, dataset=dataset)
    straight = FU.train_group([dataclasses.replace(c, runs_dir=str(tmp_path / "straight")) for c in configs],
                              dataset=dataset)
    for a, b in zip(resumed, straight):
        assert a.status == "complete" and a.summary["iterations_done"] == 8
        assert all(torch.equal(x, y) for x, y in zip(_weights(a).values(), _weights(b).values()))
        assert a.history.drop(columns="wall_time").equals(b.history.drop(columns="wall_time"))


def test_a_diverging_run_leaves_the_group(base, dataset, tmp_path):
    settings = dict(iterations=6, eval_every=3, **FLOAT64)
    boom = dataclasses.replace(base, lr=1e300, seed=1, **settings)  # float64 overflows within steps
    calm = dataclasses.replace(base, **settings)
    group = FU.train_group([boom, calm], dataset=dataset)
    alone = [train(dataclasses.replace(c, runs_dir=str(tmp_path / "solo")), dataset=dataset) for c in (boom, calm)]
    assert group[0].diverged and group[0].summary["status_detail"] == alone[0].summary["status_detail"]
    assert group[0].summary["iterations_done"] < 6 and not (group[0].run_dir / "model.pt").exists()
    assert group[0].history["train_loss"].to_numpy()[:-1] == pytest.approx(
        alone[0].history["train_loss"].to_numpy()[:-1], rel=FLOAT64_RTOL)
    _same_run(group[1], alone[1], FLOAT64_RTOL)


# ---------------------------------------------------------------- runner, plan, bench

def _run_cli(args, capsys):
    code = cli_main(args)
    return code, capsys.readouterr()


def test_run_fuse_2_equals_fuse_1(training_data, tmp_path, capsys, monkeypatch):
    # Two headline seeds of the smoke plan on a small float64 budget: float32 runs of smoke's size
    # amplify rounding (a ResNet-32, 20 steps at lr 0.1 on 250 images, alone with and without
    # channels_last, ended at test errors 89.2 and 86.4 %).
    monkeypatch.setitem(PROFILES, "smoke", dict(iterations=6, eval_every=3, batch_size=32, depth=8, **FLOAT64))
    monkeypatch.setitem(HEADLINE_SEEDS, "smoke", 3)  # seeds 1 and 2 are headline runs only (seed 0 sets a depth)
    names = ["resnet32-seed1", "resnet32-seed2"]
    flags = ["--profile", "smoke", "--only", *names, "--device", "cpu",
             "--data-dir", str(training_data[0]), "--status-every", "600"]
    folders = {}
    for fuse in (1, 2):
        code, out = _run_cli(["run", *flags, "--runs-dir", str(tmp_path / f"fuse{fuse}"), "--fuse", str(fuse)], capsys)
        assert code == 0, out.err
        assert ("fused group of 2" in out.out) == (fuse == 2)
        folders[fuse] = next((tmp_path / f"fuse{fuse}").glob("*/smoke"))
    for name in names:
        one, two = load_run(folders[1] / name), load_run(folders[2] / name)
        assert "fused_group" not in one.summary and two.summary["fused_group"] == names
        assert two.summary["final_test_error"] == one.summary["final_test_error"]
        assert two.history["train_loss"].to_numpy() == pytest.approx(one.history["train_loss"].to_numpy(), rel=1e-3)
        _same_run(two, one, FLOAT64_RTOL)
    code, out = _run_cli(["plan", *flags[:-2], "--runs-dir", str(tmp_path / "planned"), "--fuse", "2"], capsys)
    assert code == 0 and f"group g1: 2 run(s) fused ({', '.join(names)}): " in out.out
    lines = out.out.splitlines()
    assert lines[1].split()[0] == "group" and [line.split()[:2] for line in lines[2:4]] == [["g1", n] for n in names]
    code, out = _run_cli(["run", *flags, "--runs-dir", str(tmp_path / "bad"), "--fuse", "0"], capsys)
    assert code == 2 and "fuse must be a whole number of runs per group, at least 1 (1: each run alone), got 0" \
        in out.err


def test_bench_fused_writes_its_section(training_data, tmp_path, capsys):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"format": 3, "fused": [{"n": 3, "ratio": 1.0}]}))
    code, out = _run_cli(["bench", "--fused", "2", "--device", "cpu", "--depth", "8", "--batch-size", "32",
                          "--train-images", "64", "--rounds", "2", "--seconds", "0.05", "--warmup", "1",
                          "--data-dir", str(training_data[0]), "--json", str(path)], capsys)
    assert code == 0
    record = json.loads(path.read_text())
    assert record["format"] == 3 and [r["n"] for r in record["fused"]] == [2, 3]
    row = record["fused"][0]
    assert row["rounds"] == 2 and row["gpu_memory_bytes"] is None
    assert row["images_per_s"] > 0 and row["solo_images_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["images_per_s"] / row["solo_images_per_s"])
    assert f"fused 2: {row['ratio']:.2f}× solo" in out.out
