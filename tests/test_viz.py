"""synflow.viz: DIPY-compatible regtools, reportlets and the HTML report (static checks)."""

from __future__ import annotations

import re
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # DIPY's regtools draws with pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import ndimage  # noqa: E402

from synflow.viz import regtools, reportlets  # noqa: E402
from synflow.viz.report import write_participant_report  # noqa: E402


def _volume(shape=(18, 22, 15), seed=0, background=5.0):
    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.normal(size=shape), 1.0) * 100 + 300
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    c = (np.array(shape) - 1) / 2
    inside = (((x - c[0]) / (shape[0] / 2.5)) ** 2 + ((y - c[1]) / (shape[1] / 2.5)) ** 2
              + ((z - c[2]) / (shape[2] / 2.5)) ** 2) < 1
    return np.where(inside, v, background).astype(np.float32), inside


def _images(fig):
    return [ax.images[0].get_array() for ax in fig.axes]


# --------------------------------------------------------------------------- regtools vs DIPY
@pytest.fixture(scope="module")
def dipy_regtools():
    pytest.importorskip("dipy")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*FURY.*")
        from dipy.viz import regtools as dr
    return dr


@pytest.mark.needs_dipy
@pytest.mark.parametrize("slice_type", [0, 1, 2])
@pytest.mark.parametrize("slice_index", [None, 4])
def test_overlay_slices_matches_dipy(dipy_regtools, tmp_path, slice_type, slice_index):
    L, _ = _volume(seed=1)
    R, _ = _volume(seed=2, background=-3.0)
    R = np.roll(R, 2, axis=1)
    before = plt.get_fignums()
    fname = tmp_path / "ours.png"
    ours = regtools.overlay_slices(L, R, slice_index, slice_type, "fixed", "moving", fname)
    assert plt.get_fignums() == before  # our figure is not registered with pyplot
    ref = dipy_regtools.overlay_slices(L, R, slice_index=slice_index, slice_type=slice_type,
                                       ltitle="fixed", rtitle="moving")
    try:
        got, exp = _images(ours), _images(ref)
        assert len(got) == 3
        for g, e in zip(got, exp, strict=True):
            assert g.dtype == e.dtype == np.uint8
            np.testing.assert_array_equal(np.asarray(g), np.asarray(e))
        assert got[1].shape[-1] == 3 and got[1][..., 2].max() == 0
        assert [a.get_title() for a in ours.axes] == [a.get_title() for a in ref.axes]
        assert [a.images[0].origin for a in ours.axes] == ["lower"] * 3
    finally:
        plt.close(ref)
    assert fname.is_file() and fname.stat().st_size > 1000
    assert fname.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_regtools_save_is_atomic_and_keeps_matplotlib_naming(tmp_path):
    """No extension: matplotlib's default format, its extension appended; nothing partial."""
    a, _ = _volume(seed=7)
    regtools.overlay_slices(a, a, None, 1, "a", "b", tmp_path / "noext")
    regtools.plot_slices(a, fname=tmp_path / "s.svg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noext.png", "s.svg"]
    assert (tmp_path / "s.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.needs_dipy
def test_overlay_images_and_plot_slices_match_dipy(dipy_regtools, tmp_path):
    a, _ = _volume(seed=3)
    b, _ = _volume(seed=4)
    ours = regtools.overlay_images(a[:, :, 7], b[:, :, 7], "A", "mid", "B",
                                   fname=tmp_path / "oi.png")
    ref = dipy_regtools.overlay_images(a[:, :, 7], b[:, :, 7], title0="A", title_mid="mid",
                                       title1="B")
    try:
        for g, e in zip(_images(ours), _images(ref), strict=True):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(e))
    finally:
        plt.close(ref)
    ours = regtools.plot_slices(a, [3, 5, 7], fname=tmp_path / "ps.svg")
    ref = dipy_regtools.plot_slices(a, slice_indices=[3, 5, 7])
    try:
        for g, e in zip(_images(ours), _images(ref), strict=True):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(e))
    finally:
        plt.close(ref)
    assert (tmp_path / "oi.png").is_file() and (tmp_path / "ps.svg").is_file()


def test_overlay_slices_red_green_rule_and_errors(tmp_path):
    L = np.zeros((4, 5, 6))
    L[1, 2, 3] = 10.0
    R = np.full((4, 5, 6), 2.0)
    R[2, 2, 1] = 4.0
    fig = regtools.overlay_slices(L, R, slice_index=2, slice_type=1)
    rgb = np.asarray(fig.axes[1].images[0].get_array())
    assert rgb.shape == (6, 4, 3)  # coronal slice L[:, 2, :].T
    assert rgb[3, 1, 0] == 255 and rgb[..., 0].sum() == 255
    assert rgb[1, 2, 1] == 255 and rgb[..., 1].sum() == 255  # background (R[0,0]) suppressed
    with pytest.raises(ValueError, match="slice_type"):
        regtools.overlay_slices(L, R, slice_type=3)
    with pytest.raises(ValueError, match="same shape"):
        regtools.overlay_slices(L, R[:-1])
    flat = regtools.overlay_slices(np.ones((3, 3, 3)), np.ones((3, 3, 3)))
    assert np.asarray(flat.axes[0].images[0].get_array()).max() == 0  # no NaN cast


# --------------------------------------------------------------------------- reportlets
def _ids_unique(svg_text: str) -> bool:
    ids = re.findall(r'\sid="([^"]+)"', svg_text)
    return len(ids) == len(set(ids))


def test_cuts_from_bbox_stay_inside_mask_bbox():
    mask = np.zeros((30, 40, 20), bool)
    mask[5:20, 10:30, 2:18] = True
    cuts = reportlets.cuts_from_bbox(mask, mask.shape, 5)
    for ax, (lo, hi) in enumerate([(5, 19), (10, 29), (2, 17)]):
        assert len(cuts[ax]) == 5
        assert all(lo < c < hi for c in cuts[ax])
    whole = reportlets.cuts_from_bbox(None, (30, 40, 20), 1)
    assert whole == {0: [14], 1: [20], 2: [10]}


def test_reportlets_write_files(tmp_path):
    fixed, mask = _volume((24, 28, 20), seed=5)
    moving = np.roll(fixed, 2, axis=0)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    aff[0] *= -1  # LAS: must be flipped for display
    before = plt.get_fignums()
    out = reportlets.plot_mask_contour(fixed, mask, tmp_path / "m.svg", grid2world=aff)
    assert out == tmp_path / "m.svg"
    ET.parse(out)  # well-formed XML
    out = reportlets.plot_overlay(fixed, moving, tmp_path / "o.png", mask=mask, n_cuts=3)
    assert out.read_bytes()[:4] == b"\x89PNG"

    fl = reportlets.plot_registration(fixed, moving, tmp_path / "f.svg", mask=mask,
                                      contour=mask, grid2world=aff)
    text = fl.read_text()
    root = ET.fromstring(text)
    groups = [g.get("class") for g in root.iter("{http://www.w3.org/2000/svg}g")
              if g.get("class")]
    assert groups == ["background-svg", "foreground-svg"]
    assert "@keyframes" in text and _ids_unique(text)
    assert text.count("<image") >= 2 * 3 * 6  # 2 layers x 3 rows x 6 slices
    ba = reportlets.plot_before_after(fixed, moving, fixed, tmp_path / "ba.svg",
                                      labels=("raw", "corrected"))
    assert "raw" in ba.read_text() and "corrected" in ba.read_text()
    with pytest.raises(ValueError, match=".svg"):
        reportlets.plot_registration(fixed, moving, tmp_path / "f.png")
    with pytest.raises(ValueError, match="shape"):
        reportlets.plot_registration(fixed, moving[:-1], tmp_path / "x.svg")

    disp = np.zeros(fixed.shape + (3,), np.float32)
    disp[..., 0] = 2.0 * np.sin(np.arange(fixed.shape[1]) / 4.0)[None, :, None]
    g = reportlets.plot_deformation_grid(disp, aff, tmp_path / "g.svg", mask=mask,
                                         background=fixed)
    assert "max |u| = 2.0 mm" in g.read_text()
    jac = np.ones(fixed.shape, np.float32)
    jac[12, 14, 10] = -0.5
    j = reportlets.plot_jacobian(jac, tmp_path / "j.svg", fixed, mask=mask, grid2world=aff)
    assert "1 folded voxels" in j.read_text()
    with pytest.raises(ValueError, match="vmin"):
        reportlets.plot_jacobian(jac, tmp_path / "j2.svg", vmin=1.2)
    assert plt.get_fignums() == before  # nothing left open in pyplot
    assert not list(tmp_path.glob(".*.tmp"))


def test_prefix_svg_ids_rewrites_references():
    svg = ('<?xml version="1.0"?><svg><defs><clipPath id="p1"><rect/></clipPath></defs>'
           '<g clip-path="url(#p1)"><use xlink:href="#p1"/></g><rect fill="#p1ab"/></svg>')
    out = reportlets.prefix_svg_ids(svg, "x-")
    assert out.startswith("<svg")
    assert 'id="x-p1"' in out and "url(#x-p1)" in out and 'href="#x-p1"' in out
    assert 'fill="#p1ab"' in out  # not an id: untouched


# --------------------------------------------------------------------------- report (static)
def test_report_structure_escaping_and_atomic_write(tmp_path):
    fixed, mask = _volume((20, 24, 16), seed=6)
    moving = np.roll(fixed, 1, axis=1)
    mfig = reportlets.plot_mask_contour(fixed, mask, tmp_path / "mask.svg")
    png = reportlets.plot_overlay(fixed, moving, tmp_path / "ov.png", mask=mask)
    reportlets.plot_mask_contour(fixed, mask, tmp_path / "bg.png")
    reportlets.plot_mask_contour(moving, mask, tmp_path / "fg.png")
    series = [
        {"name": "sub-02_dwi", "status": "ok", "error": None,
         "figures": [
             {"title": "overlay", "kind": "overlay", "path": png, "caption": "r/g"},
             {"title": "mask", "kind": "mask", "path": mfig, "caption": None},
             {"title": "layers", "kind": "flicker", "before": tmp_path / "bg.png",
              "after": tmp_path / "fg.png"},
             {"title": "gone", "kind": "grid", "path": tmp_path / "missing.svg"},
         ],
         "qc": {"cc_before": 0.5, "cc_syn": np.float32(0.91), "folding_percent": 0.2,
                "custom": [1, 2]},
         "parameters": {"radius": 4, "level_iters": [10, 5]},
         "timings": {"affine": 1.25, "syn": 2.5}},
        {"name": "sub-02_run-2_dwi", "status": "failed",
         "error": "Traceback (most recent call last):\n  boom <script>alert(1)</script>\n"
                  "RuntimeError: x < y & z", "figures": [], "qc": {}, "parameters": {},
         "timings": {}},
    ]
    out = write_participant_report(tmp_path / "out" / "sub-02.html", "sub-02", series,
                                   software={"synflow": "0.1.0"}, run_info={"threads": 2})
    text = out.read_text()
    assert out.parent.is_dir() and not list(out.parent.glob(".*.tmp"))
    assert "participant sub-02" in text and "1 of 2 series processed successfully" in text
    assert text.index("kind-mask") < text.index("kind-overlay")  # mask first
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>alert" not in text
    assert "RuntimeError: x &lt; y &amp; z" in text
    assert "figure not available" in text
    assert 'class="flicker-stage layered"' in text and "flicker-fg" in text
    assert "local CC, after SyN" in text and "0.91" in text
    assert 'class="num warn"' in text  # folding > 0 flagged
    assert "3.75" in text  # total time
    # PNG figures as data: URIs; SVG figures inline since issue 13 (base64 made them 1/3
    # bigger), so no SVG data: URI is left
    assert text.count('src="data:image/png;base64,') == 3
    assert "data:image/svg+xml;base64," not in text and 'class="svg-figure"' in text
    with pytest.raises(ValueError, match="status"):
        write_participant_report(tmp_path / "x.html", "02", [{"name": "a", "status": "done"}])
    with pytest.raises(ValueError, match="subject"):
        write_participant_report(tmp_path / "x.html", "", [])
    assert not (tmp_path / "x.html").exists()


def test_report_overwrites_atomically(tmp_path):
    out = tmp_path / "sub-03.html"
    out.write_text("old")
    write_participant_report(out, "03", [])
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["sub-03.html"]


def test_plot_2d_diffeomorphic_map_equals_dipy(tmp_path):
    """Same lattices as DIPY's plot_2d_diffeomorphic_map for the same map, both grids."""
    dipy_regtools = pytest.importorskip("dipy.viz.regtools")
    from synflow.align.imwarp import SymmetricDiffeomorphicRegistration
    from synflow.align.metrics import SSDMetric
    from synflow.viz import regtools

    rng = np.random.default_rng(0)
    static, moving = rng.random((13, 14)), rng.random((11, 12))
    mapping = SymmetricDiffeomorphicRegistration(SSDMetric(2), level_iters=[20, 10]).optimize(
        static, moving)
    np.testing.assert_array_equal(regtools.draw_lattice_2d(2, 3, 4),
                                  dipy_regtools.draw_lattice_2d(2, 3, 4))
    ours = regtools.plot_2d_diffeomorphic_map(mapping, delta=3, fname=tmp_path / "grid.png")
    theirs = dipy_regtools.plot_2d_diffeomorphic_map(mapping, delta=3, show_figure=False)
    assert ours[0].shape == static.shape and ours[1].shape == moving.shape
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert (tmp_path / "grid.png").stat().st_size > 0
    with pytest.raises(ValueError, match="delta"):
        regtools.plot_2d_diffeomorphic_map(mapping, delta=0)


# ----------------------------------------------------------------------------- issue 13
def _embedded_pngs(svg_path: Path) -> list[np.ndarray]:
    """Pixels (RGB(A) or gray) of every PNG embedded in an SVG figure, in drawing order."""
    import base64
    import io

    from PIL import Image

    text = Path(svg_path).read_text()
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB"))
            for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)]


def _ramp_and_mask(shape=(24, 28, 20)):
    x = np.indices(shape, dtype=np.float32)
    mask = np.zeros(shape, bool)
    mask[4:-4, 4:-4, 4:-4] = True
    img = (100.0 + 40.0 * x[0] + 10.0 * x[1]) * mask
    return img.astype(np.float32), mask


def test_overlays_of_one_series_share_one_window(tmp_path):
    """An image that covers only part of the mask (the b0 before registration) is drawn
    with the same brightness as the aligned one when both get the series' window: before
    the fix each overlay stretched its own percentiles and the unaligned one looked green."""
    ref, mask = _ramp_and_mask()
    part = ref.copy()
    part[: ref.shape[0] // 2 + 2] = 0  # half the brain missing, as before registration
    own = [reportlets.plot_overlay(ref, m, tmp_path / f"own{i}.svg", mask=mask)
           for i, m in enumerate((ref, part))]
    g_full, g_part = (np.concatenate([im[..., 1].ravel() for im in _embedded_pngs(p)])
                      .astype(int) for p in own)
    both = (g_part > 0) & (g_full > 0)
    assert np.abs(g_part[both] - g_full[both]).max() > 20  # the reported bug

    win = reportlets.intensity_window(ref, mask)
    shared = [reportlets.plot_overlay(ref, m, tmp_path / f"sh{i}.svg", mask=mask,
                                      fixed_limits=win, moving_limits=win)
              for i, m in enumerate((ref, part))]
    g_full, g_part = (np.concatenate([im[..., 1].ravel() for im in _embedded_pngs(p)])
                      .astype(int) for p in shared)
    both = (g_part > 0) & (g_full > 0)
    assert both.sum() > 50
    assert np.abs(g_part[both] - g_full[both]).max() <= 1
    with pytest.raises(ValueError, match="moving_limits"):
        reportlets.plot_overlay(ref, part, tmp_path / "bad.svg", moving_limits=(5, 1))


def test_before_after_flicker_one_window_and_named_layers(tmp_path):
    ref, mask = _ramp_and_mask()
    part = ref.copy()
    part[:14] = 0
    out = reportlets.plot_before_after(ref, part, ref, tmp_path / "ba.svg",
                                       ("b0 after affine", "b0 after SyN"), mask=mask)
    from synflow.viz.flicker import flicker_labels

    assert flicker_labels(out.read_text()) == ("b0 after affine", "b0 after SyN")
    pngs = _embedded_pngs(out)
    n = len(pngs) // 2
    for back, front in zip(pngs[:n], pngs[n:], strict=True):  # same slices, both layers
        both = (back[..., 0] > 0) & (front[..., 0] > 0)
        np.testing.assert_allclose(back[..., 0][both], front[..., 0][both], atol=1)
    # the report names its buttons after the layers, not "reference"/"moving"
    rep = write_participant_report(tmp_path / "r.html", "01", [
        {"name": "dwi", "status": "ok",
         "figures": [{"title": "Affine vs. SyN", "path": str(out), "kind": "flicker"}]}])
    buttons = re.findall(r'data-mode="(?:bg|fg)">([^<]*)<', rep.read_text())
    assert buttons == ["b0 after affine", "b0 after SyN"]


def test_embedded_pngs_are_compacted_without_changing_pixels():
    import base64
    import io

    from PIL import Image

    from synflow.viz.mosaic import _compact_png

    rng = np.random.default_rng(0)
    g = rng.integers(0, 255, (30, 40), dtype=np.uint8)
    rgba = np.dstack([g, g, g, np.full_like(g, 255)])
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    small = _compact_png(b64)
    assert len(small) < 0.5 * len(b64)
    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(small))).convert("RGBA"))
    np.testing.assert_array_equal(back, rgba)


def test_report_timings_have_names_for_people_and_say_what_the_total_is(tmp_path):
    timings = {"mean b0": 0.16, "brain mask": 1.27, "affine": 4.13, "syn_input": 0.10,
               "SyN": 4.39, "b0 to reference": 0.56, "QC figures": 2.36}
    rep = write_participant_report(
        tmp_path / "r.html", "01",
        [{"name": "dwi", "status": "ok", "qc": {"cc_syn": 0.9}, "timings": timings}],
        run_info={"elapsed (s)": 65.0})
    text = rep.read_text()
    i = text.index("Time per step")
    table = text[i:text.index("</table>", i)]
    for raw in ("syn_input", ">SyN<", ">affine<", "mean b0"):
        assert raw not in table
    for name in ("SyN registration", "Mean b0", "Affine pre-alignment", "Masked b0 for SyN"):
        assert name in table
    assert "Sum of the steps of this series" in table and "12.97" in table
    assert "whole run" in text and "65.0 s" in text
    assert "wall time of the whole run (s)" in text  # the Run table's elapsed time
    assert "syn_seconds" not in text
