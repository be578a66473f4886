"""recon: restore and reconstruct face photos by inverting them into a pretrained StyleGAN2."""
from .model.checkpoint import convert, load_generator, save_generator
from .model.networks import Generator
from .model.safe_pickle import CheckpointError

__version__ = "0.1.0"
__all__ = ["CheckpointError", "Generator", "convert", "load_generator", "save_generator", "__version__"]
