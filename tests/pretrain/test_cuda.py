"""The pre-training step on a CUDA device: the CPU's numbers in fp32, close ones under bf16 autocast.

Skipped without a GPU (CI has none); the trainer's own tests (test_trainer.py) run on the GPU by
themselves where one is present, since the loop picks CUDA when it is available.
"""

import contextlib
import copy

import pytest
import torch

from skysense.models.skysense import build_model
from skysense.pretrain.step import build_pretrain, pretrain_step

from .test_step import make_batch, make_cfg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@contextlib.contextmanager
def no_tf32():
    """fp32 matmuls and convolutions in true fp32 (TF32 would round inputs to 10 mantissa bits)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def built_on(device: str, cfg, checkpointing: bool = False):
    """Student, teacher, centres (seed 0) and the test batch, on ``device``."""
    torch.manual_seed(0)
    model = build_model("tiny")
    model.set_grad_checkpointing(checkpointing)
    student, teacher, centers = (m.to(device) for m in build_pretrain(model, cfg))
    return student, teacher, centers, {k: v.to(device) for k, v in make_batch().items()}


def step_on(device: str, bf16: bool = False, checkpointing: bool = False, **loss):
    """Losses and gradients of one step of the tiny model, same weights, batch and views on any device."""
    cfg = make_cfg(**loss)
    student, teacher, centers, batch = built_on(device, cfg, checkpointing)
    student.eval()  # no drop-path: CPU and CUDA random streams differ
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        out = pretrain_step(student, teacher, centers, batch, cfg, torch.Generator().manual_seed(1)).losses
    out["loss"].backward()
    losses = {k: float(v.detach()) for k, v in out.items()}
    grads = {n: p.grad.detach().cpu().double() for n, p in student.named_parameters() if p.grad is not None}
    return losses, grads


def close(a: dict, b: dict, rtol: float, atol: float = 1e-8) -> list[str]:
    """Names whose values (or gradients) differ by more than rtol of their own size plus atol."""
    bad = [k for k in a if k not in b]
    for k in a.keys() & b.keys():
        x, y = torch.as_tensor(a[k], dtype=torch.float64), torch.as_tensor(b[k], dtype=torch.float64)
        if (x - y).norm() > rtol * y.norm() + atol:
            bad.append(k)
    return sorted(bad)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_fp32_step_on_cuda_matches_the_cpu(checkpointing):
    with no_tf32():
        cpu_losses, cpu_grads = step_on("cpu")
        gpu_losses, gpu_grads = step_on("cuda", checkpointing=checkpointing)
    assert gpu_grads.keys() == cpu_grads.keys()
    assert close(gpu_losses, cpu_losses, 1e-4) == []
    # The fused head standardises its input, so a shift shared by every fused token (the last fusion
    # bias) gets a gradient only through the geo-context: ~1e-6 of the total, a sum of cancelling terms
    # that fp32 gets to ~2 % even on the CPU (against float64). Such near-zero gradients are held to
    # an absolute floor of 1e-6 of the total norm instead.
    floor = 1e-6 * float(torch.stack([g.norm() for g in cpu_grads.values()]).norm())
    assert close(gpu_grads, cpu_grads, 1e-3, atol=floor) == []


def test_bf16_autocast_on_cuda_stays_near_fp32():
    with no_tf32():
        ref_losses, ref_grads = step_on("cuda")
    losses, grads = step_on("cuda", bf16=True)
    assert grads.keys() == ref_grads.keys()  # the same parameters learn
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert close(losses, ref_losses, 0.05) == []
    # bf16 keeps ~3 significant digits: the whole gradient within 10 %, not every tiny tensor
    flat = torch.cat([grads[k].flatten() for k in sorted(grads)])
    ref = torch.cat([ref_grads[k].flatten() for k in sorted(ref_grads)])
    assert (flat - ref).norm() <= 0.1 * ref.norm()


def test_cuda_step_is_deterministic_under_a_seed():
    a = step_on("cuda")
    b = step_on("cuda")
    assert close(a[0], b[0], 1e-6) == [] and close(a[1], b[1], 1e-5) == []


def test_centres_move_and_stay_on_the_gpu():
    """The teacher centres are updated in place on the device (a CPU tensor inside the step would raise)."""
    cfg = make_cfg()
    student, teacher, centers, batch = built_on("cuda", cfg)
    before = copy.deepcopy(centers.state_dict())
    pretrain_step(student, teacher, centers, batch, cfg, torch.Generator().manual_seed(1))
    after = centers.state_dict()
    assert all(v.is_cuda for v in after.values())
    assert any(not torch.equal(after[k], before[k]) for k in after)  # the centres moved
