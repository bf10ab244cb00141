"""The ``radfield`` command line: train, eval, render, view, localize, demo, process, multiscale.

Bad input (a missing file, a malformed dataset, an unknown option value) is reported as one line,
``radfield: error: <file or option>: <problem>``, with exit code 2; in a torchrun run, the loss of
another process is one such line with exit code 1.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from radfield.config import PRESETS, RunConfig, apply_overrides, parse_override
from radfield.errors import PeerLost, RadfieldError, RankZeroError, check_choice
from radfield.models import REGISTRY
from radfield.native import keep_freed_memory

MODELS = tuple(REGISTRY)


def _device(name: str) -> str:
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help where there is a default worth stating (not
    None, not a switch's False) and the help does not state it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or not action.option_strings or default is None or default is False
                or default == argparse.SUPPRESS or "default" in text):
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as the one-line ``radfield: error: ...`` and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"radfield: error: {message}\n")


def _number(parse, what: str, valid, bounds: str):
    """An argparse type: ``parse(text)`` that ``valid(value)`` accepts, else a one-line error."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value
    return convert


_positive_int = _number(int, "a positive integer", lambda v: v >= 1, ">= 1")
_positive_float = _number(float, "a positive number", lambda v: 0 < v < float("inf"), "a positive number")
_port = _number(int, "a port number", lambda v: 0 <= v <= 65535, "in 0..65535")


def _view_counts(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> ``(1, 2, 3)``: positive integers, sorted, each once."""
    try:
        counts = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return tuple(counts)


HOST_HELP = ("address the viewer listens on; anything but 127.0.0.1 exposes it, without authentication, "
             "to other machines")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="radfield", description="Train, evaluate and render neural radiance fields.",
        formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = _HelpFormatter

    p = sub.add_parser("train", help="train a radiance field on a posed-image dataset", formatter_class=fmt,
                       description="Train a radiance field. Models: " + ", ".join(MODELS)
                       + ". Presets: " + ", ".join(PRESETS) + " (a preset sets its model).")
    p.add_argument("data", help="dataset folder: Blender transforms_{split}.json, Instant-NGP transforms.json, "
                   "COLMAP (images/ + sparse/), LLFF (poses_bounds.npy) or a multi-scale dataset; for "
                   "pixelnerf a folder of scenes (one Blender dataset per subfolder)")
    p.add_argument("--model", default=None, help=f"model: {', '.join(MODELS)} (default: ngp, or the preset's)")
    p.add_argument("--preset", default=None, help=f"named preset: {', '.join(PRESETS)} (default: the model's name)")
    p.add_argument("--loss", default=None, help="photometric loss, e.g. l2, l1+0.2*ssim (l2, l1, rmse, "
                   "charbonnier, ssim, fft)")
    p.add_argument("--background", default=None, help="random, white, black, learned or last_sample")
    p.add_argument("--colmap-model", default=None, help="COLMAP sparse/ model to read (default: the largest)")
    p.add_argument("--train-views", type=_positive_int, default=None, metavar="N",
                   help="few-view training: N training views by farthest-point sampling on the camera "
                   "centres (default: all)")
    p.add_argument("--depth-loss", default=None, help="depth supervision: none, l2, urf, dsnerf or bounded "
                   "(default none)")
    p.add_argument("--depth-weight", type=float, default=None,
                   help="weight of the depth loss (default: the loss's reference weight: L2 in log t, dsnerf "
                   "and bounded 0.1, URF and L2 in t 0.00625), faded to 0 over the run's second half "
                   "(train.depth.anneal)")
    p.add_argument("--depth-eps", type=float, default=None,
                   help="depth uncertainty along the ray, in train.depth.unit (dsnerf 0.003, bounded 0.03)")
    p.add_argument("--depth-beta", type=float, default=None,
                   help="the spec's beta of the bounded loss (> 0 makes its bounds stricter; default 2 eps for "
                   "sparse or monocular depth, 0 for depth maps)")
    p.add_argument("--depth-margin", type=float, default=None,
                   help="margin that loosens the bounded loss's bounds, in train.depth.unit (0)")
    p.add_argument("--depth-bounds-at", default=None,
                   help="where the bounded loss checks its CDF bounds: midpoints (the spec's), ends "
                   "(the intervals' ends, every interval behind the depth) or auto (default: ends for "
                   "sparse depth, midpoints otherwise)")
    p.add_argument("--depth-l2-form", default=None,
                   help="what L2 compares with the depth: log (each weight's squared distance in log t, the "
                   "default), termination (the same in t) or expected (the rendered depth, the spec's)")
    p.add_argument("--depth-all-levels", action="store_true", default=None,
                   help="also apply the depth loss to each proposal (or coarse) level's weights")
    p.add_argument("--depth-source", default=None,
                   help="auto, maps (depth_file_path), sparse (COLMAP points) or mono (default auto)")
    p.add_argument("--mono-depth", default=None, metavar="FOLDER",
                   help="--depth-source mono: folder of <image stem>.npy monocular depths (relative to DATA)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set nerf.encoding.name=fourier (repeatable)")
    p.add_argument("--downscale", type=_positive_int, default=1, help="integer image downscale factor")
    p.add_argument("--out", default=None, help="run directory (default: runs/<dataset>-<model>)")
    p.add_argument("--max-steps", type=_positive_int, default=None, help="step limit (default 20000)")
    p.add_argument("--max-time", type=_positive_float, default=None,
                   help="training-time limit in seconds: time in training steps, validation and "
                   "checkpoint writing excluded (default: none; see --wall-time)")
    p.add_argument("--wall-time", action="store_true",
                   help="--max-time counts wall time, validation and checkpoint writing included")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--hsm", action="store_true", help="hard sample mining (two-pass step, see README)")
    p.add_argument("--hsm-min-fraction", type=float, default=None, help="lower bound of kept samples b/B (0.05)")
    p.add_argument("--hsm-max-fraction", type=float, default=None, help="upper bound of kept samples b/B (0.5)")
    p.add_argument("--hsm-ema", type=float, default=None, help="EMA decay of the hardness concentration (0.99)")
    p.add_argument("--pose-opt", action="store_true",
                   help="refine the camera poses while training (a per-image SE(3) correction, BARF's "
                   "coarse-to-fine window; train.pose_opt.*); eval then fits each test view's pose first")
    p.add_argument("--seed", type=int, default=None, help="random seed (0)")
    p.add_argument("--eval-every", type=float, default=None,
                   help="seconds of training between validation renders (30; more when validation would take "
                        "over train.val_max_share of the wall clock)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dist-timeout", type=_positive_float, default=300.0, metavar="S",
                   help="under torchrun: seconds a process waits for the others (rank 0 validates "
                   "and writes checkpoints meanwhile) before the run ends with an error")
    p.add_argument("--viewer", action="store_true",
                   help="watch training in the web viewer (needs viser); it stays open after training "
                   "until Ctrl-C")
    p.add_argument("--viewer-port", type=_port, default=8080, help="the viewer's port (0: any free one)")
    p.add_argument("--host", default="127.0.0.1", help=HOST_HELP)

    p = sub.add_parser("eval", help="evaluate a trained run (PSNR, SSIM, LPIPS, depth error) and save renders",
                       formatter_class=fmt)
    p.add_argument("run_dir")
    p.add_argument("--split", default="test")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-renders", action="store_true", help="do not save rgb/depth/opacity PNGs")
    p.add_argument("--every", type=_positive_int, default=1, help="score every N-th image only")
    p.add_argument("--appearance", default="mean", choices=["mean", "fit-left"],
                   help="held-out views of models with appearance embeddings: the mean embedding, or "
                   "a code fitted on the left half of each image with the right half scored")
    p.add_argument("--scenes", default=None, metavar="FOLDER",
                   help="models trained across scenes (pixelnerf): score the unseen scenes of FOLDER "
                   "(one Blender dataset per subfolder), each from --sources views of its training split")
    p.add_argument("--sources", type=_view_counts, default=(1, 2, 3), metavar="K,K,...",
                   help="with --scenes: numbers of source views, e.g. 1,2,3 (farthest-point views from view 0)")
    p.add_argument("--baked", default=None, metavar="DIR",
                   help="also score the baked MeRF in DIR (radfield export baked) on the same images: "
                   "RUN_DIR/metrics_baked.json, its PSNR printed beside the trained model's")

    p = sub.add_parser("render", help="render a camera-path video (MP4) of a trained run", formatter_class=fmt)
    p.add_argument("run_dir")
    p.add_argument("--path", default="orbit", metavar="orbit|test|time|FILE.json",
                   help="camera path: an orbit, the test cameras, a still camera playing a dynamic "
                   "scene's time, or a keyframe path saved by the viewer")
    p.add_argument("--out", default=None, help="output MP4 (default: RUN_DIR/<path>.mp4)")
    p.add_argument("--frames", type=_positive_int, default=None,
                   help="frames of the orbit (default 120) or of a keyframe path (default: the file's)")
    p.add_argument("--fps", type=_positive_int, default=None, help="frames per second (default 30, or the file's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    p = sub.add_parser("view", help="open a trained run in the web viewer (viser)", formatter_class=fmt,
                       description="Serve a web viewer of a trained run: renders from the browser's camera, "
                       "training cameras, scene box, render modes, and a camera-path editor whose JSON "
                       "`radfield render RUN_DIR --path FILE.json` renders.")
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1", help=HOST_HELP)
    p.add_argument("--port", type=_port, default=8080, help="port (0: any free one)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    p = sub.add_parser("localize", help="estimate the camera pose of an image against a trained run",
                       formatter_class=fmt,
                       description="Fit the pose of one camera to IMAGE against the run's frozen field "
                       "(Levenberg-Marquardt on se(3) over an image pyramid, iNeRF-style) and print it, "
                       "with the photometric error and, given --gt, the pose error. POSE: a JSON file with "
                       "a 3x4 or 4x4 camera-to-world matrix (OpenGL axes, the dataset's world coordinates; "
                       "or an object with transform_matrix), or SPLIT:INDEX, an image of the run's dataset.")
    p.add_argument("run_dir")
    p.add_argument("image", help="the photo (RGB, or RGBA composited over the run's evaluation background); "
                   "the intrinsics are the run's training camera's scaled to its size, or the --init image's")
    p.add_argument("--init", default=None, metavar="POSE",
                   help="the starting pose (default: the training view most like the image)")
    p.add_argument("--gt", default=None, metavar="POSE", help="the true pose: print the pose error")
    p.add_argument("--steps", type=_positive_int, default=60, help="Levenberg-Marquardt steps")
    p.add_argument("--rays", type=_positive_int, default=2048, help="random pixels per step")
    p.add_argument("--out", default=None, help="also write the result as JSON to this file")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    p = sub.add_parser("export", help="export a mesh (marching cubes), a point cloud or a baked MeRF of a "
                       "trained run", formatter_class=fmt)
    p.add_argument("kind", choices=["mesh", "pointcloud", "baked"])
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="output file: .ply, .obj or .glb (mesh); .ply (point cloud); "
                   "a folder (baked: PNG atlases and baked.json)")
    p.add_argument("--resolution", type=_positive_int, default=256, help="mesh: lattice vertices per axis")
    p.add_argument("--level", type=float, default=10.0, help="mesh: density of the surface")
    p.add_argument("--views", type=_positive_int, default=16, help="point cloud: training views rendered")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    p = sub.add_parser("demo", help="generate the built-in scene, train, evaluate and render it",
                       formatter_class=fmt)
    p.add_argument("--out", default="radfield-demo", help="output folder")
    p.add_argument("--max-time", type=_positive_float, default=120.0,
                   help="training seconds (validation excluded)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--hsm", action="store_true")

    p = sub.add_parser("process", help="turn photos or a video into a COLMAP dataset (structure from motion)",
                       formatter_class=fmt)
    p.add_argument("kind", choices=["images", "video", "colmap"],
                   help="colmap: an existing COLMAP dataset, rewritten as --format transforms (no SfM)")
    p.add_argument("input", help="folder of images, a video file, or a COLMAP dataset")
    p.add_argument("--out", default=None, help="dataset folder to write (images/ and sparse/); "
                   "required for images and video")
    p.add_argument("--format", default="colmap", choices=["colmap", "transforms"],
                   help="transforms: also write an Instant-NGP / nerfstudio transforms.json (+ sparse_pc.ply)")
    p.add_argument("--aabb-scale", type=_positive_int, default=16,
                   help="--format transforms: Instant-NGP's scene box, in unit cubes")
    p.add_argument("--matcher", default=None, choices=["exhaustive", "sequential"],
                   help="feature matching (default: exhaustive for images, sequential for video)")
    p.add_argument("--frames", type=_positive_int, default=100, help="video: frames to extract")
    p.add_argument("--max-image-size", type=_positive_int, default=None, help="downscale larger images for SfM")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")

    p = sub.add_parser("multiscale", help="build the 4-scale (1, 1/2, 1/4, 1/8) version of a Blender dataset",
                       formatter_class=fmt)
    p.add_argument("source", help="full-resolution Blender dataset")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true")
    return parser


def run_config_from_args(args) -> RunConfig:
    if args.model is not None:
        check_choice("--model", args.model, MODELS, "model")
    preset = args.preset or args.model or "ngp"
    check_choice("--preset", preset, PRESETS, "preset")
    config = apply_overrides(RunConfig(), PRESETS[preset])
    if args.model is not None and args.model != config.model:
        raise RadfieldError(f"--preset {preset} is for model {config.model!r}, not {args.model!r}")
    config.data.path = str(Path(args.data).resolve())
    config.data.downscale = args.downscale
    overrides = {"train.max_steps": args.max_steps, "train.max_time": args.max_time,
                 "train.max_time_wall": True if args.wall_time else None,
                 "train.seed": args.seed, "train.eval_every": args.eval_every,
                 "train.hsm.min_fraction": args.hsm_min_fraction,
                 "train.hsm.max_fraction": args.hsm_max_fraction, "train.hsm.ema": args.hsm_ema,
                 "train.loss": args.loss, "train.background": args.background,
                 "data.colmap_model": args.colmap_model, "data.train_views": args.train_views,
                 "train.depth.loss": args.depth_loss, "train.depth.weight": args.depth_weight,
                 "train.depth.eps": args.depth_eps, "train.depth.beta": args.depth_beta,
                 "train.depth.margin": args.depth_margin, "train.depth.all_levels": args.depth_all_levels,
                 "train.depth.l2_form": args.depth_l2_form, "train.depth.bounds_at": args.depth_bounds_at,
                 "data.depth_source": args.depth_source, "data.mono_depth": args.mono_depth}
    apply_overrides(config, {k: v for k, v in overrides.items() if v is not None})
    if args.hsm:
        config.train.hsm.enabled = True
    if args.pose_opt:
        config.train.pose_opt.enabled = True
    apply_overrides(config, dict(parse_override(item) for item in args.set))
    return config


def cmd_train(args) -> int:
    from radfield.training.distributed import process_group
    from radfield.training.multiscene import trainer_class

    config = run_config_from_args(args)
    out = Path(args.out or f"runs/{Path(args.data).resolve().name}-{config.model}")
    if not args.viewer and (args.host != "127.0.0.1" or args.viewer_port != 8080):
        raise RadfieldError("--host and --viewer-port are options of --viewer")

    def check_new_run() -> None:
        if not args.resume and ((out / "checkpoint.pt").exists() or (out / "config.json").exists()):
            raise RadfieldError(f"{out}: already holds a run (use --resume to continue it, or another --out)")
        if args.viewer:  # before the run directory is written
            from radfield.viewer.server import check_port_free, host_warning
            _warn(host_warning(args.host))
            check_port_free(args.host, args.viewer_port)

    limits = {"train.max_steps": args.max_steps, "train.max_time": args.max_time,
              "train.max_time_wall": True if args.wall_time else None}
    # Under torchrun: join the other processes (rank 0 checks --out, alone writes, prints and
    # serves the viewer).
    with process_group(_device(args.device), args.dist_timeout) as world:
        world.on_rank0(check_new_run)
        trainer = trainer_class(config, out, args.resume)(
            config, out, device=world.local_device(_device(args.device)), resume=args.resume,
            progress=not args.no_progress, overrides={k: v for k, v in limits.items() if v is not None})
        viewer = _start_training_viewer(trainer, args) if args.viewer and world.is_main else None
        t0 = time.time()
        try:
            history = trainer.train()
        except BaseException:
            if viewer is not None:
                viewer.close()
            raise
    if not world.is_main:
        return 0
    last = next((h for h in reversed(history) if "psnr" in h), None)
    msg = f"trained {trainer.state.step} steps in {time.time() - t0:.0f} s"
    if last:
        msg += f"; validation PSNR {last['psnr']:.2f} dB"
    print(f"{msg}\nrun directory: {out}", flush=True)
    if viewer is not None:
        from radfield.viewer.server import serve_until_interrupted
        viewer.training_finished()
        serve_until_interrupted(viewer, f"the viewer stays open at {viewer.url} until Ctrl-C")
    return 0


def _warn(message: str | None) -> None:
    if message:
        print(message, file=sys.stderr, flush=True)


def _start_training_viewer(trainer, args):
    from radfield.viewer.server import Viewer, ViewerOptions

    viewer = Viewer.for_trainer(trainer, ViewerOptions(host=args.host, port=args.viewer_port))
    print(f"radfield viewer: {viewer.url}", flush=True)
    return viewer


def cmd_view(args) -> int:
    from radfield.viewer.server import Viewer, ViewerOptions, host_warning, serve_until_interrupted

    _warn(host_warning(args.host))
    viewer = Viewer.from_run(args.run_dir, _device(args.device), ViewerOptions(host=args.host, port=args.port))
    serve_until_interrupted(viewer, f"radfield viewer: {viewer.url} (Ctrl-C to stop)")
    return 0


def cmd_eval(args) -> int:
    from radfield.evaluation.evaluate import evaluate_run, format_table

    if args.scenes is not None:
        from radfield.evaluation.unseen import evaluate_unseen, format_unseen_table

        if args.baked is not None or args.appearance != "mean":
            raise RadfieldError("--scenes: --baked and --appearance are options of single-scene runs")
        metrics = evaluate_unseen(args.run_dir, args.scenes, args.sources, args.split, _device(args.device),
                                  save_renders=not args.no_renders, every=args.every)
        print(format_unseen_table(metrics))
        print(f"wrote {Path(args.run_dir) / 'metrics.json'}")
        return 0
    baked = None
    if args.baked is not None:  # read the bake first: a bad folder fails before any render
        from radfield.export.baked import load_baked
        baked = load_baked(args.baked, _device(args.device))
    metrics = evaluate_run(args.run_dir, args.split, _device(args.device), save_renders=not args.no_renders,
                           every=args.every, appearance=args.appearance)
    print(format_table(metrics))
    if metrics["lpips"] is None:
        print("LPIPS: unavailable (weights not present locally)")
    print(f"wrote {Path(args.run_dir) / 'metrics.json'}")
    if baked is not None:
        scores = evaluate_run(args.run_dir, args.split, _device(args.device), save_renders=not args.no_renders,
                              every=args.every, model=baked, tag="baked")
        print(f"baked {args.baked}: PSNR {scores['psnr']:.2f} dB, trained {metrics['psnr']:.2f} dB "
              f"({scores['psnr'] - metrics['psnr']:+.2f} dB) on {scores['n_images']} {args.split} images")
        print(f"wrote {Path(args.run_dir) / 'metrics_baked.json'}")
    return 0


def cmd_localize(args) -> int:
    import json

    from radfield.evaluation.localize import PoseFitOptions, localize_image
    from radfield.io import atomic_write

    result = localize_image(args.run_dir, args.image, args.init, args.gt,
                            PoseFitOptions(steps=args.steps, rays_per_step=args.rays), _device(args.device))
    rows = "\n".join(" [" + ", ".join(f"{v: .6f}" for v in row) + "]" for row in result["c2w"])
    print(f"pose of {args.image} (camera-to-world, OpenGL axes, the dataset's world coordinates; "
          f"start: {result['start']}):\n[{rows[1:]}]")
    print(f"photometric error: MSE {result['mse']:.6f}, PSNR {result['psnr']:.2f} dB "
          f"(at the start: {result['start_psnr']:.2f} dB)")
    if "rotation_error_deg" in result:
        print(f"error against --gt: rotation {result['rotation_error_deg']:.3f} deg, translation "
              f"{result['translation_error']:.5f} ({100 * result['translation_error_fraction']:.2f} % of the "
              "scene's size)")
    if args.out:
        with atomic_write(args.out) as tmp:
            doc = dict(result)
            doc["transform_matrix"] = doc.pop("c2w")
            tmp.write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.out}")
    return 0


def cmd_render(args) -> int:
    from radfield.export.render_video import render_video

    out = Path(args.out or Path(args.run_dir) / f"{Path(args.path).stem}.mp4")
    n = render_video(args.run_dir, out, args.path, args.frames, args.fps, _device(args.device))
    print(f"wrote {out} ({n} frames)")
    return 0


def cmd_export(args) -> int:
    from radfield.export.mesh import export_mesh, export_pointcloud

    if args.kind == "baked":
        from radfield.export.baked import export_baked

        info = export_baked(args.run_dir, args.out, _device(args.device))
        print(f"wrote {info['path']} ({len(info['files'])} files, {info['bytes'] / 1e6:.1f} MB of grids before "
              f"PNG compression); score it with: radfield eval {args.run_dir} --baked {info['path']}")
        return 0
    if args.kind == "mesh":
        info = export_mesh(args.run_dir, args.out, args.resolution, args.level, _device(args.device))
        print(f"wrote {info['path']} ({info['vertices']} vertices, {info['faces']} faces, world coordinates)")
    else:
        info = export_pointcloud(args.run_dir, args.out, args.views, _device(args.device))
        normals = ", normals" if info["normals"] else ""
        print(f"wrote {info['path']} ({info['points']} points{normals}, world coordinates)")
    return 0


def cmd_demo(args) -> int:
    from radfield.data.synthetic import make_scene
    from radfield.evaluation.evaluate import evaluate_run, format_table
    from radfield.export.render_video import render_video
    from radfield.training.trainer import Trainer

    out = Path(args.out)
    t0 = time.time()
    data = make_scene(out / "scene")
    print(f"[1/4] built-in scene written to {data} ({time.time() - t0:.1f} s)")
    config = apply_overrides(RunConfig(), PRESETS["ngp-small"])
    config.data.path = str(data.resolve())
    config.train.max_time = args.max_time
    config.train.hsm.enabled = args.hsm
    run = out / "run"
    print(f"[2/4] training Instant-NGP for {args.max_time:.0f} s -> {run}")
    Trainer(config, run, device=_device(args.device)).train()
    print("[3/4] evaluating on the test split")
    metrics = evaluate_run(run, "test", _device(args.device))
    print(format_table(metrics))
    video = run / "orbit.mp4"
    print(f"[4/4] rendering an orbit video -> {video}")
    render_video(run, video, "orbit", n_frames=60, device=_device(args.device))
    print(f"\ndone in {time.time() - t0:.0f} s. Test PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}.\n"
          f"  scene:    {data}\n  run:      {run} (checkpoint.pt, config.json, training_curve.png, tensorboard/)\n"
          f"  metrics:  {run / 'metrics.json'}\n  renders:  {run / 'renders' / 'test'}\n  video:    {video}")
    return 0


def cmd_process(args) -> int:
    from radfield.data.process import format_report, process_images, process_video

    from radfield.data.transforms_writer import write_transforms

    if args.kind == "colmap":
        if args.format != "transforms":
            raise RadfieldError("process colmap: the input is a COLMAP dataset already (add --format transforms)")
        out = write_transforms(args.input, args.aabb_scale)
        print(f"wrote {out} (Instant-NGP / nerfstudio format)")
        return 0
    if args.out is None:
        raise RadfieldError(f"process {args.kind}: --out is required")
    common = {"max_image_size": args.max_image_size, "overwrite": args.overwrite}
    if args.kind == "images":
        report = process_images(args.input, args.out, matcher=args.matcher or "exhaustive", **common)
    else:
        if args.matcher not in (None, "sequential"):
            raise RadfieldError("--matcher: video frames are always matched sequentially")
        report = process_video(args.input, args.out, n_frames=args.frames, **common)
    print(format_report(report))
    if args.format == "transforms":
        print(f"wrote {write_transforms(args.out, args.aabb_scale)} (Instant-NGP / nerfstudio format)")
    print(f"dataset: {args.out} (train with: radfield train {args.out} --model nerfacto)")
    return 0


def cmd_multiscale(args) -> int:
    from radfield.data.multiscale import make_multiscale

    out = make_multiscale(args.source, args.out, overwrite=args.overwrite)
    print(f"wrote the multi-scale dataset {out} (scales 1, 2, 4, 8)")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "render": cmd_render, "view": cmd_view, "export": cmd_export,
            "localize": cmd_localize, "demo": cmd_demo,
            "process": cmd_process, "multiscale": cmd_multiscale}


_default_formatwarning = warnings.formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """radfield's own warnings in one line; other libraries' as Python prints them."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        return f"radfield: warning: {message}\n"
    return _default_formatwarning(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning  # data readers' notes (skipped frames, ...) in one line
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        return COMMANDS[args.command](args)
    except RankZeroError:  # a torchrun process other than rank 0: rank 0 prints the error
        return 2
    except PeerLost as exc:  # another process of a torchrun run died or stopped answering
        print(f"radfield: error: {exc}", file=sys.stderr)
        return 1
    except RadfieldError as exc:
        print(f"radfield: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("radfield: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
