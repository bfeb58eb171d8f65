"""The book: every chapter executes on the smoke profile, the HTML builds without Sphinx
warnings, and a real browser (headless Debian chromium) renders its pages with figures. On
every page at a laptop's width: no table wider than the content column, no machine path,
no papermill injected-parameters cell, no formula left as raw LaTeX (MathJax is served by
the book itself: the browser has no network).

The build runs once per session (`scripts/build_book.py --profile smoke`, its runs and pages in
temporary folders: the user's _build/ and runs/ are left alone), with the data of
$RESNET_CIFAR_DATA or ./data. Without data or chromium the tests skip,
except in CI (CI=true), where they fail. `RESNET_CIFAR_BOOK_CHAPTERS="01 02"` builds only
those chapters (and the root page), for working on a few chapters.
"""
from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from conftest import missing, page_code
from resnet_cifar import data as D
from resnet_cifar import book as shared  # what the pages share
from resnet_cifar.experiments import CHAPTERS
from resnet_cifar.records import shown_path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"  # the book fixture builds into a temporary folder instead
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WINDOW = (1024, 2400)  # a small laptop: the content column is about 800 px wide
MACHINE_PATHS = tuple(f"/{folder}/" for folder in ("tmp", "work", "root", "home"))  # a builder's folders
RAW_LATEX = ("\\(", "\\[", "$$", "\\frac", "\\hat", "\\sqrt", "\\mathrm")

pytestmark = pytest.mark.book


def _load_build_script():
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_book"] = module  # its page pool sends its functions to worker processes by name
    spec.loader.exec_module(module)
    return module


build_book = _load_build_script()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip with `reason` when `condition` fails, or fail in CI (CI=true)."""
    if not condition:
        if in_ci():
            pytest.fail(f"{reason} (required when CI=true)")
        pytest.skip(reason)


def data_dir() -> Path | None:
    candidate = Path(os.environ.get("RESNET_CIFAR_DATA") or ROOT / "data")
    return candidate if (candidate / "cifar-10-batches-py").is_dir() else None


def run_build(*args: str, timeout: int = 3600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "build_book.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """Build the book once (smoke profile), runs and pages in temporary folders: the finished
    process and the pages it built."""
    global BUILD
    data = data_dir()
    require(data is not None, f"no CIFAR-10 folder at $RESNET_CIFAR_DATA or {ROOT / 'data'} "
                              f"(build one with `python ../shared/data/make_cifar10_batches.py data`)")
    BUILD, runs = tmp_path_factory.mktemp("book"), tmp_path_factory.mktemp("book-runs")
    args = ["--profile", "smoke", "--data-dir", str(data), "--out", str(BUILD), "--runs-dir", str(runs)]
    chapters = os.environ.get("RESNET_CIFAR_BOOK_CHAPTERS", "").split()
    if chapters:
        args += ["--chapters", *chapters]
    # The plan first, as `make book PROFILE=smoke JOBS=2` trains it: two one-thread workers take
    # half the time of the chapters training their runs one after another; the chapters reuse them.
    with_runs = [c for c in chapters if any(c in (k, k.split("_")[0]) for k in CHAPTERS)]
    if with_runs or not chapters:
        train = subprocess.run([sys.executable, "-m", "resnet_cifar", "run", "--profile", "smoke", "--device", "cpu",
                                "--jobs", "2", "--data-dir", str(data), "--status-every", "600", "--runs-dir", str(runs),
                                *(["--chapters", *with_runs] if chapters else [])],
                               cwd=ROOT, capture_output=True, text=True, timeout=3600)
        assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    proc = run_build(*args)
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    stage = BUILD / "stage"
    toc = yaml.safe_load((stage / "_toc.yml").read_text()) if (stage / "_toc.yml").is_file() else {}
    pages = [toc["root"]] + [c["file"] for c in toc.get("chapters", [])] if toc else []
    pages = [p.removesuffix(".ipynb") for p in pages]
    return dict(proc=proc, stage=stage, pages=pages, html=BUILD / "html", log=BUILD / "build.log",
                notebooks=[p for p in pages if (stage / f"{p}.ipynb").is_file()])


def test_build_succeeds_with_every_toc_page(book):
    proc = book["proc"]
    assert proc.returncode == 0, f"build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    root_page, chapters = build_book.toc_files()
    expected = [root_page] + chapters
    if os.environ.get("RESNET_CIFAR_BOOK_CHAPTERS"):
        expected = build_book.select(os.environ["RESNET_CIFAR_BOOK_CHAPTERS"].split(), root_page, chapters)
        expected += [] if root_page in expected else [root_page]  # the build adds the root page
    assert sorted(book["notebooks"]) == sorted(p.removesuffix(".ipynb") for p in expected)
    assert "book/manual" in book["pages"]  # the manual (markdown) is published with every build


def test_every_chapter_executed_without_errors(book):
    assert book["notebooks"], "the build staged no pages"
    for page in book["notebooks"]:
        nb = nbformat.read(book["stage"] / f"{page}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        errors = [o for c in code for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors, f"{page}: {errors[0].ename}: {errors[0].evalue}"
        assert all(c.execution_count for c in code), f"{page}: not every code cell was executed"
        injected = [c for c in code if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and 'profile = "smoke"' in injected[0].source, f"{page}: papermill parameters missing"
        assert nb.metadata["papermill"]["exception"] in (None, False)


def test_build_log_has_no_sphinx_warnings(book):
    assert book["log"].is_file()
    log = book["log"].read_text()
    warnings = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    assert not warnings, "\n".join(warnings[:20])
    assert "build succeeded" in log


def test_every_chapter_has_an_html_page(book):
    assert (book["html"] / "index.html").is_file()
    for page in book["pages"]:
        html = book["html"] / f"{page}.html"
        assert html.is_file(), f"missing {html}"
        assert "Traceback" not in html.read_text(), f"{html} shows a traceback"


@pytest.fixture(scope="module")
def browser(book, tmp_path_factory):
    """Headless Debian chromium driven by selenium, and the HTML served on 127.0.0.1."""
    require(CHROMIUM.is_file() and CHROMEDRIVER.is_file(),
            f"{CHROMIUM} / {CHROMEDRIVER} not installed (apt-get install chromium chromium-driver)")
    assert book["proc"].returncode == 0 and (book["html"] / "index.html").is_file(), "the book did not build"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    handler = functools.partial(QuietHandler, directory=str(book["html"]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def load(driver, url: str, screenshot: str) -> list[dict]:
    """Open `url`, scroll through it, wait for every image; save a screenshot; return the images."""
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight);")
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return Array.from(document.images).every(img => img.complete)"))
    driver.execute_script("window.scrollTo(0, 0);")
    (BUILD / "screenshots").mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(BUILD / "screenshots" / screenshot))
    return driver.execute_script(
        "return Array.from(document.images).map(img => ({src: img.currentSrc || img.src, complete: img.complete, "
        "width: img.naturalWidth, inFigure: !!img.closest('figure, .cell_output')}))")


@pytest.mark.parametrize("page, screenshot", [("", "intro.png"), ("book/02_model.html", "02_model.png")])
def test_browser_renders_pages_with_figures(browser, book, page, screenshot):
    driver, base = browser
    if page and page.removesuffix(".html") not in book["pages"]:
        pytest.skip(f"{page} was not part of this build (RESNET_CIFAR_BOOK_CHAPTERS)")
    images = load(driver, f"{base}/{page}", screenshot)
    if not page:  # index.html redirects to the root page
        assert driver.current_url.endswith("book/intro.html"), driver.current_url
    broken = [img["src"] for img in images if not (img["complete"] and img["width"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    figures = [img for img in images if img["inFigure"]]
    assert figures, f"no figure on {driver.current_url}"
    assert "Traceback" not in driver.find_element("tag name", "body").text


def test_model_chapter_shows_resnet32_parameter_count(browser, book):
    if "book/02_model" not in book["pages"]:
        pytest.skip("book/02_model was not part of this build")
    driver, base = browser
    load(driver, f"{base}/book/02_model.html", "02_model.png")
    cells = driver.find_elements("xpath", "//tr[th[normalize-space()='ResNet-32']]/td")
    assert cells, "no table row for ResNet-32 on the model chapter"
    assert "464,154" in [c.text.strip() for c in cells], [c.text for c in cells]


def test_bad_parameter_fails_with_a_clear_message(tmp_path):
    """A chapter executed with `-p profile nonsense` stops in its `chapter(...)` call with the
    message of resnet_cifar.book.chapter, and the build exits non-zero naming the chapter
    without building HTML. (The profile is checked before the data is read: no data needed.)"""
    out = tmp_path / "out"
    proc = run_build("--chapters", "01_setup", "--profile", "nonsense", "--no-html", "--out", str(out),
                     timeout=600)
    message = "parameter profile must be one of ('auto', 'smoke', 'cpu', 'quick', 'paper'), got 'nonsense'"
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"chapter book/01_setup.ipynb failed: ValueError: {message}" in proc.stderr
    nb = nbformat.read(out / "stage" / "book" / "01_setup.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert [(e.ename, e.evalue) for e in errors] == [("ValueError", message)]
    assert not (out / "html").exists() and not (out / "build.log").exists()


def test_unknown_chapter_name_lists_the_valid_ones():
    root_page, chapters = build_book.toc_files()
    assert build_book.select(["02"], root_page, chapters) == ["book/02_model.ipynb"]
    assert build_book.select(None, root_page, chapters)[-1] == root_page  # the root page runs last
    with pytest.raises(SystemExit, match="'07_nothing' matches 0 pages of _toc.yml; use one of: book/01_setup"):
        build_book.select(["07_nothing"], root_page, chapters)


def test_chapters_run_side_by_side_on_their_share_of_the_cores_and_the_appendix_and_root_page_alone_after(
        tmp_path, monkeypatch):
    import time
    root_page, chapters = build_book.toc_files()
    pages = build_book.select(None, root_page, chapters)

    def execute(page, stage, parameters):  # a page that notes when it ran and on how many threads
        start = time.time()
        time.sleep(0.3)
        note = dict(start=start, end=time.time(), threads=os.environ.get("OMP_NUM_THREADS"))
        (stage / Path(page).name).write_text(json.dumps(note))
        return "broken" if page == "book/04_schedule.ipynb" else None
    monkeypatch.setattr(build_book, "execute", execute)  # the pool's workers are forked: they see it
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    results = build_book.execute_all(pages, root_page, tmp_path, {"profile": "smoke", "device": "cpu"}, 2)
    assert list(results) == pages and results["book/04_schedule.ipynb"][1] == "broken"
    ran = {p: json.loads((tmp_path / Path(p).name).read_text()) for p in pages}
    side_by_side = [p for p in pages if p not in (*build_book.ALONE, root_page)]
    assert build_book.ALONE == ("book/appendix_performance.ipynb",) and len(side_by_side) == len(pages) - 2
    assert {ran[p]["threads"] for p in side_by_side} == {str(max(1, (os.cpu_count() or 1) // 2))}
    assert ran[root_page]["threads"] is None  # alone: every core
    last_chapter = max(ran[p]["end"] for p in side_by_side)
    overlapping = sum(ran[a]["start"] < ran[b]["end"] and ran[b]["start"] < ran[a]["end"]
                      for a in side_by_side for b in side_by_side if a < b)
    assert overlapping >= 1  # two at a time
    appendix = ran["book/appendix_performance.ipynb"]
    assert last_chapter <= appendix["start"] and appendix["end"] <= ran[root_page]["start"]


# Every table, with the content column (article) it must fit: its own width, and whether any
# element between them (a cell's output area) scrolls sideways to show it.
TABLES_JS = """
const article = document.querySelector('article.bd-article') || document.querySelector('main');
return Array.from(article.querySelectorAll('table')).map(t => {
  let scrolls = false;
  for (let e = t; e && e !== article; e = e.parentElement) if (e.scrollWidth > e.clientWidth + 1) scrolls = true;
  return {caption: (t.querySelector('caption') || t).innerText.slice(0, 80), width: t.getBoundingClientRect().width,
          scrollWidth: t.scrollWidth, column: article.clientWidth, scrolls: scrolls};
});
"""
# Code that does not fit the content column (it scrolls sideways: cut off as the page is read),
# in cells and in the pages' code blocks alike, and table headers that break inside a word.
CODE_JS = """
const article = document.querySelector('article.bd-article') || document.querySelector('main');
// show the folded code (hide-input) as a reader who opens it sees it
article.querySelectorAll('.toggle-hidden').forEach(e => e.classList.remove('toggle-hidden'));
article.querySelectorAll('details').forEach(d => { d.open = true; });
return Array.from(article.querySelectorAll('pre')).filter(p => !p.closest('.cell_output'))
  .filter(p => p.scrollWidth > p.clientWidth + 1)
  .map(p => p.innerText.split('\\n').reduce((a, b) => b.length > a.length ? b : a, '').slice(0, 90));
"""
HEADERS_JS = """
const article = document.querySelector('article.bd-article') || document.querySelector('main');
const broken = [];
for (const th of article.querySelectorAll('thead th')) {
  const walk = document.createTreeWalker(th, NodeFilter.SHOW_TEXT);
  for (let node = walk.nextNode(); node; node = walk.nextNode()) {
    for (const m of node.textContent.matchAll(/[^\\s-]+-?/g)) {  // each word (a line may end at a hyphen)
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const tops = Array.from(range.getClientRects()).filter(r => r.width > 0).map(r => r.top);
      if (tops.some(t => Math.abs(t - tops[0]) > 2)) broken.push(m[0]);
    }
  }
}
return broken;
"""
MATHJAX_JS = """
const done = arguments[arguments.length - 1];
if (!window.MathJax) { done('none'); return; }
const ready = () => (MathJax.startup && MathJax.startup.promise) ? MathJax.startup.promise.then(() => done('typeset'))
                                                                 : setTimeout(ready, 100);
ready();
"""


def page_problems(driver, url: str) -> list[str]:
    """What is wrong with the page at `url`, as readable sentences (empty: nothing)."""
    load(driver, url, Path(url).stem + ".png")
    driver.set_script_timeout(60)
    mathjax = driver.execute_async_script(MATHJAX_JS)
    text = driver.find_element("tag name", "body").text
    problems = [f"table '{t['caption']}' is {max(t['width'], t['scrollWidth']):.0f} px wide in a "
                f"{t['column']} px column" + (" (its output area scrolls)" if t["scrolls"] else "")
                for t in driver.execute_script(TABLES_JS)
                if t["scrolls"] or max(t["width"], t["scrollWidth"]) > t["column"] + 1]
    problems += [f"machine path {p!r} in the text: ...{text[text.index(p) - 60:text.index(p) + 60]}..."
                 for p in MACHINE_PATHS + (str(ROOT),) if p in text]
    injected = driver.execute_script(
        "return document.querySelectorAll('.tag_injected-parameters').length + Array.from("
        "document.querySelectorAll('.cell_input pre')).filter(p => p.innerText.trim().startsWith('# Parameters')).length")
    problems += [f"{injected} papermill injected-parameters cell(s) shown"] if injected else []
    problems += [f"code cut off (wider than the column): {line!r}" for line in driver.execute_script(CODE_JS)]
    problems += [f"a table header breaks the word {word!r}" for word in driver.execute_script(HEADERS_JS)]
    bold = driver.execute_script(  # glued values are bold only where the text marks them so
        "return Array.from(document.querySelectorAll('span.pasted-text')).filter(s => !s.closest('strong, b, th')"
        " && parseInt(getComputedStyle(s).fontWeight) >= 600).map(s => s.innerText.slice(0, 40))")
    problems += [f"{len(bold)} glued value(s) set in bold by the theme, e.g. {bold[0]!r}"] if bold else []
    problems += [f"raw LaTeX {s!r} in the text (MathJax: {mathjax}): ...{text[text.index(s) - 60:text.index(s) + 60]}..."
                 for s in RAW_LATEX if s in text]
    return problems


def test_every_page_fits_and_publishes_no_path_parameters_cell_or_raw_latex(browser, book):
    driver, base = browser
    assert book["pages"], "the build staged no pages"
    problems = {page: page_problems(driver, f"{base}/{page}.html") for page in book["pages"]}
    try:  # a 1280-px page: wider, but its own table of contents narrows the content column
        driver.set_window_size(1280, WINDOW[1])
        for page in book["pages"]:
            load(driver, f"{base}/{page}.html", Path(page).stem + "-1280.png")
            problems[page] += [f"at 1280 px, code cut off: {line!r}" for line in driver.execute_script(CODE_JS)]
    finally:
        driver.set_window_size(*WINDOW)
    problems = {page: p for page, p in problems.items() if p}
    assert not problems, "\n".join(f"{page}: {p}" for page, ps in problems.items() for p in ps)


CODE_COLUMNS = 78  # what a code cell shows of a line on a 1280-px page
FOLDED_COLUMNS = 76  # what a folded cell (hide-input), opened, shows: its box is narrower


def test_no_code_line_is_wider_than_a_page_shows():
    """The pages' code as a reader sees it (code cells, parameters cells included, folded cells
    opened, and the code blocks of the text and the manual): the browser test finds lines that do
    not fit the column; this finds them in the source, before a build."""
    import re
    code = []
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        for c in nbformat.read(path, as_version=4).cells:
            width = FOLDED_COLUMNS if "hide-input" in c.metadata.get("tags", []) else CODE_COLUMNS
            blocks = [c.source] if c.cell_type == "code" else re.findall(r"```[a-z]*\n(.*?)```", c.source, re.S)
            code += [(path.name, block, width) for block in blocks]
    code += [("manual.md", b, CODE_COLUMNS)
             for b in re.findall(r"```[a-z]*\n(.*?)```", (ROOT / "book" / "manual.md").read_text(), re.S)]
    wide = [f"{where}: {line}" for where, block, width in code for line in block.splitlines() if len(line) > width]
    assert len(code) > 100 and wide == [], "\n".join(wide)


def test_mathjax_is_served_by_the_book_and_typesets(browser, book):
    """The formulas of chapter 5 come out as MathJax output, from the book's own copy."""
    if "book/05_optimizers" not in book["pages"]:
        pytest.skip("book/05_optimizers was not part of this build")
    driver, base = browser
    html = (book["html"] / "book" / "05_optimizers.html").read_text()
    assert "_static/mathjax/tex-mml-chtml.js" in html and "cdn.jsdelivr" not in html
    assert (book["html"] / "_static" / "mathjax" / "tex-mml-chtml.js").is_file()
    load(driver, f"{base}/book/05_optimizers.html", "05_optimizers.png")
    driver.set_script_timeout(60)
    assert driver.execute_async_script(MATHJAX_JS) == "typeset"
    assert driver.execute_script("return document.querySelectorAll('mjx-container').length") >= 3


def test_published_files_carry_no_machine_path(book):
    """The HTML and the notebooks offered for download (_sources) name none of the builder's
    folders: the injected parameters cell holds None for the path parameters."""
    assert book["proc"].returncode == 0
    files = list(book["html"].rglob("*.html")) + list(book["html"].rglob("*.ipynb"))
    assert any(f.suffix == ".ipynb" for f in files), "no notebook is offered for download"
    found = {str(f.relative_to(book["html"])): p for f in files for p in MACHINE_PATHS + (str(ROOT),)
             if p in f.read_text(errors="replace")}
    assert not found, found
    nb = nbformat.read(book["stage"] / "book" / "01_setup.ipynb", as_version=4)
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "remove-cell" in injected.metadata["tags"]
    assert 'data_dir = None  # the build\'s own folder (not published)' in injected.source


def test_build_reports_every_notebooks_time(book):
    timings = json.loads((BUILD / "timings.json").read_text())
    assert set(timings) == {f"{p}.ipynb" for p in book["notebooks"]} | {"all notebooks"}
    assert all(t > 0 for t in timings.values())
    assert "notebook times (s): " in book["proc"].stdout


# ---------------------------------------------------------------- the chapters' helpers, on made-up run records

def _record(tmp_path, name, status, final=None, history=True, iterations=20):
    """A RunResult as `runs.load_run` returns it, for a run that ended with `status`."""
    import pandas as pd
    from resnet_cifar.runs import RunResult
    rows = [dict(iteration=i, train_loss=2.0, train_error=0.8, val_error=0.7, test_error=final or 0.75)
            for i in (10, 20)] if history else []
    summary = dict(status=status, status_detail=status if status != "diverged" else "diverged at iteration 7",
                   iterations_done=iterations, iterations=20, final_test_error=final, best_val_error=0.7 if final else None,
                   test_error_at_best_val=final, wall_time_s=2.5, train_images_per_s=256.0 if final else None,
                   dataset_label="CIFAR-10 (JPEG q75 copy)", device="cpu", device_name="a CPU", train_size=250,
                   val_size=250, test_size=250)
    return RunResult(tmp_path / name, dict(batch_size=32), summary, pd.DataFrame(rows),
                     pd.DataFrame(dict(iteration=[1, 2], lr=[0.1, 0.1])))


def test_headline_leaves_out_runs_that_did_not_finish(dataset, tmp_path):
    from resnet_cifar import book
    ch = book.Chapter("smoke", "cpu", dataset, tmp_path, 0)
    head = shared.Headline(ch, {"seed 0": _record(tmp_path, "a", "complete", 0.2),
                              "seed 1": _record(tmp_path, "b", "diverged", None, history=False, iterations=7)})
    facts = head.facts()
    assert (facts["head_mean"], facts["head_n"], facts["head_runs"], facts["head_std"]) == ("20.00", "1", "2", "–")
    assert facts["head_verdict"].startswith("Not comparable with the paper") and "20.00 %" in facts["head_verdict"]
    assert facts["head_checks"].endswith("; difference from the paper's 7.51 %: not tested, since other data and "
                                         "another budget explain a difference by themselves.")
    assert "ResNet-110" not in facts["head_checks"]  # no spread borrowed from another model
    assert facts["head_fit"] == ("Their final training error, on the augmented batches, is 80.0 % against 20.0 % "
                                 "test error (means over 1 seed(s)): the runs still underfit, so at this budget the "
                                 "iterations, not the recipe, limit them.")
    comparison = page_code("intro").comparison_table(head).to_html()
    assert "– (diverged)" in comparison and "20.00" in comparison and "7.51" in comparison
    seeds = page_code("06_results").seeds_table(head).to_html()
    assert "1 of 2 complete" in seeds and "20.00 ± –" in seeds and "64,000" in seeds
    legend = [t.get_text() for t in head.figure().axes[0].get_legend().get_texts()]
    assert "seed 1: diverged at iteration 7" in legend and "paper: 7.51 %" in legend


def test_headline_without_a_finished_run_says_so(dataset, tmp_path):
    from resnet_cifar import book
    ch = book.Chapter("smoke", "cpu", dataset, tmp_path, 0)
    head = shared.Headline(ch, {f"seed {s}": _record(tmp_path, str(s), "diverged", None, history=False) for s in (0, 1)})
    facts = head.facts()
    assert facts["head_mean"] == "–" and facts["head_gap"] == "–"
    assert facts["head_verdict"].startswith("None of the 2 runs finished")
    fig, table, class_facts = page_code("06_results").class_errors(ch, head.runs)
    assert fig is None and class_facts["res_best"] == "no run with weights (no run finished)"


def _paper_record(tmp_path):
    """A made-up record of the paper's whole schedule, unfinished at 780 of 64,000 iterations,
    trained in two sittings on two machines."""
    import dataclasses
    import pandas as pd
    from resnet_cifar.config import profile_config
    from resnet_cifar.runs import RunResult
    config = dataclasses.asdict(profile_config("paper", name=shared.PAPER_RUN, val_size=0))
    rows = [dict(iteration=390, lr=0.1, train_error=0.6, test_error=0.3),
            dict(iteration=780, lr=0.1, train_error=0.5, test_error=0.35)]
    segments = [dict(start=0, end=390, seconds=1800.0, device="CPU A", threads=2, commit="aaaaaaa", began=None),
                dict(start=390, end=780, seconds=1800.0, device="CPU B", threads=2, commit="bbbbbbb",
                     began="2030-01-01T10:00:00")]
    summary = dict(status="unfinished", status_detail="unfinished", iterations_done=780, iterations=64000,
                   final_test_error=0.35, dataset="jpeg-q75-copy", dataset_label="CIFAR-10 (JPEG q75 copy)",
                   device="cpu", device_name="CPU B", train_size=50000, test_size=10000, segments=segments)
    return RunResult(tmp_path / shared.PAPER_RUN, config, summary, pd.DataFrame(rows), pd.DataFrame())


def test_the_paper_schedule_section_states_what_its_record_holds(dataset, tmp_path):
    from resnet_cifar import book
    run = _paper_record(tmp_path)
    facts = shared.paper_facts(run)
    assert facts["sched_status"] == "780 of 64,000 iterations (1 %), still training"
    assert (facts["sched_error"], facts["sched_at"], facts["sched_lr"]) == ("35.00", "780", "0.1")
    assert facts["sched_lowest"] == "30.00 % at iteration 390"
    assert facts["sched_sittings"] == "2 sittings, 1.0 hours of training and evaluation, on CPU A; CPU B"
    assert facts["sched_data"] == "CIFAR-10 (JPEG q75 copy), 50,000 training and 10,000 test images"
    ax = shared.paper_figure(run).axes[0]
    assert ax.get_xlim() == (0, 64000)
    assert sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "-.") == [32000, 48000]
    assert "paper: 7.51 %" in [t.get_text() for t in ax.get_legend().get_texts()]
    sittings = shared.paper_sittings(run).data
    assert sittings["iterations"].tolist() == ["0 – 390", "390 – 780"] and sittings["device"].tolist() == ["CPU A",
                                                                                                         "CPU B"]
    assert sittings["images/s"].tolist() == pytest.approx([390 * 128 / 1800] * 2)
    ch = book.Chapter("smoke", "cpu", dataset, tmp_path, 0)
    head = shared.Headline(ch, {"seed 0": _record(tmp_path, "a", "complete", 0.2)})
    table = page_code("intro").comparison_table(head, run).data
    row = table.loc["this book, the paper's schedule (all 50k, seed 0)"]
    assert row["test error %"] == "35.00 (latest)" and row["budget"] == "780 of 64,000 iterations × batch 128"
    assert row["comparable"] == "NO: not the official data and unfinished (780 of 64,000)"
    none = shared.paper_facts(None)
    assert none["sched_status"].startswith("no run of the paper's whole schedule is committed")
    assert shared.paper_sittings(None).data.empty


def test_the_committed_paper_run_is_the_plans_run(dataset, tmp_path):
    """The committed record of the paper's schedule (when this data copy has one) loads with the
    plan's identity: a change to the recipe's defaults would make it another run."""
    from resnet_cifar import book
    ch = book.Chapter("smoke", "cpu", dataset, tmp_path, 0, records_data="jpeg-q75-copy")
    run = shared.paper_run(ch.runs_data)
    if run is None:
        missing("no record of the paper's schedule is committed for the JPEG copy")
    assert run.name == shared.PAPER_RUN and run.config["val_size"] == 0 and run.summary["train_size"] == 50000
    assert run.status in ("unfinished", "complete")
    assert shared.paper_facts(run)["sched_at"] == f"{run.summary['iterations_done']:,}"
    assert run.history["iteration"].iloc[-1] == run.summary["iterations_done"]
    if run.status == "unfinished":  # its checkpoint holds exactly what its summary claims
        saved = torch.load(run.run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
        assert saved["iteration"] == run.summary["iterations_done"] and len(saved["history"]) == len(run.history)


def test_table6_shows_the_paper_schedule_runs_beside_the_papers_rows(dataset, tmp_path):
    """Chapter 7's Table 6 shows each depth's run of the paper's whole schedule from the committed
    records (how far it has trained while unfinished), '–' where none is committed."""
    from resnet_cifar import book
    depth = page_code("07_depth")
    ch = book.Chapter("smoke", "cpu", dataset, tmp_path, 0, records_data="jpeg-q75-copy")
    run = shared.paper_run(ch.runs_data)
    if run is None:
        missing("no record of the paper's schedule is committed for the JPEG copy")
    here = depth.paper_runs(ch, [20, 32, 44, 56, 110, 1202])
    shown = depth.paper_schedule(here[32])
    s = run.summary
    assert shown == f"{100 * s['final_test_error']:.2f}" + (
        "" if run.complete else f" ({s['iterations_done']:,} of 64,000 its)")
    assert depth.paper_schedule(here[1202]) == "–"
    # the sentence under the table: each committed depth, or "not yet trained" for a planned one
    sentence = depth.paper_depths({d: here[d] for d in (20, 32, 44, 56, 110)})
    assert f"ResNet-32 {100 * s['final_test_error']:.2f} %" in sentence and "ResNet-44" not in sentence


def test_table6s_paper_schedule_sentence_states_an_ordering_only_of_complete_runs(dataset, tmp_path):
    """One seed per depth: the sentence gives the errors and whether they fall with depth as Table
    6's do, and says that no spread backs it; an unfinished run takes no part in the ordering."""
    from types import SimpleNamespace
    depth = page_code("07_depth")
    errors = {20: (13.2, True), 32: (11.9, True), 56: (12.5, True)}

    def fake_runs(depths):
        return {d: None if d not in errors else SimpleNamespace(
            complete=errors[d][1], error=lambda d=d: errors[d][0],
            summary=dict(iterations_done=64000 if errors[d][1] else 640, iterations=64000)) for d in depths}
    text = depth.paper_depths(fake_runs([20, 32, 44, 56]))
    assert text.startswith("ResNet-20 13.20 %; ResNet-32 11.90 %; ResNet-56 12.50 %. Not Table 6's ordering")
    assert "(ResNet-20 8.75 %, ResNet-32 7.51 %, ResNet-56 6.97 %); one seed per depth" in text
    errors[56] = (10.8, True)
    assert "The error falls with every added depth, as in Table 6" in depth.paper_depths(fake_runs([20, 32, 56]))
    errors[56] = (30.0, False)
    text = depth.paper_depths(fake_runs([20, 32, 56]))
    assert "ResNet-56 30.00 % (unfinished: 640 of 64,000 iterations)." in text and "as in Table 6" in text
    errors.clear()
    assert depth.paper_depths(fake_runs([20, 56])) == "ResNet-20 not yet trained; ResNet-56 not yet trained."


def test_published_records_without_weights_render_placeholders(dataset, tmp_path):
    """Published records hold no model.pt: the figures and numbers that need the weights say
    so instead of failing the chapter."""
    from resnet_cifar import book
    ch = book.Chapter("smoke", "cpu", dataset, tmp_path, 0)
    published = {f"seed {s}": _record(tmp_path, str(s), "complete", 0.2) for s in (0, 1)}
    assert not any(r.has_weights for r in published.values())
    fig, table, facts = page_code("06_results").class_errors(ch, published)
    assert fig is None and facts["res_check"] == "cannot be checked: published records carry no weights"
    assert "No run with weights: published records carry no weights" in table.to_html()


def test_cpu_pages_say_what_the_profile_left_out_and_use_what_it_trained(dataset, tmp_path):
    """Where the cpu profile trains only part of a chapter: the deepest depth both families have,
    both patiences named from the page's parameters, the constant-lr Adam runs standing in for
    the scheduled ones, and the headline says where the recipe stands, not that the code runs."""
    from resnet_cifar import book
    model, schedule, optimizers = map(page_code, ("02_model", "04_schedule", "05_optimizers"))
    from resnet_cifar.analysis import summary_sentence
    ch = book.Chapter("cpu", "cpu", dataset, tmp_path, 0)
    plain = {"plain-20": _record(tmp_path, "p20", "complete", 0.45)}
    residual = {"ResNet-20": _record(tmp_path, "r20", "complete", 0.40),
                "ResNet-32": _record(tmp_path, "r32", "complete", 0.37)}
    facts = model.fig6_facts(ch, plain, residual, [20, 32])
    assert (facts["fig6_depths"], facts["fig6_deepest"], facts["fig6_plain_err"], facts["fig6_resnet_err"]) == \
        ("20", "20", "45.0", "40.0")
    facts = schedule.schedule_facts(ch, {"multistep (paper)": residual["ResNet-32"]}, 1000, 10)
    assert (facts["sch_long_patience"], facts["sch_short_patience"]) == ("1,000", "10")
    assert facts["sch_long_verdict"] == facts["sch_short_verdict"] == "was not run at this profile"
    assert facts["sch_plateau"] == "Neither plateau run (patience 1,000, patience 10) was trained at this profile"
    sgd = {"SGD, momentum 0.9 (paper)": residual["ResNet-32"]}
    constant = {"Adam, constant lr 0.001": _record(tmp_path, "a3", "complete", 0.31),
                "Adam, constant lr 0.1": _record(tmp_path, "a1", "complete", 0.56)}
    _, facts = optimizers.adam_facts(ch, sgd, 1e-3, 0.1, constant)
    assert (facts["opt_adam_high_err"], facts["opt_adam_low_err"], facts["opt_sgd_err"]) == ("56.0", "31.0", "37.0")
    assert facts["opt_adam_high_status"] == "complete (at a constant learning rate: this profile trains Adam only " \
                                           "without a schedule)"
    _, facts = optimizers.adam_facts(ch, sgd, 1e-3, 0.1)
    assert facts["opt_adam_high_status"] == "not trained at this profile" and facts["opt_adam_high_err"] == "–"
    assert summary_sentence({"SGD": "reference"}, "At profile cpu").endswith(
        "only the reference arm is trained at this profile: nothing to compare.")
    verdict = shared.Headline(ch, {"seed 0": residual["ResNet-32"]}).facts()["head_verdict"]
    assert "37.00 % is where the recipe stands after 20 of the paper's 64,000 iterations" in verdict


def glued(notebook: Path) -> dict[str, str]:
    """The text values an executed notebook glued for its page, by name."""
    values = {}
    for cell in nbformat.read(notebook, as_version=4).cells:
        for out in cell.get("outputs", []):
            meta = out.get("metadata", {}).get("scrapbook")
            if meta:
                values[meta["name"]] = str(out["data"].get(meta["mime_prefix"] + "text/plain", "")).strip("'\"")
    return values


def test_a_build_renders_another_copys_records_and_says_whose_data_is_whose(tmp_path):
    """A machine whose data folder holds another copy of CIFAR-10 than the committed cpu records
    (here: the JPEG copy with its test batch relabelled, which makes it an unverified copy)
    renders those records (`records --best` names them, `-p records_data` reads them): the runs'
    captions and the headline name the records' copy, and what the page computes on the data
    (the published model evaluated again) names this machine's copy and does not claim to match."""
    data = data_dir()
    require(data is not None and (ROOT / "book/records/jpeg-q75-copy/cpu/records.json").is_file()
            and (data / D.FOLDER / D.TEST_FILE).is_file(), "needs a data folder and the committed cpu records")
    other = tmp_path / "other" / D.FOLDER
    other.mkdir(parents=True)
    for name in D.TRAIN_FILES + [D.META_FILE]:
        (other / name).symlink_to((data / D.FOLDER / name).resolve())
    with open(data / D.FOLDER / D.TEST_FILE, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch["batch_label" if "batch_label" in batch else b"batch_label"] = "test batch of another copy"
    with open(other / D.TEST_FILE, "wb") as f:
        pickle.dump(batch, f)
    best = subprocess.run([sys.executable, "-m", "resnet_cifar", "records", "--best", "--data-dir", str(other.parent)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert best.stdout.split() == ["cpu", "jpeg-q75-copy"], best.stdout + best.stderr
    out = tmp_path / "06_results.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "book" / "06_results.ipynb"), str(out),
                           "-p", "profile", "cpu", "-p", "device", "cpu", "-p", "records_data", "jpeg-q75-copy",
                           "-p", "data_dir", str(other.parent)],
                          cwd=ROOT / "book", capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    values, page = glued(out), out.read_text()
    assert values["head_data"] == "CIFAR-10 (JPEG q75 copy)"
    assert values["head_checks"].startswith("same data: no (CIFAR-10 (JPEG q75 copy))")
    assert "profile cpu · CIFAR-10 (JPEG q75 copy) · published records · AMD EPYC" in values["head_source"]
    here = "(computed here on CIFAR-10 (unverified copy); the runs were trained on CIFAR-10 (JPEG q75 copy))"
    assert values["res_check"].startswith(f"is measured {here}, so it is no check of the ") and \
        values["res_check"].endswith(" % the run recorded on its own data")
    assert f"Per-class test error, seed 0 {here} — profile cpu · CIFAR-10 (JPEG q75 copy)" in page
    assert "This machine's data folder holds CIFAR-10 (unverified copy): what the page computes" in page
    from resnet_cifar import book
    from resnet_cifar.runs import RunError
    with pytest.raises(RunError, match="none of profile cpu for that copy.*committed: jpeg-q75-copy/cpu"):
        book.chapter("cpu", "cpu", str(other.parent), records_data="official")
    with pytest.raises(ValueError, match="records_data and runs_dir name two sources of runs"):
        book.chapter("cpu", "cpu", str(other.parent), "runs", records_data="jpeg-q75-copy")


def test_run_tables_format_numbers_and_missing_values(dataset, tmp_path):
    from resnet_cifar import book
    ch = book.Chapter("smoke", "cpu", dataset, tmp_path, 0)
    runs = {"done": _record(tmp_path, "a", "complete", 0.123456),
            "diverged": _record(tmp_path, "b", "diverged", None, history=False)}
    html = ch.table(runs, "Two runs").to_html()
    assert "12.3" in html and "12.345" not in html and "256.0" not in html and "256" in html
    assert html.count("–") >= 4  # the diverged run's errors and speed
    assert "Two runs — profile smoke · " in html


def test_styled_numbers_use_separators_and_sensible_precision():
    import pandas as pd
    from resnet_cifar import analysis as A
    table = pd.DataFrame({"n": [64000, 3], "x": [460000.0, 8.75], "e": [None, 0.123]}, index=["a", "b"]).astype(object)
    html = A.styled(table, "caption", precision=2).to_html()
    for shown in ("64,000", "460,000", "8.75", "0.12", "–"):
        assert f">{shown}</td>" in html, shown
    assert "8.750000" not in html and "460000.00" not in html


def test_profiles_table_spells_out_each_budget():
    html = page_code("intro").profiles_table().to_html()
    for text in (">3,200 and 4,800<", ">32,000 and 48,000<", ">100 (10 per class)<", ">all 45,000<", ">64,000<"):
        assert text in html, text


def test_chapter_data_folder_follows_resolve_data_dir_from_the_project_root(tmp_path, monkeypatch):
    from resnet_cifar import book
    monkeypatch.delenv("RESNET_CIFAR_DATA", raising=False)
    assert book.data_folder(None, tmp_path) == tmp_path / "data"
    assert book.data_folder("elsewhere", tmp_path) == tmp_path / "elsewhere"
    monkeypatch.setenv("RESNET_CIFAR_DATA", str(tmp_path / "env"))
    assert book.data_folder(None, tmp_path) == tmp_path / "env"
    assert book.data_folder("/abs/cifar", tmp_path) == Path("/abs/cifar")
    assert shown_path(tmp_path / "runs" / "x", tmp_path) == "runs/x"
    assert shown_path(Path("/somewhere/else/data"), tmp_path) == "…/data"


def test_smoke_runs_train_on_one_cpu_thread_and_restore_the_kernels(dataset, tmp_path):
    import torch
    from resnet_cifar import book
    ch = book.Chapter("smoke", "cpu", dataset, tmp_path, 0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run = ch.train("aug-none", dict(crop=False, flip=False, seed=0))  # smoke ResNet-32, 10 iterations
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert run.complete and "; 1 of " in run.summary["device_name"], run.summary["device_name"]


def test_the_smoke_appendix_benchmarks_on_the_profiles_thread_and_says_so(dataset, tmp_path, monkeypatch):
    import torch
    from resnet_cifar import bench, book
    appendix = page_code("appendix_performance")
    seen = {}

    def run_benchmark(**settings):  # what the page measures with, not the measurement
        seen.update(settings, threads=torch.get_num_threads())
    monkeypatch.setattr(bench, "run_benchmark", run_benchmark)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ch = book.Chapter("smoke", "cpu", dataset, tmp_path, 0)
        appendix.measure(ch)
        assert torch.get_num_threads() == 2 and seen["threads"] == 1  # one thread, as the smoke runs
        assert "on 1 CPU thread, as the profile's runs train" in appendix.cut_down_text(ch)
        assert "512 training images" in appendix.cut_down_text(ch) and seen["train_images"] == 512
        seen.clear()
        appendix.measure(book.Chapter("cpu", "cpu", dataset, tmp_path, 0))
        assert seen["threads"] == 2 and seen["rounds"] == appendix.CUT_DOWN["rounds"]  # the cpu profile: every core
        assert "CPU thread" not in appendix.cut_down_text(book.Chapter("cpu", "cpu", dataset, tmp_path, 0))
    finally:
        torch.set_num_threads(before)


def test_the_appendix_shows_the_committed_benchmark_when_it_reads_records_and_times_this_machine_else(
        dataset, tmp_path, monkeypatch):
    from resnet_cifar import bench, book
    appendix = page_code("appendix_performance")
    timed = {"info": {"date": "now"}}
    monkeypatch.setattr(bench, "run_benchmark", lambda **settings: timed)
    committed = {"bench-cpu": {"info": {"date": "2026-12-01"}}}
    reads_records = book.Chapter("cpu", "cpu", dataset, tmp_path, 0, records={"runs": {}})
    trains = book.Chapter("smoke", "cpu", dataset, tmp_path, 0)
    assert appendix.page_benchmark(reads_records, "auto", committed) == (committed["bench-cpu"], "bench-cpu.json")
    assert appendix.page_benchmark(reads_records, "here", committed) == (timed, None)
    assert appendix.page_benchmark(trains, "auto", committed) == (timed, None)
    assert appendix.page_benchmark(trains, "recorded", committed)[1] == "bench-cpu.json"
    assert appendix.page_benchmark(reads_records, "auto", {}) == (timed, None)  # nothing recorded: timed
    with pytest.raises(ValueError, match="holds no bench-cpu.json.*-p benchmark here"):
        appendix.page_benchmark(trains, "recorded", {})
    with pytest.raises(ValueError, match="benchmark must be auto, here or recorded, got 'yes'"):
        appendix.page_benchmark(trains, "yes", committed)
    text = appendix.recorded_text("bench-cpu.json", committed["bench-cpu"]["info"])
    assert "bench-cpu.json as recorded on 2026-12-01, not re-measured" in text


def test_make_book_renders_the_committed_records_headline():
    """README's first command (`make book`, which CI runs before the tests) renders the committed
    records without training: the introduction states the headline ResNet-32's mean over its
    seeds and how far the paper's schedule has trained, both as the records say."""
    import statistics
    from resnet_cifar import records as REC
    from resnet_cifar.commands import dataset_identity
    from resnet_cifar.experiments import headline_seeds
    intro, data = ROOT / "_build" / "html" / "book" / "intro.html", data_dir()
    records = list((ROOT / "book" / "records").glob("*/*/records.json"))
    fresh = intro.is_file() and all(intro.stat().st_mtime > r.stat().st_mtime for r in records)
    require(data is not None and (fresh or in_ci()), "no book built by `make book` since the records last changed")
    best = REC.best_records(ROOT, dataset_identity(str(data)))
    require(best is not None, "no complete committed records to render")
    profile, copy = best
    folder = ROOT / "book" / "records" / copy / profile
    errors = [json.loads((folder / f"resnet32-seed{s}" / "summary.json").read_text())["final_test_error"]
              for s in headline_seeds(profile)]
    page = intro.read_text()
    assert f"{100 * statistics.mean(errors):.2f}" in page and f"{100 * statistics.stdev(errors):.2f}" in page
    assert f"profile {profile}" in page or profile in page
    paper = ROOT / "book" / "records" / copy / "paper" / shared.PAPER_RUN / "summary.json"
    if paper.is_file():
        done = json.loads(paper.read_text())["iterations_done"]
        assert f"{done:,} of 64,000 iterations" in page or "complete: all 64,000 iterations" in page


def test_the_depth_ordering_is_read_against_table_6_at_the_same_depths():
    depth = page_code("07_depth")
    assert depth.paper_ordering([20, 56], False) == (
        "; not Table 6's ordering at these depths, where the error falls with every added depth "
        "(ResNet-20 8.75 %, ResNet-56 6.97 %)")
    assert depth.paper_ordering([20, 32], True).startswith("; the means fall with every added depth, as Table 6")
    # Table 6's error rises from ResNet-110 to ResNet-1202: falling there is not the paper's ordering
    assert depth.paper_ordering([110, 1202], True) == (
        "; not Table 6's ordering at these depths (ResNet-110 6.43 %, ResNet-1202 7.93 %)")
    assert depth.paper_ordering([110, 1202], False) == "; Table 6 at these depths: ResNet-110 6.43 %, ResNet-1202 7.93 %"


def test_two_plateau_runs_that_never_fired_read_as_one_sentence(dataset, tmp_path):
    from resnet_cifar import book
    schedule = page_code("04_schedule")
    ch = book.Chapter("smoke", "cpu", dataset, tmp_path, 0)
    runs = {"multistep (paper)": _record(tmp_path, "m", "complete", 0.4)}
    for patience in (1000, 10):
        run = _record(tmp_path, f"p{patience}", "complete", 0.5)
        run.config.update(schedule="plateau", plateau_patience=patience, lr=0.1)
        runs[f"plateau, patience {patience}"] = run
    runs["multistep (paper)"].config["lr"] = 0.1
    facts = schedule.schedule_facts(ch, runs, 1000, 10)
    assert facts["sch_plateau"] == ("With patience 1,000 and with patience 10 alike, the scheduler never reduced the "
                                    "learning rate")
    runs["plateau, patience 10"].lr_trace = runs["plateau, patience 10"].lr_trace.assign(lr=[0.1, 0.01])
    facts = schedule.schedule_facts(ch, runs, 1000, 10)
    assert facts["sch_plateau"] == ("With patience 1,000 the scheduler never reduced the learning rate; with "
                                    "patience 10 it reduced it 1 time(s), first at iteration 2")


def test_a_setting_whose_seeds_split_between_training_and_chance_says_so(tmp_path):
    import math
    import pandas as pd
    optimizers = page_code("05_optimizers")
    trained, stuck = _record(tmp_path, "a", "complete", 0.265), _record(tmp_path, "b", "complete", 0.9)
    trained.config["seed"], stuck.config["seed"] = 0, 1
    stuck.history = pd.DataFrame(dict(iteration=[200, 400], train_loss=[2.312, math.log(10)], test_error=[0.9, 0.9]))
    facts = optimizers.chance_runs({"eps 0.9": [trained, stuck], "eps 0.1": [trained]})
    assert facts["eps_chance"] == ("With eps 0.9, seed 1 (90.0 %) never left chance (training loss ln 10 = 2.303 at "
                                   "every evaluation) while seed 0 (26.5 %) trained. A mean over seeds that split like "
                                   "this describes neither of them.")
    assert optimizers.chance_runs({"eps 0.1": [trained]})["eps_chance"] == "No seed of these settings stayed at chance."


def test_adam_at_a_constant_lr_is_read_against_the_papers_sgd(dataset, tmp_path):
    """Chapter 5 compares the log's Adam (constant 1e-3) with the paper's SGD runs over seeds and
    says what that ranking at a short budget does and does not tell."""
    from resnet_cifar import book
    optimizers = page_code("05_optimizers")
    ch = book.Chapter("cpu", "cpu", dataset, tmp_path, 0)
    adam = [_record(tmp_path, f"a{i}", "complete", e) for i, e in enumerate((0.3129, 0.2898))]
    sgd = [_record(tmp_path, f"s{i}", "complete", e) for i, e in enumerate((0.3692, 0.4062))]
    _, facts = optimizers.adam_constant(ch, {"Adam, constant lr 0.001": adam}, [1e-3], sgd)
    assert facts["adamc_vs_sgd"] == (
        "Adam, constant lr 0.001 ends at 30.14 % over 2 seed(s) and the paper's SGD recipe at 38.77 % over 2 "
        "seed(s): lower error than the paper's SGD by 8.63 points, beyond the seeds' spread of 4.25 (n = 2 and 2)")
    _, none = optimizers.adam_constant(ch, {"Adam, constant lr 0.001": adam}, [1e-3], [])
    assert none["adamc_vs_sgd"].endswith("the paper's SGD recipe at no complete run: no complete run to compare")


def test_fig6_compares_plain_and_residual_at_the_same_depth(tmp_path):
    """At a short budget a deeper net also trains more slowly; the same depth with and without
    shortcuts is the comparison the budget does not blur, and the page states it."""
    depth = page_code("07_depth")

    def run(name, train_error):
        r = _record(tmp_path, name, "complete", 0.5)
        r.history["train_error"] = train_error
        return r
    plain = {20: [run("p20", 0.33), run("p20b", 0.33)], 56: [run("p56", 0.74), run("p56b", 0.76)]}
    residual = {20: [run("r20", 0.29), run("r20b", 0.31)], 56: [run("r56", 0.50), run("r56b", 0.52)]}
    facts = depth.degradation(plain, residual)
    assert facts["dep_same_depth"].startswith("At the same depth, 56 layers, the plain net ends at 75.0 % training "
                                              "error and the ResNet at 51.0 % (mean of 2 and 2 seed(s)): ")
    assert depth.degradation({20: plain[20]}, {56: residual[56]})["dep_same_depth"] == (
        "No depth was trained both plain and residual at this profile.")


def test_the_logs_questions_are_answered_from_runs_or_say_there_are_none(dataset, tmp_path, monkeypatch):
    """The introduction's answers table: a question whose arms were trained gets their means and
    the computed verdict; one whose arm this profile does not train says so."""
    from resnet_cifar import book
    ch = book.Chapter("cpu", "cpu", dataset, tmp_path, 0)
    good = [_record(tmp_path, f"g{s}", "complete", e) for s, e in ((0, 0.30), (1, 0.31))]
    base = [_record(tmp_path, f"b{s}", "complete", e) for s, e in ((0, 0.38), (1, 0.40))]
    arms = {"05_optimizers": {"adam_constant": {"Adam, constant lr 0.001": good},
                              "optimizers": {"SGD, momentum 0.9 (paper)": base}}}
    monkeypatch.setattr(book.Chapter, "experiments", lambda self, chapter: arms.get(chapter, {}))
    table = page_code("intro").answers(ch).data
    adam = table.loc["Adam at a constant lr or the paper's SGD?"]
    assert adam["answer at this profile"] == ("Adam, constant lr 0.001 30.5 % against SGD, momentum 0.9 (paper) 39.0 % "
                                              "test error")
    assert adam["evidence"] == f"2 and 2 seed(s), 20 iterations, {ch.runs_label}"
    assert adam["verdict"].startswith("lower error than SGD, momentum 0.9 (paper) by 8.50 points, beyond the seeds'")
    relu = table.loc["Why does a ReLU after the last FC stop learning?"]
    assert relu["answer at this profile"] == "ReLU after the last FC: not trained (or not finished) at profile cpu"
    assert relu["verdict"] == "no runs here; chapter 05 answers otherwise"
    assert len(table) == len(page_code("intro").QUESTIONS)


def test_a_notebook_opened_as_committed_shows_the_books_records():
    """Every parameters cell says profile = "auto": opened and run as it is (JupyterLab), a
    chapter reads what `make book` renders, the most complete committed records, not smoke."""
    from resnet_cifar import book
    from resnet_cifar import records as REC
    data = data_dir()
    require(data is not None, "no CIFAR-10 folder")
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        params = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
        assert params.source.startswith('profile = "auto"'), path.name
    ch = book.chapter("auto", "cpu", str(data))
    best = REC.best_records(ROOT, ch.dataset.identity)
    if best is None:
        assert ch.profile == "smoke" and ch.records is None
    else:
        assert (ch.profile, ch.runs_data) == best and ch.records is not None
        assert ch.runs_dir == ROOT / "book" / "records" / best[1] / best[0]
