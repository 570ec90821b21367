"""PNG plot of a bench run: speed-up against HF generate and τ, one bar per method (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path

INSTALL = "pip install 'specforge_het[bench]'  (or: pip install matplotlib)"


def plot_summary(summary: dict[str, dict], labels: dict[str, str], path: str | Path, title: str = "") -> Path:
    """Two panels: overall speed-up (bar) with the per-prompt median (dot), and τ."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(f"the bench plot needs matplotlib: {INSTALL}") from None

    names = list(summary)
    ys = list(range(len(names)))[::-1]  # first method on top
    ticks = [labels.get(n, n) for n in names]

    def val(name: str, key: str) -> float:
        v = summary[name].get(key)
        return float("nan") if v is None else float(v)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 0.5 * len(names) + 1.6), sharey=True)
    bars = ax1.barh(ys, [val(n, "speedup_overall") for n in names], color="#4c72b0", label="overall tok/s ratio")
    ax1.bar_label(bars, fmt="%.2f", padding=2, fontsize=8)
    ax1.plot([val(n, "speedup_median") for n in names], ys, "o", color="#dd8452", label="median over prompts")
    ax1.axvline(1.0, color="black", lw=0.8, ls="--")
    ax1.set_xlabel("speed-up vs HF generate (base-only)")
    ax1.legend(loc="lower right", fontsize=8)
    ax2.bar_label(ax2.barh(ys, [val(n, "tau") for n in names], color="#55a868"), fmt="%.2f", padding=2, fontsize=8)
    ax2.axvline(1.0, color="black", lw=0.8, ls="--")
    ax2.set_xlabel("τ (tokens per base forward / verify step)")
    ax1.set_yticks(ys, ticks)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
