"""``keypatch report``: a static HTML gallery of a results store (``index.html`` and its pictures).

One section per image, one card per stored record, so strategies, ratios and starts of the same
image stand side by side. A card shows the picture (the original titled with its file name, the
kept patches numbered in pick order, the reconstruction titled with its loss), the loss-vs-patches
curve (inline SVG) and the record's numbers. The sections sort by the loss of any setting, by
name, or by how much the settings differ, with a few lines of inline JavaScript: no server, no
network, nothing outside the folder but links to the original images.
"""

from __future__ import annotations

import html
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keypatch.exports.base import ExportWarning, check_output, checked_records, record_file
from keypatch.store import count_line
from keypatch.store.record import Record
from keypatch.store.sqlite import ResultStore, sha256_file
from keypatch.untrusted import input_files

REPORT_NAME = "report"
"""Default folder of the gallery, inside the results folder."""

CURVE_W, CURVE_H = 220, 90


def labeller(records: Sequence[Record], options: bool = True):
    """``label(record)``: its setting's :meth:`~keypatch.store.setting.Setting.label`, naming the
    model where the records' models differ, so that two settings never share a label. Without
    ``options``, a card's short title: only the options whose values differ between the settings
    of its strategy (the others are the same for every card of that strategy)."""
    with_model = len({r.model_id for r in records}) > 1
    if options:
        return lambda r: r.settings.label(with_model)
    shown: dict[str, set[str]] = {}
    for strategy in {r.strategy for r in records}:
        every = [s.options for s in {r.settings for r in records if r.strategy == strategy}]
        keys = {k for o in every for k in o}
        shown[strategy] = {k for k in keys if len({repr(o.get(k)) for o in every}) > 1}
    return lambda r: r.settings.label(with_model, shown[r.strategy])


def curve_svg(losses: Sequence[float]) -> str:
    """The loss after each added patch as an inline SVG polyline with its axis labels."""
    values = [float(v) for v in losses]
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    n = max(1, len(values) - 1)
    pad = 22
    pts = " ".join(f"{pad + i * (CURVE_W - pad - 4) / n:.1f},{4 + (hi - v) * (CURVE_H - 20) / span:.1f}"
                   for i, v in enumerate(values))
    return (f'<svg class="curve" width="{CURVE_W}" height="{CURVE_H}" viewBox="0 0 {CURVE_W} {CURVE_H}" '
            f'role="img" aria-label="loss after each patch">'
            f'<polyline fill="none" stroke="#c0392b" stroke-width="1.5" points="{pts}"/>'
            f'<text x="0" y="12">{hi:.3f}</text><text x="0" y="{CURVE_H - 14}">{lo:.3f}</text>'
            f'<text x="{pad}" y="{CURVE_H - 2}">1</text>'
            f'<text x="{CURVE_W - 4}" y="{CURVE_H - 2}" text-anchor="end">{len(values)} patches</text></svg>')


STYLE = """
body { font: 13px system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; } h2 { font-size: 14px; margin: 18px 0 6px; }
.controls { margin: 8px 0 16px; } .controls select { margin: 0 12px 0 4px; }
.row { display: flex; flex-wrap: wrap; gap: 12px; }
.card { flex: 1 1 420px; max-width: 760px; min-width: 0; border: 1px solid #ccc; border-radius: 6px; padding: 8px;
        background: #fafafa; box-sizing: border-box; }
.card h3 { font-size: 14px; margin: 0 0 6px; overflow-wrap: anywhere; }
.card details { margin: 0 0 6px; color: #555; overflow-wrap: anywhere; } .card summary { cursor: pointer; }
.card img { width: 100%; max-width: 736px; height: auto; display: block; }
.card p { overflow-wrap: anywhere; } select { max-width: 40em; }
.card .meta { display: flex; gap: 12px; align-items: center; }
.card table td { padding: 0 8px 0 0; } .curve text { font-size: 9px; fill: #555; }
.loss { font-weight: 600; }
"""

SCRIPT = """
function sortSections() {
  const how = document.getElementById('sort').value, key = document.getElementById('setting').value;
  const box = document.getElementById('images');
  const secs = Array.from(box.querySelectorAll('section.image'));
  const loss = s => { const c = s.querySelector('.card[data-setting="' + CSS.escape(key) + '"]');
                      return c ? parseFloat(c.dataset.loss) : null; };
  const spread = s => { const v = Array.from(s.querySelectorAll('.card')).map(c => parseFloat(c.dataset.loss));
                        return Math.max(...v) - Math.min(...v); };
  // images without the chosen setting go last, in either direction
  const last = (f, sign) => (a, b) => { const x = f(a), y = f(b);
    return x === null ? (y === null ? 0 : 1) : (y === null ? -1 : sign * (x - y)); };
  const cmp = { 'loss-asc': last(loss, 1), 'loss-desc': last(loss, -1),
                'spread': (a, b) => spread(b) - spread(a),
                'name': (a, b) => a.dataset.name.localeCompare(b.dataset.name) }[how];
  secs.sort(cmp).forEach(s => box.appendChild(s));
}
"""


def _card(r: Record, picture: str | None, label: str, title: str) -> str:
    img = (f'<img src="{html.escape(picture)}" alt="{html.escape(Path(r.image_path).name)}: {html.escape(label)}" '
           f'loading="lazy">' if picture else "<p>(no picture: the image is missing or changed)</p>")
    rows = [("loss", f'<span class="loss">{r.loss:.4f}</span>'), ("patches", str(len(r.patches))),
            ("evaluations", f"{r.evaluations:,}"), ("seconds", f"{r.seconds:.2f}"), ("model", html.escape(r.model_id))]
    table = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    shown = " ".join(f"{k}={v}" for k, v in sorted(r.options.items()))
    details = (f"<details><summary>{len(r.options)} option{'' if len(r.options) == 1 else 's'}</summary>"
               f"{html.escape(shown)}</details>"
               if r.options else "")
    return (f'<div class="card" data-setting="{html.escape(r.settings.flags())}" data-loss="{r.loss:.6g}">'
            f'<h3 title="{html.escape(label)}">{html.escape(title)}</h3>{details}{img}'
            f'<div class="meta">{curve_svg(r.losses)}<table>{table}</table></div>'
            f'<p>picks: {html.escape(" ".join(str(p) for p in r.patches))}</p></div>')


def _page(sections: list[str], settings: list[tuple[str, str]], title: str, counts: str) -> str:
    options = "".join(f'<option value="{html.escape(key)}">{html.escape(label)}</option>' for key, label in settings)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(counts)}. Each picture: the original, "
            "the kept patches numbered in pick order, the MAE's reconstruction; the curve is the loss after each "
            "added patch.</p>"
            '<div class="controls">sort images by <select id="sort" onchange="sortSections()">'
            '<option value="name">name</option><option value="loss-asc">loss, lowest first</option>'
            '<option value="loss-desc">loss, highest first</option>'
            '<option value="spread">loss spread between settings</option></select>'
            f'loss of <select id="setting" onchange="sortSections()">{options}</select></div>'
            f'<div id="images">{"".join(sections)}</div><script>{SCRIPT}</script></body></html>\n')


def _where(paths: dict[str, list[str]], sha: str, group: list[Record]) -> list[Path]:
    """Every path of the content ``sha`` that has a file (else the first record's path)."""
    every = paths.get(sha) or [group[0].image_path]
    return [Path(p) for p in every if Path(p).is_file()] or [Path(group[0].image_path)]


def _section(found: list[Path], readable: bool, target: Path, cards: list[str]) -> str:
    """One image's section: a link to each of its paths, and its cards side by side."""
    links = []
    for p in found:
        href = Path(os.path.relpath(p.absolute(), target.absolute())).as_posix()
        links.append(f'<a href="{html.escape(href)}">{html.escape(p.name)}</a>' if readable else
                     f"{html.escape(p.name)} (missing)")
    also = (f'<p class="paths">the same file at {len(found)} paths: '
            + ", ".join(html.escape(str(p)) for p in found) + "</p>") if len(found) > 1 else ""
    return (f'<section class="image" data-name="{html.escape(found[0].name)}">'
            f"<h2>{' = '.join(links)}</h2>{also}"
            f'<div class="row">{"".join(cards)}</div></section>')


def write_report(out_dir: str | Path, report_dir: str | Path | None = None, *, device: str = "auto",
                 progress: bool = True, **filters: Any) -> dict[str, Any]:
    """Write the gallery of the store in ``out_dir`` into ``report_dir`` (default ``out_dir/report``).

    Parameters
    ----------
    out_dir : str or Path
        The results folder (or the store file).
    report_dir : str or Path, optional
        Where ``index.html`` and ``img/`` go.
    device : str
        Where to run the reconstructions of the pictures.
    progress : bool
        Show a progress bar.
    **filters
        Passed to :meth:`ResultStore.records` (``strategy``, ``ratio``, ``model_id``...).

    Returns
    -------
    dict
        ``index`` (path), ``records``, ``images``, ``settings``, ``pictures`` (written) and
        ``missing`` (records whose image is gone or changed: a card without picture).
    """
    from tqdm.auto import tqdm

    from keypatch.experiments.pictures import triptych
    from keypatch.geometry import InputNotes
    from keypatch.reconstructors import load_mae, resolve_device

    with ResultStore(out_dir, create=False, read_only=True) as store:
        source, folder = store.path, store.path.parent
        records = checked_records(store.records(**{k: v for k, v in filters.items() if v is not None}), source)
        paths = store.paths([r.sha256 for r in records])
    checked_records([], source, paths)
    if not records:
        raise ValueError(f"no records in {folder} to report")
    target = Path(report_dir) if report_dir else folder / REPORT_NAME
    check_output(target, "--report DIR2 (report_dir=)")
    inputs = input_files([p for ps in paths.values() for p in ps])
    pictures = {r.id: record_file(target, f"img/{r.id}.png", r, store=source, inputs=inputs) for r in records}
    (target / "img").mkdir(parents=True, exist_ok=True)
    dev = str(resolve_device(device))
    label, title = labeller(records), labeller(records, options=False)
    models: dict[str, Any] = {}
    by_image: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_image[r.sha256].append(r)
    sections, written, missing, notes, shown = [], 0, 0, InputNotes(), 0
    bar = tqdm(total=len(records), desc="report", unit="rec", disable=not progress)

    for sha, group in sorted(by_image.items(), key=lambda kv: _where(paths, *kv)[0].name.lower()):
        group.sort(key=lambda r: (r.model_id, r.strategy, r.ratio, r.start, r.options_json))
        found = _where(paths, sha, group)
        shown += len(found)
        path = found[0]
        readable = path.is_file() and sha256_file(path) == sha
        cards = []
        for r in group:
            picture = None
            if readable:
                if r.model_id not in models:
                    models[r.model_id] = load_mae(r.model_id, device=dev)
                name = f"img/{r.id}.png"
                triptych(path, r.patches, models[r.model_id], notes=notes, name=path.name, loss=r.loss,
                         resize=r.options.get("resize", "bicubic")).save(pictures[r.id])
                picture, written = name, written + 1
            else:
                missing += 1
            cards.append(_card(r, picture, label(r), title(r)))
            bar.update(1)
        sections.append(_section(found, readable, target, cards))
    bar.close()
    if missing:
        warnings.warn(f"{missing} records have no picture: their image is missing or changed", ExportWarning,
                      stacklevel=2)
    settings = sorted({(r.settings.flags(), label(r)) for r in records}, key=lambda kv: kv[1])
    index = target / "index.html"
    index.write_text(_page(sections, settings, f"keypatch: {folder.name}",
                           count_line(len(records), len(by_image), shown, len(settings))))
    return {"index": str(index), "records": len(records), "images": len(by_image), "paths": shown,
            "settings": len(settings),
            "pictures": written, "missing": missing, "setting_flags": [key for key, _ in settings]}
