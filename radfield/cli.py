"""The ``radfield`` command line: train, eval, render, demo.

Bad input (a missing file, a malformed dataset, an unknown option value) is reported as one line,
``radfield: error: <file or option>: <problem>``, with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from radfield.config import MODELS, PRESETS, RunConfig, apply_overrides
from radfield.errors import RadfieldError


def _device(name: str) -> str:
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as the one-line ``radfield: error: ...`` and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"radfield: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="radfield", description="Train, evaluate and render neural radiance fields.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("train", help="train a radiance field on a posed-image dataset", formatter_class=fmt,
                       description="Train a radiance field. Models: " + ", ".join(MODELS)
                       + ". Presets: " + ", ".join(PRESETS) + ".")
    p.add_argument("data", help="dataset folder (Blender transforms_{split}.json or Instant-NGP transforms.json)")
    p.add_argument("--model", default="ngp", help=f"model: {', '.join(MODELS)}")
    p.add_argument("--preset", default=None, help=f"named preset: {', '.join(PRESETS)} (default: the model's name)")
    p.add_argument("--downscale", type=_positive_int, default=1, help="integer image downscale factor")
    p.add_argument("--out", default=None, help="run directory (default: runs/<dataset>-<model>)")
    p.add_argument("--max-steps", type=_positive_int, default=None, help="step limit (default 20000)")
    p.add_argument("--max-time", type=float, default=None, help="wall-clock training limit in seconds")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--hsm", action="store_true", help="hard sample mining (two-pass step, see README)")
    p.add_argument("--hsm-min-fraction", type=float, default=None, help="lower bound of kept samples b/B (0.05)")
    p.add_argument("--hsm-max-fraction", type=float, default=None, help="upper bound of kept samples b/B (0.5)")
    p.add_argument("--hsm-ema", type=float, default=None, help="EMA decay of the hardness concentration (0.99)")
    p.add_argument("--seed", type=int, default=None, help="random seed (0)")
    p.add_argument("--eval-every", type=float, default=None, help="seconds of training between validation renders (30)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("eval", help="evaluate a trained run (PSNR, SSIM, LPIPS) and save test renders",
                       formatter_class=fmt)
    p.add_argument("run_dir")
    p.add_argument("--split", default="test")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-renders", action="store_true", help="do not save rgb/depth/opacity PNGs")
    p.add_argument("--every", type=_positive_int, default=1, help="score every N-th image only")

    p = sub.add_parser("render", help="render a camera-path video (MP4) of a trained run", formatter_class=fmt)
    p.add_argument("run_dir")
    p.add_argument("--path", default="orbit", choices=["orbit", "test"], help="camera path")
    p.add_argument("--out", default=None, help="output MP4 (default: RUN_DIR/<path>.mp4)")
    p.add_argument("--frames", type=_positive_int, default=120, help="frames of the orbit")
    p.add_argument("--fps", type=_positive_int, default=30)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    p = sub.add_parser("demo", help="generate the built-in scene, train, evaluate and render it",
                       formatter_class=fmt)
    p.add_argument("--out", default="radfield-demo", help="output folder")
    p.add_argument("--max-time", type=float, default=120.0, help="training seconds")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--hsm", action="store_true")
    return parser


def run_config_from_args(args) -> RunConfig:
    if args.model not in MODELS:
        raise RadfieldError(f"--model: unknown model {args.model!r} (choose from: {', '.join(MODELS)})")
    preset = args.preset or args.model
    if preset not in PRESETS:
        raise RadfieldError(f"--preset: unknown preset {preset!r} (choose from: {', '.join(PRESETS)})")
    config = apply_overrides(RunConfig(model=args.model), PRESETS[preset])
    config.data.path = str(Path(args.data).resolve())
    config.data.downscale = args.downscale
    overrides = {"train.max_steps": args.max_steps, "train.max_time": args.max_time,
                 "train.seed": args.seed, "train.eval_every": args.eval_every,
                 "train.hsm.min_fraction": args.hsm_min_fraction,
                 "train.hsm.max_fraction": args.hsm_max_fraction, "train.hsm.ema": args.hsm_ema}
    apply_overrides(config, {k: v for k, v in overrides.items() if v is not None})
    config.train.hsm.enabled = args.hsm
    return config


def cmd_train(args) -> int:
    from radfield.training.trainer import Trainer

    config = run_config_from_args(args)
    out = Path(args.out or f"runs/{Path(args.data).resolve().name}-{args.model}")
    if not args.resume and (out / "checkpoint.pt").exists():
        raise RadfieldError(f"{out}: already holds a run (use --resume to continue it, or another --out)")
    limits = {"train.max_steps": args.max_steps, "train.max_time": args.max_time}
    trainer = Trainer(config, out, device=_device(args.device), resume=args.resume,
                      progress=not args.no_progress,
                      overrides={k: v for k, v in limits.items() if v is not None})
    t0 = time.time()
    history = trainer.train()
    last = next((h for h in reversed(history) if "psnr" in h), None)
    msg = f"trained {trainer.state.step} steps in {time.time() - t0:.0f} s"
    if last:
        msg += f"; validation PSNR {last['psnr']:.2f} dB"
    print(f"{msg}\nrun directory: {out}")
    return 0


def cmd_eval(args) -> int:
    from radfield.evaluation.evaluate import evaluate_run, format_table

    metrics = evaluate_run(args.run_dir, args.split, _device(args.device), save_renders=not args.no_renders,
                           every=args.every)
    print(format_table(metrics))
    if metrics["lpips"] is None:
        print("LPIPS: unavailable (weights not present locally)")
    print(f"wrote {Path(args.run_dir) / 'metrics.json'}")
    return 0


def cmd_render(args) -> int:
    from radfield.export.render_video import render_video

    out = Path(args.out or Path(args.run_dir) / f"{args.path}.mp4")
    n = render_video(args.run_dir, out, args.path, args.frames, args.fps, _device(args.device))
    print(f"wrote {out} ({n} frames)")
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


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "render": cmd_render, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except RadfieldError as exc:
        print(f"radfield: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
