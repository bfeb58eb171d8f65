#!/usr/bin/env python
"""Execute the book's notebooks with papermill, then build the HTML with jupyter-book.

    python scripts/build_book.py                          # smoke profile, every chapter, HTML
    python scripts/build_book.py --profile quick --device cuda
    python scripts/build_book.py --chapters 02_model --no-html   # one chapter, executed only
    python scripts/build_book.py --profile cpu --records-data jpeg-q75-copy   # another copy's records

Stage: <out>/stage/ holds copies of _config.yml, _toc.yml and book/ (other files copied,
notebooks executed there by papermill). The source notebooks stay output-free. Papermill
runs each notebook with the source book/ folder as working directory, so relative paths
(data/, runs/) resolve from the project root exactly as in `jupyter lab book/`.

Order: the toc's chapters (01..07; the manual, markdown, is only copied), --jobs of them at
once, each kernel on its share of the CPU cores; then, one at a time, the pages in ALONE (the
appendix, which times the CPU when it measures) and the root page (intro), which reads chapter
6's finished runs from disk. A failing chapter does not stop the others; the failed notebook
(with papermill's error cell) is kept in the stage, the script names it and exits 1 without
building HTML. The HTML build treats Sphinx warnings as errors (-W) and writes its log to
<out>/build.log. HTML lands in <out>/html.

Publishing: papermill's injected-parameters cell (which holds the builder's own paths) is
tagged `remove-cell` in the staged notebook, so no page shows it (each chapter shows the
parameters it ran with as a table instead). MathJax is served from the book itself (copied
from the `django-static-mathjax` package into _static/mathjax), so formulas render offline.
The time of every notebook is printed, and written to <out>/timings.json.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
KERNEL = "python3"
STATIC = "book/_static"  # html_static_path in _config.yml
PATH_PARAMETERS = ("data_dir", "runs_dir", "records_dir")
ALONE = ("book/appendix_performance.ipynb",)  # pages that run with no other page beside them
MATHJAX_PARTS = ("tex-mml-chtml.js", "input", "output", "ui", "a11y", "adaptors")  # of MathJax's es5/ folder


def toc_files(root: Path = ROOT) -> tuple[str, list[str]]:
    """(root page, [chapter pages]) from _toc.yml, as 'book/xx.ipynb' paths: the pages to
    execute (a markdown page, such as the manual, is only copied)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    chapters = []
    for entry in toc.get("chapters", []) + [e for part in toc.get("parts", []) for e in part.get("chapters", [])]:
        if not (root / f"{entry['file'].removesuffix('.md')}.md").is_file():
            chapters.append(entry["file"])
    as_ipynb = lambda f: f if f.endswith(".ipynb") else f + ".ipynb"  # noqa: E731
    return as_ipynb(toc["root"]), [as_ipynb(c) for c in chapters]


def select(names: list[str] | None, root_page: str, chapters: list[str]) -> list[str]:
    """The pages to execute, in execution order (chapters, then the root page)."""
    order = chapters + [root_page]
    if not names:
        return order
    chosen = set()
    for name in names:
        matches = [p for p in order if name in (p, Path(p).name, Path(p).stem) or Path(p).stem.startswith(name + "_")]
        if len(matches) != 1:
            raise SystemExit(f"error: --chapters {name!r} matches {len(matches)} pages of _toc.yml; "
                             f"use one of: {', '.join(order)}")
        chosen.add(matches[0])
    return [p for p in order if p in chosen]


def ensure_kernel() -> None:
    """Make `python3` resolve to this interpreter: register ipykernel's spec in this
    environment (sys.prefix) if absent, and put that folder first on JUPYTER_PATH so a
    user-level python3 kernel of another Python cannot shadow it."""
    share = Path(sys.prefix) / "share" / "jupyter"
    if not (share / "kernels" / KERNEL / "kernel.json").is_file():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL],
                       check=True, stdout=subprocess.DEVNULL)
    others = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(share), *others])


def stage_files(stage: Path, pages: list[str]) -> None:
    """Copy _config.yml, _toc.yml and book/'s non-notebook files into the stage; a
    fresh stage keeps no executed notebooks of an earlier build."""
    if (stage / "book").exists():
        shutil.rmtree(stage / "book")
    stage.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, stage / name)
    for path in (ROOT / "book").rglob("*"):
        rel = path.relative_to(ROOT)
        if ".ipynb_checkpoints" in rel.parts or path.is_dir() or path.suffix == ".ipynb":
            continue
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, stage / rel)


def copy_mathjax(stage: Path) -> None:
    """MathJax 3 (from the django-static-mathjax package: its es5 build, no Django needed) into
    the stage's _static/mathjax, where _config.yml's mathjax_path points."""
    try:
        import mathjax
    except ImportError:
        raise SystemExit("error: MathJax is missing; install the book's packages: "
                         ".venv/bin/python -m pip install -e '.[book]'") from None
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    target = stage / STATIC / "mathjax"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in MATHJAX_PARTS:
        source = es5 / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        elif source.is_file():
            shutil.copy2(source, target / name)


def publishable(notebook: Path, page: str) -> None:
    """Make the executed notebook fit for publishing (the book offers it for download): tag
    papermill's injected-parameters cell `remove-cell` (the page shows its parameters as a
    table, `Chapter.header`), and replace the builder's own folders, in that cell and in
    papermill's metadata, by None (a reader's copy then uses the default data and runs
    folders) and by the page's path in the project."""
    import nbformat
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags:
            tags.extend([] if "remove-cell" in tags else ["remove-cell"])
            cell.source = "\n".join(f"{line.split('=')[0].strip()} = None  # the build's own folder (not published)"
                                     if line.split("=")[0].strip() in PATH_PARAMETERS else line
                                     for line in cell.source.splitlines())
    meta = nb.metadata.get("papermill", {})
    meta.update(input_path=page, output_path=page)
    meta["parameters"] = {k: None if k in PATH_PARAMETERS else v for k, v in meta.get("parameters", {}).items()}
    nbformat.write(nb, notebook)


def execute(page: str, stage: Path, parameters: dict) -> str | None:
    """Run one notebook into the stage; None on success, else the error message."""
    import papermill as pm
    source, target = ROOT / page, stage / page
    if not source.is_file():
        return f"{source} does not exist"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(source), str(target), parameters=parameters, kernel_name=KERNEL,
                            cwd=str(source.parent), progress_bar=False, log_output=False)
    except pm.PapermillExecutionError as e:
        return f"{e.ename}: {e.evalue}"
    except Exception as e:  # kernel died, notebook unreadable, ...
        return f"{type(e).__name__}: {e}"
    publishable(target, page)
    return None


def share_cores(jobs: int) -> None:
    """A pool worker's setting: the kernels it starts use cores ÷ jobs threads (torch reads
    OMP_NUM_THREADS), so that pages run side by side do not oversubscribe the CPU."""
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))


def timed(page: str, stage: Path, parameters: dict) -> tuple[float, str | None]:
    """`execute`, and the seconds it took."""
    start = time.perf_counter()
    error = execute(page, stage, parameters)
    return round(time.perf_counter() - start, 1), error


def execute_all(pages: list[str], root_page: str, stage: Path, parameters: dict, jobs: int) -> dict:
    """Execute `pages` (chapters `jobs` at a time, then ALONE and the root page one by one);
    page -> (seconds, error or None), printed as each ends."""
    def report(page: str, took: float, error: str | None) -> None:
        print(f"  {page}: " + (f"FAILED after {took:.0f}s: {error}" if error else f"ok ({took:.0f}s)"), flush=True)

    side_by_side = [p for p in pages if p not in (*ALONE, root_page)]
    print(f"executing {len(pages)} pages (profile {parameters['profile']}, device {parameters['device']}; "
          f"{min(jobs, len(side_by_side)) or 1} at a time) ...", flush=True)
    results = {}
    with concurrent.futures.ProcessPoolExecutor(jobs, initializer=share_cores, initargs=(jobs,)) as pool:
        running = {pool.submit(timed, page, stage, parameters): page for page in side_by_side}
        for done in concurrent.futures.as_completed(running):
            results[running[done]] = done.result()
            report(running[done], *results[running[done]])
    for page in [p for p in pages if p not in side_by_side]:
        results[page] = timed(page, stage, parameters)
        report(page, *results[page])
    return {page: results[page] for page in pages}


def build_html(stage: Path, out: Path) -> int:
    """jupyter-book build with warnings as errors; log to <out>/build.log."""
    # jupyter-book writes to <path-output>/_build/html; make that <out>/html.
    if out.name == "_build":
        path_output = out.parent
    else:
        path_output = out / "jb"
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(stage),
           "--path-output", str(path_output), "--builder", "html", "-W", "--keep-going"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = out / "build.log"
    log.write_text(" ".join(cmd) + "\n" + proc.stdout)
    html = path_output / "_build" / "html"
    if out.name != "_build" and html.is_dir():
        shutil.rmtree(out / "html", ignore_errors=True)
        shutil.move(str(html), str(out / "html"))
    warnings = [line for line in proc.stdout.splitlines() if "WARNING" in line or "ERROR" in line]
    if proc.returncode or warnings:
        print("\n".join(warnings[:30]), file=sys.stderr)
        print(f"error: jupyter-book build failed (exit {proc.returncode}, {len(warnings)} warnings); see {log}",
              file=sys.stderr)
        return 1
    print(f"HTML: {out / 'html' / 'index.html'}  (log: {log})")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke", help="smoke (CPU, seconds) | quick | paper (default: smoke)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:k] | mps (default: auto)")
    parser.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py/ "
                        "(default: the notebooks' default: $RESNET_CIFAR_DATA, then ./data)")
    parser.add_argument("--runs-dir", default=None, help="run records folder (default: ./runs)")
    parser.add_argument("--records-data", default=None, metavar="COPY",
                        help="render the committed records of this copy of CIFAR-10 (e.g. jpeg-q75-copy), "
                             "whatever the data folder holds (default: the data folder's own copy)")
    parser.add_argument("--chapters", nargs="+", default=None, metavar="PAGE",
                        help="execute only these pages (book/02_model.ipynb, 02_model or 02); with HTML, "
                             "the stage's toc lists just them and the root page (executed too)")
    parser.add_argument("--out", default=str(ROOT / "_build"), help="output folder (default: _build)")
    parser.add_argument("--jobs", type=int, default=2, help="chapters executed at once, each on its share of "
                        "the CPU cores (default: 2)")
    parser.add_argument("--no-html", action="store_true", help="execute the notebooks only")
    return parser


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    if args.jobs < 1:
        raise SystemExit(f"error: --jobs must be at least 1, got {args.jobs}")

    out = Path(args.out).resolve()
    stage = out / "stage"
    root_page, chapters = toc_files()
    pages = select(args.chapters, root_page, chapters)
    if args.chapters and not args.no_html and root_page not in pages:
        pages.append(root_page)  # a book needs its root page
    parameters = dict(profile=args.profile, device=args.device)
    if args.records_data:
        parameters["records_data"] = args.records_data
    for key in ("data_dir", "runs_dir"):
        if getattr(args, key) is not None:
            parameters[key] = str(Path(getattr(args, key)).resolve())

    ensure_kernel()
    stage_files(stage, pages)
    if args.chapters:  # the stage's toc lists only what was executed
        toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
        keep = {p.removesuffix(".ipynb") for p in pages}
        toc["chapters"] = [c for c in toc.get("chapters", []) if c["file"].removesuffix(".ipynb") in keep
                           or (ROOT / f"{c['file']}.md").is_file()]  # markdown pages need no execution
        (stage / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))

    started = time.perf_counter()
    results = execute_all(pages, root_page, stage, parameters, args.jobs)
    timings = {page: took for page, (took, _) in results.items()}
    failures = [f"chapter {page} failed: {error}" for page, (_, error) in results.items() if error]
    timings["all notebooks"] = round(time.perf_counter() - started, 1)
    (out / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    print("notebook times (s): " + ", ".join(f"{Path(p).stem} {t:.0f}" for p, t in timings.items()), flush=True)
    if failures:
        print("\n".join(failures), file=sys.stderr)
        print(f"error: {len(failures)} of {len(pages)} notebooks failed; the executed notebooks (with the "
              f"error cell) are in {stage / 'book'}. HTML not built.", file=sys.stderr)
        return 1
    if args.no_html:
        print(f"executed {len(pages)} notebooks into {stage / 'book'}")
        return 0
    copy_mathjax(stage)
    start = time.perf_counter()
    code = build_html(stage, out)
    print(f"HTML built in {time.perf_counter() - start:.0f}s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
