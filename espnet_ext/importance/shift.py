"""Layer-wise importance distribution and its shift (paper §2.3.2 and §3.3, Fig. 2–3).

A report's ``layer_sums`` is I_layer(i) (eq. 3).  Normalised to sum 1 it is the
distribution the paper plots; comparing a fine-tuned model's distribution with the base
model's gives the *shift*, which the paper describes in words ("the peak moves to much
earlier layers", "magnitude suppressed across all layers").  Here it is measured:

* ``js``         Jensen–Shannon divergence of the normalised curves (log base 2: 0 = same
                 shape, 1 = disjoint support);
* ``pearson``    Pearson correlation of the two curves (shape similarity, scale-free);
* ``peak_move``  peak layer of the fine-tuned curve minus the base's (negative = earlier);
* ``mass_ratio`` total importance of the fine-tuned model / the base's (the 8B model's
                 "suppressed magnitude" is a ratio < 1).

Both models must be scored on the same utterances (the importance job guarantees it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import numpy as np

SHIFT_KEYS = ("js", "pearson", "peak_move", "mass_ratio")


def normalize(curve: Sequence[float]) -> np.ndarray:
    """A curve scaled to sum 1."""
    c = np.asarray(curve, dtype=np.float64)
    if c.ndim != 1 or c.size == 0 or np.any(c < 0) or not np.isfinite(c).all():
        raise ValueError("a layer curve must be a non-empty list of finite non-negative numbers")
    total = c.sum()
    if total <= 0:
        raise ValueError("a layer curve with zero total importance cannot be normalised")
    return c / total


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen–Shannon divergence (base 2, in [0, 1]) between two curves after normalising."""
    p, q = normalize(p), normalize(q)
    if p.shape != q.shape:
        raise ValueError(f"curves differ in length: {p.size} vs {q.size} layers")
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / b[nz])))

    return max(0.0, 0.5 * kl(p, m) + 0.5 * kl(q, m))


def pearson(p: Sequence[float], q: Sequence[float]) -> float:
    """Pearson correlation of two curves (NaN when one is constant)."""
    a, b = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b) / den) if den > 0 else float("nan")


def shift_metrics(base: Sequence[float], tuned: Sequence[float]) -> Dict[str, float]:
    """``{js, pearson, peak_move, mass_ratio}`` of a fine-tuned curve against the base curve."""
    if len(base) != len(tuned):
        raise ValueError(f"curves differ in length: {len(base)} vs {len(tuned)} layers")
    return {
        "js": js_divergence(base, tuned),
        "pearson": pearson(base, tuned),
        "peak_move": int(np.argmax(tuned)) - int(np.argmax(base)),
        "mass_ratio": float(np.sum(tuned)) / float(np.sum(base)),
    }


def shift_table(curves: Mapping[str, Sequence[float]], base: str = "base") -> Dict[str, Dict[str, float]]:
    """Shift metrics of every curve except ``base`` against ``base``."""
    return {name: shift_metrics(curves[base], c) for name, c in curves.items() if name != base}


def render_shift_table(table: Mapping[str, Mapping[str, float]], names: Mapping[str, str] | None = None) -> str:
    """Markdown table of :func:`shift_table` output (rows = methods)."""
    names = names or {}
    lines = ["| System | JS divergence ↓ | Pearson r ↑ | peak-layer move | importance mass ratio |",
             "|---|---:|---:|---:|---:|"]
    for tag, m in table.items():
        js = f"{m['js']:.4f}" if m["js"] >= 1e-3 else f"{m['js']:.1e}"
        lines.append(f"| {names.get(tag, tag)} | {js} | {m['pearson']:.3f} | "
                     f"{m['peak_move']:+d} | {m['mass_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def plot_layer_shift(
    curves: Mapping[str, Sequence[float]], path: str | Path, title: str,
    names: Mapping[str, str] | None = None, base: str = "base",
) -> Path:
    """Fig. 2–3: normalised per-layer importance (left) and raw I_layer relative to the
    base's peak (right, where a magnitude change shows) for the base and every system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from espnet_ext.utils.atomic import atomic_open

    names = names or {}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    scale = max(curves[base]) if base in curves else 1.0
    for name, c in curves.items():
        x = np.arange(len(c))
        style = dict(color="black", lw=2.2) if name == base else dict(lw=1.5, marker="o", ms=2.5)
        label = names.get(name, name)
        ax1.plot(x, normalize(c), label=label, **style)
        ax2.plot(x, np.asarray(c) / scale, label=label, **style)
    ax1.set(xlabel="layer", ylabel="share of importance", title="normalised distribution")
    ax2.set(xlabel="layer", ylabel="I_layer / max base I_layer", title="magnitude")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path


def layer_curves(report_dirs: Mapping[str, str | Path]) -> Dict[str, List[float]]:
    """``layer_sums`` of each importance report (``{name: report dir}``)."""
    from espnet_ext.importance.report import load_summary

    return {name: list(load_summary(d)["layer_sums"]) for name, d in report_dirs.items()}
