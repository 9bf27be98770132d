"""Data layer of SkySense: readers of real remote-sensing files, datasets of the standard layouts, transforms.

A sample is a dict of tensors keyed by modality::

    hr        float32 (C, H, W)       0-255            hr_invalid  bool (H, W)
    s2        float32 (T, C, H, W)    reflectance DN   s2_invalid  bool (T, H, W)   s2_dates int64 (T,)
    s1        float32 (T, C, H, W)    dB               s1_invalid  bool (T, H, W)   s1_dates int64 (T,)
    lat, lon  float64 ()              WGS84 degrees
    label     int64 () or float32 multi-hot (K,)       target int64 (H, W), -1 = ignore
    hr_pre, hr_post (C, H, W) for change pairs         meta  dict (paths, crs, transform, nodata, bands, id)

Dates are days since 1970-01-01 (:mod:`skysense.dates`). ``*_invalid`` is True on nodata, NaN and
cloud pixels, which hold 0. :func:`collate` pads series to the batch's longest T and adds
``{mod}_mask`` (B, T), True on padded steps.
"""

from skysense.data.collate import collate
from skysense.data.datasets import (
    BigEarthNetMM,
    ChangeDetection,
    EOPatchDataset,
    GeoDataset,
    PixelTimeSeries,
    SceneClassification,
    Segmentation,
    Sen1Floods11,
)
from skysense.data.readers import (
    Raster,
    linear_to_db,
    load_npy_series,
    read_image,
    read_raster,
    read_s1,
    read_s2_bandset,
    read_series,
    resample,
)
from skysense.data.splits import split_of
from skysense.data.transforms import CenterCrop, Compose, Normalize, RandomCrop, RandomFlip, SubsampleTime

__all__ = [
    "BigEarthNetMM",
    "CenterCrop",
    "ChangeDetection",
    "Compose",
    "EOPatchDataset",
    "GeoDataset",
    "Normalize",
    "PixelTimeSeries",
    "RandomCrop",
    "RandomFlip",
    "Raster",
    "SceneClassification",
    "Segmentation",
    "Sen1Floods11",
    "SubsampleTime",
    "collate",
    "linear_to_db",
    "load_npy_series",
    "read_image",
    "read_raster",
    "read_s1",
    "read_s2_bandset",
    "read_series",
    "resample",
    "split_of",
]
