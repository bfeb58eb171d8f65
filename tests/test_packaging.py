"""pyproject.toml and environment.yml describe the same environment."""
import ast
import re
import subprocess
import sys
import tomllib
from importlib import metadata

import yaml

from conftest import ROOT

# import name -> distribution name, where they differ
DISTRIBUTION = {"yaml": "pyyaml", "PIL": "pillow"}


def _normalize(requirement: str) -> tuple[str, str]:
    """'Jupyter_Book >= 1.0, <2' -> ('jupyter-book', '<2,>=1.0'): PEP 503 name, sorted specifiers."""
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*?)\s*", requirement)
    assert match, requirement
    name = re.sub(r"[-_.]+", "-", match[1]).lower()
    spec = ",".join(sorted(s.replace(" ", "") for s in match[2].split(",") if s.strip()))
    return name, spec


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pyproject_requirements() -> dict[str, str]:
    project = _pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return dict(_normalize(r) for r in reqs)


def _environment_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    reqs = {}
    for item in env["dependencies"]:
        if isinstance(item, dict):
            for pip_req in item["pip"]:
                if pip_req.startswith("-e"):
                    continue
                name, spec = _normalize(pip_req)
                reqs[name] = spec
        else:
            name, _, version = item.partition("=")  # conda pins use a single '='
            name, spec = _normalize(name)
            if name not in ("python", "pip"):
                reqs[name] = f"=={version}" if version else spec
    return reqs


def test_pyproject_and_environment_list_the_same_packages():
    ours, conda = _pyproject_requirements(), _environment_requirements()
    assert sorted(ours) == sorted(conda)
    assert ours == conda


def test_pinned_and_book_packages():
    reqs = _pyproject_requirements()
    assert reqs["torch"] == "==2.14.1" and reqs["torchvision"] == "==0.29.1"
    for name in ("fvcore", "jupyter-book", "papermill", "jupyterlab", "matplotlib", "pandas", "numpy", "pytest"):
        assert name in reqs, name


def test_environment_installs_this_package_and_python():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == "resnet-cifar"
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert "-e ." in pip
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    low = re.search(r">=\s*3\.(\d+)", _pyproject()["project"]["requires-python"])
    assert int(python.split("=")[1].split(".")[1]) >= int(low[1])


def test_every_library_import_is_declared():
    declared = set(dict(_normalize(r) for r in _pyproject()["project"]["dependencies"]))
    imported = set()
    for path in (ROOT / "src" / "resnet_cifar").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = {DISTRIBUTION.get(m, m) for m in imported if m not in sys.stdlib_module_names
                   and m != "resnet_cifar"}
    # a package a declared one requires (pillow, via torchvision) is installed with it
    provided = set(declared)
    for name in declared:
        for req in metadata.requires(name) or []:
            if "extra ==" not in req:
                provided.add(_normalize(re.split(r"[;\[(]", req)[0])[0])
    assert third_party <= provided, third_party - provided
    assert {"torch", "torchvision", "fvcore"} <= third_party


def test_installed_versions_match_the_pins():
    assert metadata.version("torch").split("+")[0] == "2.14.1"
    assert metadata.version("torchvision").split("+")[0] == "0.29.1"


def test_console_script():
    assert _pyproject()["project"]["scripts"] == {"resnet-cifar": "resnet_cifar.cli:main"}
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get("resnet-cifar") == "resnet_cifar.cli:main"


def test_the_code_passes_ruff():
    """pyflakes' and pycodestyle's checks as pyproject.toml's [tool.ruff] sets them."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "src", "scripts", "tests"],
                          capture_output=True, text=True, cwd=ROOT)
    assert "No module named ruff" not in proc.stderr, "install the test extra: pip install -e '.[test]'"
    assert proc.returncode == 0, proc.stdout + proc.stderr
