"""``skysense embed`` and ``skysense predict``: large GeoTIFF scenes, tiled, resumable, under torchrun too
(:mod:`skysense.inference`). Registered by ``skysense.cli`` through :func:`add_commands`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from skysense.cli import COMMANDS

TILING_HELP = (
    "Tiles overlap by --overlap pixels and are blended with linear ramps; a killed run resumes where it "
    "stopped when the same command is run again (OUT appears only when complete). Under `torchrun "
    "--nproc_per_node N` (or several machines: --nnodes, --node_rank, --rdzv_endpoint, with OUT on a "
    "shared file system) the ranks split the tile rows and rank 0 writes OUT."
)


def _device(name: str) -> str:
    import os

    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return name


def _finish(summary: object, png: Path | None = None) -> int:
    import torch.distributed as dist

    from skysense.inference_files import Summary, quicklook

    assert isinstance(summary, Summary)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        if png is not None and summary.tiles:
            quicklook(summary.out, png)
            print(f"quick-look: {png}")
        print(summary.line())
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _guarded(run: Callable[[], object], out: str) -> object:
    """``run()``, with an I/O failure (a full disk, an unreadable file) said plainly: a rerun goes on."""
    try:
        return run()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ValueError(
            f"{e}: reading the inputs or writing {out} failed (a full disk? an unreadable file?); fix it and "
            "rerun the same command: the finished tile rows are kept"
        ) from e


def _embed(args: argparse.Namespace) -> int:
    import dataclasses

    from skysense.checkpoint import read_meta
    from skysense.inference import encoder_head, infer

    head = encoder_head(args.weights, args.level, _device(args.device), args.precision)
    settings = {"level": args.level, "precision": args.precision}
    scene: object = [args.input]
    stacks = {m: getattr(args, m) for m in ("s2", "s1") if getattr(args, m)}
    if stacks:
        from skysense.inference_stack import StackScene

        if args.level != "fused":
            raise ValueError("--s2/--s1 stacks give the fused map: drop --level (or use it with hr alone)")
        bands = {m: len(spec.bands) for m, spec in read_meta(args.weights).modalities.items()}
        scene = StackScene(args.input, stacks, bands)
        if not args.input:  # the fused map on the first stack's grid: one cell per pixel
            head = dataclasses.replace(head, stride=1)
    elif not args.input:
        raise ValueError("give an hr GeoTIFF and/or --s2/--s1 stack folders")
    return _finish(
        _guarded(lambda: infer(
            scene, args.out, head, model_file=args.weights, tile=args.tile, overlap=args.overlap,
            batch=args.batch_size, progress=not args.quiet, overwrite=args.overwrite, settings=settings,
            cog=args.cog,
        ), args.out)
    )  # fmt: skip


def _predict(args: argparse.Namespace) -> int:
    from skysense.inference import infer, task_head

    head = task_head(args.checkpoint, args.tile, _device(args.device), args.precision)
    if len(args.inputs) != len(head.inputs):
        raise ValueError(
            f"the checkpoint's task takes {len(head.inputs)} input(s) ({', '.join(head.inputs)}), "
            f"got {len(args.inputs)}"
        )
    out = Path(args.out)
    summary = _guarded(lambda: infer(
        args.inputs, out, head, model_file=args.checkpoint, tile=args.tile, overlap=args.overlap,
        batch=args.batch_size, progress=not args.quiet, overwrite=args.overwrite,
        settings={"precision": args.precision}, cog=args.cog,
    ), args.out)  # fmt: skip
    return _finish(summary, out.with_suffix(".png"))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output GeoTIFF (its folder must exist)")
    p.add_argument("--tile", type=int, default=512, help="tile side in input pixels, a multiple of 32")
    p.add_argument("--overlap", type=int, default=64, help="overlap of neighbouring tiles (multiple of 32)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward")
    p.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16"), help="auto: bf16 where native"
    )
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="= --precision bf16")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (cuda:LOCAL_RANK under torchrun)")
    p.add_argument("--overwrite", action="store_true", help="recompute even where OUT exists")
    p.add_argument("--cog", action="store_true", help="write OUT as a Cloud-Optimised GeoTIFF (deflate)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help=COMMANDS["embed"][1],
        description="Write the fused map (stride 32) or an hr pyramid level as a float32 GeoTIFF on the "
        "input grid scaled by the stride, one band per channel plus 'valid' (fraction of valid input "
        "pixels). With --s2/--s1 stacks (any CRS and grid) the inputs are aligned onto the hr grid (or the "
        "first stack's) where all of them overlap. " + TILING_HELP,
    )
    p.add_argument("input", nargs="?", metavar="INPUT", help="an hr GeoTIFF (bands as the weights expect)")
    for m, sensor in (("s2", "Sentinel-2"), ("s1", "Sentinel-1, dB")):
        p.add_argument(
            f"--{m}", metavar="FOLDER", help=f"{sensor} stack: one GeoTIFF per date, the date in its name"
        )
    p.add_argument("--weights", required=True, help="encoder .safetensors (skysense convert / export)")
    p.add_argument("--level", default="fused", choices=("fused", "hr1", "hr2", "hr3", "hr4"))
    _common(p)
    p.set_defaults(func=_embed)
    p = sub.add_parser(
        "predict",
        help=COMMANDS["predict"][1],
        description="Segmentation: bands class, confidence; change (two inputs, before and after, on one "
        "grid): change, probability; scene classification: class, confidence and one score per class "
        "for each tile (one cell per --tile pixels). A PNG of band 1 is written beside OUT. " + TILING_HELP,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="an hr GeoTIFF; for change: BEFORE AFTER")
    p.add_argument("--checkpoint", required=True, help="RUN/best.ckpt of `skysense finetune`")
    _common(p)
    p.set_defaults(func=_predict)
