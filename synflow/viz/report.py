"""Per-participant HTML QC report.

:func:`write_participant_report` turns the figures and numbers of each processed series into
one self-contained HTML file: every image is inlined (SVG flicker figures as inline SVG,
other figures as ``data:`` URIs), CSS and JavaScript are embedded, nothing is fetched from
the network, so the file can be moved or mailed on its own. SVG figures are inlined as
they are (no base64), PNG figures as ``data:`` URIs (+33 %). Size is about the sum of the
figure files: about 1.9 MB per series with the full set of 8 figures on the 2 mm template
grid (98x116x94; demo dataset), so a participant with two series stays under 5 MB
(``tests/test_report_browser.py`` checks it). The footer states the size.

The report is written atomically (temporary file in the same folder + :func:`os.replace`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_text
from .flicker import flicker_labels, prefix_svg_ids

__all__ = ["QC_DESCRIPTIONS", "STEP_LABELS", "series_record", "step_timings",
           "write_participant_report"]

PathLike = str | os.PathLike[str]

#: Labels/descriptions for the recommended ``qc`` keys (other keys are shown as given).
QC_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "cc_before": ("local CC, before registration",
                  "mean local normalised cross-correlation (radius 4) in the brain mask"),
    "cc_affine": ("local CC, after affine", "same, after the affine step"),
    "cc_syn": ("local CC, after SyN", "same, after SyN; should be the highest"),
    "jacobian_min": ("Jacobian determinant, min", "smallest local volume ratio; must be > 0"),
    "jacobian_max": ("Jacobian determinant, max", "largest local volume ratio"),
    "folding_percent": ("folding (% of brain voxels)",
                        "voxels with Jacobian determinant <= 0; should be 0"),
    "ice_mean_mm": ("inverse consistency, mean (mm)",
                    "|backward o forward - identity|; small is good"),
    "ice_p95_mm": ("inverse consistency, 95th percentile (mm)", ""),
    "ice_max_mm": ("inverse consistency, max (mm)", ""),
}

_KIND_ORDER = {"mask": 0, "flicker": 1, "overlay": 1, "grid": 2, "jacobian": 3}

_DEFAULT_CAPTIONS = {
    "mask": "Brain mask (red outline) drawn on the b0 image. The outline should follow the "
            "edge of the brain: no missing brain, little skull or background inside.",
    "flicker": "Hover over the image (or press Flicker) to alternate between the reference "
               "and the moving image; click it to switch by hand, or use the slider to blend. "
               "Anatomy that does not jump is aligned. Red outline: reference brain mask.",
    "overlay": "Reference in red, moving image in green: yellow where both are bright. "
               "Red and green fringes on opposite sides of an edge mean a shift.",
    "grid": "A regular grid deformed by the SyN displacement field (in-plane components). "
            "Smooth, evenly bent lines are expected; crossing lines mean folding.",
    "jacobian": "Local volume change of the SyN map (Jacobian determinant). White = no "
                "change, blue = shrinking, red = growing; bright green = folding "
                "(determinant <= 0), which should not happen.",
}

_HELP = """
<dl class="help">
<dt>Status</dt><dd><b>ok</b>: all steps ran; <b>failed</b>: a step raised an error, whose full
text is shown in red (click to expand).</dd>
<dt>Flicker</dt><dd>Two images of the same slices are stacked. Hovering (or the Flicker
button) fades the top one in and out. If the registration is good, edges stay in place.</dd>
<dt>Local CC</dt><dd>Mean local correlation of the reference and the moving image in the brain
(1 = identical up to brightness/contrast). It should rise after each step.</dd>
<dt>Jacobian determinant</dt><dd>How much each small region is stretched (&gt; 1) or squeezed
(&lt; 1) by SyN. Values &lt;= 0 ("folding") mean the map is not invertible there.</dd>
<dt>Inverse consistency</dt><dd>Mapping a point forward and back should return it to where it
started; the distance it misses by, in mm.</dd>
</dl>
"""


def series_record(name: str, *, status: str = "ok", error: str | None = None,
                  figures: Sequence[Mapping[str, str]] = (), qc: Mapping[str, Any] | None = None,
                  parameters: Mapping[str, Any] | None = None,
                  timings: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The one record of a series that :func:`write_participant_report` renders.

    ``status`` is ``"ok"`` or ``"failed"`` (then ``error`` says why); ``figures`` are
    ``{"title", "path", "caption", "kind"}`` entries; ``qc`` the QC numbers; ``timings``
    seconds per step.  Built by the QC interface (``series.json``) and by the command.
    """
    if status not in ("ok", "failed"):
        raise ValueError(f"status must be 'ok' or 'failed', got {status!r}")
    return {"name": str(name), "status": status, "error": error, "figures": list(figures),
            "qc": dict(qc or {}), "parameters": dict(parameters or {}),
            "timings": dict(timings or {})}


def _read_asset(name: str) -> str:
    return resources.files("synflow.viz").joinpath(name).read_text(encoding="utf-8")


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "series"


def _fmt(v: Any) -> str:
    """Human formatting of a QC/parameter value."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:  # NaN
            return "n/a"
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}" if abs(v) < 10 else f"{v:.2f}"
    if hasattr(v, "item") and getattr(v, "size", 2) == 1:  # numpy scalar
        return _fmt(v.item())
    if isinstance(v, Mapping):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)) or hasattr(v, "tolist"):
        seq = v.tolist() if hasattr(v, "tolist") else v
        return "[" + ", ".join(_fmt(x) for x in seq) + "]"
    return str(v)


def _mime(path: Path) -> str:
    ext = path.suffix.lower()
    return {".svg": "image/svg+xml", ".png": "image/png", ".jpg": "image/jpeg",
            ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp"}.get(
                ext, "application/octet-stream")


def _data_uri(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:{_mime(path)};base64,{data}"


def _img(path: Path, alt: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<img{c} src="{_data_uri(path)}" alt="{_esc(alt)}">'


def _missing(path: Any) -> str:
    return f'<div class="missing">figure not available: {_esc(path)}</div>'


class _Ids:
    """Unique prefixes for inline SVG ids."""

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> str:
        self.n += 1
        return f"r{self.n}-"


def _inline_svg(path: Path, ids: _Ids) -> str:
    body = prefix_svg_ids(path.read_text(encoding="utf-8"), ids.next())
    end = body.index(">")
    head = re.sub(r'\s(width|height)="[^"]*"', "", body[:end])
    return head + body[end:]


def _flicker_controls(bg_label: str, fg_label: str) -> str:
    return (
        f'<div class="flicker-controls" role="group" aria-label="flicker controls">'
        f'<button type="button" class="flicker-play" data-mode="play">Flicker</button>'
        f'<button type="button" data-mode="bg">{_esc(bg_label)}</button>'
        f'<button type="button" data-mode="fg">{_esc(fg_label)}</button>'
        f'<label>blend <input type="range" class="flicker-slider" min="0" max="100" '
        f'value="100" aria-label="opacity of the {_esc(fg_label)} image"></label>'
        f'<span class="state"></span></div>'
    )


def _figure_html(fig: Mapping[str, Any], ids: _Ids) -> str:
    kind = str(fig.get("kind", "") or "")
    title = str(fig.get("title") or kind or "figure")
    caption = fig.get("caption") or _DEFAULT_CAPTIONS.get(kind, "")
    parts = [f"<figure class=\"fig kind-{_esc(kind or 'other')}\">", f"<h4>{_esc(title)}</h4>"]
    if caption:
        parts.append(f'<p class="caption">{_esc(caption)}</p>')
    before, after = fig.get("before"), fig.get("after")
    path = Path(fig["path"]) if fig.get("path") else None
    svg_labels = None
    if path is not None and path.suffix.lower() == ".svg" and path.is_file():
        svg_labels = flicker_labels(path.read_text(encoding="utf-8")[:4000])
    bg_label = str(fig.get("before_label") or (svg_labels or ("reference",))[0])
    fg_label = str(fig.get("after_label") or (svg_labels or ("", "moving"))[1])
    if kind == "flicker" and before and after:
        pb, pa = Path(before), Path(after)
        if pb.is_file() and pa.is_file():
            parts.append(f'<div class="flicker" data-bg-label="{_esc(bg_label)}" '
                         f'data-fg-label="{_esc(fg_label)}">')
            parts.append(_flicker_controls(bg_label, fg_label))
            parts.append('<div class="flicker-stage layered" title="click to switch">'
                         + _img(pb, f"{title}: {bg_label}", "flicker-bg")
                         + _img(pa, f"{title}: {fg_label}", "flicker-fg") + "</div></div>")
        else:
            parts.append(_missing(f"{before} / {after}"))
    elif path is None or not path.is_file():
        parts.append(_missing(path))
    elif path.suffix.lower() == ".svg" and (
        kind == "flicker" or "foreground-svg" in path.read_text(encoding="utf-8")[:200000]
    ):
        parts.append(f'<div class="flicker" data-bg-label="{_esc(bg_label)}" '
                     f'data-fg-label="{_esc(fg_label)}">')
        parts.append(_flicker_controls(bg_label, fg_label))
        parts.append('<div class="flicker-stage" title="click to switch">'
                     + _inline_svg(path, ids) + "</div></div>")
    elif path.suffix.lower() == ".svg":
        # inline, not a base64 data: URI (a third smaller)
        parts.append(f'<div class="svg-figure" role="img" aria-label="{_esc(title)}">'
                     + _inline_svg(path, ids) + "</div>")
    else:
        parts.append(_img(path, title))
    parts.append("</figure>")
    return "\n".join(parts)


def _kv_table(d: Mapping[str, Any], header: tuple[str, str] = ("name", "value")) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_fmt(v))}</td></tr>" for k, v in d.items())
    return f"<table><tr><th>{_esc(header[0])}</th><th>{_esc(header[1])}</th></tr>{rows}</table>"


def _qc_table(qc: Mapping[str, Any]) -> str:
    rows = []
    for k, v in qc.items():
        label, desc = QC_DESCRIPTIONS.get(k, (k, ""))
        warn = ""
        if k == "folding_percent" and isinstance(v, (int, float)) and v > 0:
            warn = " warn"
        if k == "jacobian_min" and isinstance(v, (int, float)) and v <= 0:
            warn = " warn"
        rows.append(f'<tr><th title="{_esc(k)}">{_esc(label)}</th>'
                    f'<td class="num{warn}">{_esc(_fmt(v))}</td><td>{_esc(desc)}</td></tr>')
    return ("<table><tr><th>metric</th><th>value</th><th>meaning</th></tr>"
            + "".join(rows) + "</table>")


#: Names for people of the processing steps, keyed by Nipype node name and by the short
#: labels of the ``synflow`` command's progress lines (both reach the report's timings).
STEP_LABELS: dict[str, str] = {
    "extract_b0": "Mean b0", "mean b0": "Mean b0",
    "median_otsu": "Brain mask", "apply_mask": "Brain mask", "brain mask": "Brain mask",
    "syn_input": "Masked b0 for SyN",
    "affine_prealign": "Affine pre-alignment", "affine": "Affine pre-alignment",
    "syn": "SyN registration", "SyN": "SyN registration",
    "b0_to_reference": "b0 resampled to the reference",
    "b0 to reference": "b0 resampled to the reference",
    "reportlets": "QC figures", "QC figures": "QC figures", "figures": "QC figures",
    "outputs": "Writing the outputs",
}

#: Run-table keys shown with a longer name.
_RUN_LABELS = {"elapsed (s)": "wall time of the whole run (s)"}
_WALL_KEY = "elapsed (s)"


def step_timings(t: Mapping[str, Any]) -> dict[str, float]:
    """Seconds per step under the names of :data:`STEP_LABELS` (same name = summed).

    Keys without a known name are kept as given; values that are not numbers are dropped.
    """
    out: dict[str, float] = {}
    for k, v in t.items():
        try:
            sec = float(v)
        except (TypeError, ValueError):
            continue
        if sec != sec:  # NaN
            continue
        name = STEP_LABELS.get(str(k), str(k))
        out[name] = out.get(name, 0.0) + sec
    return out


def _timings_table(t: Mapping[str, Any], wall_s: Any = None) -> str:
    steps = step_timings(t)
    rows = [f'<tr><th>{_esc(k)}</th><td class="num">{v:.2f}</td></tr>'
            for k, v in steps.items()]
    rows.append('<tr class="total"><th>Sum of the steps of this series</th>'
                f'<td class="num"><b>{sum(steps.values()):.2f}</b></td></tr>')
    note = ("Each step's wall time (s). Steps of other series may run at the same time, so "
            "the sum is not the time the run took")
    try:
        note += (f"; the whole run (every participant and series, preparing the reference, "
                 f"starting up) took {float(wall_s):.1f} s.")
    except (TypeError, ValueError):
        note += "."
    return ("<table><tr><th>step</th><th>seconds</th></tr>" + "".join(rows) + "</table>"
            f'<p class="caption">{_esc(note)}</p>')


def _params_html(p: Mapping[str, Any]) -> str:
    flat = all(not isinstance(v, Mapping) for v in p.values())
    if flat:
        return _kv_table(p, ("parameter", "value"))
    return "<pre>" + _esc(json.dumps(p, indent=2, default=str, sort_keys=False)) + "</pre>"


def _status(s: Mapping[str, Any]) -> str:
    st = str(s.get("status") or "unknown")
    return st if st in ("ok", "failed") else "other"


def _series_html(s: Mapping[str, Any], anchor: str, ids: _Ids, wall_s: Any = None) -> str:
    name = str(s.get("name") or "series")
    st = _status(s)
    out = [f'<section class="card series" id="{_esc(anchor)}">',
           f'<h2>{_esc(name)} <span class="badge {st}">{_esc(s.get("status") or "unknown")}'
           "</span></h2>"]
    if s.get("error"):
        first = str(s["error"]).strip().splitlines()[-1] if str(s["error"]).strip() else ""
        out.append('<details class="error" open><summary>Error: '
                   f'{_esc(first[:300])}</summary><pre>{_esc(s["error"])}</pre></details>')
    figs = list(s.get("figures") or [])
    figs = sorted(figs, key=lambda f: _KIND_ORDER.get(str(f.get("kind", "")), 4))
    if figs:
        out.append("<h3>Figures</h3>")
        out.extend(_figure_html(f, ids) for f in figs)
    elif st == "ok":
        out.append('<p class="caption">No figures were produced for this series.</p>')
    blocks = []
    if s.get("qc"):
        blocks.append("<div><h3>Quality numbers</h3>" + _qc_table(s["qc"]) + "</div>")
    if s.get("timings"):
        blocks.append("<div><h3>Time per step</h3>" + _timings_table(s["timings"], wall_s)
                      + "</div>")
    if blocks:
        out.append('<div class="grid2">' + "".join(blocks) + "</div>")
    if s.get("parameters"):
        out.append("<h3>Parameters</h3>" + _params_html(s["parameters"]))
    out.append("</section>")
    return "\n".join(out)


def _summary_html(series: Sequence[Mapping[str, Any]], anchors: list[str]) -> str:
    rows = []
    for s, a in zip(series, anchors, strict=True):
        st = _status(s)
        qc = s.get("qc") or {}
        t = s.get("timings") or {}
        total = f"{sum(step_timings(t).values()):.1f}" if t else "n/a"
        note = ""
        if s.get("error"):
            lines = str(s["error"]).strip().splitlines()
            note = lines[-1][:160] if lines else ""
        rows.append(
            f'<tr><td><a href="#{_esc(a)}">{_esc(s.get("name") or "series")}</a></td>'
            f'<td><span class="badge {st}">{_esc(s.get("status") or "unknown")}</span></td>'
            f'<td class="num">{_esc(_fmt(qc.get("cc_before")))}</td>'
            f'<td class="num">{_esc(_fmt(qc.get("cc_syn")))}</td>'
            f'<td class="num">{_esc(_fmt(qc.get("folding_percent")))}</td>'
            f'<td class="num">{_esc(_fmt(qc.get("ice_mean_mm")))}</td>'
            f'<td class="num">{_esc(total)}</td><td>{_esc(note)}</td></tr>'
        )
    n_ok = sum(_status(s) == "ok" for s in series)
    head = ("<tr><th>series</th><th>status</th><th>local CC before</th>"
            "<th>local CC after SyN</th><th>folding %</th><th>inverse consistency (mm)</th>"
            "<th>sum of steps (s)</th><th>error</th></tr>")
    return (f'<section class="card" id="summary"><h2>Summary</h2>'
            f"<p>{n_ok} of {len(series)} series processed successfully.</p>"
            f"<table>{head}{''.join(rows)}</table></section>")


def write_participant_report(
    out_html: PathLike,
    subject: str,
    series: Sequence[Mapping[str, Any]],
    software: str | Mapping[str, Any] | None = None,
    run_info: Mapping[str, Any] | None = None,
) -> Path:
    """Write the self-contained HTML QC report of one participant.

    Parameters
    ----------
    out_html : path
        Output file (e.g. ``<out>/sub-01.html``); parent folders are created. Written
        atomically.
    subject : str
        Participant label, with or without ``sub-``.
    series : sequence of dict
        One dict per processed series::

            {"name": "sub-01_ses-1_dwi", "status": "ok" | "failed",
             "error": None | "<full traceback text>",
             "figures": [{"title": str, "path": <svg/png>, "caption": str | None,
                          "kind": "mask" | "flicker" | "overlay" | "grid" | "jacobian",
                          # flicker alternatives to a compose-view SVG in "path":
                          "before": <image>, "after": <image>,
                          "before_label": "reference", "after_label": "moving"}],
             "qc": {metric: value},          # keys of QC_DESCRIPTIONS get labels
             "parameters": {name: value},   # nested dicts shown as JSON
             "timings": {step: seconds}}

        Figures are shown in kind order mask, flicker/overlay, grid, jacobian (the given
        order within a kind). Missing figure files are reported in place, not raised.
    software : str or dict, optional
        E.g. ``"synflow 0.1.0"`` or ``{"synflow": "0.1.0", "numpy": "2.1"}``.
    run_info : dict, optional
        Shown as a table (command line, run id, threads, date...).

    Returns
    -------
    Path
        ``out_html``.
    """
    out = Path(out_html)
    if not isinstance(subject, str) or not subject.strip():
        raise ValueError(f"subject must be a non-empty string, got {subject!r}")
    if isinstance(series, Mapping) or not isinstance(series, Sequence):
        raise ValueError("series must be a list of dicts (one per series)")
    for i, s in enumerate(series):
        if not isinstance(s, Mapping):
            raise ValueError(f"series[{i}] must be a dict, got {type(s).__name__}")
        if s.get("status") not in ("ok", "failed"):
            raise ValueError(f"series[{i}]['status'] must be 'ok' or 'failed', "
                             f"got {s.get('status')!r}")
    label = subject if subject.startswith("sub-") else f"sub-{subject}"
    if software is None:
        from synflow import __version__

        soft = f"synflow {__version__}"
    elif isinstance(software, Mapping):
        soft = ", ".join(f"{k} {v}" for k, v in software.items())
    else:
        soft = str(software)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    anchors: list[str] = []
    for s in series:
        a = "s-" + _slug(str(s.get("name") or "series"))
        while a in anchors:
            a += "-x"
        anchors.append(a)
    ids = _Ids()
    body = [
        '<header class="top">',
        f"<h1>synflow QC report: participant {_esc(label)}</h1>",
        f'<div class="meta">{_esc(soft)} &middot; generated {_esc(now)} &middot; '
        f"{len(series)} series</div>",
        "</header>",
        '<nav class="toc"><a href="#summary">Summary</a>'
        + "".join(f'<a href="#{_esc(a)}">{_esc(s.get("name") or "series")}</a>'
                  for s, a in zip(series, anchors, strict=True))
        + '<a href="#run">Run</a><a href="#help">How to read</a></nav>',
        "<main>",
        _summary_html(series, anchors),
    ]
    wall_s = (run_info or {}).get(_WALL_KEY)
    body.extend(_series_html(s, a, ids, wall_s) for s, a in zip(series, anchors, strict=True))
    run_rows = {"software": soft, "generated": now,
                **{_RUN_LABELS.get(k, k): v for k, v in dict(run_info or {}).items()}}
    body.append('<section class="card" id="run"><h2>Run</h2>' + _kv_table(run_rows) + "</section>")
    body.append(f'<section class="card" id="help"><h2>How to read this report</h2>{_HELP}'
                "</section>")
    body.append("</main>")
    main_html = "\n".join(body)
    size_mb = len(main_html.encode("utf-8")) / 1e6
    doc = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>synflow: {_esc(label)}</title>\n<style>\n{_read_asset('report.css')}</style>\n"
        "</head>\n<body>\n"
        f"{main_html}\n"
        f"<footer>Self-contained report (all images inlined, no network access needed), "
        f"about {size_mb:.1f} MB. Generated by {_esc(soft)}.</footer>\n"
        f"<script>\n{_read_asset('report.js')}</script>\n</body>\n</html>\n"
    )
    atomic_write_text(out, doc)
    return out
