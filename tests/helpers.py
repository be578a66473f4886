"""Test-only helpers: PSNR on tensors, the CUDA gradient formula in PyTorch; recorded draws are
replayed with :class:`recon.restore.randomness.RecordedRandom`."""
import torch


def psnr_torch(a, b, mask=None):
    """PSNR in dB per image for [-1, 1] tensors ``[N, C, H, W]`` (peak-to-peak 2); ``mask`` selects pixels."""
    d = (a.float() - b.float()).square()
    if mask is not None:
        m = mask.float().expand_as(d)
        mse = (d * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
    else:
        mse = d.flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-20))


def grad_from_output(dy: torch.Tensor, y: torch.Tensor, act_code: int, alpha: float, gain: float,
                     clamp: float) -> torch.Tensor:
    """d loss / d (x + b) for the CUDA activations, from the forward output ``y``: the CUDA
    gradient kernel's formula, in PyTorch, to check on CPU against autograd of the reference (and
    to stand in for the kernel). Valid for gain > 0 (sign of y is the sign of x + b)."""
    if act_code == 1:
        slope = torch.ones_like(y)
    elif act_code == 2:
        slope = (y > 0).to(y.dtype)
    elif act_code == 3:
        slope = torch.where(y > 0, torch.ones_like(y), torch.full_like(y, alpha))
    else:
        raise ValueError(f"no gradient formula for activation code {act_code}")
    dx = dy * slope * gain
    if clamp >= 0:
        dx = dx * (y.abs() < clamp).to(y.dtype)
    return dx
