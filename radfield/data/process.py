"""Turn a folder of photos or a video into a COLMAP dataset with structure-from-motion.

``radfield process images|video INPUT --out DATASET`` runs pycolmap (``pip install
'radfield[process]'``) in three phases and writes::

    DATASET/images/<name>            the input images (copied), or frame_NNNNN.png for a video
    DATASET/database.db              COLMAP's feature / match database
    DATASET/sparse/N/{cameras,images,points3D}.bin   every model the mapper made, N = 0, 1, ...

1. **extract**: SIFT features per image (one shared camera by default, ``SIMPLE_RADIAL``).
2. **match**: ``exhaustive`` (every pair; photos) or ``sequential`` (each image with its
   neighbours in name order; video frames).
3. **map**: COLMAP's incremental mapper. It may split the images into several models; all are
   kept, numbered as COLMAP numbers them, and the report names the largest (most registered
   images; on a tie the lowest number), the one :mod:`radfield.data.colmap` reads by default.

Vocabulary: an image is *registered* when the mapper recovered its pose in a model.

A run is all-or-nothing: images, database and models are built in a hidden temporary folder
inside ``DATASET`` and renamed into place only once the largest model has at least
:data:`MIN_REGISTERED` images, ``sparse/`` last, so a failed or interrupted run never leaves a
``sparse/`` that looks valid, and leaves an earlier run's dataset as it was. Bad input raises
:class:`radfield.errors.RadfieldError` with one line naming the file or folder.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy as np

from radfield.errors import RadfieldError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MATCHERS = ("exhaustive", "sequential")
MIN_REGISTERED = 3
MAPPER_SEED = 0  # the mapper's RANSAC seed, so a rerun on the same images gives the same model
INSTALL_HINT = "pip install 'radfield[process]'"


@dataclass(frozen=True)
class PhaseSeconds:
    """Wall-clock seconds of each phase."""

    extract: float
    match: float
    map: float

    @property
    def total(self) -> float:
        return self.extract + self.match + self.map


@dataclass(frozen=True)
class ProcessReport:
    """What a structure-from-motion run produced.

    ``model_sizes[k]`` is the number of registered images of ``sparse/k``; ``model_index`` is
    the largest model, and ``n_registered`` / ``n_points`` / ``mean_reprojection_error``
    (pixels, ``None`` without points) describe it.
    """

    out_dir: Path
    n_images: int
    n_registered: int
    model_index: int
    model_sizes: tuple[int, ...]
    n_points: int
    mean_reprojection_error: float | None
    seconds: PhaseSeconds

    @property
    def model_dir(self) -> Path:
        return self.out_dir / "sparse" / str(self.model_index)


# ---------------------------------------------------------------------------- public entry points


def process_images(images_dir: str | Path, out_dir: str | Path, *, matcher: str = "exhaustive",
                   camera_model: str = "SIMPLE_RADIAL", single_camera: bool = True,
                   max_image_size: int | None = None, overwrite: bool = False,
                   progress: bool = True) -> ProcessReport:
    """Run structure-from-motion on the images of ``images_dir`` (not its subfolders).

    Args:
        images_dir: folder of PNG / JPEG / TIFF / BMP images.
        out_dir: dataset folder to write (created if needed).
        matcher: ``"exhaustive"`` or ``"sequential"`` (images ordered by name).
        camera_model: a COLMAP camera model name, e.g. ``SIMPLE_RADIAL``, ``PINHOLE``, ``OPENCV``.
        single_camera: all images share one camera (one lens, one zoom, one image size).
        max_image_size: features are extracted on images downscaled to at most this many pixels
            on the longer side (COLMAP's default, 3200, when ``None``).
        overwrite: replace an existing non-empty ``out_dir/sparse`` (and ``out_dir/images``).
        progress: print each phase and a summary.
    """
    src, out = Path(images_dir), Path(out_dir)
    names = list_images(src)
    _check_options(matcher, max_image_size)
    images = out / "images"
    in_place = images.is_dir() and src.resolve() == images.resolve()
    _check_out_dir(out, overwrite, keep_images=in_place)
    pycolmap = _import_pycolmap(camera_model)
    with _workspace(out) as work:
        if not in_place:
            _copy_images(src, names, work / "images")
        options = _SfmOptions(matcher, camera_model, single_camera, max_image_size, progress)
        report = _run_sfm(pycolmap, src, images if in_place else work / "images", work, names,
                          options)
        _install(work, out)
    report = replace(report, out_dir=out)
    _say(progress, format_report(report))
    return report


def process_video(video_file: str | Path, out_dir: str | Path, *, n_frames: int = 100,
                  camera_model: str = "SIMPLE_RADIAL", max_image_size: int | None = None,
                  overwrite: bool = False, progress: bool = True) -> ProcessReport:
    """Extract about ``n_frames`` frames evenly spaced in time from ``video_file`` into
    ``out_dir/images/frame_NNNNN.png`` (see :func:`extract_frames`), then run
    structure-from-motion on them as :func:`process_images` does, with the sequential matcher
    and one shared camera. ``n_frames`` must be at least :data:`MIN_REGISTERED`."""
    video, out = Path(video_file), Path(out_dir)
    if not video.is_file():
        raise RadfieldError(f"{video}: no such video file")
    if n_frames < MIN_REGISTERED:
        raise RadfieldError(f"{video}: n_frames must be at least {MIN_REGISTERED}, got {n_frames}")
    _check_options("sequential", max_image_size)
    _check_out_dir(out, overwrite, keep_images=False)
    pycolmap = _import_pycolmap(camera_model)
    with _workspace(out) as work:
        _say(progress, f"extracting {n_frames} frames from {video}")
        frames = extract_frames(video, work / "images", n_frames)
        options = _SfmOptions("sequential", camera_model, True, max_image_size, progress)
        report = _run_sfm(pycolmap, video, work / "images", work, [p.name for p in frames],
                          options)
        _install(work, out)
    report = replace(report, out_dir=out)
    _say(progress, format_report(report))
    return report


def format_report(report: ProcessReport) -> str:
    """One-paragraph human summary, e.g. ``registered 73 / 75 images in model 1 (4,246 points,
    mean reprojection error 0.52 px) in 41 s (extract 9 s, match 20 s, map 12 s)``."""
    error = ("" if report.mean_reprojection_error is None
             else f", mean reprojection error {report.mean_reprojection_error:.2f} px")
    s = report.seconds
    text = (f"registered {report.n_registered} / {report.n_images} images in model "
            f"{report.model_index} ({report.n_points:,} points{error}) in {s.total:.0f} s "
            f"(extract {s.extract:.0f} s, match {s.match:.0f} s, map {s.map:.0f} s)")
    others = [f"{k}: {n}" for k, n in enumerate(report.model_sizes) if k != report.model_index]
    if others:
        text += f"; other models (index: images) {', '.join(others)}"
    return text + f"\nCOLMAP dataset written to {report.out_dir}"


# ---------------------------------------------------------------------------- inputs


def list_images(images_dir: Path) -> list[str]:
    """Sorted names of the image files directly inside ``images_dir``."""
    if not images_dir.is_dir():
        what = "not a folder" if images_dir.exists() else "no such folder"
        raise RadfieldError(f"{images_dir}: {what}")
    names = sorted(p.name for p in images_dir.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not names:
        raise RadfieldError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return names


def extract_frames(video_file: str | Path, images_dir: str | Path, n_frames: int) -> list[Path]:
    """Save ``n_frames`` frames evenly spaced in time as ``images_dir/frame_NNNNN.png``.

    Frame indices are ``round(linspace(0, n_total - 1, n_frames))`` (first and last frame
    included; every frame when the video has fewer), with ``n_total`` from the container's
    duration x fps, or counted by decoding when the container does not say. Returns the paths
    written, in time order; ``NNNNN`` numbers them 0, 1, ... so name order is time order.
    """
    video, folder = Path(video_file), Path(images_dir)
    total = _count_frames(video)
    wanted = set(np.round(np.linspace(0, total - 1, min(n_frames, total))).astype(int).tolist())
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for index, frame in enumerate(_decode(video)):
        if index in wanted:
            path = folder / f"frame_{len(written):05d}.png"
            _write_png(path, frame)
            written.append(path)
    if not written:
        raise RadfieldError(f"{video}: no frames could be decoded")
    return written


def _decode(video: Path) -> Iterator[np.ndarray]:
    """Iterate over the ``(H, W, 3)`` uint8 frames of ``video``; one-line error if undecodable."""
    import imageio.v3 as iio

    try:
        yield from iio.imiter(video, plugin="FFMPEG")
    except (OSError, RuntimeError, ValueError) as exc:
        raise RadfieldError(f"{video}: cannot decode video ({_first_line(exc)})") from exc


def _count_frames(video: Path) -> int:
    """Frames in ``video``: ``round(duration * fps)`` from the metadata, else decode and count."""
    import imageio.v3 as iio

    try:
        meta = iio.immeta(video, plugin="FFMPEG")
    except (OSError, RuntimeError, ValueError) as exc:
        raise RadfieldError(f"{video}: cannot read video ({_first_line(exc)})") from exc
    duration, fps = float(meta.get("duration") or 0.0), float(meta.get("fps") or 0.0)
    total = round(duration * fps) if np.isfinite(duration * fps) else 0
    if total <= 0:
        total = sum(1 for _ in _decode(video))
    if total <= 0:
        raise RadfieldError(f"{video}: the video has no frames")
    return total


def _first_line(exc: Exception) -> str:
    """The first non-blank line of an exception's message (ffmpeg's run to dozens)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _write_png(path: Path, frame: np.ndarray) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, np.ascontiguousarray(frame[..., :3]))


def _check_options(matcher: str, max_image_size: int | None) -> None:
    if matcher not in MATCHERS:
        raise RadfieldError(f"matcher: unknown value {matcher!r} "
                            f"(choose from {', '.join(MATCHERS)})")
    if max_image_size is not None and max_image_size < 16:
        raise RadfieldError(f"max_image_size: must be at least 16 pixels, got {max_image_size}")


def _import_pycolmap(camera_model: str) -> ModuleType:
    """pycolmap, once ``camera_model`` is known to be one of its camera models."""
    try:
        import pycolmap
    except ImportError as exc:
        raise RadfieldError(f"pycolmap is not installed: {INSTALL_HINT}") from exc
    if camera_model == "INVALID" or not hasattr(pycolmap.CameraModelId, camera_model):
        raise RadfieldError(f"camera_model: unknown COLMAP camera model {camera_model!r}")
    return pycolmap


def _check_out_dir(out: Path, overwrite: bool, keep_images: bool) -> None:
    """Refuse a non-empty ``out/sparse`` (or ``out/images`` unless kept) without ``overwrite``.
    Changes nothing: both are replaced only once the new models are complete (:func:`_install`).
    """
    if out.exists() and not out.is_dir():
        raise RadfieldError(f"{out}: exists and is not a folder")
    folders = ["sparse"] + ([] if keep_images else ["images"])
    for name in folders:
        folder = out / name
        if folder.is_dir() and any(folder.iterdir()) and not overwrite:
            raise RadfieldError(f"{folder}: already exists and is not empty "
                                "(use another output folder or overwrite=True / --overwrite)")


def _copy_images(src: Path, names: list[str], images: Path) -> None:
    images.mkdir()
    for name in names:
        shutil.copy2(src / name, images / name)


# ---------------------------------------------------------------------------- structure from motion


@dataclass(frozen=True)
class _SfmOptions:
    matcher: str
    camera_model: str
    single_camera: bool
    max_image_size: int | None
    progress: bool


@contextmanager
def _workspace(out: Path) -> Iterator[Path]:
    """A hidden temporary folder inside ``out`` (created), removed on exit whatever happens."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".radfield-process-", dir=out))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, flush=True)


def _run_sfm(pycolmap: ModuleType, source: Path, images: Path, work: Path, names: list[str],
             options: _SfmOptions) -> ProcessReport:
    """Extract, match and map ``images/<names>`` into ``work/database.db`` and
    ``work/sparse/N``; one-line error naming ``source`` (the user's folder or video) if the
    largest model is too small. The report's ``out_dir`` is ``work``."""
    say = partial(_say, options.progress)
    level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2  # COLMAP errors only; our own lines say what happens
    try:
        database = work / "database.db"
        t0 = time.perf_counter()
        say(f"extracting features from {len(names)} images ({options.camera_model}, "
            f"{'one camera' if options.single_camera else 'one camera per image'})")
        _extract(pycolmap, database, images, names, options)
        t1 = time.perf_counter()
        say(f"matching features ({options.matcher})")
        _match(pycolmap, database, options.matcher)
        t2 = time.perf_counter()
        say("mapping (incremental)")
        models = _map(pycolmap, database, images, work / "sparse", say)
        t3 = time.perf_counter()
    finally:
        pycolmap.logging.minloglevel = level
    return _summarise(models, source, work, len(names), PhaseSeconds(t1 - t0, t2 - t1, t3 - t2))


def _extract(pycolmap: ModuleType, database: Path, images: Path, names: list[str],
             options: _SfmOptions) -> None:
    extraction = pycolmap.FeatureExtractionOptions()
    if options.max_image_size is not None:
        extraction.max_image_size = options.max_image_size
    mode = pycolmap.CameraMode.SINGLE if options.single_camera else pycolmap.CameraMode.PER_IMAGE
    reader = pycolmap.ImageReaderOptions(camera_model=options.camera_model)
    pycolmap.extract_features(database, images, image_names=names, camera_mode=mode,
                              reader_options=reader, extraction_options=extraction)


def _match(pycolmap: ModuleType, database: Path, matcher: str) -> None:
    if matcher == "sequential":
        pycolmap.match_sequential(database)
    else:
        pycolmap.match_exhaustive(database)


def _map(pycolmap: ModuleType, database: Path, images: Path, sparse: Path,
         say: Callable[[str], None]) -> dict[int, Any]:
    """Run the incremental mapper into ``sparse/N``; returns ``{N: Reconstruction}``."""
    sparse.mkdir()
    options = pycolmap.IncrementalPipelineOptions()
    options.random_seed = MAPPER_SEED
    registered = [0]  # image registrations so far, all models together

    def count(n: int) -> None:
        if (registered[0] + n) // 10 > registered[0] // 10:
            say(f"  {registered[0] + n} image registrations so far")
        registered[0] += n

    def on_pair() -> None:
        count(2)

    def on_image() -> None:
        count(1)

    return dict(pycolmap.incremental_mapping(database, images, sparse, options,
                                             initial_image_pair_callback=on_pair,
                                             next_image_callback=on_image))


def _summarise(models: dict[int, Any], source: Path, out: Path, n_images: int,
               seconds: PhaseSeconds) -> ProcessReport:
    """Report on the largest model; one-line error naming ``source`` if there is none or it
    is too small."""
    if not models:
        raise RadfieldError(f"{source}: structure-from-motion registered 0 of {n_images} images "
                            "(no model); use more images with more overlap and texture")
    sizes = tuple(models[k].num_reg_images() if k in models else 0
                  for k in range(max(models) + 1))
    best = max(models, key=lambda k: (models[k].num_reg_images(), -k))
    model = models[best]
    if model.num_reg_images() < MIN_REGISTERED:
        raise RadfieldError(f"{source}: structure-from-motion registered only "
                            f"{model.num_reg_images()} of {n_images} images (need at least "
                            f"{MIN_REGISTERED}); use more images with more overlap and texture")
    error = model.compute_mean_reprojection_error() if model.num_points3D() else None
    return ProcessReport(out_dir=out, n_images=n_images, n_registered=model.num_reg_images(),
                         model_index=best, model_sizes=sizes, n_points=model.num_points3D(),
                         mean_reprojection_error=error, seconds=seconds)


def _install(work: Path, out: Path) -> None:
    """Move ``images/`` (when built here), ``database.db`` and lastly ``sparse/`` from ``work``
    into ``out``, replacing older ones.

    Each replacement is a rename within ``out``: an older entry is first renamed into ``work``
    (deleted with it), so ``out/sparse`` is at every moment either absent or complete.
    """
    for name in ("images", "database.db", "sparse"):
        if not (work / name).exists():
            continue
        target = out / name
        if target.exists():
            target.rename(work / f"old-{name}")
        (work / name).rename(target)
