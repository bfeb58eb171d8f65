"""Every command that README.md, the manual (book/manual.md) and the book's pages print works
as printed, from a fresh clone after `make book` (or `make setup data`): the programs exist
(.venv/bin/..., make targets, scripts), their options are accepted, and the papermill commands, run in their
smoke form (profile smoke, device cpu, one chapter per loop) in a copy of the working tree,
execute and write only files git ignores (the manual's rerun of chapter 4 with one of its own
parameters finds the new run on the page).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, missing, real_data_dir

VENV_BIN = Path(sys.executable).parent
SHELL_WORDS = {"for", "do", "done", "done;", "wait", "then", "fi"}
# Programs of another machine that the manual names as such (its cluster section), not of this checkout.
CLUSTER_PROGRAMS = {"sbatch": "SLURM's job submission, on a cluster's login node"}
# The appendix belongs to the benchmark; its commands are checked by its own tests.
PAGES = sorted(p for p in (ROOT / "book").glob("*.ipynb") if p.stem != "appendix_performance")
TEXTS = [ROOT / "README.md", *sorted((ROOT / "book").glob("*.md"))]  # README and the manual page


def bash_blocks() -> list[tuple[str, str]]:
    """(where, text) of every ```bash block of README.md, the manual page and the book's markdown cells."""
    sources = [(p.name, p.read_text()) for p in TEXTS]
    for page in PAGES:
        nb = nbformat.read(page, as_version=4)
        sources += [(page.name, c.source) for c in nb.cells if c.cell_type == "markdown"]
    return [(where, m) for where, text in sources for m in re.findall(r"```bash\n(.*?)```", text, re.S)]


def commands(block: str) -> list[str]:
    """The block's command lines: continuation lines joined, comments and blanks dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = [line.split(" #")[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def program(command: str) -> str:
    """The program a command line runs: after environment assignments and shell keywords."""
    words = [w for w in shlex.split(command.replace(";", " ; ").replace("&", " ")) if w != ";"]
    for word in words:
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", word) or word in SHELL_WORDS:
            continue
        return word
    return ""


ALL = [(where, c) for where, block in bash_blocks() for c in commands(block)]


def test_the_pages_print_commands():
    assert len(bash_blocks()) >= 4
    assert any("papermill" in c for _, c in ALL) and any(c.startswith("make book") for _, c in ALL)


@pytest.mark.parametrize("where, command", ALL)
def test_command_runs_a_program_that_exists(where, command):
    """No bare papermill / python / jupyter: after `make book` only .venv/bin has them."""
    name = program(command)
    if command.startswith(("for ", "chapter=")) or not name:
        return  # the loop's header, its variable, its end
    allowed = {"make", "mkdir", "git", "cd", "nice"} | set(CLUSTER_PROGRAMS)
    if name == "nice":  # nice -n 19 PROGRAM ...: the program it runs
        name = command.split()[3]
    if name.startswith(".venv/bin/"):
        assert (VENV_BIN / name.removeprefix(".venv/bin/")).exists(), f"{where}: {command}: no {name}"
    else:
        assert name in allowed, f"{where}: {command}: {name!r} is not on PATH after `make book` (use .venv/bin/{name})"


MAKE = [(where, c) for where, c in ALL if program(c) == "make"]


@pytest.mark.parametrize("where, command", MAKE)
def test_make_command_names_a_target(where, command):
    words = shlex.split(command)
    assignments = dict(w.split("=", 1) for w in words[:words.index("make")])  # BUDGET=540 make ...
    proc = subprocess.run(words[words.index("make"):] + ["-n"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **assignments})
    assert proc.returncode == 0, f"{where}: {command}: {proc.stderr}"


def test_make_lab_passes_allow_root_only_as_root():
    proc = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    line = next(line for line in proc.stdout.splitlines() if "jupyter lab" in line)
    assert ("--allow-root" in line) == (os.geteuid() == 0), line
    assert line.split()[-1] == "book/"


def _options(command: str) -> list[str]:
    return [w.split("=")[0] for w in shlex.split(command) if w.startswith("--")]


PYTHON = [(where, c) for where, c in ALL if program(c) in (".venv/bin/python", ".venv/bin/torchrun")]


@pytest.mark.parametrize("where, command", PYTHON)
def test_python_command_accepts_its_options(where, command):
    words = shlex.split(command)
    args = words[words.index(program(command)) + 1:]
    if "-m" in args:  # [torchrun ...] -m resnet_cifar SUBCOMMAND --options: each is in SUBCOMMAND --help
        args = args[args.index("-m"):]
        command = " ".join(args)  # torchrun's own options are torchrun's
        proc = subprocess.run([sys.executable, "-m", *args[1:3], "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
    else:  # a script: its --help names each option
        assert (ROOT / args[0]).is_file(), f"{where}: {command}: no {args[0]}"
        proc = subprocess.run([sys.executable, args[0], "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode == 0, f"{where}: {command}: {proc.stderr}"
    missing = [o for o in _options(command) if o not in proc.stdout]
    assert not missing, f"{where}: {command}: {missing} not in its --help"


def smoke_form(block: str) -> str | None:
    """The block as CI can run it: profile smoke on the CPU, one pass of a loop over GPUs,
    without `make` lines (the book build and JupyterLab are tested elsewhere); None for a
    block without papermill."""
    if "papermill" not in block:
        return None
    joined = re.sub(r"\\\n\s*", " ", block)  # continuation lines, as bash reads them
    lines = [line for line in joined.splitlines() if not line.strip().startswith("make ")]
    text = "\n".join(lines)
    text = re.sub(r"-p profile \w+", "-p profile smoke", text)
    # a command without -p profile runs at "auto" (the committed records' profile): in CI, smoke
    text = "\n".join(line + " -p profile smoke" if "papermill" in line and "-p profile" not in line
                      else line for line in text.splitlines())
    text = re.sub(r"-p device \S+", "-p device cpu", text)
    return re.sub(r"for k in [0-9 ]+;", "for k in 0;", text)


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """The working tree's tracked files in a new git repository (what a fresh clone holds)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    target = tmp_path_factory.mktemp("clone")
    for name in filter(None, files.stdout.split("\0")):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "clone"]):
        subprocess.run(git + args, cwd=target, check=True)
    # This environment as the copy's .venv (git ignores it, as it does the folders `make setup`
    # creates); the copy's runs/ starts empty, as in a fresh clone: the commands train what they run.
    (target / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    with open(target / ".git" / "info" / "exclude", "a") as f:
        f.write("/.venv\n")
    return target


@pytest.mark.slow
@pytest.mark.book
def test_papermill_commands_run_as_printed_in_their_smoke_form(clone):
    data = real_data_dir()
    if data is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("no CIFAR-10 folder (required when CI=true)")
        pytest.skip("no CIFAR-10 folder at $RESNET_CIFAR_DATA or ./data")
    blocks, seen = [], set()
    for block in dict.fromkeys(b for b in (smoke_form(block) for _, block in bash_blocks()) if b):
        lines = block.splitlines()  # a papermill line printed twice (README and manual) runs once
        blocks.append("\n".join(line for line in lines if not (line.startswith(".venv/bin/papermill")
                                                              and line in seen)))
        seen.update(lines)
    assert blocks, "no papermill command is printed"
    env = {**os.environ, "RESNET_CIFAR_DATA": str(data), "PYTHONPATH": str(clone / "src"),
           "JUPYTER_PATH": str(Path(sys.prefix) / "share" / "jupyter")}
    for block in blocks:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=clone, env=env, capture_output=True,
                              text=True, timeout=1200)
        assert proc.returncode == 0, f"{block}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    written = [p for p in clone.rglob("*.ipynb") if "_build" in p.parts]
    assert written, "the commands wrote no notebook"
    for path in written:
        nb = nbformat.read(path, as_version=4)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{path.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout
    assert status == "", f"the commands left files git does not ignore:\n{status}"
    # The manual's rerun of chapter 4 with one of its own parameters (-p short_patience 5) trained the
    # arm that value makes, and its page shows the run and says it is outside the default plan.
    page = (clone / "_build" / "chapters" / "04_schedule.ipynb").read_text()
    assert "plateau, patience 5" in page and "plateau-patience5" in page
    assert "1 outside the default plan (this page's parameter values): plateau-patience5" in page
    from resnet_cifar.commands import dataset_identity
    run_dir = clone / "runs" / dataset_identity(data) / "smoke" / "plateau-patience5"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"


def test_inline_commands_name_the_environment_program():
    """`python -m ...` in running text fails after `make book` just as in a code block."""
    texts = [(p.name, p.read_text()) for p in TEXTS]
    texts += [(p.name, c.source) for p in PAGES for c in nbformat.read(p, as_version=4).cells
              if c.cell_type == "markdown"]
    bare = [(where, span) for where, text in texts for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)
            if re.match(r"(python|papermill|jupyter|torchrun|pip)\s", span)]
    assert not bare, bare


def test_readmes_published_model_loads_and_evaluates_to_its_record():
    """README's `eval` command and its Python lines, as printed: the published weights give back
    the test error the record states."""
    text = (ROOT / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)
    assert code, "README shows no Python lines to load a published model"
    scope: dict = {}
    exec(compile(code[0], "README.md", "exec"), scope)  # noqa: S102 (the README's own lines)
    model = scope["model"]
    assert not model.training and sum(p.numel() for p in model.parameters()) == 464_154
    command = next(c for where, c in ALL if " eval " in c and where == "README.md")
    run_dir = shlex.split(command)[shlex.split(command).index("eval") + 1]
    data = real_data_dir()
    if data is None:
        missing("README's eval command reads the CIFAR-10 folder")
    from resnet_cifar.commands import dataset_identity
    if f"records/{dataset_identity(data)}/" not in run_dir:
        missing(f"README's model was trained on another copy of CIFAR-10 than {data}")
    proc = subprocess.run([sys.executable, *shlex.split(command)[1:], "--data-dir", str(data)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((ROOT / run_dir / "summary.json").read_text())
    assert json.loads(proc.stdout)["test"]["error"] == pytest.approx(summary["final_test_error"], abs=1e-4)
