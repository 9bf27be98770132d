"""Command line of the data layer: ``skysense data inspect PATH`` and ``skysense stats PATH``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from skysense.bands import save_stats
from skysense.runtime import add_threads_argument, apply_threads


def _inspect(args: argparse.Namespace) -> int:
    from skysense.data.inspect import format_report, inspect, usable

    apply_threads(args.threads)
    report = inspect(args.path, layout=args.layout, max_samples=args.samples)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if usable(report) == 0:  # every file or sample checked is one the readers refuse
        print(f"error: nothing usable in {args.path}: see the problems above", file=sys.stderr)
        return 1
    if args.png:
        from skysense.data.quicklook import montage

        montage(args.path, args.png, layout=args.layout)
        if not args.json:
            print(f"quick-look written to {args.png}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from skysense.data.inspect import detect_layout, open_dataset
    from skysense.data.stats import compute_stats

    apply_threads(args.threads)
    kwargs = {"modality": args.modality} if args.modality else {}
    if kwargs and (args.layout or detect_layout(args.path)) != "rasters":
        raise ValueError(
            "--modality names the statistics of loose rasters (a GeoTIFF or a folder of them) only"
        )
    ds = open_dataset(args.path, args.layout, **kwargs)
    stats, counts = compute_stats(ds, max_samples=args.max_samples, progress=not args.json)
    out = {mod: {**asdict(st), "valid_pixels": counts[mod]} for mod, st in stats.items()}
    if args.out:
        save_stats(stats, args.out)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for mod, st in stats.items():
            print(f"{mod} ({counts[mod]} valid pixels)")
            for b, m, s in zip(st.bands, st.mean, st.std):
                print(f"  {b:>8}: mean {m:12.4f}  std {s:12.4f}")
        if args.out:
            print(f"written to {args.out} (use with skysense.data.Normalize({str(args.out)!r}))")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``data`` (``data inspect``) and ``stats`` on the top-level subparsers."""
    data = sub.add_parser(
        "data",
        help="inspect a data folder or file: layout, bands, dates, CRS, problems",
        description="Inspect data the library can read.",
    )
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    dsub.required = True
    p = dsub.add_parser(
        "inspect",
        help="detect the layout of PATH; report samples, modalities, bands, sizes, dates, CRS, problems",
        description="Detect the layout of PATH (a folder or file) and report what the library will see.",
    )
    p.add_argument("path", type=Path, help="folder or file (GeoTIFF, .npz) to inspect")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--layout", default=None, help="force a layout instead of detecting it")
    p.add_argument(
        "--samples", type=int, default=8, help="samples to read and check (default 8; 0 = every sample)"
    )
    p.add_argument(
        "--png", type=Path, default=None, help="write a quick-look montage of a few samples to this PNG"
    )
    add_threads_argument(p)
    p.set_defaults(func=_inspect)
    s = sub.add_parser(
        "stats",
        help="per-band mean/std of the valid pixels of a dataset or rasters (for Normalize)",
        description="Compute per-band mean and std of every modality over the valid pixels of PATH: a "
        "dataset folder, a GeoTIFF or a folder of loose rasters (of one sensor: the same bands).",
    )
    s.add_argument("path", type=Path, help="dataset folder, raster file or folder of rasters")
    s.add_argument("--json", action="store_true", help="print the statistics as JSON")
    s.add_argument("--out", type=Path, default=None, help="write the statistics to this JSON file")
    s.add_argument("--layout", default=None, help="force a layout instead of detecting it")
    s.add_argument(
        "--max-samples", type=int, default=None, help="use at most this many evenly spaced samples"
    )
    s.add_argument(
        "--modality",
        choices=("hr", "s2", "s1"),
        default=None,
        help="for loose rasters: the modality the statistics are for (default hr)",
    )
    add_threads_argument(s)
    s.set_defaults(func=_stats)
