"""``skysense embed`` and ``skysense predict``: large GeoTIFF scenes and dated s2/s1 stacks, tiled,
resumable, under torchrun too, into a GeoTIFF, a COG or a Zarr store (:mod:`skysense.inference`).
Registered by ``skysense.cli`` through :func:`add_commands`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from skysense.cli import COMMANDS
from skysense.runtime import add_precision_argument

CLOUD_HELP = (
    "; cloudy pixels (a last band described SCL or CLM, or a sidecar <date file>_cloud.tif, non-zero = "
    "cloud) leave their date out of the fusion there"
)
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


def _stacks(args: argparse.Namespace, hr: str | None, bands: dict[str, int]) -> object | None:
    """The scene of ``--s2``/``--s1`` stacks (with the hr image ``hr``), or None without stacks."""
    stacks = {m: getattr(args, m) for m in ("s2", "s1") if getattr(args, m)}
    if not stacks:
        return None
    from skysense.inference_stack import StackScene

    return StackScene(hr, stacks, bands)


def _run(args: argparse.Namespace, scene: object, head: object, model: str, settings: dict) -> object:
    from skysense.inference import infer

    return _guarded(lambda: infer(
        scene, args.out, head, model_file=model, tile=args.tile, overlap=args.overlap,  # type: ignore[arg-type]
        batch=args.batch_size, progress=not args.quiet, overwrite=args.overwrite, settings=settings,
        fmt=args.format,
    ), args.out)  # fmt: skip


def _embed(args: argparse.Namespace) -> int:
    import dataclasses

    from skysense.checkpoint import read_meta
    from skysense.inference import encoder_head
    from skysense.runtime import kernels

    device = _device(args.device)
    head = encoder_head(args.weights, args.level, device, args.precision)
    settings = {"level": args.level, "precision": args.precision, **kernels(args.precision, device)}
    if (args.s2 or args.s1) and args.level != "fused":
        raise ValueError("--s2/--s1 stacks give the fused map: drop --level (or use it with hr alone)")
    bands = {m: len(spec.bands) for m, spec in read_meta(args.weights).modalities.items()}
    scene = _stacks(args, args.input, bands)
    if scene is not None and not args.input:  # the fused map on the first stack's grid: one cell a pixel
        head = dataclasses.replace(head, stride=1)
    if scene is None and not args.input:
        raise ValueError("give an hr GeoTIFF and/or --s2/--s1 stack folders")
    return _finish(_run(args, scene or [args.input], head, args.weights, settings))


def _predict(args: argparse.Namespace) -> int:
    from skysense.detection.predict import is_detection_checkpoint, predict_cli
    from skysense.inference import task_head
    from skysense.runtime import kernels

    if is_detection_checkpoint(args.checkpoint):  # boxes: GeoJSON / DOTA / COCO (skysense.detection.predict)
        return predict_cli(args)
    head = task_head(args.checkpoint, args.tile, _device(args.device), args.precision, args.stats)
    settings = {"precision": args.precision, **kernels(args.precision, _device(args.device))}
    settings.update({"stats": str(args.stats)} if args.stats else {})
    multi = any(m in head.inputs for m in ("s2", "s1"))
    if (args.s2 or args.s1 or multi) and (not multi or len(args.inputs) > 1):
        raise ValueError(
            f"{args.checkpoint}: this checkpoint reads {', '.join(head.inputs)}; --s2/--s1 stacks "
            "(with at most one hr image) go with multi-modal segmentation checkpoints"
        )
    if not multi and len(args.inputs) != len(head.inputs):
        raise ValueError(
            f"the checkpoint's task takes {len(head.inputs)} input(s) ({', '.join(head.inputs)}), "
            f"got {len(args.inputs)}"
        )
    scene: object = args.inputs
    if multi:  # any of hr, s2, s1 that the model takes
        from skysense.inference_stack import StackScene

        stacks = {m: getattr(args, m) for m in ("s2", "s1") if getattr(args, m)}
        scene = StackScene(args.inputs[0] if args.inputs else None, stacks, head.modality_bands)
    summary = _run(args, scene, head, args.checkpoint, settings)
    return _finish(summary, Path(args.out).with_suffix(".png"))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output GeoTIFF or Zarr store (its folder must exist)")
    p.add_argument("--tile", type=int, default=512, help="tile side in input pixels, a multiple of 32")
    p.add_argument("--overlap", type=int, default=64, help="overlap of neighbouring tiles (multiple of 32)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward")
    add_precision_argument(p)
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="= --precision bf16")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (cuda:LOCAL_RANK under torchrun)")
    p.add_argument("--overwrite", action="store_true", help="recompute even where OUT exists")
    p.add_argument(
        "--format", default="gtiff", choices=("gtiff", "cog", "zarr"),
        help="OUT as a GeoTIFF, a Cloud-Optimised GeoTIFF (deflate) or a Zarr store (pip install "
        "skysense[zarr]): the same bands, CRS, transform and tags",
    )  # fmt: skip
    p.add_argument("--cog", dest="format", action="store_const", const="cog", help="= --format cog")
    for m, sensor in (("s2", "Sentinel-2"), ("s1", "Sentinel-1, dB")):
        p.add_argument(
            f"--{m}", metavar="FOLDER", help=f"{sensor} stack: one GeoTIFF per date, the date in its name"
            + (CLOUD_HELP if m == "s2" else "")
        )  # fmt: skip
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
    p.add_argument("--weights", required=True, help="encoder .safetensors (skysense convert / export)")
    p.add_argument("--level", default="fused", choices=("fused", "hr1", "hr2", "hr3", "hr4"))
    _common(p)
    p.set_defaults(func=_embed)
    p = sub.add_parser(
        "predict",
        help=COMMANDS["predict"][1],
        description="Segmentation: bands class, confidence; change (two inputs, before and after, on one "
        "grid): change, probability; scene classification: class, confidence and one score per class "
        "for each tile (one cell per --tile pixels). Segmentation checkpoints of s2/s1 models (input fused) "
        "run over --s2/--s1 stacks (with an hr image where the model takes one), aligned as in embed. A PNG "
        "of band 1 is written beside OUT. Detection checkpoints: boxes over tiles merged across their "
        "borders (--overlap at least the largest object), OUT .geojson (polygons in the image's CRS), .txt "
        "(DOTA labelTxt) or .json (COCO). " + TILING_HELP,
    )
    p.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="an hr GeoTIFF; for change: BEFORE AFTER; none with stacks"
    )
    p.add_argument("--checkpoint", required=True, help="RUN/best.ckpt of `skysense finetune`")
    p.add_argument(
        "--stats", metavar="FILE", help="normalisation statistics (`skysense stats --out`) of inputs the "
        "checkpoint has none for (e.g. a 1-band NDVI stack)",
    )  # fmt: skip
    _common(p)
    p.set_defaults(func=_predict)
