"""Custom ops of the StyleGAN2 generator: each has a pure-PyTorch reference and a CUDA kernel
behind one function (``impl='auto' | 'ref' | 'cuda'``)."""
from .bias_act import bias_act, bias_act_ref
from .conv2d_resample import conv2d_resample, modulated_conv2d
from .upfirdn2d import downsample2d, setup_filter, upfirdn2d, upfirdn2d_ref, upsample2d

__all__ = ["bias_act", "bias_act_ref", "conv2d_resample", "modulated_conv2d", "downsample2d",
           "setup_filter", "upfirdn2d", "upfirdn2d_ref", "upsample2d"]
