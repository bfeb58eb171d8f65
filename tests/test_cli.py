"""`python -m resnet_cifar`: help, summary, train, eval, and errors."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from conftest import THREADS, missing, real_data_dir
from resnet_cifar import cli
from resnet_cifar.config import TrainConfig


def _cli(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    return subprocess.run([sys.executable, "-m", "resnet_cifar", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_help():
    result = _cli("--help")
    assert result.returncode == 0
    for command in ("train", "eval", "summary", "download", "bench"):
        assert command in result.stdout


def test_train_help_lists_every_config_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
        if isinstance(f.default, bool):
            assert "--no-" + f.name.replace("_", "-") in text
    assert "(default: 64000)" in text and "(default: 0.1)" in text  # the paper's recipe


@pytest.mark.slow
def test_summary_table(capsys):
    """A formatted table (thousands separators, '-' where the paper gives no count), no warnings."""
    assert cli.main(["summary"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    rows = {line.rsplit("  ", 1)[0].split("  ")[0].strip(): line.split() for line in out.splitlines()[2:]}
    assert rows["ResNet-32"][-3:] == ["464,154", "69,468,800", "460,000"]
    assert "269,722" in rows["ResNet-20"] and "1,727,962" in rows["ResNet-110"]
    assert "21,289,802" in out and rows["Plain-32"][-1] == "-" and "NaN" not in out
    assert "Warning" not in captured.err


@pytest.mark.parametrize("args, message", [
    (["train", "--depth", "abc"], "error: argument --depth: invalid int value: 'abc'"),
    (["train", "--crop", "yes"], "error: unrecognized arguments: yes"),
    (["train", "--nosuchflag"], "error: unrecognized arguments: --nosuchflag"),
    (["eval"], "error: the following arguments are required: run_dir"),
])
def test_bad_flags_exit_2(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--depth", "33"], r"error: depth must be 6n+2"),
    (["--optimizer", "rmsprop"], "error: optimizer must be one of ('sgd', 'adam', 'adamw', 'nadam')"),
    (["--subset", "0"], "error: subset must be a positive number"),
])
def test_bad_values_exit_2_with_one_message(capsys, tmp_path, args, message):
    assert cli.main(["train", "--runs-dir", str(tmp_path / "runs"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_missing_data_exit_2(capsys, tmp_path):
    assert cli.main(["train", "--data-dir", str(tmp_path / "none"), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CIFAR-10 not found") and "download" in err


def test_a_slots_process_answers_each_run_it_is_sent_on_one_line(tmp_path):
    """The process the runner starts per slot (`python -m resnet_cifar.runner`) trains the runs
    whose configs come on stdin, one JSON line each, and answers each on one JSON line of stdout;
    a failing run is an answer, not a crash, and the process goes on to the next."""
    runs = str(tmp_path / "runs")
    configs = [dict(name="bad", depth=33, runs_dir=runs, progress="none"),
               dict(name="worse", optimizer="rmsprop", runs_dir=runs, progress="none")]
    proc = subprocess.run([sys.executable, "-m", "resnet_cifar.runner"], capture_output=True, text=True,
                          input="".join(json.dumps(c) + "\n" for c in configs), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [a["ok"] for a in answers] == [False, False], answers
    assert answers[0]["detail"].startswith("ValueError: depth must be 6n+2"), answers
    assert answers[1]["detail"].startswith("ValueError: optimizer must be one of"), answers
    assert not (tmp_path / "runs").exists()


def test_a_slot_whose_process_dies_reports_the_run_failed_and_starts_a_new_process(tmp_path, monkeypatch):
    """A run that kills its slot's process (out of memory, a crash) fails with the exit status, and
    the slot's next run gets a process of its own."""
    from resnet_cifar import runner
    from resnet_cifar.config import TrainConfig
    started = tmp_path / "started"
    crash = tmp_path / "crash"  # stands for `python -m resnet_cifar.runner`: reads a run, dies
    crash.write_text(f"#!/bin/sh\necho x >> {started}\nread line\nexit 3\n")
    crash.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(crash))
    tasks = [runner.Task(name, TrainConfig(name=name), 0, 1.0) for name in ("a", "b")]
    runner._in_processes(runner.Runner(tasks), [None], "cpu", 1)
    assert [(t.state, t.detail) for t in tasks] == [("failed", "its process exited with status 3")] * 2
    assert started.read_text().count("x") == 2


def test_eval_of_a_non_run(capsys, tmp_path):
    assert cli.main(["eval", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


@pytest.mark.slow
def test_train_then_eval(tmp_path, capsys):
    data = real_data_dir()
    if data is None:
        missing("the command line reads the full CIFAR-10 folder; none in $RESNET_CIFAR_DATA or ./data")
    runs = tmp_path / "runs"
    result = _cli("train", "--name", "cli", "--depth", "8", "--subset", "256", "--batch-size", "32",
                  "--iterations", "4", "--eval-every", "2", "--milestones", "2", "3", "--no-flip",
                  "--device", "cpu", "--progress", "none", "--data-dir", str(data), "--runs-dir", str(runs))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["status"] == "complete" and summary["iterations_done"] == 4
    assert summary["dataset"] in ("jpeg-q75-copy", "official")
    config = json.loads((runs / "cli" / "config.json").read_text())
    assert config["milestones"] == [2, 3] and config["flip"] is False and config["depth"] == 8

    assert cli.main(["eval", str(runs / "cli"), "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test"]["error"] == pytest.approx(summary["final_test_error"], abs=1e-12)
    assert out["val"]["error"] == pytest.approx(summary["final_val_error"], abs=1e-12)
    assert set(out["test"]["per_class_accuracy"]) == {"airplane", "automobile", "bird", "cat", "deer", "dog",
                                                      "frog", "horse", "ship", "truck"}
    assert out["dataset"] == summary["dataset_label"]
