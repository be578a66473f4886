"""The one typed schema of ``params.yaml``: the only place where params become options.

Every section is a pydantic model that forbids unknown keys and coerces nothing: YAML booleans
only where a boolean is meant (YAML 1.2 reads ``no`` as the string "no"), integers only where an
integer is meant (``12.9`` is refused, not truncated), ranges checked. Errors name the file and
the dotted key, one line::

    params.yaml: degrade.blur.sigam: unknown key (did you mean sigma?)

Degradation ops are typed objects (:class:`BlurOp`, :class:`MaskOp`, ...) parsed once here, with
their defaults in one place; the stages and :class:`recon.degrade.Degradation` use them as they
are. No key may be named ``size`` or ``nfiles``: DVC drops such keys from its run-cache hash at
any depth, so changing one would restore stale outputs (``align.size`` became ``align.resolution``).
"""
from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Mapping, Optional, Type, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ParamsError
from .restore.registry import METHODS

# Keys DVC's run-cache cannot see (dvc/stage/cache.py drops them from the params hash).
DVC_BLIND_KEYS = ("size", "nfiles")
# Old key -> its new name; the old one is refused with a message naming the new one.
RENAMED_KEYS = {"align.size": "align.resolution"}
# Project sections that are not per-mode overrides.
PROJECT_SECTIONS = ("default", "runtime", "starts")
MODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
# Every seed feeds numpy's RandomState or torch's generators, which take 32 bits.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
# Bounds on run lengths, so that no setting can exhaust the memory (a run's w-noise is drawn up
# front) or make a run that could never end.
MAX_STEPS = 100_000
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
Fraction = Annotated[float, Field(gt=0, le=1)]          # a ramp length: (0, 1]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


# ----------------------------------------------------------------------------------------------
# Degradation ops

class NoneOp(_Model):
    """No degradation: plain reconstruction."""
    type: Literal["none"] = "none"


SIGMA_RANGE = (0.3, 12.0)     # sigma: auto, px at the generator's resolution (a 1024 px face: sharp to very blurry)


def auto_kernel(sigma_max: float) -> int:
    """The blur kernel that holds a Gaussian of ``sigma_max`` to three sigmas."""
    return 2 * math.ceil(3 * sigma_max) + 1


class BlurOp(_Model):
    """Gaussian blur with reflect padding. ``sigma: auto`` (an observed photo whose blur nobody
    knows): each face's sigma is estimated with its latent, within ``sigma_range`` (px at the
    generator's resolution; default 0.3 to 12), with a kernel wide enough for its upper bound
    unless ``kernel`` says otherwise."""
    type: Literal["blur"] = "blur"
    kernel: Annotated[int, Field(ge=3)] = 21
    sigma: Union[Annotated[float, Field(gt=0, allow_inf_nan=False)], Literal["auto"]] = 6.0
    sigma_range: Optional[Annotated[List[Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]],
                                    Field(min_length=2, max_length=2)]] = None

    @field_validator("sigma", mode="wrap")
    @classmethod
    def _sigma(cls, v, handler):
        """A number > 0 or auto, with one message for both (not one per member of the union)."""
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"must be a number greater than 0, or auto, got {v!r}")
        return float(v)

    @model_validator(mode="before")
    @classmethod
    def _auto(cls, data):
        if isinstance(data, dict) and data.get("sigma") == "auto":
            data = dict(data)
            lo_hi = data.setdefault("sigma_range", list(SIGMA_RANGE))
            if isinstance(lo_hi, list) and len(lo_hi) == 2 and all(isinstance(v, (int, float)) for v in lo_hi):
                data["sigma_range"] = [float(v) for v in lo_hi]
                data.setdefault("kernel", auto_kernel(max(data["sigma_range"])))
        return data

    @field_validator("kernel")
    @classmethod
    def _odd(cls, v):
        if v % 2 == 0:
            raise ValueError(f"must be odd, got {v}")
        return v

    @model_validator(mode="after")
    def _range(self):
        if self.sigma_range is not None:
            lo, hi = self.sigma_range
            if self.sigma != "auto":
                raise _OpError("sigma_range", "is for sigma: auto (a sigma to estimate); this blur's sigma is "
                               f"{self.sigma}")
            if not lo < hi:
                raise _OpError("sigma_range", f"must be [low, high] with low < high, got {self.sigma_range}")
        return self

    @property
    def estimated(self) -> bool:
        return self.sigma == "auto"


class GrayscaleOp(_Model):
    """Luminance 0.299 R + 0.587 G + 0.114 B in all three channels (colorization)."""
    type: Literal["grayscale"] = "grayscale"


class MaskOp(_Model):
    """Missing pixels (inpainting): a centred hole, random brush strokes (seeded per face), a mask
    file beside the photo, or a painted colour. Both images are multiplied by the mask, as the
    robust method's reference does (holes black); the robust loss fills them with fresh noise."""
    type: Literal["mask"] = "mask"
    source: Literal["center", "brush", "file", "color"] = "center"
    fraction: Annotated[float, Field(gt=0, lt=1)] = 0.4     # side of the centred hole / image side
    strokes: Annotated[int, Field(ge=1, le=64)] = 5         # source: brush (the benchmark's S level)
    color: Annotated[List[Annotated[int, Field(ge=0, le=255)]], Field(min_length=3, max_length=3)] = [0, 255, 0]
    tolerance: Annotated[int, Field(ge=0, le=255)] = 8

    @model_validator(mode="before")
    @classmethod
    def _no_fill(cls, data):
        if isinstance(data, dict) and "fill" in data:
            raise ValueError(f"got fill {data['fill']!r}, which is gone: missing pixels are multiplied by the "
                             "mask (black) in both images, as the reference does")
        return data


class DownsampleOp(_Model):
    """Super-resolution operator: the observation is ``factor`` times smaller (what a user has).
    ``filter`` is how the *target* is made smaller (a real camera or resizer is rarely a box);
    the generated image is reduced by area averaging, as the robust method's reference does.
    ``factor: auto`` (an observed photo): each face's own, from how many photo pixels its crop
    covers (recorded by the alignment)."""
    type: Literal["downsample"] = "downsample"
    factor: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = 4
    filter: Literal["box", "bilinear", "bicubic", "lanczos"] = "box"

    @field_validator("factor", mode="wrap")
    @classmethod
    def _at_least_two(cls, v, handler):
        """An integer >= 2 or auto, with one message for both."""
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int) or v < 2:
            raise ValueError(f"must be an integer of at least 2, or auto, got {v!r}")
        return v


class AutoOp(_Model):
    """A photo whose degradation nobody knows (``observed`` modes): per photo, grayscale when its
    channels agree within ``grayscale_tolerance`` levels, the observation at the photo's own
    sampling (``downsample: {factor: auto}``) and, with ``blur``, a Gaussian blur estimated with
    the face (``sigma: auto`` within ``sigma_range``). What was detected is recorded per face."""
    type: Literal["auto"] = "auto"
    blur: bool = True
    sigma_range: Annotated[List[Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]],
                           Field(min_length=2, max_length=2)] = list(SIGMA_RANGE)
    grayscale_tolerance: Annotated[int, Field(ge=0, le=64)] = 3


class NoiseOp(_Model):
    """Gaussian observation noise (target only), ``sigma`` in 0-255 units."""
    type: Literal["noise"] = "noise"
    sigma: NonNegFloat = 10.0


class JpegOp(_Model):
    """JPEG compression at ``quality`` (4:2:0 chroma): the target through Pillow's encoder, the
    generated image through a differentiable approximation with the same quantization tables."""
    type: Literal["jpeg"] = "jpeg"
    quality: Annotated[int, Field(ge=1, le=95)] = 12


class PoissonOp(_Model):
    """Photon (shot) noise with pixel dropout, as the robust method's benchmark degrades: the
    target is ``Poisson(x * photons) / photons`` with each pixel zeroed (all channels) with
    probability ``dropout``; the generated image goes through a Gaussian approximation with fresh
    draws at every step."""
    type: Literal["poisson"] = "poisson"
    photons: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] = 24.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.16


class ChainOp(_Model):
    """Several ops applied in order."""
    type: Literal["chain"] = "chain"
    ops: List[Any] = Field(min_length=1)

    @field_validator("ops")
    @classmethod
    def _parse(cls, v):
        return [parse_op(item, str(i)) for i, item in enumerate(v)]


Op = Union[NoneOp, BlurOp, GrayscaleOp, MaskOp, DownsampleOp, NoiseOp, JpegOp, PoissonOp, ChainOp, AutoOp]
OP_TYPES: Dict[str, Type[BaseModel]] = {m.model_fields["type"].default: m
                             for m in (NoneOp, BlurOp, GrayscaleOp, MaskOp, DownsampleOp, NoiseOp, JpegOp, PoissonOp,
                                       ChainOp, AutoOp)}


def op_record(op) -> dict:
    """An op as plain data (``targets.json``, fingerprints): fields that only an estimated op has
    are left out of the others', so their records are what they always were."""
    return op.model_dump(exclude_none=True)


def needs_observed(ops: List["Op"]) -> Optional[str]:
    """What in ``ops`` only a photo that is already degraded can have (an unknown sigma or factor,
    detection), or None."""
    for op in ops:
        if isinstance(op, AutoOp):
            return "type: auto"
        if isinstance(op, BlurOp) and op.sigma == "auto":
            return "sigma: auto"
        if isinstance(op, DownsampleOp) and op.factor == "auto":
            return "factor: auto"
    return None


class _OpError(ValueError):
    """Carries a located message out of a nested op (so chains report ``ops.1.kernel``)."""

    def __init__(self, loc: str, message: str):
        super().__init__(f"{loc}: {message}" if loc else message)
        self.loc, self.message = loc, message


def parse_op(spec, loc: str = "") -> Op:
    """``'blur'``, ``{'type': 'blur', ...}`` or an op object -> a typed op. Raises ``ValueError``
    whose message starts with the dotted key relative to ``loc``."""
    if isinstance(spec, BaseModel) and type(spec) in OP_TYPES.values():
        return spec  # type: ignore[return-value]   # one of the op models, as the check says
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict):
        raise _OpError(loc, f"must be a degradation (a mapping with a type), got {spec!r}")
    kind = spec.get("type")
    model = OP_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        hint = _did_you_mean(kind, OP_TYPES) if isinstance(kind, str) else ""
        raise _OpError(_join(loc, "type"), f"unknown degradation {kind!r}{hint}; one of {', '.join(OP_TYPES)}")
    try:
        return model.model_validate(spec)  # type: ignore[return-value]
    except ValidationError as exc:
        where, message = _locate(exc.errors()[0], model)
        raise _OpError(_join(loc, where), message) from None


def flatten_ops(op: Op) -> List[Op]:
    """The op as a flat list of single operations (chains expanded, ``none`` dropped)."""
    if isinstance(op, ChainOp):
        return [o for item in op.ops for o in flatten_ops(item)]
    return [] if isinstance(op, NoneOp) else [op]


def observed_size(ops: List[Op], resolution: int) -> int:
    """The side of the observation that ``ops`` make of a ``resolution`` px image: a downsample
    divides it (the observation is what a user has: small). Ops resolved per face (no factor
    auto) only."""
    for op in ops:
        if isinstance(op, DownsampleOp):
            if op.factor == "auto":
                raise ValueError("factor auto is resolved per face (targets.json), not here")
            resolution //= op.factor
    return resolution


def check_op_fits(ops: List[Op], resolution: int) -> None:
    """Refuse ops that cannot work on the images they get, ``resolution`` px at first (``ValueError``
    naming the key); an op after a downsample works on the smaller image."""
    for op in ops:
        if isinstance(op, BlurOp) and op.kernel >= resolution:
            hint = (f" (sigma auto up to {op.sigma_range[1]:g} px needs it; lower sigma_range's high end)"
                    if op.sigma_range else "")
            raise ValueError(f"kernel {op.kernel} is not smaller than the {resolution} px image{hint}")
        if isinstance(op, AutoOp) and op.blur and auto_kernel(op.sigma_range[1]) >= resolution:
            raise ValueError(f"a blur up to sigma {op.sigma_range[1]:g} px needs a kernel of "
                             f"{auto_kernel(op.sigma_range[1])}, not smaller than the {resolution} px image "
                             "(lower sigma_range's high end)")
        if isinstance(op, DownsampleOp) and isinstance(op.factor, int):     # auto: each face's own
            if resolution % op.factor:
                raise ValueError(f"factor {op.factor} does not divide the {resolution} px image")
            resolution //= op.factor
        if isinstance(op, JpegOp) and resolution % 16:
            raise ValueError(f"jpeg needs a multiple of 16 px (4:2:0 blocks), not {resolution} px")


# ----------------------------------------------------------------------------------------------
# Sections

class Seeds(_Model):
    degrade: Seed = 0                   # mask fill noise and observation noise


class WeightsFile(_Model):
    source: Annotated[str, Field(min_length=1)]
    sha256: str = ""

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v):
        if v and not re.fullmatch(r"[0-9a-fA-F]{64}", v.strip()):
            raise ValueError("must be empty or 64 hexadecimal digits")
        return v.strip().lower()


class Weights(_Model):
    generator: WeightsFile = WeightsFile(source="ffhq")
    vgg16: WeightsFile = WeightsFile(source="vgg16")


class Align(_Model):
    resolution: Annotated[int, Field(ge=4, le=4096)] = 1024    # must be the generator's
    detector: Literal["hog", "cnn"] = "hog"
    upsample: Annotated[int, Field(ge=0, le=4)] = 1
    min_score: Annotated[float, Field(allow_inf_nan=False)] = 0.5
    largest_only: bool = False
    max_faces: NonNegInt = 0
    max_pixels: PositiveInt = 120_000_000

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, v):
        if v & (v - 1):
            raise ValueError(f"must be a power of two (a StyleGAN2 resolution), got {v}")
        return v


class RobustConfig(_Model):
    """The robust method's settings (Poirier-Ginter & Lalonde, CVPR 2023; defaults are the
    reference code's): how ``num_steps`` is shared by the phases W, W+, W++ (``phases``; the
    reference runs 150 steps each: ``num_steps: 450`` with equal shares), their learning rates,
    and the multiscale loss."""
    phases: Annotated[List[NonNegFloat], Field(min_length=3, max_length=3)] = [1.0, 1.0, 1.0]
    learning_rates: Annotated[List[NonNegFloat], Field(min_length=3, max_length=3)] = [0.08, 0.02, 0.005]
    min_loss_res: PositiveInt = 16          # no LPIPS level at or below this many pixels
    level_weights: Annotated[List[NonNegFloat], Field(min_length=1, max_length=12)] = [1.0] * 6
    l1_weight: NonNegFloat = 0.1            # L1 at the coarsest level reached

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "steps" in data:
            raise ValueError(f"got steps {data['steps']}, which is gone: the robust method runs num_steps steps in "
                             "all, shared by its phases as robust.phases says (the reference: num_steps: 450, "
                             "phases: [1, 1, 1])")
        return data

    @field_validator("phases")
    @classmethod
    def _some(cls, v):
        if sum(v) <= 0:
            raise ValueError(f"must give some phase a share, got {v}")
        return v


class TuneConfig(_Model):
    """The tuning phase (after the latent is found, for any method; off with ``steps: 0``): the
    generator's convolution weights are fine-tuned per target so that the *degraded* generated
    image matches the target (L2 + LPIPS, as pivotal tuning, Roich et al. 2022, does on clean
    images), while a locality term keeps the generator's output unchanged at latents sampled
    around the found one. The change is kept as one low-rank delta per layer and target (what is
    stored, in float16)."""
    steps: Annotated[int, Field(ge=0, le=MAX_STEPS)] = 0
    learning_rate: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 3e-4
    locality_weight: NonNegFloat = 0.1        # PTI's lambda for its L2 and LPIPS locality terms
    # nearby latents: the found one moved this fraction of the way toward a random face's w
    locality_reach: Annotated[float, Field(gt=0, le=1)] = 0.25
    rank: Annotated[int, Field(ge=1, le=64)] = 4

    @property
    def passes_per_step(self) -> int:
        """Generator forward+backward passes per tuning step (the locality term is a second one)."""
        return 2 if self.locality_weight > 0 else 1


class SamplesConfig(_Model):
    """Posterior samples: ``count`` restorations of each target from different starting points
    (random faces' w at truncation ``truncation_psi`` around ``w_avg``, with their own noise)."""
    count: Annotated[int, Field(ge=1, le=64)] = 1
    truncation_psi: Annotated[float, Field(ge=0, le=1)] = 0.7


LATENT_SPACES = ("w", "w+", "w->w+")


class ProjectorConfig(_Model):
    """The projector's hyperparameters; defaults are NVIDIA's (``projector.py``)."""
    num_steps: Steps = 1000
    w_avg_samples: Annotated[int, Field(ge=2, le=100_000)] = 10000
    w_avg_seed: Seed = 123
    initial_learning_rate: NonNegFloat = 0.1
    initial_noise_factor: NonNegFloat = 0.05
    lr_rampdown_length: Fraction = 0.25
    lr_rampup_length: Fraction = 0.05
    noise_ramp_length: Fraction = 0.75
    regularize_noise_weight: NonNegFloat = 1e5
    latent_dist_reg_weight: NonNegFloat = 0.0
    latent_space: Literal["w", "w+", "w->w+"] = "w"
    w_plus_switch: Annotated[float, Field(ge=0, le=1)] = 0.5     # for 'w->w+': fraction of steps in W
    optimize_noise: bool = True
    noise_init: Literal["random", "const"] = "random"   # 'const': the generator's own noise maps
    seed: Seed = 303
    snapshot_every: NonNegInt = 100                      # 0 disables snapshots
    # official: NVIDIA's projector (the settings above); robust: W -> W+ -> W++ of Poirier-Ginter
    # & Lalonde (CVPR 2023) with its own settings below, fixed noise and a multiscale LPIPS loss
    method: str = "official"
    robust: RobustConfig = RobustConfig()
    tune: TuneConfig = TuneConfig()
    # samples: K restorations per target from random starts (an int is the count)
    samples: SamplesConfig = SamplesConfig()
    # where the latent starts: w_avg, a latents.npz (one for every face), or another mode's
    # results (data/projected/<mode>/<face>/latents.npz), to refine them or restore from them
    init: Annotated[str, Field(min_length=1)] = "w_avg"

    @field_validator("init")
    @classmethod
    def _init(cls, v):
        if v != "w_avg" and not v.endswith(".npz") and not MODE_NAME.match(v):
            raise ValueError(f"must be w_avg, a path to a latents.npz or a mode name, got {v!r}")
        return v

    @field_validator("samples", mode="before")
    @classmethod
    def _samples_count(cls, v):
        return {"count": v} if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _samples_start_alone(self):
        if self.samples.count > 1 and self.init != "w_avg":
            raise ValueError(f"samples.count {self.samples.count} draws its own starting points, so init must be "
                             f"w_avg, got {self.init!r}")
        return self

    @property
    def init_mode(self) -> Optional[str]:
        """The mode whose results are the starting latents, if ``init`` names one."""
        return None if self.init == "w_avg" or self.init.endswith(".npz") else self.init

    @field_validator("method")
    @classmethod
    def _method(cls, v):
        if v not in METHODS:
            raise ValueError(f"must be {' or '.join(repr(m) for m in METHODS)}, got {v!r}{_did_you_mean(v, METHODS)}")
        return v


MAX_WORKERS = 1024      # the schema's bound; the machine's own (cores, devices) is checked at run time


class Runtime(_Model):
    """Where and how the projection runs; never part of a result's fingerprint."""
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    batch_size: Union[int, str] = "auto"   # targets per forward pass; auto = fit to memory on CUDA, 1 on CPU
    workers: Union[int, str] = 1         # processes (one per GPU); auto = the visible GPUs (1 on CPU)
    max_restarts: Annotated[int, Field(ge=0, le=100)] = 3   # of a failed worker group, by the launcher
    compile: Literal["auto", "on", "off"] = "auto"   # torch.compile the step (auto: CPU, 256+ px, 500+ steps)
    # the step's arithmetic: fp32 (exact) | tf32 (CUDA) | bf16 | auto (the fastest that passes the quality gate)
    precision: Literal["auto", "fp32", "tf32", "bf16"] = "fp32"
    # seconds after which a silent worker's unit (killed, preempted) is taken over by another
    lease_s: Annotated[float, Field(gt=0, le=86400, allow_inf_nan=False)] = 300.0

    @field_validator("device")
    @classmethod
    def _device(cls, v):
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v

    @model_validator(mode="after")
    def _precision_on_device(self):
        if self.precision == "tf32" and self.device == "cpu":
            raise _OpError("precision", "tf32 is a CUDA tensor-core mode, and project.runtime.device is cpu "
                           "(use fp32, bf16 or auto there)")
        return self

    @field_validator("batch_size", "workers")
    @classmethod
    def _auto_or_positive(cls, v):
        if v != "auto" and not (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_WORKERS):
            raise ValueError(f"must be auto or an integer from 1 to {MAX_WORKERS}, got {v!r}")
        return v


class Project(_Model):
    """``default``: the projector settings of every mode; ``runtime``; ``<mode>``: overrides."""
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    # NVIDIA's settings plus the reference study's latent regularization (as params.yaml ships)
    default: ProjectorConfig = ProjectorConfig(latent_dist_reg_weight=0.001)
    runtime: Runtime = Runtime()
    # mode -> the path DVC sees project@<mode> start from (see start_dependency); dvc.yaml's
    # project stages iterate over it, so every mode has one
    starts: Dict[str, str] = {}

    @model_validator(mode="after")
    def _overrides(self):
        for mode in self.model_extra or {}:
            self.for_mode(mode)
        return self

    def for_mode(self, mode: str) -> ProjectorConfig:
        """``default`` with the mode's overrides (``project.<mode>``)."""
        override = (self.model_extra or {}).get(mode)
        if override is None:
            return self.default
        if not isinstance(override, dict):
            raise _OpError(mode, "must be a mapping of projector settings to override")
        try:
            return ProjectorConfig.model_validate({**self.default.model_dump(), **override})
        except ValidationError as exc:
            err = exc.errors()[0]
            raise _OpError(_join(mode, _dotted(err["loc"])), _describe(err, ProjectorConfig)) from None

    def start_dependency(self, mode: str) -> str:
        """The path through which DVC sees what project@<mode> starts from, so that a change
        there reruns it: another mode's results (``data/projected/<mode>``), the ``init`` file, or,
        starting from ``w_avg``, the mode's own targets (a dependency it has anyway)."""
        cfg = self.for_mode(mode)
        if cfg.init_mode:
            return f"data/projected/{cfg.init_mode}"
        return cfg.init if cfg.init != "w_avg" else f"data/degraded/{mode}"


class Synthetic(_Model):
    seeds: Annotated[List[Seed], Field(min_length=1, max_length=1000)] = [0, 1, 2]
    truncation_psi: Annotated[float, Field(allow_inf_nan=False)] = 0.7
    num_steps: Annotated[List[Steps], Field(min_length=1, max_length=100)] = [250, 500, 1000]
    latent_dist_reg_weight: Annotated[List[NonNegFloat], Field(min_length=1)] = [0.0, 0.001, 0.01]


BENCHMARK_TASKS = ("upsample", "noise", "jpeg", "inpaint_brush", "inpaint_center", "blur", "grayscale", "blur_blind",
                   "upsample_blind")
BENCHMARK_LEVELS = ("XS", "S", "M", "L", "XL")


class BenchmarkConfig(_Model):
    """Methods compared on faces sampled from the generator, per task and level, at equal budgets.
    ``methods``: name -> overrides of ``project.default`` (as a mode's are)."""
    seeds: Annotated[List[Seed], Field(min_length=1, max_length=1000)] = [0, 1]
    truncation_psi: Annotated[float, Field(ge=0, le=1)] = 0.7
    tasks: Annotated[List[Literal[BENCHMARK_TASKS]], Field(min_length=1)] = list(BENCHMARK_TASKS)  # type: ignore[valid-type]
    levels: Annotated[List[Literal[BENCHMARK_LEVELS]], Field(min_length=1)] = ["M"]  # type: ignore[valid-type]
    budget: Annotated[int, Field(ge=1, le=100000)] = 450    # generator forward+backward passes per restoration
    identity: bool = True
    methods: Dict[str, Any] = Field(default_factory=lambda: {"official": {}, "robust": {"method": "robust"}},
                                    min_length=1)


class Report(_Model):
    identity: bool = True               # dlib face-recognition distance (same person below ~0.6)


class Mode(_Model):
    """One degradation mode: its op, whether its photos are already degraded (``observed: true``:
    the aligned photo is the target as it is; the op only models how it was degraded), and which
    photos it is for (``photos``: file-name patterns of data/raw, ``*`` and ``?`` as in a shell;
    default every photo)."""
    op: Any
    observed: bool = False
    photos: Optional[List[str]] = None

    def is_for(self, photo: str) -> bool:
        import fnmatch
        return self.photos is None or any(fnmatch.fnmatch(photo, p) for p in self.photos)


def auto_profile(data: dict) -> str:
    """``profile: auto``: ``full`` where the projection runs on a GPU (``project.runtime.device``,
    or a visible CUDA device for ``auto``), else ``quick`` (a 1024 px projection is 15-20 s a
    step on a CPU: the full profile would take days)."""
    runtime = data.get("project", {}).get("runtime", {}) if isinstance(data.get("project"), dict) else {}
    device = runtime.get("device", "auto") if isinstance(runtime, dict) else "auto"
    if isinstance(device, str) and device.startswith("cuda"):
        return "full"
    if device == "auto":
        import torch
        return "full" if torch.cuda.is_available() else "quick"
    return "quick"


QUICK_DIVISOR = 50        # profile: quick runs about 1/50 of the steps (never more than full, at most 10 fewer)


def quick_steps(n: int) -> int:
    """A step count under ``profile: quick``: 1000 -> 20, 450 -> 10; a count of 10 or fewer stays."""
    return max(min(n, 10), n // QUICK_DIVISOR)


def _quick(data: dict) -> dict:
    """The raw params as ``profile: quick`` runs them: every method's steps (``num_steps`` of
    ``project.default`` and of each mode and benchmark method) scaled by :func:`quick_steps`, the
    study cut to two step counts, two weights and one seed, the benchmark to one seed and a
    scaled budget. Applied before validation, so every stage and every message sees the same."""
    import copy

    data = copy.deepcopy(data)
    project = data.setdefault("project", {})
    if isinstance(project, dict):
        if "default" not in project:            # the schema's default settings, scaled like written ones
            project["default"] = Project.model_fields["default"].default.model_dump()
        default = project["default"] if isinstance(project["default"], dict) else {}
        steps = default.get("num_steps", ProjectorConfig().num_steps)
        if isinstance(steps, int) and not isinstance(steps, bool):     # a bad value is left for validation to name
            default["num_steps"] = quick_steps(steps)
        for key, section in project.items():
            if key not in PROJECT_SECTIONS and isinstance(section, dict) and isinstance(section.get("num_steps"), int):
                section["num_steps"] = quick_steps(section["num_steps"])
        for key, section in project.items():                # tuning steps too, where given
            tune = section.get("tune") if isinstance(section, dict) else None
            if key not in ("runtime", "starts") and isinstance(tune, dict) \
                    and isinstance(tune.get("steps"), int) and tune["steps"] > 0:
                tune["steps"] = quick_steps(tune["steps"])
    syn = data.setdefault("synthetic", {})
    if isinstance(syn, dict):
        steps = syn.get("num_steps", Synthetic().num_steps)
        if isinstance(steps, list) and all(isinstance(n, int) for n in steps):
            syn["num_steps"] = sorted({quick_steps(n) for n in steps})[-2:]
        for key, default_list in (("latent_dist_reg_weight", Synthetic().latent_dist_reg_weight),
                                  ("seeds", Synthetic().seeds)):
            value = syn.get(key, default_list)
            if isinstance(value, list):
                syn[key] = value[:2] if key != "seeds" else value[:1]
    bench = data.setdefault("benchmark", {})
    if isinstance(bench, dict):
        budget = bench.get("budget", BenchmarkConfig().budget)
        if isinstance(budget, int):
            bench["budget"] = quick_steps(budget)
        seeds = bench.get("seeds", BenchmarkConfig().seeds)
        if isinstance(seeds, list):
            bench["seeds"] = seeds[:1]
    return data


class Params(_Model):
    # full: the settings as written; quick: about 1/50 of the work (README, Quick start)
    # auto (the default): quick without a GPU, full with one; full: the settings as written;
    # quick: about 1/50 of the work (README, Quick start). Validation resolves auto.
    profile: Literal["auto", "full", "quick"] = "auto"
    seeds: Seeds = Seeds()
    weights: Weights = Weights()
    align: Align = Align()
    degrade: Dict[str, Any] = {}
    project: Project = Project()
    synthetic: Synthetic = Synthetic()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    report: Report = Report()

    @model_validator(mode="before")
    @classmethod
    def _profile(cls, data):
        if isinstance(data, dict) and data.get("profile", "auto") == "auto":
            data = dict(data, profile=auto_profile(data))
        if isinstance(data, dict) and data.get("profile") == "quick":
            return _quick(data)
        return data

    @field_validator("degrade")
    @classmethod
    def _modes(cls, v):
        out = {}
        for mode, spec in v.items():
            if not MODE_NAME.match(mode) or mode in PROJECT_SECTIONS:
                raise _OpError(mode, "a mode name is letters, digits, '_' and '-' (and not "
                               f"{' or '.join(PROJECT_SECTIONS)})")
            observed, photos = False, None
            if isinstance(spec, dict) and "observed" in spec:
                spec = dict(spec)
                observed = spec.pop("observed")
                if not isinstance(observed, bool):
                    raise _OpError(f"{mode}.observed", f"must be true or false, got {observed!r}")
            if isinstance(spec, dict) and "photos" in spec:
                spec = dict(spec)
                photos = spec.pop("photos")
                if isinstance(photos, str):
                    photos = [photos]
                if not (isinstance(photos, list) and photos and all(isinstance(x, str) and x for x in photos)):
                    raise _OpError(f"{mode}.photos", "must be a file name pattern or a list of them (blurry_*.jpg, "
                                   f"old/*.png), got {photos!r}")
            op = parse_op(spec, mode)
            unknown = needs_observed(flatten_ops(op))
            if unknown and not observed:
                raise _OpError(mode, f"{unknown} is for a photo that is already degraded, whose degradation nobody "
                               "knows: add observed: true (a mode that degrades sharp photos must say how)")
            out[mode] = Mode(op=op, observed=observed, photos=photos)
        return out

    @model_validator(mode="after")
    def _agree(self):
        """The sections checked against each other (nothing is changed: the models are frozen)."""
        for mode, m in self.degrade.items():
            try:
                check_op_fits(flatten_ops(m.op), self.align.resolution)
            except ValueError as exc:
                raise _OpError(f"degrade.{mode}", f"{exc} (align.resolution)") from None
        for mode in self.project.model_extra or {}:
            if mode not in self.degrade:
                hint = _did_you_mean(mode, list(self.degrade) + list(PROJECT_SECTIONS))
                raise _OpError(f"project.{mode}", f"unknown key: not a mode under degrade{hint}")
        self._check_inits()
        self._check_starts()
        if "jpeg" in self.benchmark.tasks and self.align.resolution % 16:
            raise _OpError("benchmark.tasks", f"jpeg needs a multiple of 16 px, the generator makes "
                           f"{self.align.resolution} px (align.resolution)")
        self.benchmark_methods()
        return self

    def _check_inits(self) -> None:
        """A mode may start from another mode's results, never in a cycle."""
        for mode in self.degrade:
            init = self.project.for_mode(mode).init_mode
            where = (f"project.{mode}.init" if self.project.for_mode(mode).init != self.project.default.init
                     else "project.default.init")
            if init is not None and init not in self.degrade:
                raise _OpError(where, f"{init!r} is not a mode under degrade{_did_you_mean(init, self.degrade)} "
                               "(nor w_avg or a path ending in .npz)")
            seen = [mode]
            while init is not None:
                if init in seen:
                    raise _OpError(where, f"modes start from each other's results in a cycle: "
                                   f"{' -> '.join(seen + [init])}")
                seen.append(init)
                init = self.project.for_mode(init).init_mode

    def benchmark_methods(self) -> Dict[str, ProjectorConfig]:
        """``benchmark.methods``: each name's overrides merged over ``project.default``, from w_avg."""
        methods = {}
        for name, override in self.benchmark.methods.items():
            where = f"benchmark.methods.{name}"
            if not MODE_NAME.match(name) or name == "input":
                raise _OpError(where, "a method name is letters, digits, '_' and '-' (and not input)")
            if override is not None and not isinstance(override, dict):
                raise _OpError(where, "must be a mapping of projector settings to override")
            if "init" in (override or {}):
                raise _OpError(f"{where}.init", "the benchmark starts every method from w_avg")
            try:
                methods[name] = ProjectorConfig.model_validate({**self.project.default.model_dump(),
                                                                **(override or {}), "init": "w_avg"})
            except ValidationError as exc:
                err = exc.errors()[0]
                raise _OpError(f"{where}.{_dotted(err['loc'])}", _describe(err, ProjectorConfig)) from None
        return methods

    def _check_starts(self) -> None:
        """``project.starts`` names, for every mode, what DVC must see its project stage start
        from (dvc.yaml cannot derive a per-mode dependency from ``init``); it must agree with
        ``init``, and the message says what to write."""
        starts = self.project.starts
        for mode in starts:
            if mode not in self.degrade:
                raise _OpError(f"project.starts.{mode}", f"not a mode under degrade{_did_you_mean(mode, self.degrade)}")
        for mode in self.degrade:
            want = self.project.start_dependency(mode)
            init = self.project.for_mode(mode).init
            if mode not in (self.project.model_extra or {}):
                also = "" if mode in starts else f", and under project.starts: {mode}: {want}"
                raise _OpError(f"project.{mode}", f"missing: DVC's project@{mode} stage reads it; every mode under "
                               f"degrade needs its entry under project: {mode}: {{}} (no overrides of "
                               f"project.default){also}")
            if mode not in starts:
                raise _OpError(f"project.starts.{mode}", f"missing: every mode needs one, here {want} "
                               f"(DVC reruns project@{mode} when it changes; init is {init})")
            if starts[mode] != want:
                raise _OpError(f"project.starts.{mode}", f"must be {want}, because project.{mode}.init is "
                               f"{init} (DVC reruns project@{mode} when it changes), got {starts[mode]!r}")

    def ops(self, mode: str) -> List[Op]:
        """The flat op list of a degradation mode."""
        if mode not in self.degrade:
            modes = ", ".join(self.degrade) or "none"
            raise ParamsError(f"{params_key(f'degrade.{mode}')}: no such mode; modes: {modes}")
        return flatten_ops(self.degrade[mode].op)

    def observed(self, mode: str) -> bool:
        self.ops(mode)
        return self.degrade[mode].observed

    def mode(self, mode: str) -> "Mode":
        self.ops(mode)
        return self.degrade[mode]


# ----------------------------------------------------------------------------------------------
# Reading and error messages

# The params file this process read (a stage's --params): what run-time messages name.
_PARAMS_FILE = ["params.yaml"]


def params_key(dotted: str) -> str:
    """``<params file>: <dotted key>``, naming the params file this process read, for messages
    about a setting that only the run itself can find wrong."""
    return f"{_PARAMS_FILE[0]}: {dotted}"


def load_params(path="params.yaml") -> Params:
    """Read and validate ``params.yaml``; :class:`ParamsError` names the file and the dotted key.
    Run-time messages name this file from then on (:func:`params_key`)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    path = Path(path)
    try:
        with open(path) as f:
            data = YAML(typ="safe", pure=True).load(f)
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    params = parse_params(data if data is not None else {}, str(path))
    _PARAMS_FILE[0] = str(path)
    return params


def parse_params(data, source: str = "params.yaml") -> Params:
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: must be a mapping of sections, got {type(data).__name__}")
    for old, new in RENAMED_KEYS.items():
        section, key = old.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            raise ParamsError(f"{source}: {old}: renamed to {new} (DVC's run-cache ignores keys named {key})")
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(f"{source}: {format_errors(exc, Params)}") from None


def validated(model: Type[BaseModel], data: dict, source: str) -> Any:
    """``model`` validated from ``data`` (settings given elsewhere than params.yaml, such as the
    command line); :class:`ParamsError` naming ``source`` and the key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(f"{source}: {format_errors(exc, model)}") from None


def format_errors(exc: ValidationError, root: Type[BaseModel]) -> str:
    """One line for a pydantic error: ``dotted.key: what is wrong`` (the first error, and a count)."""
    errors = exc.errors()
    where, message = _locate(errors[0], root)
    more = len(errors) - 1
    return f"{where}: {message}" + (f" (and {more} more error{'s' if more > 1 else ''})" if more else "")


def _locate(err: Mapping[str, Any], root: Type[BaseModel]):
    """``(dotted key, message)`` of one pydantic error; an :class:`_OpError` raised by a validator
    carries the rest of the key below the field that ran it."""
    inner = err.get("ctx", {}).get("error")
    if isinstance(inner, _OpError):
        return _join(_dotted(err["loc"]), inner.loc), inner.message
    return _dotted(err["loc"]), _describe(err, _model_at(root, err["loc"]))


def _model_at(root: Type[BaseModel], loc) -> Optional[Type[BaseModel]]:
    """The model that holds the last key of ``loc`` (for did-you-mean hints)."""
    model = root
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) and hasattr(model, "model_fields") else None
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def _describe(err: Mapping[str, Any], model: Optional[Type[BaseModel]]) -> str:
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        known = list(model.model_fields) if model is not None else []
        hint = _did_you_mean(err["loc"][-1], known)
        return "unknown key" + (hint or (f" (known: {', '.join(known)})" if known else ""))
    if kind == "missing":
        return "missing"
    if kind == "bool_type":
        extra = " (YAML 1.2 reads yes/no/on/off as strings)" if isinstance(value, str) else ""
        return f"must be true or false, got {value!r}{extra}"
    if kind in ("int_type", "int_from_float"):
        return f"must be an integer, got {value!r}"
    if kind == "float_type":
        return f"must be a number, got {value!r}"
    if kind in ("string_type", "list_type", "dict_type", "model_type"):
        want = {"string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
                "model_type": "a mapping"}[kind]
        return f"must be {want}, got {value!r}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        return msg if "got" in msg else f"{msg}, got {value!r}"
    msg = re.sub(r"^(Input|List|String|Value) should", "must", msg)
    return f"{msg}, got {value!r}"


def _did_you_mean(word, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _dotted(loc) -> str:
    return ".".join(str(p) for p in loc)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def model_keys(model: Type[BaseModel] = Params, prefix: str = "") -> List[str]:
    """Every key name the schema defines, dotted (ops under ``degrade.<type>``), for the guard
    against keys that DVC's run-cache cannot see."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += model_keys(ann, f"{prefix}{name}.")
    if model is Params:
        for kind, op in OP_TYPES.items():
            keys += model_keys(op, f"degrade.<{kind}>.")
    return keys
