"""Render the participant report in real headless Chromium and check that it displays.

Needs ``/usr/bin/chromium`` (Debian package ``chromium``; CI installs it). Without it the
browser tests skip with a reason; the report is still built and checked statically.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import traceback
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from synflow.align import qc
from synflow.viz import reportlets as rl
from synflow.viz.report import write_participant_report

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")


def _chromium() -> str | None:
    env = os.environ.get("SYNFLOW_CHROMIUM")
    for c in ((env,) if env else ()) + CHROMIUM_CANDIDATES:
        p = shutil.which(c) if not os.path.isabs(c) else (c if os.access(c, os.X_OK) else None)
        if p:
            return p
    return None


# ----------------------------------------------------------------------------- inputs
def _phantom(shape=(40, 48, 36), seed=0):
    """b0-like phantom: textured ellipsoid 'brain' + dark 'ventricles' + mask."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    c = (np.array(shape) - 1) / 2
    r = np.sqrt(((x - c[0]) / 15) ** 2 + ((y - c[1]) / 19) ** 2 + ((z - c[2]) / 13) ** 2)
    img = 800 * (r < 1) * (1 + 0.25 * np.sin(x / 2.5) * np.cos(y / 3.0))
    vent = np.sqrt(((x - c[0]) / 5) ** 2 + ((y - c[1]) / 8) ** 2 + ((z - c[2]) / 4) ** 2) < 1
    img[vent] = 1500
    img += rng.normal(0, 15, shape)
    img = ndimage.gaussian_filter(img, 0.7).astype(np.float32)
    return img, r < 1


def _warp(img, disp_vox):
    coords = np.indices(img.shape, dtype=np.float32) + np.moveaxis(disp_vox, -1, 0)
    return ndimage.map_coordinates(img, coords, order=1, mode="constant").astype(np.float32)


class _Map:
    def __init__(self, fwd, bwd, aff):
        self.forward, self.backward, self.disp_grid2world = fwd, bwd, aff


def _series(out_dir: Path, name: str, seed: int, fail: bool = False) -> dict:
    """One synthetic series with all figure kinds (or a failed one with a traceback)."""
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-40, -48, -36]
    fixed, mask = _phantom(seed=seed)
    shape = fixed.shape
    grid = np.indices(shape, dtype=np.float32)
    u = np.zeros(shape + (3,), np.float32)  # voxel units
    u[..., 0] = (1.5 * np.sin(2 * np.pi * grid[1] / shape[1])
                 + np.sin(2 * np.pi * grid[0] / shape[0]))
    u[..., 1] = 1.2 * np.sin(2 * np.pi * grid[2] / shape[2])
    shift = np.array([3.0, -2.0, 1.0], np.float32)
    moving_before = _warp(fixed, u + shift)
    moving_affine = _warp(fixed, u)
    moving_syn = _warp(fixed, 0.05 * u)
    disp_mm = (u * 2.0).astype(np.float32)
    d = out_dir / name
    figures: list[dict] = []
    figures.append({"title": "Brain mask", "kind": "mask",
                    "path": rl.plot_mask_contour(fixed, mask, d / "mask.svg", grid2world=aff)})
    stages = [("before registration", moving_before), ("after affine", moving_affine),
              ("after SyN", moving_syn)]
    if fail:
        stages = stages[:1]
    for i, (stage, mov) in enumerate(stages):
        figures.append({
            "title": f"Reference vs moving, {stage}", "kind": "flicker",
            "path": rl.plot_registration(fixed, mov, d / f"flicker{i}.svg", mask=mask,
                                         contour=mask, grid2world=aff,
                                         moving_label=f"moving ({stage})")})
        figures.append({
            "title": f"Red/green overlay, {stage}", "kind": "overlay",
            "path": rl.plot_overlay(fixed, mov, d / f"overlay{i}.svg", mask=mask,
                                    grid2world=aff)})
    if seed == 1:  # the report's other flicker form: two stacked <img> layers
        lay = d / "layers"
        figures.append({
            "title": "Mask on reference vs on SyN-warped moving", "kind": "flicker",
            "before": rl.plot_mask_contour(fixed, mask, lay / "ref.png", grid2world=aff),
            "after": rl.plot_mask_contour(moving_syn, mask, lay / "mov.png", grid2world=aff),
            "before_label": "reference", "after_label": "moving (after SyN)"})
    qcd: dict = {}
    if not fail:
        jac = qc.jacobian_determinant(disp_mm, aff)
        figures.append({"title": "Deformation grid", "kind": "grid",
                        "path": rl.plot_deformation_grid(disp_mm, aff, d / "grid.svg",
                                                         mask=mask, background=fixed)})
        figures.append({"title": "Jacobian determinant", "kind": "jacobian",
                        "path": rl.plot_jacobian(jac, d / "jacobian.png", fixed, mask=mask,
                                                 grid2world=aff)})
        ice = qc.inverse_consistency_error(_Map(disp_mm, -disp_mm, aff), mask)
        qcd = {
            "cc_before": qc.local_cc(fixed, moving_before, mask),
            "cc_affine": qc.local_cc(fixed, moving_affine, mask),
            "cc_syn": qc.local_cc(fixed, moving_syn, mask),
            "jacobian_min": float(jac[mask].min()),
            "jacobian_max": float(jac[mask].max()),
            "folding_percent": qc.folding_fraction(jac, mask),
            "ice_mean_mm": ice[0], "ice_p95_mm": ice[1], "ice_max_mm": ice[2],
        }
    error = None
    if fail:
        try:
            raise ValueError("static_grid2world must be a 4x4 invertible affine <demo>")
        except ValueError:
            error = traceback.format_exc()
    return {
        "name": name, "status": "failed" if fail else "ok", "error": error,
        "figures": figures, "qc": qcd,
        "parameters": {"metric": "CC", "radius": 4, "level_iters": [10, 10, 5],
                       "affine": {"pipeline": ["translation", "rigid", "affine"]}},
        "timings": {"mask": 0.12, "affine": 1.9, "syn": 0.0 if fail else 4.2,
                    "qc": 0.3},
    }


def build_report(out_dir: Path) -> Path:
    """A 3-series report (2 ok, 1 failed) from synthetic inputs."""
    series = [
        _series(out_dir, "sub-01_ses-1_dwi", 0),
        _series(out_dir, "sub-01_ses-2_dwi", 1),
        _series(out_dir, "sub-01_ses-3_acq-bad_dwi", 2, fail=True),
    ]
    return write_participant_report(
        out_dir / "sub-01.html", "01", series,
        run_info={"command": "synflow bids out participant --participant-label 01",
                  "run_uuid": "20261125-demo", "threads": 2},
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return build_report(tmp_path_factory.mktemp("report"))


# ----------------------------------------------------------------------------- static
def test_report_is_self_contained(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    # no network, no relative files: every src is a data URI, no external CSS/JS
    srcs = re.findall(r'\ssrc="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    assert not re.search(r'(href|src)="(https?:)?//', text)
    assert "<link" not in text
    # 3 series x (mask + overlays) ...; failed series shows its full traceback
    assert text.count('class="flicker"') == 8  # 7 inline-SVG flickers + 1 <img> pair
    assert "Traceback (most recent call last)" in text
    assert "sub-01_ses-3_acq-bad_dwi" in text
    # ids of inline SVGs are unique across the page
    ids = re.findall(r'\sid="([^"]+)"', text)
    assert len(ids) == len(set(ids))
    assert not list(report.parent.glob(".*.tmp"))


# ----------------------------------------------------------------------------- browser
_CHECK_JS = r"""
<script>
window.addEventListener("load", function () {
  var res = {imgs: [], svgs: [], svgImages: [], flickers: 0, controls: 0, sliders: 0,
             clickOpacity: null, layeredOpacity: null};
  document.querySelectorAll("img").forEach(function (im) {
    res.imgs.push({ok: im.complete && im.naturalWidth > 0, w: im.naturalWidth,
                   alt: im.alt});
  });
  document.querySelectorAll(".flicker-stage > svg").forEach(function (s) {
    var r = s.getBoundingClientRect();
    res.svgs.push({w: r.width, h: r.height});
  });
  res.flickers = document.querySelectorAll(".flicker").length;
  res.controls = document.querySelectorAll(".flicker button.flicker-play").length;
  res.sliders = document.querySelectorAll(".flicker input.flicker-slider").length;
  var first = document.querySelector(".flicker");
  if (first) {
    first.querySelector('button[data-mode="bg"]').click();
    var fg = first.querySelector(".foreground-svg, img.flicker-fg");
    res.clickOpacity = getComputedStyle(fg).opacity;
    first.querySelector('button[data-mode="play"]').click();
  }
  res.layeredOpacity = null;
  var layered = document.querySelector(".flicker-stage.layered");
  if (layered) {  // clicking the image switches to the reference layer
    layered.click();
    res.layeredOpacity = getComputedStyle(layered.querySelector("img.flicker-fg")).opacity;
  }
  var pending = [];
  document.querySelectorAll("svg image").forEach(function (el) {
    var href = el.getAttribute("xlink:href") || el.getAttribute("href");
    pending.push(new Promise(function (resolve) {
      var im = new Image();
      im.onload = function () { resolve({ok: im.naturalWidth > 0, w: im.naturalWidth}); };
      im.onerror = function () { resolve({ok: false, w: 0}); };
      im.src = href;
    }));
  });
  Promise.all(pending).then(function (r) {
    res.svgImages = r;
    var pre = document.createElement("pre");
    pre.id = "qc-result";
    pre.textContent = JSON.stringify(res);
    document.body.appendChild(pre);
  });
});
</script>
"""

_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--hide-scrollbars"]


def _run_chromium(args: list[str], profile: Path, timeout: float = 120) -> str:
    exe = _chromium()
    assert exe is not None
    cmd = [exe, *_FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout


needs_chromium = pytest.mark.skipif(
    _chromium() is None,
    reason="headless Chromium not found (apt-get install -y chromium; or set SYNFLOW_CHROMIUM)",
)


@needs_chromium
def test_report_renders_in_chromium(report: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe.html"
    text = report.read_text(encoding="utf-8")
    probe.write_text(text.replace("</body>", _CHECK_JS + "</body>"), encoding="utf-8")
    dom = _run_chromium(["--virtual-time-budget=20000", "--dump-dom", probe.as_uri()],
                        tmp_path / "profile")
    m = re.search(r'<pre id="qc-result">(.*?)</pre>', dom, re.S)
    assert m, "check script did not finish (no #qc-result in the DOM)"
    res = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&")
                     .replace("&lt;", "<").replace("&gt;", ">"))
    assert res["imgs"], "no <img> in the report"
    bad = [i for i in res["imgs"] if not i["ok"]]
    assert not bad, f"images that did not load: {bad}"
    assert len(res["svgs"]) == 7  # inline flicker SVGs (3 + 3 + 1)
    assert all(s["w"] > 100 and s["h"] > 100 for s in res["svgs"]), res["svgs"]
    assert res["svgImages"] and all(i["ok"] for i in res["svgImages"])
    assert res["flickers"] == 8 and res["controls"] == 8 and res["sliders"] == 8
    assert res["layeredOpacity"] is not None and float(res["layeredOpacity"]) == 0.0
    assert float(res["clickOpacity"]) == 0.0  # "reference" button hides the moving layer


@needs_chromium
def test_report_screenshot_not_blank(report: Path, tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    shot = tmp_path / "report.png"
    _run_chromium(["--window-size=1280,2400", "--virtual-time-budget=5000",
                   f"--screenshot={shot}", report.as_uri()], tmp_path / "profile")
    assert shot.is_file()
    img = mpimg.imread(shot)
    assert img.shape[0] >= 2000 and img.shape[1] >= 1200
    gray = img[..., :3].mean(-1)
    assert gray.std() > 0.05  # not a blank page
    dark = (gray < 0.1).mean()  # figures have black backgrounds
    assert 0.05 < dark < 0.9
    keep = os.environ.get("SYNFLOW_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


# ----------------------------------------------------------------------------- size
#: Largest report per participant (issue 13: nireports users complain of 30-40 MB reports
#: that browsers cannot open by the hundred).
MAX_REPORT_MB_PER_PARTICIPANT = 5.0


def _template_size_series(root: Path, name: str, shift: int) -> dict:
    """The full figure set of one series (RegistrationReportlets) on the bundled 2 mm
    template grid (98x116x94, the demo's reference): the sizes a real run produces."""
    import nibabel as nib

    from synflow.align import write_mapping
    from synflow.align.diffeomorphic_map import DiffeomorphicMap
    from synflow.data import get_template
    from synflow.interfaces import RegistrationReportlets

    root.mkdir(parents=True, exist_ok=True)
    ref_img = nib.load(get_template("b0"))
    ref = np.asarray(ref_img.dataobj, dtype=np.float32)
    aff = ref_img.affine
    mask = np.asarray(nib.load(get_template("brainmask")).dataobj) > 0
    rng = np.random.default_rng(shift)
    files = {}
    vols = {"ref": ref, "mask": mask.astype(np.uint8), "unaligned": np.roll(ref, shift, 0),
            "affine": np.roll(ref, 1, 1), "warped": ref * (1 + 0.02 * rng.standard_normal(
                ref.shape)).astype(np.float32)}
    for key, vol in vols.items():
        files[key] = root / f"{key}.nii.gz"
        nib.save(nib.Nifti1Image(vol, aff), files[key])
    m = DiffeomorphicMap(3, ref.shape, aff, ref.shape, aff, ref.shape, aff)
    smooth = ndimage.gaussian_filter(rng.standard_normal(ref.shape + (3,)), (6, 6, 6, 0))
    m.forward = (2.0 * smooth / np.abs(smooth).max()).astype(np.float32)
    m.backward = -m.forward
    write_mapping(m, root / "mapping.nii.gz")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        res = RegistrationReportlets(
            b0_file=str(files["warped"]), mask_file=str(files["mask"]),
            reference_file=str(files["ref"]), reference_mask=str(files["mask"]),
            unaligned_file=str(files["unaligned"]), affine_file=str(files["affine"]),
            warped_file=str(files["warped"]), mapping_file=str(root / "mapping.nii.gz"),
            series_name=name, qc={"cc_syn": 0.95}, timings={"syn": 4.4}).run()
    finally:
        os.chdir(cwd)
    return json.loads(Path(res.outputs.out_series).read_text())


def test_report_size_per_participant_is_bounded(tmp_path: Path) -> None:
    """One series of full-size figures takes under half the bound, so a participant with
    two series (like the demo's sub-02) stays under it; the report holds the figures."""
    series = [_template_size_series(tmp_path / "s1", "sub-02_run-1_dwi", 3)]
    assert len(series[0]["figures"]) == 8
    out = write_participant_report(tmp_path / "sub-02.html", "02", series)
    size_mb = out.stat().st_size / 1e6
    assert size_mb < MAX_REPORT_MB_PER_PARTICIPANT / 2, f"one series takes {size_mb:.2f} MB"
    assert size_mb > 0.5, f"{size_mb:.2f} MB: the figures are not in the report"
