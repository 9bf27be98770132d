"""The one training loop of the library, shared by pre-training and fine-tuning.

A run is an :class:`~skysense.engine.config.EngineConfig` (steps, optimiser, schedules, precision,
strategy, checkpoints, outputs) and a task object (:class:`~skysense.engine.loop.Task`: its model,
its data, its step, its monitors). :func:`~skysense.engine.loop.fit` does the rest:

- ``config``: config dataclasses from YAML + ``key=value`` overrides, range checks, config diffs;
- ``schedules``: warm-up + cosine learning rate, cosine weight decay, linear ramps;
- ``state``: atomic checkpoints, every random state, optimiser state keyed by parameter name;
- ``distributed``: torchrun process groups, DDP / FSDP2 wrapping, ``torch.compile``;
- ``metrics``: ``metrics.csv`` (resumed without duplicates), TensorBoard, progress bar, loss curve.
"""

from skysense.engine.config import EngineConfig, apply_overrides, load_config
from skysense.engine.loop import StepOutput, Task, fit

__all__ = ["EngineConfig", "StepOutput", "Task", "apply_overrides", "fit", "load_config"]
