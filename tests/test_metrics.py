"""Metrics, atomic file writing, plots and video export, checked against independent ground truth."""

from __future__ import annotations

import math

import imageio.v2 as imageio
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from radfield.evaluation.metrics import lpips_fn, masked_prediction, psnr, psnr_uint8, ssim
from radfield.evaluation.plots import colorize_depth, plot_curves, plot_training_curve
from radfield.export.video import write_video
from radfield.io import atomic_write, save_png

K1, K2 = 0.01, 0.03
C1, C2 = K1**2, K2**2


# ---------------------------------------------------------------------------------------- PSNR
def test_psnr_constant_offset_is_20db():
    target = torch.rand(8, 9, 3, generator=torch.Generator().manual_seed(0)).double() * 0.6 + 0.2
    assert psnr(target + 0.1, target) == pytest.approx(20.0, abs=1e-9)  # mse = 0.01


def test_psnr_identical_and_clipped_is_inf():
    img = torch.rand(5, 6, 3)
    assert psnr(img, img.clone()) == math.inf
    # 1.5 clips to 1.0, -0.2 clips to 0.0: identical after clipping.
    assert psnr(torch.full((4, 4, 3), 1.5), torch.ones(4, 4, 3)) == math.inf
    assert psnr(torch.full((4, 4, 3), -0.2), torch.zeros(4, 4, 3)) == math.inf


def test_psnr_uint8_quantises_both_images():
    k = torch.randint(0, 245, (6, 7, 3), generator=torch.Generator().manual_seed(1)).double()
    target = k / 255
    # Sub-half-level noise vanishes after quantisation.
    assert psnr_uint8(target + 0.4 / 255, target - 0.4 / 255) == math.inf
    # Ten levels apart everywhere: mse = (10/255)^2.
    expected = 20 * math.log10(255 / 10)
    assert psnr_uint8((k + 10 + 0.3) / 255, target) == pytest.approx(expected, abs=1e-9)
    assert isinstance(psnr_uint8(target, target + 0.5), float)


def test_psnr_rejects_shape_mismatch():
    with pytest.raises(ValueError):
        psnr(torch.zeros(4, 4, 3), torch.zeros(4, 5, 3))


def test_masked_psnr_by_hand():
    """A 2 x 2 image on 8-bit levels, 3 pixels used: errors of 20 and 40 levels on two of them,
    255 - 100 on the ignored one; mse = (3 (20/255)^2 + 3 (40/255)^2 + 3 * 0) / 9 by hand."""
    target = torch.full((2, 2, 3), 100 / 255, dtype=torch.float64)
    pred = target.clone()
    pred[0, 0] = 120 / 255
    pred[0, 1] = 60 / 255
    pred[1, 1] = 1.0
    mask = torch.tensor([[True, True], [True, False]])
    expected = -10 * math.log10((3 * (20 / 255) ** 2 + 3 * (40 / 255) ** 2) / 9)
    assert psnr(pred, target, mask) == pytest.approx(expected, abs=1e-9)
    assert psnr_uint8(pred, target, mask) == pytest.approx(expected, abs=1e-9)
    assert psnr(pred, target) < expected - 3  # the ignored pixel's error counts without the mask
    assert masked_prediction(pred, target, mask)[1, 1].tolist() == [100 / 255] * 3
    with pytest.raises(ValueError):  # no pixel to score
        psnr(pred, target, torch.zeros(2, 2, dtype=torch.bool))


# ---------------------------------------------------------------------------------------- SSIM
def ssim_reference(x: np.ndarray, y: np.ndarray, size: int = 11, sigma: float = 1.5,
                   mask: np.ndarray | None = None) -> float:
    """Direct SSIM: explicit weighted sums at every 'valid' window position, per channel.

    Uses the centred (co)variance form sum w (x - mu_x)(y - mu_y), not E[xy] - mu_x mu_y.
    With an ``(H, W)`` bool ``mask``: ``x`` takes ``y``'s values off the mask and only the
    windows whose centre pixel is on the mask count.
    """
    if mask is not None:
        x = np.where(mask[..., None], x, y)
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    w = np.outer(g, g)
    w /= w.sum()
    h, wd, c = x.shape
    values = []
    for ch in range(c):
        for i in range(h - size + 1):
            for j in range(wd - size + 1):
                if mask is not None and not mask[i + size // 2, j + size // 2]:
                    continue
                px, py = x[i:i + size, j:j + size, ch], y[i:i + size, j:j + size, ch]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                values.append((2 * mx * my + C1) * (2 * cxy + C2)
                              / ((mx**2 + my**2 + C1) * (vx + vy + C2)))
    return float(np.mean(values))


def test_ssim_matches_direct_windowed_sums():
    rng = np.random.default_rng(2)
    x = rng.random((20, 20, 3))
    y = np.clip(0.7 * x + 0.3 * rng.random((20, 20, 3)) + 0.05, 0, 1)  # correlated, not equal
    expected = ssim_reference(x, y)
    assert 0.1 < expected < 0.95  # a non-trivial case
    assert ssim(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected, abs=1e-10)
    # float32 inputs give the same number up to float32 input rounding.
    got32 = ssim(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    assert got32 == pytest.approx(expected, abs=1e-5)


def test_masked_ssim_matches_direct_windowed_sums():
    rng = np.random.default_rng(5)
    x = rng.random((16, 18, 3))
    y = np.clip(0.7 * x + 0.3 * rng.random((16, 18, 3)), 0, 1)
    mask = rng.random((16, 18)) < 0.5
    expected = ssim_reference(x, y, mask=mask)
    got = ssim(torch.from_numpy(x), torch.from_numpy(y), mask=torch.from_numpy(mask))
    assert got == pytest.approx(expected, abs=1e-10)
    assert got != pytest.approx(ssim_reference(x, y), abs=1e-3)  # the mask matters here
    x2 = np.where(mask[..., None], x, 1 - x)  # other values on the ignored pixels: same score
    assert ssim(torch.from_numpy(x2), torch.from_numpy(y), mask=torch.from_numpy(mask)) == \
        pytest.approx(got, abs=1e-12)
    everything = torch.ones(16, 18, dtype=torch.bool)
    assert ssim(torch.from_numpy(x), torch.from_numpy(y), mask=everything) == \
        pytest.approx(ssim(torch.from_numpy(x), torch.from_numpy(y)), abs=1e-12)
    border_only = torch.zeros(16, 18, dtype=torch.bool)
    border_only[0] = True  # no window is centred on the top row
    with pytest.raises(ValueError):
        ssim(torch.from_numpy(x), torch.from_numpy(y), mask=border_only)


def test_ssim_identical_is_one():
    x = torch.rand(16, 23, 3, generator=torch.Generator().manual_seed(3))
    assert ssim(x, x.clone()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("a,b", [(0.5, 0.25), (0.9, 0.1), (0.0, 1.0), (0.3, 0.3)])
def test_ssim_constant_images_closed_form(a, b):
    # Zero (co)variances: the structure term is C2 / C2 = 1.
    x, y = torch.full((14, 12, 3), a), torch.full((14, 12, 3), b)
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    assert ssim(x, y) == pytest.approx(expected, abs=1e-6)


def test_ssim_rejects_images_smaller_than_window():
    with pytest.raises(ValueError):
        ssim(torch.zeros(10, 20, 3), torch.zeros(10, 20, 3))


def test_ssim_matches_skimage_if_installed():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(4)
    x = rng.random((32, 40, 3))
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    expected = metrics.structural_similarity(
        x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
        channel_axis=-1)
    assert ssim(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------------------- LPIPS
def test_lpips_fn_is_none_or_callable_and_never_downloads():
    fn = lpips_fn()
    try:
        import lpips  # noqa: F401
    except ImportError:
        assert fn is None
        return
    if fn is not None:
        img = torch.rand(32, 32, 3)
        assert fn(img, img) == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------------- atomic IO
def test_atomic_write_exception_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".txt"
            tmp.write_text("new, half written")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.txt"]


def test_atomic_write_success_replaces(tmp_path):
    target = tmp_path / "sub" / "result.txt"
    with atomic_write(target) as tmp:
        tmp.write_text("new")
        assert not target.exists()  # invisible until the body finishes
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.txt"]


def test_save_png_roundtrip(tmp_path):
    img = np.random.default_rng(5).random((7, 9, 3))
    save_png(tmp_path / "a.png", img)
    back = iio.imread(tmp_path / "a.png")
    np.testing.assert_array_equal(back, np.round(img * 255).astype(np.uint8))
    u8 = (np.arange(7 * 9 * 3) % 256).astype(np.uint8).reshape(7, 9, 3)
    save_png(tmp_path / "b.png", torch.from_numpy(u8))
    np.testing.assert_array_equal(iio.imread(tmp_path / "b.png"), u8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


# ---------------------------------------------------------------------------------------- video
COLOURS = [(200, 50, 100), (20, 180, 60), (90, 90, 240), (255, 255, 255), (10, 10, 10)]


def _read_frames(path):
    with imageio.get_reader(path, format="FFMPEG") as reader:
        return [np.asarray(f) for f in reader]


def test_write_video_roundtrip_and_atomic(tmp_path):
    out = tmp_path / "fly.mp4"
    frames = (np.full((24, 32, 3), c, dtype=np.uint8) for c in COLOURS)  # a generator: streamed
    assert write_video(frames, out, fps=10) == 5
    back = _read_frames(out)
    assert len(back) == 5
    for frame, colour in zip(back, COLOURS):
        assert frame.shape == (24, 32, 3) and frame.dtype == np.uint8
        np.testing.assert_allclose(frame.reshape(-1, 3).mean(0), colour, atol=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fly.mp4"]


def test_write_video_pads_odd_sizes(tmp_path):
    out = tmp_path / "odd.mp4"
    write_video([np.full((23, 31, 3), 128, np.uint8)] * 2, out)
    back = _read_frames(out)
    assert len(back) == 2 and back[0].shape == (24, 32, 3)


def test_write_video_bad_frame_keeps_old_file(tmp_path):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"old")
    frames = [np.zeros((24, 32, 3), np.uint8), np.zeros((24, 30, 3), np.uint8)]
    with pytest.raises(ValueError):
        write_video(frames, out)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]
    with pytest.raises(ValueError):
        write_video([], out)


# ---------------------------------------------------------------------------------------- plots
def test_plot_training_curve_writes_valid_png(tmp_path):
    history = [{"time_s": 2.0 * i, "step": 100 * i, "psnr": 15 + i, "label": lab}
               for lab in ("ngp", "vanilla") for i in range(5)]
    out = tmp_path / "curve.png"
    plot_training_curve(history, out, title="lego")
    img = iio.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.dtype == np.uint8
    assert img.reshape(-1, img.shape[-1]).std(0).max() > 0  # not a blank canvas
    plot_curves({"a": [(0.0, 10.0), (1.0, 12.0)]}, tmp_path / "c2.png")
    assert iio.imread(tmp_path / "c2.png").ndim == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c2.png", "curve.png"]


def test_colorize_depth_endpoints_and_invalid_pixels():
    from matplotlib import colormaps

    turbo = colormaps["turbo"]
    depth = torch.tensor([[1.0, 2.0, 3.0], [0.0, float("nan"), 2.0]])
    opacity = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rgb = colorize_depth(depth, opacity=opacity)
    assert rgb.shape == (2, 3, 3)
    np.testing.assert_allclose(rgb[0, 0].numpy(), turbo(0.0)[:3], atol=1e-6)  # near
    np.testing.assert_allclose(rgb[0, 2].numpy(), turbo(1.0)[:3], atol=1e-6)  # far
    np.testing.assert_allclose(rgb[0, 1].numpy(), turbo(128 / 255)[:3], atol=1e-6)  # middle
    assert (rgb[1] == 0).all()  # zero depth, NaN depth, zero opacity -> black
    # explicit near/far clip
    rgb2 = colorize_depth(depth, near=2.0, far=2.5)
    np.testing.assert_allclose(rgb2[0, 0].numpy(), turbo(0.0)[:3], atol=1e-6)
    np.testing.assert_allclose(rgb2[0, 2].numpy(), turbo(1.0)[:3], atol=1e-6)
