"""`python -m specforge_het.bench.scaling DIR`: τ against training tokens, from the points of a scaling study.

Each point is a folder `DIR/<name>/` holding what `make scaling-smollm2` writes there:
  bench.json   `python -m specforge_het.bench --methods ours-tree` on the draft of that point; its header
               names the draft folder (a training checkpoint or a finished draft), whose log history
               gives the tokens trained on so far (`train_loss_tokens_total`: answer tokens that carry
               a loss; `train_seq_tokens_total`: every sequence token)
               (a draft trained on from another, `--modeling.init_draft`, adds that draft's tokens)
  train.log    optional: a separate training run's output; its `throughput:` line gives the same two
               counts (tokens/s x seconds) and takes precedence
The summary (one row per point, sorted by tokens) is printed, written as JSON, and plotted (PNG
beside the JSON, log-scaled token axis). Several DIRs (comma-separated) are several series, one line
each, named by their folder. `--count_from DRAFT[,DRAFT]`: a lineage's count stops at the first of these
folders its init_draft chain reaches (that folder's tokens and those before it are left out, unless a point's
own draft is that folder): for a lineage whose starting folder has since been replaced (a shipped draft
trained on from its predecessor, as `make` does). `--trained_from DRAFT=INIT[,...]`: DRAFT was trained on from
INIT, whatever its run_config.json names (a shipped folder replaced since, whose earlier run is INIT).
  tokens.json  written here beside bench.json each time a point is counted from its draft folder: {draft,
               answer_tokens, seq_tokens, chain (the draft folders summed), linked (those of them
               whose predecessor --trained_from gave)}. A draft's weights and logs are not
               committed, so on a fresh checkout a point (or a folder in a later point's init_draft chain) whose
               draft folder is gone counts from the tokens.json that names it, if that chain agrees with
               --count_from and --trained_from; a draft folder that is there always counts afresh.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from specforge_het.errors import ConfigError

console = Console()
_THROUGHPUT = re.compile(r"throughput: ([\d.]+) trained tokens/s \(([\d.]+) loss tokens/s\) over (\d+) s")
METHOD = "ours-tree"
_LOGS = ("trainer_state.json", "training_log.json")  # a checkpoint's, a finished draft folder's


def _tokens_from_log(log: Path) -> tuple[int, int]:
    found = _THROUGHPUT.findall(log.read_text(errors="replace"))
    if not found:
        raise ValueError(f"{log}: no 'throughput:' line (the training did not finish); rerun that point.")
    seq_rate, loss_rate, secs = (float(x) for x in found[-1])
    return round(loss_rate * secs), round(seq_rate * secs)


Links = dict[Path, Path]  # resolved draft folder -> the folder it was trained on from (--trained_from)
# answer tokens, sequence tokens, the draft folders summed (the point's first), those of them whose next one a
# --trained_from link gave (rather than their run_config.json)
Count = tuple[int, int, tuple[str, ...], tuple[str, ...]]
Known = dict[Path, Count]  # resolved draft folder -> the count a point's tokens.json kept for it


def _kept(draft: Path, count: Count, count_from: tuple[Path, ...], links: Links | None,
          used: set[Path] | None) -> Count:
    """A kept count (its draft folder is gone), if the chain it summed agrees with --count_from and --trained_from."""
    chain, by_link = [Path(c).resolve() for c in count[2]], {Path(c).resolve() for c in count[3]}
    for i, folder in enumerate(chain):
        nxt = chain[i + 1] if i + 1 < len(chain) else None
        linked = (links or {}).get(folder)
        if ((i and folder in {p.resolve() for p in count_from}) or (folder in by_link) != (linked is not None)
                or (linked is not None and linked.resolve() != nxt)):
            raise ConfigError(f"the tokens.json count for '{draft}' summed {' + '.join(count[2])}, which "
                              "--count_from / --trained_from now contradict, and that draft folder is gone to count "
                              "afresh: rebuild it (its make target) or give the options it was counted with.")
        if linked is not None and used is not None:
            used.add(folder)
    return count


def _tokens_from_draft(draft: Path, count_from: tuple[Path, ...] = (), seen: tuple[Path, ...] = (),
                       links: Links | None = None, used: set[Path] | None = None,
                       known: Known | None = None) -> Count:
    """(answer, sequence) tokens trained on by `draft` and its init_draft chain, and the folders summed; `used`
    collects the links followed. A draft folder that is gone counts from `known` (a tokens.json) when it names it."""
    if not draft.exists() and draft.resolve() in (known or {}):
        return _kept(draft, (known or {})[draft.resolve()], count_from, links, used)
    if draft.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, draft.resolve()))
        raise ValueError(f"the drafts' init_draft links form a loop ({chain}): a folder was replaced by a later "
                         "stage. Give --count_from the folder where the lineage starts.")
    for name in _LOGS:
        if (draft / name).is_file():
            history = json.loads((draft / name).read_text())
            history = history["log_history"] if isinstance(history, dict) else history
            totals = [h for h in history if "train_loss_tokens_total" in h]
            if not totals:
                raise ValueError(f"{draft / name}: no running token totals (train_loss_tokens_total); the draft "
                                 "was trained before they were logged, so give its point a train.log.")
            answer, seq = totals[-1]["train_loss_tokens_total"], totals[-1]["train_seq_tokens_total"]
            linked = (links or {}).get(draft.resolve())
            if linked is not None and used is not None:
                used.add(draft.resolve())
            before = linked or _init_draft(draft, known)  # a later stage adds its predecessor's tokens
            summed: tuple[str, ...] = (str(draft),)
            by_link: tuple[str, ...] = summed if linked is not None else ()
            if before is not None and before.resolve() not in {p.resolve() for p in count_from}:
                prev = _tokens_from_draft(before, count_from, (*seen, draft.resolve()), links, used, known)
                answer, seq, summed, by_link = answer + prev[0], seq + prev[1], summed + prev[2], by_link + prev[3]
            return round(answer), round(seq), summed, by_link
    gone = "is gone" if not draft.exists() else f"has no {' or '.join(_LOGS)} to read its training tokens from"
    raise FileNotFoundError(f"draft folder '{draft}' {gone}, and no scaling point's tokens.json names it: rebuild "
                            "that draft (its make target; a later stage's init_draft chain may lead there) and rerun.")


def _init_draft(draft: Path, known: Known | None = None) -> Path | None:
    """The draft folder this one was trained on from (`modeling.init_draft` in its run_config.json), if any.
    A relative path is taken from the current folder, as training took it; a folder gone must be in `known`."""
    cfg = draft / "run_config.json"
    init = json.loads(cfg.read_text()).get("modeling", {}).get("init_draft", "") if cfg.is_file() else ""
    if not init:
        return None
    if not Path(init).is_dir() and Path(init).resolve() not in (known or {}):
        raise FileNotFoundError(f"{cfg}: it was trained on from '{init}', which is not here to count its tokens "
                                "(nor named by a point's tokens.json); run from the folder training ran in.")
    return Path(init)


def read_point(folder: Path, count_from: tuple[Path, ...] = (), links: Links | None = None,
               used: set[Path] | None = None, known: Known | None = None) -> tuple[dict, dict | None]:
    """({name, series, answer_tokens, seq_tokens, tau, speedup_median, identical, compared}, what its tokens.json
    is to keep: {draft, answer_tokens, seq_tokens, chain, linked}, or None for a point counted from its train.log)."""
    bench = folder / "bench.json"
    if not bench.is_file():
        raise FileNotFoundError(f"scaling point '{folder}' has no bench.json; rerun its bench.")
    data = json.loads(bench.read_text())
    summary = data["summary"]
    if METHOD not in summary:
        raise ValueError(f"{bench}: no '{METHOD}' row; run the bench with --methods {METHOD}.")
    kept = None
    if (folder / "train.log").is_file():
        answer, seq = _tokens_from_log(folder / "train.log")
    else:
        draft = data.get("header", {}).get("draft", "")
        answer, seq, chain, by_link = _tokens_from_draft(Path(draft), count_from, links=links, used=used, known=known)
        kept = {"draft": draft, "answer_tokens": answer, "seq_tokens": seq, "chain": list(chain), "linked": list(by_link)}
    s = summary[METHOD]
    return {"name": folder.name, "series": folder.parent.name, "answer_tokens": answer, "seq_tokens": seq,
            "tau": s["tau"], "speedup_median": s["speedup_median"], "identical": s["identical"],
            "compared": s["compared"]}, kept


def log_fit(points: list[dict], targets: tuple[float, ...] = ()) -> dict | None:
    """Least-squares τ = a + b·ln(answer tokens) over one series' points (None under 3 points, or tokens all equal):
    {a, b, per_doubling (b·ln 2), r2, tokens_for {τ: the tokens the line reaches it at; None on a flat or falling
    line, or past 1e15}}. An extrapolation past
    the last point assumes the trend holds: a projection, not a measurement."""
    xs = [math.log(p["answer_tokens"]) for p in points if p["answer_tokens"] > 0]
    ys = [p["tau"] for p in points if p["answer_tokens"] > 0]
    if len(xs) < 3 or max(xs) == min(xs):
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    total = sum((y - my) ** 2 for y in ys)
    r2 = 1.0 - sum((y - a - b * x) ** 2 for x, y in zip(xs, ys)) / total if total > 0 else 1.0
    top = math.log(1e15)  # past a quadrillion tokens: not a number worth printing

    def tokens_for(t: float) -> int | None:
        return round(math.exp((t - a) / b)) if b > 0 and (t - a) / b < top else None

    reach = {str(t): tokens_for(t) for t in targets}
    return {"a": round(a, 5), "b": round(b, 5), "per_doubling": round(b * math.log(2), 4), "r2": round(r2, 4),
            "points": len(xs), "tokens_for": reach}


def plot(points: list[dict], png: Path, title: str, fits: dict | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    series = list(dict.fromkeys(p["series"] for p in points))
    for name in series:
        mine = [p for p in points if p["series"] == name]
        line = ax.plot([p["answer_tokens"] for p in mine], [p["tau"] for p in mine], "o-", label=name)[0]
        fit = (fits or {}).get(name)
        if fit:  # the log-linear fit over the series' own range, dashed
            xs = [min(p["answer_tokens"] for p in mine), max(p["answer_tokens"] for p in mine)]
            ax.plot(xs, [fit["a"] + fit["b"] * math.log(x) for x in xs], "--", color=line.get_color(), alpha=0.5)
    if len(series) > 1:
        ax.legend(fontsize=8)
    for p in points:
        ax.annotate(f"{p['tau']:.2f}", (p["answer_tokens"], p["tau"]), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("answer tokens trained on (repeats counted)")
    ax.set_ylabel(f"τ, {METHOD} (tokens per base step)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def print_fits(points: list[dict], targets: tuple[float, ...]) -> dict:
    """Each series' log_fit, printed as a projection."""
    fits = {}
    for name in dict.fromkeys(p["series"] for p in points):
        fit = log_fit([p for p in points if p["series"] == name], targets)
        if fit is None:
            continue
        fits[name] = fit
        reach = ", ".join(f"τ {t} at ~{_count(n)}" if n is not None else f"τ {t}: beyond reach on this line"
                          for t, n in fit["tokens_for"].items())
        console.print(f"{name}: τ ≈ {fit['a']:.3f} + {fit['b']:.4f}·ln(tokens), +{fit['per_doubling']:.3f} per doubling "
                      f"(R² {fit['r2']:.2f}, {fit['points']} points); projected: {reach or '-'}")
    return fits


def _count(n: int) -> str:
    return f"{n / 1e6:,.0f}M" if n >= 10_000_000 else f"{n / 1e6:.2f}M" if n >= 10_000 else f"{n:,}"


def _paths(value) -> list[str]:
    """A comma-separated string, or the tuple fire makes of `a,b` when it parses as a literal."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(x) for x in items if str(x)]


def _known(dirs: list[Path]) -> Known:
    """The counts the points' tokens.json files kept, by their draft folder."""
    known: Known = {}
    for d in dirs:
        if (d / "tokens.json").is_file():
            kept = json.loads((d / "tokens.json").read_text())
            missing = [k for k in ("draft", "answer_tokens", "seq_tokens", "chain", "linked") if k not in kept]
            if missing:
                raise ConfigError(f"{d / 'tokens.json'} lacks {', '.join(missing)} (an older or hand-made file): "
                                  "delete it and rerun while that point's draft folder is there to count from.")
            key = Path(kept["draft"]).resolve()
            if key in known:
                raise ConfigError(f"{d / 'tokens.json'}: a second point counted from '{kept['draft']}'; a draft "
                                  "folder is one point: remove one of the two point folders.")
            known[key] = (int(kept["answer_tokens"]), int(kept["seq_tokens"]), tuple(kept["chain"]), tuple(kept["linked"]))
    return known


def _links(value, known: Known) -> Links:
    links: Links = {}
    for item in _paths(value):
        draft, sep, init = item.partition("=")
        if not sep or not draft or not init:
            raise ConfigError(f"--trained_from '{item}': give DRAFT=INIT (the draft folder, '=', the folder it was "
                              "trained on from), comma-separated for several.")
        if not Path(init).is_dir() and Path(init).resolve() not in known:
            raise FileNotFoundError(f"--trained_from '{item}': '{init}' is not a folder here to count its tokens from "
                                    "(nor named by a point's tokens.json).")
        links[Path(draft).resolve()] = Path(init)
    return links


def main(folder: str, outfile: str = "docs/results/scaling.json", title: str = "", count_from: str = "",
         trained_from: str = "", targets: str = "2.5") -> None:
    """Summarise the scaling points under FOLDER (one subfolder each; FOLDER,FOLDER2: one series each) into
    OUTFILE (+ .png). count_from: draft folders (comma-separated) where the lineages' token counts start.
    trained_from: DRAFT=INIT pairs (comma-separated) that override a draft's recorded init_draft.
    targets: τ values (comma-separated) at which each series' log-linear fit is projected (`log_fit`)."""
    points: list[dict] = []
    series: list[list[Path]] = []
    for one in _paths(folder):
        root = Path(one)
        series.append(sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
        if not series[-1]:
            raise ConfigError(f"no scaling points under '{one}': run its bench first (`make scaling-smollm2`, "
                              "`make scaling-smollm2-warm`).")
    known = _known([d for dirs in series for d in dirs])
    links, used = _links(trained_from, known), set[Path]()
    starts = tuple(Path(p) for p in _paths(count_from))
    keep: dict[Path, dict] = {}
    for dirs in series:
        for d in dirs:
            point, kept = read_point(d, starts, links, used, known)
            points.append(point)
            if kept is not None:
                keep[d] = kept
    unused = [str(d) for d in links if d not in used]
    if unused:
        raise ConfigError(f"--trained_from names draft(s) no point's lineage reaches: {', '.join(unused)}; give the "
                          "draft folder a point's bench.json names (or one in its init_draft chain).")
    for d, kept in keep.items():  # only once every check passed
        if not (d / "tokens.json").is_file() or json.loads((d / "tokens.json").read_text()) != kept:
            (d / "tokens.json").write_text(json.dumps(kept, indent=1) + "\n")
    points.sort(key=lambda p: (p["series"], p["answer_tokens"]))
    table = Table(title=f"τ against training tokens · {folder}")
    for col in ("series", "point", "answer tokens", "sequence tokens", "τ", "speed-up (median)", "identical"):
        table.add_column(col, justify="left" if col in ("series", "point") else "right")
    for p in points:
        table.add_row(p["series"], p["name"], f"{p['answer_tokens']:,}", f"{p['seq_tokens']:,}", f"{p['tau']:.3f}",
                      f"{p['speedup_median']:.2f}×", f"{p['identical']}/{p['compared']}")
    console.print(table)
    fits = print_fits(points, tuple(float(t) for t in _paths(targets)))
    out = Path(outfile)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"method": METHOD, "command": " ".join(sys.argv), "points": points, "fits": fits},
                              indent=1) + "\n")
    png = plot(points, out.with_suffix(".png"), title or f"{METHOD} τ vs training tokens", fits)
    console.print(f"wrote {out} and {png}")


if __name__ == "__main__":
    import fire

    try:
        fire.Fire(main)
    except (ConfigError, FileNotFoundError, ValueError) as e:  # a point to rerun: say which, no traceback
        console.print(f"[bold red]error:[/] {e}")
        raise SystemExit(2) from None
