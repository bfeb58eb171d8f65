"""Training: the schedule, run records, reuse, determinism, evaluation."""
import json
import math

import pytest
import torch

from conftest import missing
from resnet_cifar import data as D
from resnet_cifar.models import resnet
from resnet_cifar import runs as R
from resnet_cifar import train as T
from resnet_cifar.config import TrainConfig, lr_at
from resnet_cifar.data import prepare_data
from resnet_cifar.runs import RunError, load_run
from resnet_cifar.train import evaluate, train


def _weights(run):
    return torch.load(run.run_dir / "model.pt", weights_only=True)


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------- learning rate

@pytest.mark.parametrize("iteration, lr", [(0, 0.1), (31999, 0.1), (32000, 0.01), (47999, 0.01),
                                           (48000, 0.001), (63999, 0.001)])
def test_paper_schedule(iteration, lr):
    assert lr_at(TrainConfig(), iteration) == pytest.approx(lr, rel=1e-12)


def test_warmup():
    config = TrainConfig(warmup=400, warmup_lr=0.01)  # the ResNet-110 trick
    assert [lr_at(config, i) for i in (0, 399, 400, 31999, 32000)] == pytest.approx([0.01, 0.01, 0.1, 0.1, 0.01])


def test_cosine_and_constant():
    config = TrainConfig(schedule="cosine", iterations=1000)
    assert lr_at(config, 0) == pytest.approx(0.1)
    assert lr_at(config, 500) == pytest.approx(0.05)
    assert lr_at(config, 250) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    assert lr_at(config, 999) < 1e-5
    lrs = [lr_at(config, i) for i in range(1000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert {lr_at(TrainConfig(schedule="constant", lr=0.3), i) for i in (0, 50000, 63999)} == {0.3}


def test_epoch_unit():
    config = TrainConfig(schedule_unit="epoch", milestones=(2, 4), warmup=1, warmup_lr=0.02)
    ipe = 10
    got = [lr_at(config, i, ipe) for i in (0, 9, 10, 19, 20, 39, 40)]
    assert got == pytest.approx([0.02, 0.02, 0.1, 0.1, 0.01, 0.01, 0.001])


def test_unknown_choices_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"optimizer must be one of \('sgd', 'adam', 'adamw', 'nadam'\), got 'rmsprop'"):
        TrainConfig(optimizer="rmsprop").validate()
    with pytest.raises(ValueError, match=r"schedule must be one of \('multistep', 'plateau', 'cosine', 'constant'\)"):
        TrainConfig(schedule="step").validate()
    with pytest.raises(ValueError, match=r"lr must be a positive number"):
        TrainConfig(lr=0).validate()


# ---------------------------------------------------------------- a finished run

@pytest.fixture(scope="module")
def run32(tmp_path_factory, dataset):
    """A 4-iteration ResNet-32 run (the paper's network) on 250-image subsets."""
    runs = tmp_path_factory.mktemp("runs32")
    config = TrainConfig(name="r32", depth=32, subset=256, batch_size=32, iterations=4, eval_every=2,
                         device="cpu", progress="none", runs_dir=str(runs))
    return config, train(config, dataset=dataset)


def test_summary_and_records(run32, dataset):
    config, run = run32
    s = run.summary
    assert s["status"] == "complete" and s["status_detail"] == "complete"
    assert (s["iterations_done"], s["iterations"]) == (4, 4)
    assert s["params"] == 464_154 and s["flops"] == 69_468_800
    assert s["dataset"] == dataset.identity and s["dataset_label"] == dataset.label
    assert s["device"] == "cpu" and "CPU" in s["device_name"]
    assert s["torch_version"] == torch.__version__
    assert (s["train_size"], s["val_size"], s["test_size"]) == (250, 250, 250)
    assert s["final_test_error"] == run.history["test_error"].iloc[-1]
    assert 0 <= s["best_val_error"] <= 1 and s["train_images_per_s"] > 0
    files = {p.name for p in run.run_dir.iterdir()}
    assert {"config.json", "history.csv", "lr_trace.csv", "summary.json", "checkpoint.pt", "model.pt"} <= files
    assert not {f for f in files if f.endswith(".tmp") or f == ".lock"}
    assert json.loads((run.run_dir / "config.json").read_text())["depth"] == 32
    assert list(run.history.columns) == R.HISTORY_COLUMNS
    assert run.history["iteration"].tolist() == [2, 4]
    assert run.history["epoch"].tolist() == pytest.approx([2 / 7, 4 / 7])  # 250 // 32 = 7 batches an epoch
    assert run.history[["train_loss", "val_loss", "test_loss"]].notna().all().all()
    assert run.lr_trace["iteration"].tolist() == [0, 1, 2, 3]
    assert run.lr_trace["lr"].tolist() == [lr_at(config, i) for i in range(4)]


def test_finished_run_is_reused(run32, dataset, monkeypatch):
    config, run = run32
    model_pt = run.run_dir / "model.pt"
    mtime = model_pt.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(T, "fit", no_training)
    again = train(config, dataset=dataset)
    assert again.summary == run.summary
    assert again.history.equals(run.history)
    # execution settings (device, progress, checkpointing) do not make it a different run
    assert train(config, dataset=dataset, progress="log", checkpoint_every=1).summary == run.summary
    assert model_pt.stat().st_mtime_ns == mtime


def test_config_mismatch_names_the_field(run32, dataset):
    config, run = run32
    with pytest.raises(RunError, match=r"exists with a different config \(differs in lr\).*force=True"):
        train(config, dataset=dataset, lr=0.05)
    with pytest.raises(RunError, match=r"differs in depth, shortcut"):
        train(config, dataset=dataset, depth=20, shortcut="B")
    assert load_run(run.run_dir).summary == run.summary


def test_load_model_reproduces_the_logged_test_error(run32, dataset):
    config, run = run32
    model = run.load_model()
    assert not model.training
    data = prepare_data(config, torch.device("cpu"), dataset)
    result = evaluate(model, data.test_x, data.test_y)
    assert result["error"] == pytest.approx(run.summary["final_test_error"], abs=1e-12)
    assert result["loss"] == pytest.approx(run.history["test_loss"].iloc[-1], rel=1e-5)


def test_force_retrains(tiny, dataset):
    first = train(name="f", dataset=dataset, **tiny)
    model_pt = first.run_dir / "model.pt"
    mtime = model_pt.stat().st_mtime_ns
    again = train(name="f", dataset=dataset, force=True, **tiny)
    assert model_pt.stat().st_mtime_ns != mtime
    assert again.status == "complete"
    _assert_same_weights(_weights(first), _weights(again))  # same config, same seed: same weights


def test_cpu_determinism(tiny, dataset):
    a = train(name="a", dataset=dataset, **tiny)
    b = train(name="b", dataset=dataset, **tiny)
    _assert_same_weights(_weights(a), _weights(b))
    assert a.history.drop(columns="wall_time").equals(b.history.drop(columns="wall_time"))
    c = train(name="c", dataset=dataset, seed=1, **tiny)
    assert not torch.equal(_weights(a)["fc.weight"], _weights(c)["fc.weight"])


def test_evaluate(dataset):
    torch.manual_seed(0)
    model = resnet(8)
    data = prepare_data(TrainConfig(subset=256), torch.device("cpu"), dataset)
    model.train()
    result = evaluate(model, data.test_x, data.test_y, batch_size=64)
    assert model.training  # restored
    confusion = result["confusion"]
    assert confusion.shape == (10, 10) and confusion.sum() == 250
    assert confusion.sum(1).tolist() == [25] * 10  # rows are true labels
    assert result["error"] == pytest.approx(1 - confusion.trace().item() / 250)
    assert result["per_class_accuracy"] == pytest.approx((confusion.diag() / 25).tolist())
    with torch.no_grad():
        logits = model.eval()(data.test_x)
    assert result["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, data.test_y).item(), rel=1e-5)
    assert result["error"] == pytest.approx((logits.argmax(1) != data.test_y).float().mean().item())
    whole = evaluate(model, data.test_x, data.test_y)  # the default batch (256 on a CPU: all 250 at once)
    assert torch.equal(whole["confusion"], confusion) and whole["loss"] == pytest.approx(result["loss"])


@pytest.mark.slow
def test_training_lowers_the_loss(tiny, dataset):
    """100 SGD steps (lr 0.05) of ResNet-8 on 510 real images, no augmentation: the
    training loss and error fall clearly from the first 25 iterations to the last 25
    (seen on the JPEG copy: loss 2.30 -> 1.72, error 80% -> 64%, val error 70%)."""
    if dataset.identity not in ("jpeg-q75-copy", "official"):
        missing("needs real CIFAR-10 images (the synthetic fallback is learnt at once); make data")
    settings = {**tiny, "subset": 512, "iterations": 100, "eval_every": 25, "crop": False, "flip": False,
                "lr": 0.05, "milestones": (1000,)}
    run = train(name="learn", dataset=dataset, **settings)
    first, last = run.history.iloc[0], run.history.iloc[-1]
    assert run.history["iteration"].tolist() == [25, 50, 75, 100]
    assert first["train_loss"] > 1.8
    assert last["train_loss"] < 0.85 * first["train_loss"]
    assert last["train_error"] < first["train_error"] - 0.08
    assert last["val_error"] < 0.8  # clearly better than chance (0.9) on held-out images


def test_trainer_batches_are_the_per_iteration_augmentation(dataset, tmp_path):
    """The trainer draws an epoch's augmentation at once (one copy to a GPU); each batch must
    still be exactly `augment` of that iteration's images with that iteration's generator,
    in the first epoch and after the epoch boundary."""
    config = TrainConfig(depth=8, subset=256, batch_size=32, device="cpu", progress="none", seed=3).validate()
    data = prepare_data(config, torch.device("cpu"), dataset)
    batches = D.TrainBatches(data, config)
    ipe = batches.per_epoch
    for it in (0, ipe - 1, ipe, 2 * ipe + 1):
        x, y = batches(it)
        epoch, position = divmod(it, ipe)
        perm = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(3 * 100_003 + epoch))
        index = perm[position * 32:(position + 1) * 32]
        g = torch.Generator().manual_seed((3 * 1_000_003 + it) * 64)
        assert torch.equal(x, D.augment(data.train_x[index], g)) and torch.equal(y, data.train_y[index])


def test_a_run_shorter_than_its_milestones_is_told_the_flag_that_moves_them():
    notice = TrainConfig(iterations=1000).schedule_notice()
    assert notice.startswith("the learning rate stays 0.1 for all 1,000 iterations: its milestones 32,000, 48,000")
    assert "(--milestones on the command line)" in notice
    assert TrainConfig(iterations=1000, milestones=(500, 750)).schedule_notice() is None


def test_stop_at_between_deferred_reads_keeps_every_step(tiny, dataset, monkeypatch):
    """On a GPU the losses are read every 50 steps: a run stopped (stop_at) between two reads still
    records and checkpoints every step it took, and its resumption ends as the straight run."""
    monkeypatch.setattr(T, "loss_read_interval", lambda device: 4)
    stopped = train(name="s", dataset=dataset, stop_at=5, **tiny)
    assert stopped.summary["status_detail"] == "stopped at iteration 5 (stop_at)"
    assert stopped.summary["iterations_done"] == 5 and len(stopped.lr_trace) == 5
    assert torch.load(stopped.run_dir / "checkpoint.pt", weights_only=True)["iteration"] == 5
    resumed, straight = train(name="s", dataset=dataset, **tiny), train(name="straight", dataset=dataset, **tiny)
    assert resumed.status == "complete"
    _assert_same_weights(_weights(resumed), _weights(straight))
