"""Object detection on the SkySense ``hr`` pyramid (paper Sec. 4.3: DIOR with Faster R-CNN, DIOR-R and FAIR1M
with Oriented R-CNN).

One sample convention for every reader and model:

- ``sample["hr"]``: (3, H, W) float image, normalised like the encoder's ``hr`` input.
- ``sample["boxes"]``: (N, 4) horizontal boxes ``x1, y1, x2, y2`` in pixels, or (N, 5) oriented boxes
  ``cx, cy, w, h, angle`` in pixels and radians.
- ``sample["labels"]``: (N,) int64 class indices; ``sample["difficult"]``: (N,) bool (ignored by the DOTA AP).
- ``sample["image_id"]``: the image's file stem.

Angle convention of oriented boxes: ``angle`` is measured from the image's +x axis (columns) towards its +y
axis (rows, which point down), so a positive angle turns clockwise on screen; ``w`` is the side along
``angle``. Canonical form (``boxes.canonical_obb``): ``angle`` in [-pi/2, pi/2). A box equals itself turned
by pi, and ``(w, h, angle)`` equals ``(h, w, angle + pi/2)``.

Detectors return, in eval mode, one dict per image ``{"boxes", "scores", "labels"}`` in input pixels; in
train mode, given targets, a dict of named losses.
"""
