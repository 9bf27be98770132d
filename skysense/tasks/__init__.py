"""Downstream tasks of SkySense (paper Sec. 4): scene classification (single- and multi-label), semantic
segmentation, change detection and multi-modal time-series segmentation and classification.

Each task is a small head over the encoder's named outputs (``hr`` pyramid, ``s2``/``s1`` series,
``fused`` map; :mod:`skysense.tasks.heads`) trained with layer-wise learning-rate decay or a frozen or
partly frozen encoder (:mod:`skysense.tasks.layer_decay`).
"""
