"""Structure-from-motion processing (radfield.data.process) against exact camera poses.

Ground truth: the exact camera centres of the rendered ``../shared/data/tabletop`` views. The
recovered centres live in COLMAP's arbitrary frame, so they are compared after the best
similarity transform (Umeyama's closed form, written here in numpy and itself checked on a
known transform). Frame extraction is checked pixel-wise against the frames the video was
encoded from. The built-in synthetic scene is used only for video decoding: its flat-shaded
checkers give ~150 SIFT features per view, too few for COLMAP's mapper (< 100 inliers per pair
where the mapper needs 100 to start), so the SfM tests use tabletop and skip without it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from radfield.data.process import ProcessReport, extract_frames, format_report, process_images, \
    process_video
from radfield.data.synthetic import make_scene
from radfield.errors import RadfieldError

try:
    import pycolmap
except ImportError:  # pragma: no cover - depends on the environment
    pycolmap = None

TABLETOP = Path(__file__).resolve().parents[2] / "shared" / "data" / "tabletop"
needs_pycolmap = pytest.mark.skipif(
    pycolmap is None, reason="pycolmap not installed (pip install 'radfield[process]')")
needs_tabletop = pytest.mark.skipif(not TABLETOP.is_dir(), reason=f"{TABLETOP} not found")
MAX_CENTRE_ERROR = 0.05  # of the camera radius (distance from the origin the views look at)


# ---------------------------------------------------------------------------- helpers


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``(s, R, t)`` minimising ``sum |dst_i - (s R src_i + t)|^2`` for ``(n, 3)`` points
    (Umeyama 1991): ``U S V^T = svd(cov)``, ``cov = (dst - mu_d)^T (src - mu_s) / n``,
    ``R = U D V^T`` with ``D = diag(1, 1, det(U V^T))``, ``s = tr(S D) / var(src)``."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    scale = float(np.trace(np.diag(sig) @ d) / (a**2).sum(1).mean())
    return scale, rot, mu_d - scale * rot @ mu_s


def centre_error(recovered: np.ndarray, true: np.ndarray) -> float:
    """Largest distance between aligned recovered and true centres, as a fraction of the
    camera radius: the true cameras' mean distance from the origin, which they look at."""
    s, rot, t = similarity_fit(recovered, true)
    aligned = s * recovered @ rot.T + t
    radius = np.linalg.norm(true, axis=1).mean()
    return float(np.linalg.norm(aligned - true, axis=1).max() / radius)


def recovered_centres(report: ProcessReport) -> dict[str, np.ndarray]:
    """Image name -> camera centre in the largest model, read back from the written files."""
    model = pycolmap.Reconstruction(str(report.model_dir))
    return {img.name: np.asarray(img.projection_center()) for img in model.images.values()
            if img.has_pose}


def true_centres(split: str) -> list[tuple[str, np.ndarray]]:
    frames = json.loads((TABLETOP / f"transforms_{split}.json").read_text())["frames"]
    return [(f["file_path"], np.asarray(f["transform_matrix"])[:3, 3]) for f in frames]


def over_white(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8: an RGBA PNG composited over white."""
    rgba = iio.imread(path).astype(np.float64) / 255
    rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    return (rgb * 255).round().astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def write_video(path: Path, frames: np.ndarray) -> None:
    """H.264 at 10 fps, 4:4:4 chroma so sharp colour edges survive (4:2:0 caps PSNR at ~30 dB)."""
    iio.imwrite(path, frames, plugin="FFMPEG", fps=10, quality=10, pixelformat="yuv444p",
                macro_block_size=8)


def no_partial_outputs(out: Path) -> bool:
    return not list(out.glob(".radfield-process-*"))


# ---------------------------------------------------------------------------- the reference fit


def test_similarity_fit_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(size=(20, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = q * np.sign(np.linalg.det(q))
    dst = 2.5 * src @ rot.T + np.array([1.0, -2.0, 0.5])
    s, r, t = similarity_fit(src, dst)
    assert s == pytest.approx(2.5, rel=1e-9)
    np.testing.assert_allclose(r, rot, atol=1e-9)
    np.testing.assert_allclose(t, [1.0, -2.0, 0.5], atol=1e-9)
    assert centre_error(src, dst) < 1e-9
    assert centre_error(src[::-1], dst) > 0.3  # mismatched order is caught


# ---------------------------------------------------------------------------- structure from motion


@needs_pycolmap
@needs_tabletop
def test_process_images_recovers_tabletop_cameras(tmp_path: Path) -> None:
    # The 16 train views nearest view 0: random hemisphere views need neighbours to overlap.
    views = true_centres("train")
    d = np.linalg.norm(np.stack([c for _, c in views]) - views[0][1], axis=1)
    chosen = [views[i] for i in np.argsort(d)[:16]]
    src = tmp_path / "photos"
    src.mkdir()
    for file_path, _ in chosen:
        shutil.copy(TABLETOP / f"{file_path}.png", src)
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "dataset"
    (out / "sparse" / "7").mkdir(parents=True)  # an earlier run's outputs, to be replaced
    (out / "images").mkdir()
    (out / "images" / "old.png").write_bytes(b"old")

    report = process_images(src, out, overwrite=True, progress=False)

    assert report.n_images == 16
    assert report.n_registered >= 14
    assert report.model_sizes[report.model_index] == max(report.model_sizes) == report.n_registered
    assert sorted(p.name for p in (out / "sparse").iterdir()) == \
        [str(k) for k in range(len(report.model_sizes))]
    for k in range(len(report.model_sizes)):
        assert {p.name for p in (out / "sparse" / str(k)).iterdir()} >= \
            {"cameras.bin", "images.bin", "points3D.bin"}
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(p.name for p in
                                                                        src.glob("*.png"))
    assert (out / "images" / "r_0.png").read_bytes() == (src / "r_0.png").read_bytes()
    assert no_partial_outputs(out) and (out / "database.db").is_file()
    model = pycolmap.Reconstruction(str(report.model_dir))
    assert (model.num_reg_images(), model.num_points3D()) == (report.n_registered, report.n_points)
    assert report.n_points > 100 and 0 < report.mean_reprojection_error < 2.0
    assert report.seconds.total == pytest.approx(
        report.seconds.extract + report.seconds.match + report.seconds.map)

    got = recovered_centres(report)
    true = {Path(file_path).name + ".png": c for file_path, c in chosen}
    names = sorted(got)
    assert centre_error(np.stack([got[n] for n in names]), np.stack([true[n] for n in names])) \
        < MAX_CENTRE_ERROR
    text = format_report(report)
    assert f"registered {report.n_registered} / 16 images in model {report.model_index}" in text


@needs_pycolmap
@needs_tabletop
def test_process_video_matches_sequentially_and_recovers_the_orbit(tmp_path: Path) -> None:
    # tabletop's 30 test views circle the object at 12 degree steps: a 3 s turntable video.
    views = true_centres("test")
    frames = np.stack([over_white(TABLETOP / f"{file_path}.png") for file_path, _ in views])
    video = tmp_path / "orbit.mp4"
    write_video(video, frames)
    out = tmp_path / "dataset"

    report = process_video(video, out, n_frames=30, progress=False)

    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == [f"frame_{k:05d}.png" for k in range(30)]
    assert report.n_images == 30 and report.n_registered >= 10
    got = recovered_centres(report)
    order = sorted(got)
    true = np.stack([views[int(n[6:11])][1] for n in order])
    assert centre_error(np.stack([got[n] for n in order]), true) < MAX_CENTRE_ERROR


# ---------------------------------------------------------------------------- video frames


@pytest.fixture(scope="module")
def orbit_frames(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """``(21, 96, 96, 3)`` uint8 views of the built-in scene on an orbit, over white."""
    root = make_scene(tmp_path_factory.mktemp("scene"), n_train=0, n_val=0, n_test=21, size=96)
    return np.stack([over_white(root / "test" / f"r_{k}.png") for k in range(21)])


def test_extract_frames_are_evenly_spaced_source_frames(tmp_path: Path,
                                                        orbit_frames: np.ndarray) -> None:
    video = tmp_path / "orbit.mp4"
    write_video(video, orbit_frames)
    paths = extract_frames(video, tmp_path / "images", 5)
    assert [p.name for p in paths] == [f"frame_{k:05d}.png" for k in range(5)]
    for k, path in enumerate(paths):
        frame = iio.imread(path)
        assert frame.shape == (96, 96, 3)
        scores = [psnr(frame, source) for source in orbit_frames]
        assert int(np.argmax(scores)) == 5 * k  # 21 frames, 5 picks: 0, 5, 10, 15, 20
        assert scores[5 * k] > 30.0


def test_extract_frames_keeps_every_frame_of_a_short_video(tmp_path: Path,
                                                           orbit_frames: np.ndarray) -> None:
    video = tmp_path / "short.mp4"
    write_video(video, orbit_frames[:7])
    paths = extract_frames(video, tmp_path / "images", 50)
    assert len(paths) == 7
    assert all(psnr(iio.imread(p), f) > 30.0 for p, f in zip(paths, orbit_frames[:7]))


# ---------------------------------------------------------------------------- errors


def write_grey_images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        iio.imwrite(folder / f"grey_{k}.png", np.full((64, 64, 3), 128, np.uint8))


def test_missing_empty_and_non_folder_inputs(tmp_path: Path) -> None:
    with pytest.raises(RadfieldError, match=r"nope: no such folder"):
        process_images(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(RadfieldError, match=r"empty: no images"):
        process_images(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(RadfieldError, match=r"file.png: not a folder"):
        process_images(tmp_path / "file.png", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_options_and_missing_pycolmap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_grey_images(tmp_path / "in", 3)
    with pytest.raises(RadfieldError, match=r"matcher: unknown value 'fast'"):
        process_images(tmp_path / "in", tmp_path / "out", matcher="fast")
    monkeypatch.setitem(sys.modules, "pycolmap", None)  # makes `import pycolmap` fail
    hint = r"pycolmap is not installed: pip install 'radfield\[process\]'"
    with pytest.raises(RadfieldError, match=hint):
        process_images(tmp_path / "in", tmp_path / "out")


@needs_pycolmap
def test_unknown_camera_model(tmp_path: Path) -> None:
    write_grey_images(tmp_path / "in", 3)
    with pytest.raises(RadfieldError, match=r"camera_model: unknown COLMAP camera model 'FISH'"):
        process_images(tmp_path / "in", tmp_path / "out", camera_model="FISH")


@needs_pycolmap
def test_textureless_images_fail_cleanly_and_keep_an_existing_model(tmp_path: Path) -> None:
    src, out = tmp_path / "grey", tmp_path / "out"
    write_grey_images(src, 3)
    with pytest.raises(RadfieldError) as info:
        process_images(src, out, progress=False)
    message = str(info.value)
    assert "\n" not in message and str(src) in message
    assert "registered 0 of 3 images" in message and "overlap and texture" in message
    assert not (out / "sparse").exists() and no_partial_outputs(out)

    # A failed rerun with overwrite=True must leave the previous model untouched.
    (out / "sparse" / "0").mkdir(parents=True)
    (out / "sparse" / "0" / "cameras.bin").write_bytes(b"previous")
    with pytest.raises(RadfieldError, match="registered 0 of 3"):
        process_images(src, out, overwrite=True, progress=False)
    assert (out / "sparse" / "0" / "cameras.bin").read_bytes() == b"previous"
    assert no_partial_outputs(out)


def test_existing_sparse_is_not_overwritten(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    write_grey_images(src, 3)
    (out / "sparse" / "0").mkdir(parents=True)
    (out / "sparse" / "0" / "cameras.bin").write_bytes(b"previous")
    with pytest.raises(RadfieldError, match=r"out/sparse: already exists and is not empty"):
        process_images(src, out)
    assert (out / "sparse" / "0" / "cameras.bin").read_bytes() == b"previous"
    assert not (out / "images").exists()


def test_missing_and_undecodable_videos(tmp_path: Path) -> None:
    with pytest.raises(RadfieldError, match=r"missing.mp4: no such video file"):
        process_video(tmp_path / "missing.mp4", tmp_path / "out")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 100)
    with pytest.raises(RadfieldError, match=r"garbage.mp4: cannot (read|decode) video") as info:
        extract_frames(garbage, tmp_path / "images", 10)
    assert "\n" not in str(info.value)
