"""StyleGAN2 generator (mapping + synthesis), computing what NVIDIA's official networks compute.

Module and parameter names follow NVIDIA's ``training/networks.py`` so that official state_dicts
load unchanged (``mapping.fc0.weight``, ``synthesis.b8.conv0.affine.weight``, ...). Read it top to
bottom: layers, then the mapping network, then synthesis blocks, then the generator.

Value ranges: ``z`` is standard normal; ``ws`` is ``[N, num_ws, w_dim]``; images come out as
``[N, img_channels, R, R]`` float32 in roughly [-1, 1] (not clamped).
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .ops import bias_act, conv2d_resample, modulated_conv2d, setup_filter, upsample2d
from .ops.bias_act import ACTIVATIONS

NOISE_MODES = ("const", "random", "none")


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale ``x`` to unit root-mean-square along ``dim``."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# ----------------------------------------------------------------------------------------------
# Layers

class FullyConnectedLayer(nn.Module):
    """Dense layer with equalized learning rate: weights are stored unscaled, scaled at run time."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b: Optional[torch.Tensor] = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            if x.ndim == 3:   # per-filter styles (W++): [N, K, in] -> [N, K, out]
                return x.matmul(w.t()) + b
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class Conv2dLayer(nn.Module):
    """Plain equalized-lr convolution with optional resampling (the resnet skip connections)."""
    resample_filter: torch.Tensor      # buffers, declared for the type checker

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1,
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: Optional[float] = None):
        super().__init__()
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = ACTIVATIONS[activation].def_gain
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = conv2d_resample(x, w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding, flip_weight=(self.up == 1))
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=act_clamp)


# Per-target weight changes (the tuning phase): while :func:`per_target_weights` is active, a
# layer's weight is its own plus that target's delta, ``[N, O, I, k, k]``.
_WEIGHT_DELTAS: Dict[nn.Module, List[torch.Tensor]] = {}


def layer_weight(layer: nn.Module) -> torch.Tensor:
    deltas = _WEIGHT_DELTAS.get(layer)
    weight = layer.get_parameter("weight")
    return weight if not deltas else weight[None] + sum(deltas)


@contextlib.contextmanager
def per_target_weights(synthesis: nn.Module, deltas: Dict[str, torch.Tensor]):
    """Within the block, the modulated layers of ``synthesis`` named in ``deltas`` (their module
    names, ``b8.conv0``, ``b8.torgb``, ...) add that target's delta ``[N, O, I, k, k]`` to their
    weight (each sample of a batch its own; the fused convolution path). Nested blocks add up."""
    modules = dict(synthesis.named_modules())
    unknown = sorted(set(deltas) - set(modules))
    if unknown:
        raise KeyError(f"no such layers in the synthesis network: {', '.join(unknown)}")
    added = [(modules[name], d) for name, d in deltas.items()]
    for m, d in added:
        shape = tuple(m.get_parameter("weight").shape)
        if tuple(d.shape[1:]) != shape:
            raise ValueError(f"weight delta for a {shape} weight has shape {tuple(d.shape)}")
        _WEIGHT_DELTAS.setdefault(m, []).append(d)
    try:
        yield
    finally:
        for m, _ in added:
            _WEIGHT_DELTAS[m].pop()
            if not _WEIGHT_DELTAS[m]:
                del _WEIGHT_DELTAS[m]


def modulated_layers(synthesis: nn.Module) -> Dict[str, nn.Module]:
    """The synthesis network's modulated convolutions by module name (what tuning changes)."""
    return {name: m for name, m in synthesis.named_modules() if isinstance(m, (SynthesisLayer, ToRGBLayer))}


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optionally 2x upsampling), per-pixel noise, bias, lrelu, clamp."""
    resample_filter: torch.Tensor
    noise_const: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu",
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: Optional[float] = None):
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.act_gain = ACTIVATIONS[activation].def_gain
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = True,
                gain: float = 1, noise_input: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``noise_input`` ([N or 1, 1, res, res] or [res, res]) replaces ``noise_const`` in
        ``const`` mode: the projector optimizes one noise map per target this way. ``w`` is
        ``[N, w_dim]``, or ``[N, K, w_dim]`` for per-filter styles (W++: row o drives filter o)."""
        styles = self.affine(w)
        if styles.ndim == 3:
            styles = styles[:, :self.weight.shape[0]]
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) \
                * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = (self.noise_const if noise_input is None else noise_input) * self.noise_strength
        # Upsampling uses a transposed convolution, which flips the kernel itself.
        x = modulated_conv2d(x, layer_weight(self), styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv)
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=act_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to RGB, without demodulation."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: Optional[float] = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        if styles.ndim == 3:        # per-filter styles (W++): the first rows of the shared block
            styles = styles[:, :self.weight.shape[0]]
        x = modulated_conv2d(x, layer_weight(self), styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


# ----------------------------------------------------------------------------------------------
# Mapping network: z (+ c) -> w, broadcast to num_ws rows, with truncation toward w_avg.

class MappingNetwork(nn.Module):
    """z (and a class label) -> w: ``z [N, z_dim]``, ``c [N, c_dim]`` -> ``ws [N, num_ws, w_dim]``.

    Normalizes z (and the embedded c) to unit second moment, runs ``num_layers`` fully connected
    layers, tracks ``w_avg`` (a buffer) and applies truncation toward it:
    ``w_avg + psi * (w - w_avg)`` on the first ``truncation_cutoff`` layers (all when None).
    """
    w_avg: torch.Tensor

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: Optional[int], num_layers: int = 8,
                 embed_features: Optional[int] = None, layer_features: Optional[int] = None,
                 activation: str = "lrelu", lr_multiplier: float = 0.01, w_avg_beta: Optional[float] = 0.995):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: Optional[torch.Tensor], c: Optional[torch.Tensor], truncation_psi: float = 1,
                truncation_cutoff: Optional[int] = None, update_emas: bool = False) -> torch.Tensor:
        x = None
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"z must be [N, {self.z_dim}], got {None if z is None else tuple(z.shape)}")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"c must be [N, {self.c_dim}] for this conditional generator")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        assert x is not None, "a mapping network has z or c inputs (the config check refuses neither)"

        # w_avg moves only when asked to (training); inference never changes it.
        if update_emas and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError("truncation needs w_avg, but this mapping network has none")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


# ----------------------------------------------------------------------------------------------
# Synthesis network: ws -> image, one block per resolution 4, 8, ..., R.

class SynthesisBlock(nn.Module):
    """conv0 (2x up, absent at 4x4) and conv1, then ToRGB; the RGB skip image is carried upward.

    ``architecture``: 'orig' (ToRGB only in the last block), 'skip' (config-f: every block adds
    its ToRGB to the upsampled image) or 'resnet' (residual 1x1 skip around the two convs).
    """
    resample_filter: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: Optional[float] = None, use_fp16: bool = False, use_noise: bool = True):
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.num_conv = 0
        self.num_torgb = 0
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        layer_kwargs: Dict[str, Any] = dict(resample_filter=resample_filter, conv_clamp=conv_clamp,
                                            use_noise=use_noise)

        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter)

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor], ws: torch.Tensor,
                force_fp32: bool = False, fused_modconv: Optional[bool] = None, noise_mode: str = "random",
                noise_inputs: Optional[dict] = None):
        w_iter = iter(ws.unbind(dim=1))
        noise_inputs = noise_inputs or {}
        # fp16 only on CUDA: CPU half convolutions are slow and not what NVIDIA ran.
        use_fp16 = self.use_fp16 and not force_fp32 and ws.device.type == "cuda"
        dtype = torch.float16 if use_fp16 else torch.float32
        if fused_modconv is None:
            fused_modconv = (not self.training) and (dtype == torch.float32 or int(ws.shape[0]) == 1)

        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv,
                           noise_input=noise_inputs.get("conv1"))
        elif x is None:
            raise ValueError(f"block b{self.resolution} needs the previous block's features")
        elif self.architecture == "resnet":
            x = x.to(dtype)
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv,
                           noise_input=noise_inputs.get("conv0"))
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv,
                           gain=np.sqrt(0.5), noise_input=noise_inputs.get("conv1"))
            x = y + x
        else:
            x = x.to(dtype)
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv,
                           noise_input=noise_inputs.get("conv0"))
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv,
                           noise_input=noise_inputs.get("conv1"))

        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv).to(torch.float32)
            img = img + y if img is not None else y
        return x, img


def latent_shapes(config: dict) -> Dict[str, List[int]]:
    """The latents of a generator config without building it: ``w [w_dim]``, ``wp [num_ws,
    w_dim]`` (W+) and ``wpp [num_ws, K, w_dim]`` (W++, K = the most filters of any layer; a
    layer at resolution r has min(channel_base // r, channel_max) filters, the largest at 4 px)."""
    sk, w_dim = config.get("synthesis_kwargs", {}), config["w_dim"]
    log2 = int(np.log2(config["img_resolution"]))
    num_ws = 2 * log2 - 2           # one conv at 4 px, two per block above, and the last toRGB
    filters = max(config["img_channels"], min(sk.get("channel_base", 32768) // 4, sk.get("channel_max", 512)))
    return dict(w=[w_dim], wp=[num_ws, w_dim], wpp=[num_ws, filters, w_dim])


def modulated_shapes(config: dict) -> Dict[str, Tuple[int, int]]:
    """Per modulated convolution (its name under ``synthesis``, as :func:`modulated_layers` gives
    it), the weight as a matrix ``(out_channels, in_channels * k * k)``, from a generator config
    without building it (what tuning factors must fit)."""
    sk = config.get("synthesis_kwargs", {})
    R, rgb = config["img_resolution"], config["img_channels"]
    base, cmax = sk.get("channel_base", 32768), sk.get("channel_max", 512)
    skip = sk.get("architecture", "skip") == "skip"
    out: Dict[str, Tuple[int, int]] = {}
    res = 4
    while res <= R:
        c, c_in = min(base // res, cmax), min(base // (res // 2), cmax)
        if res > 4:
            out[f"b{res}.conv0"] = (c, c_in * 9)
        out[f"b{res}.conv1"] = (c, c * 9)
        if res == R or skip:
            out[f"b{res}.torgb"] = (rgb, c)
        res *= 2
    return out


class SynthesisNetwork(nn.Module):
    """ws -> image: ``ws [N, num_ws, w_dim]`` -> ``img [N, img_channels, R, R]``, about [-1, 1].

    ``ws [N, num_ws, K, w_dim]`` gives every output filter its own style vector (W++, Poirier-
    Ginter & Lalonde 2023): the block of K rows that replaces ws row l drives filter o of each
    layer reading row l with its row o (a ToRGB shares its block with the next conv0, as in W+).

    One block per resolution 4, 8, ..., R; each block consumes its slice of ws (two convolutions
    and a toRGB). ``noise_mode``: ``const`` (the network's own noise buffers), ``random`` or
    ``none``; ``noise_inputs`` maps a layer name to ``[N, 1, res, res]`` maps that replace them.
    """

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 0, **block_kwargs):
        super().__init__()
        log2 = int(np.log2(img_resolution))
        if img_resolution < 4 or img_resolution != 2 ** log2:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.channel_base = channel_base
        self.channel_max = channel_max
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)

        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            is_last = res == img_resolution
            block = SynthesisBlock(in_channels, channels[res], w_dim, res, img_channels, is_last,
                                   use_fp16=(res >= fp16_resolution), **block_kwargs)
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def blocks(self):
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", force_fp32: bool = False,
                fused_modconv: Optional[bool] = None, noise_inputs: Optional[dict] = None) -> torch.Tensor:
        """``noise_inputs``: optional ``{"b8.conv0": tensor, ...}`` overriding ``noise_const`` maps
        in ``const`` mode (keys as :meth:`noise_buffers` without ``.noise_const``)."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        per_filter = ws.ndim == 4 and ws.shape[1] == self.num_ws and ws.shape[3] == self.w_dim \
            and ws.shape[2] >= self.max_channels
        if not per_filter and (ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim)):
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}] (or [N, {self.num_ws}, K >= "
                             f"{self.max_channels}, {self.w_dim}] per filter), got {tuple(ws.shape)}")
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for block in self.blocks():
            # Each block's ToRGB shares its ws row with the next block's conv0.
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            prefix = f"b{block.resolution}."
            block_noise = {k[len(prefix):]: v for k, v in (noise_inputs or {}).items() if k.startswith(prefix)}
            x, img = block(x, img, block_ws, force_fp32=force_fp32, fused_modconv=fused_modconv,
                           noise_mode=noise_mode, noise_inputs=block_noise)
        assert img is not None      # the last block always makes an image
        return img

    @property
    def max_channels(self) -> int:
        """The most output filters of any layer: the rows a per-filter (W++) ws block needs."""
        return max([self.img_channels] + [int(m.weight.shape[0]) for m in self.modules()
                                          if isinstance(m, SynthesisLayer)])

    def noise_buffers(self):
        """``{name: buffer}`` of every ``noise_const`` map, in state_dict order (the projector's)."""
        return {name: buf for name, buf in self.named_buffers() if name.endswith("noise_const")}

    def noise_layers(self):
        """``{"b4.conv1": resolution, ...}``: the layers that take noise, in state_dict order."""
        return {name[: -len(".noise_const")]: int(buf.shape[-1]) for name, buf in self.noise_buffers().items()}


# ----------------------------------------------------------------------------------------------
# Generator

class Generator(nn.Module):
    """StyleGAN2's generator with the official names and call signature:
    ``G(z [N, z_dim], c [N, c_dim] or None, truncation_psi=1, noise_mode='const')`` ->
    ``img [N, img_channels, img_resolution, img_resolution]``, about [-1, 1].
    ``G.mapping`` and ``G.synthesis`` are the two halves; ``G.num_ws`` is the number of w rows.
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: Optional[dict] = None, synthesis_kwargs: Optional[dict] = None):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.mapping_kwargs = dict(mapping_kwargs or {})
        self.synthesis_kwargs = dict(synthesis_kwargs or {})
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **self.synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, num_ws=self.num_ws, **self.mapping_kwargs)

    @property
    def config(self) -> dict:
        """Constructor arguments as plain JSON-able data (what the safetensors format stores)."""
        return dict(z_dim=self.z_dim, c_dim=self.c_dim, w_dim=self.w_dim, img_resolution=self.img_resolution,
                    img_channels=self.img_channels, mapping_kwargs=self.mapping_kwargs,
                    synthesis_kwargs=self.synthesis_kwargs)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, truncation_psi: float = 1,
                truncation_cutoff: Optional[int] = None, **synthesis_kwargs) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)
