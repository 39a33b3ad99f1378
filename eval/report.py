"""The evaluation report: a markdown table, plots (matplotlib) and one self-contained ``report.html`` (images
inlined as base64 PNG: a gallery of prior | counterfactual | true follow-up | guidance overlay with the texts,
then the metric tables with the evaluators' held-out accuracy)."""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from progemu.io import write_text_atomic

# (section, key, label, higher is better)
METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("findings", "prompted_state_found", "Prompted state found (classifier)", True),
    ("findings", "prompted_auroc", "Progression alignment AUROC (prompted findings)", True),
    ("findings", "prompted_f1", "Progression alignment F1 (prompted findings)", True),
    ("findings", "all_findings_auroc", "Classifier AUROC vs follow-up labels (all findings)", True),
    ("findings", "all_findings_f1", "Classifier F1 vs follow-up labels (all findings)", True),
    ("findings", "gfid", "gFID (findings classifier features, not Inception)", False),
    ("image", "fid_raddino", "FID (RAD-DINO features, as CheXGenBench)", False),
    ("image", "ssim", "SSIM vs true counterfactual", True),
    ("image", "psnr", "PSNR vs true counterfactual (dB)", True),
    ("image", "ssim_outside_change", "SSIM outside the change region (vs prior)", True),
    ("image", "guidance_iou", "Guidance map IoU vs true change mask", True),
    ("image", "guidance_auroc", "Guidance map pixel AUROC", True),
    ("image", "guidance_mass_no_change", "Guidance map mean where nothing changes", False),
    ("demographics", "sex_accuracy", "Sex preserved (model accuracy on output)", True),
    ("demographics", "sex_agreement_with_prior", "Sex agreement output vs prior", True),
    ("demographics", "age_group_accuracy", "Age group preserved (accuracy)", True),
    ("demographics", "age_group_agreement_with_prior", "Age group agreement output vs prior", True),
    ("demographics", "age_group_correlation", "Age correlation output vs prior", True),
    ("demographics", "race_accuracy", "Race preserved (accuracy)", True),
    ("text", "bleu1", "BLEU-1", True),
    ("text", "bleu2", "BLEU-2", True),
    ("text", "bleu3", "BLEU-3", True),
    ("text", "bleu4", "BLEU-4", True),
    ("text", "rouge_l", "ROUGE-L", True),
    ("text", "meteor", "METEOR", True),
    ("text", "clinical_f1", "Clinical label F1 (labeler facts)", True),
    ("text", "positive_f1", "Positive-finding F1 (CheXbert-style, rule labeler)", True),
    ("text", "chexbert_f1", "F1-CheXbert (14 observations, micro, positive)", True),
    ("text", "chexbert_f1_5", "F1-CheXbert (5 observations)", True),
    ("findings", "consistency", "Consistency: text findings vs classifier on image", True),
)
SYSTEM_TITLES = {"identity": "identity (floor)", "model": "model", "true_followup": "true follow-up (ceiling)",
                 "vq_followup": "true follow-up through the VQ (token ceiling)"}


@dataclass
class GalleryItem:
    id: str
    prompt: str
    generated: str
    reference: str
    prior: np.ndarray
    output: np.ndarray
    target: np.ndarray | None
    overlay: np.ndarray | None  # (H, W, 3) uint8


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "inf" if np.isinf(v) else f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def produced_by(metrics: dict, section: str, key: str) -> str:
    """The evaluator that made ``section.key`` (metrics.json's ``produced_by``: the most specific entry wins)."""
    by = metrics.get("produced_by") or {}
    for k in (f"{section}.{key}", f"{section}.{re.sub(r'[_0-9].*', '', key)}", section):
        if k in by:
            return by[k]
    return "–"


def table_rows(metrics: dict) -> list[tuple[str, list[Any], str]]:
    """(label, value per system, evaluator) for every metric any system has."""
    systems = list(metrics["systems"])
    rows = []
    for section, key, label, higher in METRICS:
        vals = [metrics["systems"][s].get(section, {}).get(key) for s in systems]
        if any(v is not None for v in vals):
            rows.append((f"{label} {'↑' if higher else '↓'}", vals, produced_by(metrics, section, key)))
    return rows


def evaluator_rows(metrics: dict) -> list[list[str]]:
    rows = []
    for name, ev in metrics.get("evaluators", {}).items():
        h = ev["heldout"]
        rows.append([name, ", ".join(ev["classes"]), fmt(h.get("auroc")), fmt(h.get("accuracy")), fmt(h.get("f1")),
                     fmt(h.get("n")) if "source" not in h else h["source"],
                     f"no (replaced by {ev['replaced_by']})" if ev.get("replaced_by")
                     else "yes" if h.get("reliable") else "no (not used)"])
    return rows


def markdown(metrics: dict) -> str:
    """The metric table and the evaluator table in markdown."""
    systems = [SYSTEM_TITLES.get(s, s) for s in metrics["systems"]]
    lines = [f"# Evaluation on {metrics['n_items']} items ({metrics.get('split')})", "",
             "| metric | " + " | ".join(systems) + " | evaluator |", "|---|" + "---|" * len(systems) + "---|"]
    lines += [f"| {label} | " + " | ".join(fmt(v) for v in vals) + f" | {by} |" for label, vals, by in table_rows(metrics)]
    lines += ["", "## Evaluators (held-out accuracy)", "",
              "| evaluator | classes | AUROC | accuracy | F1 | n (or source) | used |", "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in evaluator_rows(metrics)]
    if metrics.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in metrics["notes"]]
    return "\n".join(lines) + "\n"


def png_b64(arr: np.ndarray) -> str:
    """A [0, 1] float (H, W) or uint8 (H, W, 3) array as a base64 PNG data URI."""
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plots(metrics: dict, out: Path) -> list[Path]:
    """``metrics.png`` (headline metrics per system) and ``prompted_per_finding.png``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(metrics["systems"])
    keys = [("findings", "prompted_state_found", "prompted state found"), ("text", "clinical_f1", "clinical F1"),
            ("image", "ssim_outside_change", "SSIM outside"), ("image", "ssim", "SSIM"),
            ("demographics", "sex_accuracy", "sex kept"), ("demographics", "age_group_accuracy", "age group kept"),
            ("text", "bleu4", "BLEU-4"), ("text", "rouge_l", "ROUGE-L")]
    keys = [k for k in keys if any(metrics["systems"][s].get(k[0], {}).get(k[1]) is not None for s in systems)]
    paths = []
    fig, ax = plt.subplots(figsize=(10, 4))
    w = 0.8 / max(1, len(systems))
    for i, s in enumerate(systems):
        vals = [metrics["systems"][s].get(sec, {}).get(key) or 0.0 for sec, key, _ in keys]
        ax.bar(np.arange(len(keys)) + i * w, vals, w, label=SYSTEM_TITLES.get(s, s))
    ax.set_xticks(np.arange(len(keys)) + w * (len(systems) - 1) / 2, [k[2] for k in keys], rotation=20)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("Headline metrics")
    fig.tight_layout()
    paths.append(out / "metrics.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    per = {s: metrics["systems"][s].get("findings", {}).get("prompted_state_found_per_finding") or {} for s in systems}
    names = sorted({f for d in per.values() for f in d})
    if names:
        fig, ax = plt.subplots(figsize=(10, 4))
        for i, s in enumerate(systems):
            ax.bar(np.arange(len(names)) + i * w, [per[s].get(f) or 0.0 for f in names], w,
                   label=SYSTEM_TITLES.get(s, s))
        ax.set_xticks(np.arange(len(names)) + w * (len(systems) - 1) / 2, names, rotation=20)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("prompted state found")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / "prompted_per_finding.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


_CSS = """body{font-family:sans-serif;margin:24px;background:#fafafa;color:#222}
table{border-collapse:collapse;margin:8px 0 24px}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}
th{background:#e8eef6}.g{display:grid;grid-template-columns:repeat(4,200px) 1fr;gap:8px;align-items:start;
margin-bottom:18px;padding:10px;background:#fff;border:1px solid #ddd}.g img{width:200px;height:200px;
image-rendering:pixelated}.cap{font-size:12px;color:#555;text-align:center}.t{font-size:13px}.t b{color:#234}
.note{color:#744}"""


def html_report(metrics: dict, gallery: list[GalleryItem], plot_paths: list[Path]) -> str:
    """One self-contained HTML page (no external files)."""
    e = html.escape
    systems = [SYSTEM_TITLES.get(s, s) for s in metrics["systems"]]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>progemu evaluation</title><style>{_CSS}"
             "</style></head><body>", f"<h1>progemu evaluation: {metrics['n_items']} items ({e(str(metrics.get('split')))})</h1>",
             f"<p>Model: {e(str(metrics.get('model')))} &middot; outputs: {e(str(metrics.get('generated')))} &middot; "
             f"failed items: {metrics.get('n_failed', 0)}</p>", "<h2>Metrics</h2><table><tr><th>metric</th>"]
    parts += [f"<th>{e(s)}</th>" for s in systems] + ["<th>evaluator</th></tr>"]
    for label, vals, by in table_rows(metrics):
        parts.append(f"<tr><td>{e(label)}</td>" + "".join(f"<td>{fmt(v)}</td>" for v in vals) + f"<td>{e(by)}</td></tr>")
    parts.append("</table><h2>Evaluators (held-out accuracy where the project trained them)</h2><table><tr><th>"
                 "evaluator</th><th>classes</th><th>AUROC</th><th>accuracy</th><th>F1</th><th>n (or source)</th>"
                 "<th>used</th></tr>")
    parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in evaluator_rows(metrics)]
    parts.append("</table>")
    if metrics.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li class='note'>{e(n)}</li>" for n in metrics["notes"]) + "</ul>")
    for p in plot_paths:
        data = "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")
        parts.append(f"<p><img alt='{e(p.name)}' src='{data}'></p>")
    parts.append("<h2>Gallery</h2>")
    for g in gallery:
        cells = [(g.prior, "prior"), (g.output, "counterfactual"), (g.target, "true follow-up"),
                 (g.overlay, "guidance overlay")]
        parts.append("<div class='g'>" + "".join(
            f"<div><img src='{png_b64(a)}' alt='{c}'><div class='cap'>{c}</div></div>" if a is not None
            else f"<div class='cap'>{c}: none</div>" for a, c in cells))
        parts.append(f"<div class='t'><p><b>{e(g.id)}</b></p><p><b>Prompt:</b> {e(g.prompt)}</p>"
                     f"<p><b>Generated:</b> {e(g.generated)}</p><p><b>Reference:</b> {e(g.reference)}</p></div></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(metrics: dict, gallery: list[GalleryItem], out: str | Path) -> dict[str, Path]:
    """Write ``metrics.md``, the plots and ``report.html`` into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "metrics.md"
    write_text_atomic(md, markdown(metrics))
    plot_paths = plots(metrics, out)
    page = out / "report.html"
    write_text_atomic(page, html_report(metrics, gallery, plot_paths))
    return {"markdown": md, "html": page, **{p.stem: p for p in plot_paths}}
