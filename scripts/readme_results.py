#!/usr/bin/env python
"""README's results, generated from the committed records: the headline (the paper's whole
schedule, however far it has trained) as a sentence and a figure, and the results table of the
paper profile's records.

    .venv/bin/python scripts/readme_results.py           # rewrite README.md's blocks and the figure
    .venv/bin/python scripts/readme_results.py --check   # exit 1 when they differ from the records

The figure carries the records it was drawn from in its PNG metadata, so `--check` (and the
tests) can tell a stale figure without comparing pixels.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from resnet_cifar import records as R  # noqa: E402
from resnet_cifar import book as C  # noqa: E402
from resnet_cifar.config import profile_config  # noqa: E402

README = ROOT / "README.md"
FIGURE = "book/_static/paper-run.png"
BLOCK = re.compile(r"(<!-- results (\w+) -->\n)(.*?)(\n<!-- end results -->)", re.S)


def headline_copy() -> str | None:
    """The copy of CIFAR-10 whose paper run README shows: the official data's first."""
    copies = sorted(R.copies(ROOT), key=lambda c: (c != "official", c))
    return next((c for c in copies if (ROOT / R.RECORDS / c / "paper" / C.PAPER_RUN / "summary.json").is_file()),
                None)


def stamp(run) -> str:
    """What the figure was drawn from: run, copy, iterations, status."""
    s = run.summary
    return f"{run.name} · {s['dataset']} · {s['iterations_done']} iterations · {s['status']}"


def headline(copy: str | None) -> str:
    """The README's headline paragraph and figure, from the paper run's records."""
    run = None if copy is None else C.paper_run(copy)
    if run is None:
        return "No run of the paper's whole schedule is committed yet."
    f = C.paper_facts(run)
    latest = "final" if run.complete else "latest"
    data = ("" if run.summary["dataset"] == "official" else
            " This copy of CIFAR-10 is a JPEG re-encoding: its errors are not comparable to the paper's.")
    return (f"ResNet-32 on the paper's whole schedule and protocol (all 50,000 training images, "
            f"64,000 iterations of batch 128, lr ÷10 at 32k and 48k), trained on {f['sched_data']}: "
            f"{f['sched_status']}; {latest} test error **{f['sched_error']} %** (lr {f['sched_lr']}), "
            f"lowest {f['sched_lowest']}; {f['sched_sittings']}. The paper reports 7.51 %.{data}\n\n"
            f"![Training and test error of the paper run]({FIGURE})")


def draw(copy: str | None, path: Path) -> None:
    run = C.paper_run(copy) if copy else None
    fig = C.paper_figure(run)
    fig.savefig(path, dpi=80, metadata={"Description": stamp(run) if run else "none"})


def drawn_from(path: Path) -> str | None:
    from PIL import Image
    if not path.is_file():
        return None
    with Image.open(path) as image:
        return image.info.get("Description")


def results_markdown(dataset: str, profile: str) -> str:
    """The committed records of `dataset`/`profile` as README's results: a line saying what
    they are, then one row per run (test error, best validation error, device, training time)."""
    folder = ROOT / R.RECORDS / dataset / profile
    manifest = R.read_manifest(folder)
    if manifest is None:
        return f"No committed records of profile {profile} on {dataset}."
    pct = lambda v: "–" if v is None else f"{100 * v:.2f}"  # noqa: E731
    rows = ["| run | status | iterations | test error % | best val error % | device | training time |",
            "|---|---|---|---|---|---|---|"]
    for name in sorted(manifest.get("runs", {})):
        s = R.read_json(folder / name / "summary.json") or {}
        minutes = ((s.get("wall_time_s") or 0) + (s.get("eval_time_s") or 0)) / 60
        rows.append(f"| {name} | {s.get('status', '–')} | {s.get('iterations_done', 0):,} | "
                    f"{pct(s.get('final_test_error'))} | {pct(s.get('best_val_error'))} | "
                    f"{s.get('device_name', '–')} | {minutes:.0f} min |")
    cfg, done, planned = profile_config(profile), R.finished_count(manifest), manifest.get("planned")
    training = len(manifest.get("runs", {})) - done
    data = "" if dataset == "official" else f", {'but ' if profile == 'paper' else ''}not the official data"
    head = (f"Profile {profile} ({cfg.iterations:,} iterations of batch {cfg.batch_size}, lr ÷10 at "
            f"{' and '.join(f'{m:,}' for m in cfg.milestones)}) on {dataset}: {done} of {planned} planned runs "
            f"published ({'complete' if done >= (planned or 0) else 'partial: the rest is still training'}"
            + (f"; {training} more published unfinished, with its checkpoint, to resume" if training else "") + "), "
            f"exported {manifest.get('exported')}. {'The' if profile == 'paper' else 'Not the'} paper's budget{data}.")
    return head + "\n\n" + "\n".join(rows)


def rendered(text: str, copy: str | None) -> str:
    """README with its generated blocks as the records say."""
    def block(m):
        body = headline(copy) if m[2] == "headline" else results_markdown(copy or "official", m[2])
        return m[1] + body + m[4]
    return BLOCK.sub(block, text)


def problems() -> list[str]:
    """What in README and its figure differs from the committed records."""
    copy, text = headline_copy(), README.read_text()
    found = [] if rendered(text, copy) == text else ["README.md's generated blocks differ from the records"]
    run = C.paper_run(copy) if copy else None
    if drawn_from(ROOT / FIGURE) != (stamp(run) if run else "none"):
        found.append(f"{FIGURE} was drawn from other records ({drawn_from(ROOT / FIGURE)})")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if README or its figure is stale")
    args = parser.parse_args(argv)
    if args.check:
        found = problems()
        print("\n".join(found) or "README's results are the committed records")
        return 1 if found else 0
    copy = headline_copy()
    README.write_text(rendered(README.read_text(), copy))
    draw(copy, ROOT / FIGURE)
    print(f"wrote README.md's results and {FIGURE} from the records of {copy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
