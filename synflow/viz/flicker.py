"""Flicker SVGs (nireports' ``compose_view``) and SVG id prefixing for the HTML report.

One SVG holds two identical mosaics in ``<g class="background-svg">`` and
``<g class="foreground-svg">``; a CSS animation fades the foreground in and out while the
mouse is over it.  :func:`prefix_svg_ids` lets several SVGs share one HTML page.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from matplotlib.figure import Figure

from synflow.viz.mosaic import _render_svg

__all__ = ["FLICKER_CSS", "compose_flicker_svg", "flicker_labels", "prefix_svg_ids"]

FLICKER_CSS = (
    "@keyframes synflowFlicker { 0% {opacity: 1;} 100% {opacity: 0;} }\n"
    ".foreground-svg { animation: 1s ease-in-out 0s alternate none infinite paused "
    "synflowFlicker; }\n"
    ".foreground-svg:hover { animation-play-state: running; }\n"
)


_ID_RE = re.compile(r'id="([^"]+)"')


def prefix_svg_ids(svg: str, prefix: str) -> str:
    """The root ``<svg>`` element of an SVG document (prolog dropped), every ``id`` and
    ``#id`` reference prefixed with ``prefix`` so several SVGs can share one HTML page."""
    start = svg.find("<svg")
    if start < 0:
        raise ValueError("not an SVG document (no <svg> element)")
    body = svg[start:]
    ids = set(_ID_RE.findall(body))
    if ids:
        pattern = re.compile(r'(id="|#)(' + "|".join(re.escape(i) for i in
                                                    sorted(ids, key=len, reverse=True))
                             + r')(?=["\)])')
        body = pattern.sub(lambda m: f"{m.group(1)}{prefix}{m.group(2)}", body)
    return body


def _svg_element(svg: str, prefix: str) -> str:
    """The ``<svg>`` element of a matplotlib SVG document, ids prefixed, sized 100%."""
    body = prefix_svg_ids(svg, prefix)
    head_end = body.index(">")
    head = body[:head_end]
    head = re.sub(r'\swidth="[^"]*"', ' width="100%"', head, count=1)
    head = re.sub(r'\sheight="[^"]*"', ' height="100%"', head, count=1)
    return head + body[head_end:]


def compose_flicker_svg(background: Figure, foreground: Figure, prefix: str = "fl",
                        labels: tuple[str, str] | None = None) -> str:
    """Stack two same-size figures into one SVG (nireports ``compose_view`` style).

    ``labels`` (what the background and the foreground show, e.g. ``("b0 after affine",
    "b0 after SyN")``) are stored as ``data-bg-label``/``data-fg-label`` on the root
    element; the HTML report names its buttons after them (:func:`flicker_labels`).
    """
    w_pt = background.get_figwidth() * 72
    h_pt = background.get_figheight() * 72
    bg = _svg_element(_render_svg(background), f"{prefix}bg-")
    fg = _svg_element(_render_svg(foreground), f"{prefix}fg-")
    attrs = ""
    if labels is not None:
        attrs = "".join(f' data-{k}-label="{html.escape(str(v), quote=True)}"'
                        for k, v in zip(("bg", "fg"), labels, strict=True))
    return (
        '<?xml version="1.0" encoding="utf-8" standalone="no"?>\n'
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'version="1.1" width="{w_pt:.2f}pt" height="{h_pt:.2f}pt" '
        f'viewBox="0 0 {w_pt:.2f} {h_pt:.2f}" class="synflow-flicker" '
        f'preserveAspectRatio="xMidYMid meet"{attrs}>\n'
        f"<style type=\"text/css\">\n{FLICKER_CSS}</style>\n"
        f'<g class="background-svg">\n{bg}\n</g>\n'
        f'<g class="foreground-svg">\n{fg}\n</g>\n'
        "</svg>\n"
    )


_LABEL_RE = re.compile(r'<svg[^>]*?\sdata-bg-label="([^"]*)"[^>]*?\sdata-fg-label="([^"]*)"')


def flicker_labels(svg: str) -> tuple[str, str] | None:
    """The ``(background, foreground)`` labels :func:`compose_flicker_svg` stored, or None."""
    m = _LABEL_RE.search(svg[:4000])
    return (html.unescape(m.group(1)), html.unescape(m.group(2))) if m else None


def _prefix_from(out: Path) -> str:
    return "s" + re.sub(r"[^A-Za-z0-9]", "", out.stem)[-24:] + "-"
