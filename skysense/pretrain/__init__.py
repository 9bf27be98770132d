"""Self-supervised pre-training of SkySense (paper Sec. 3.2): views, heads, losses, EMA teacher, one step.

- :mod:`~skysense.pretrain.views`: two augmented views with exact geometry and cell correspondence;
- :mod:`~skysense.pretrain.heads`: DINO projection heads (one per feature stream) and the CMA projection;
- :mod:`~skysense.pretrain.losses`: Sinkhorn-Knopp, L_CL, MGCL (pixel/object/image), CMA, GCPL update;
- :mod:`~skysense.pretrain.teacher`: EMA teacher, momentum schedule, collapse monitors;
- :mod:`~skysense.pretrain.step`: :func:`~skysense.pretrain.step.pretrain_step` wiring them together.
"""

from skysense.pretrain.heads import HeadConfig, ProjectionHeads
from skysense.pretrain.losses import LossConfig
from skysense.pretrain.step import Centers, PretrainConfig, StepOutput, Student, build_pretrain, pretrain_step
from skysense.pretrain.teacher import collapse_monitors, cosine_momentum, ema_update_, make_teacher
from skysense.pretrain.views import Geometry, View, ViewConfig, correspondence, make_views

__all__ = [
    "Centers",
    "Geometry",
    "HeadConfig",
    "LossConfig",
    "PretrainConfig",
    "ProjectionHeads",
    "StepOutput",
    "Student",
    "View",
    "ViewConfig",
    "build_pretrain",
    "collapse_monitors",
    "correspondence",
    "cosine_momentum",
    "ema_update_",
    "make_teacher",
    "make_views",
    "pretrain_step",
]
