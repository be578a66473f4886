"""recon: restore and reconstruct face photos by inverting them into a pretrained StyleGAN2."""
from .checkpoint import convert, load_generator, save_generator
from .networks import Generator
from .safe_pickle import CheckpointError

__version__ = "0.1.0"
__all__ = ["CheckpointError", "Generator", "convert", "load_generator", "save_generator", "__version__"]
