"""The audit's outputs for people: a self-contained report.html (thumbnails inline) and one PNG contact sheet per finding type."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image, ImageDraw

from featurebank.images import load_image

SECTIONS = {
    "exact_duplicates": ("Exact duplicates", "The same bytes under several paths. A label conflict means one photo "
                         "carries two labels: keep one copy in the right class."),
    "near_duplicates": ("Near-duplicates", "Re-encoded, resized or re-shot copies. A leak (copies in different "
                        "splits) inflates test accuracy; a label conflict is a labelling mistake."),
    "label_issues": ("Likely label errors", "Images whose given label gets low out-of-fold probability; check them "
                     "first from the top (score = p(suggested) − p(given))."),
    "outliers": ("Outliers", "Images far from all their neighbours in feature space: unusual views, wrong class folder, "
                 "or not the kind of photo the rest are."),
    "quality": ("Photo quality", "Too dark, overexposed, blurry, tiny or near-constant photos, from pixel statistics."),
}
THUMB = (128, 96)  # (height, width)
MAX_SHOWN = 60  # findings per section in the report and contact sheet


def _thumbnail(path: Path) -> Image.Image:
    try:
        return Image.fromarray(load_image(path, THUMB))
    except Exception:  # the file went missing since extraction: a grey tile, not a failure
        return Image.new("RGB", THUMB[::-1], (128, 128, 128))


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _caption(name: str, finding: dict) -> str:
    parts = [finding.get("kind") or finding.get("issue") or ""]
    if "similarity" in finding:
        parts.append(f"features {finding['similarity']:.3f}, pixels {finding.get('pixel_similarity', 0):.3f}")
    if "given" in finding:
        parts.append(f"labelled {finding['given']}, looks like {finding['suggested']} (score {finding['score']:.2f})")
    if name == "outliers":
        parts.append(f"neighbour distance {finding['score']:.3f}")
    return "; ".join(p for p in parts if p)


def write_report(result: dict, out_dir: Path) -> dict[str, Path]:
    """Write report.html and <finding>.png contact sheets into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(result["data_root"])
    cache: dict[str, Image.Image] = {}

    def thumb(relpath: str) -> Image.Image:
        if relpath not in cache:
            cache[relpath] = _thumbnail(root / relpath)
        return cache[relpath]

    written = {}
    body = []
    for name, (title, explanation) in SECTIONS.items():
        findings = result[name][:MAX_SHOWN]
        body.append(f'<section id="{name}"><h2>{html.escape(title)} <small>({len(result[name])})</small></h2>'
                    f"<p>{html.escape(explanation)}</p>")
        for finding in findings:
            tiles = "".join(
                f'<figure><img alt="{html.escape(p)}" src="{_data_uri(thumb(p))}"><figcaption>{html.escape(p)}<br>'
                f"{html.escape(label)}</figcaption></figure>" for p, label in zip(finding["paths"], finding["labels"]))
            body.append(f'<div class="finding" data-type="{name}"><div class="tiles">{tiles}</div>'
                        f"<p>{html.escape(_caption(name, finding))}</p></div>")
        if len(result[name]) > MAX_SHOWN:
            body.append(f"<p>… and {len(result[name]) - MAX_SHOWN} more (see --json).</p>")
        body.append("</section>")
        if findings:
            written[name] = _contact_sheet(name, findings, thumb, out_dir / f"{name}.png")
    summary = ", ".join(f"{SECTIONS[k][0].lower()}: {v}" for k, v in result["summary"].items())
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>featurebank audit</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}} .finding{{border-bottom:1px solid #ddd;padding:.5em 0}}
.tiles{{display:flex;gap:.5em;flex-wrap:wrap}} figure{{margin:0;width:{THUMB[1] + 40}px;font-size:11px}}
img{{width:{THUMB[1]}px;height:{THUMB[0]}px;display:block}} small{{color:#666}}</style></head>
<body><h1>featurebank audit</h1><p>{result['images']} images of {html.escape(result['data_root'])}, backbone
{html.escape(result['backbone'])}. {html.escape(summary)}.</p>{''.join(body)}
<script>window.addEventListener("load", () => {{
  const images = [...document.images];
  document.body.dataset.thumbnails = images.length;
  document.body.dataset.thumbnailsLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
}});</script></body></html>"""
    (out_dir / "report.html").write_text(page, encoding="utf-8")
    written["report"] = out_dir / "report.html"
    return written


def _contact_sheet(name: str, findings: list[dict], thumb, path: Path) -> Path:
    """One row per finding: its images side by side, with the caption underneath."""
    width = max(len(f["paths"]) for f in findings) * (THUMB[1] + 8) + 8
    row_height = THUMB[0] + 30
    sheet = Image.new("RGB", (max(width, 420), len(findings) * row_height + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for r, finding in enumerate(findings):
        top = 4 + r * row_height
        for c, relpath in enumerate(finding["paths"]):
            sheet.paste(thumb(relpath), (8 + c * (THUMB[1] + 8), top))
        draw.text((8, top + THUMB[0] + 2), _caption(name, finding)[:70], fill="black")
        draw.text((8, top + THUMB[0] + 14), " | ".join(finding["paths"])[:70], fill="#555")
    sheet.save(path)
    return path
