// ATen glue for recon's CUDA kernels: argument checks, dtype dispatch, current stream.
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include "kernels.h"

namespace {

recon::BiasActParams make_params(const torch::Tensor& x, const torch::Tensor& b, int64_t dim, int64_t act,
                                 double alpha, double gain, double clamp) {
    TORCH_CHECK(dim >= 0 && dim < x.dim(), "bias_act: dim out of range");
    recon::BiasActParams p;
    p.numel = x.numel();
    p.inner = 1;
    for (int64_t i = dim + 1; i < x.dim(); ++i) p.inner *= x.size(i);
    p.channels = b.numel() > 0 ? x.size(dim) : 0;
    p.act = static_cast<int>(act);
    p.alpha = static_cast<float>(alpha);
    p.gain = static_cast<float>(gain);
    p.clamp = static_cast<float>(clamp);
    return p;
}

torch::Tensor bias_act(torch::Tensor x, torch::Tensor b, int64_t dim, int64_t act, double alpha, double gain,
                       double clamp) {
    TORCH_CHECK(x.is_cuda() && x.is_contiguous(), "bias_act: x must be a contiguous CUDA tensor");
    TORCH_CHECK(b.numel() == 0 || (b.is_cuda() && b.is_contiguous() && b.scalar_type() == x.scalar_type() &&
                                   b.dim() == 1 && b.size(0) == x.size(dim)),
                "bias_act: b must be empty or a contiguous CUDA vector of x.size(dim) with x's dtype");
    const c10::cuda::CUDAGuard guard(x.device());
    auto y = torch::empty_like(x);
    if (x.numel() == 0) return y;
    auto p = make_params(x, b, dim, act, alpha, gain, clamp);
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(x.scalar_type(), "recon_bias_act", [&] {
        auto err = recon::launch_bias_act<scalar_t>(x.data_ptr<scalar_t>(),
                                                    p.channels ? b.data_ptr<scalar_t>() : nullptr,
                                                    y.data_ptr<scalar_t>(), p, stream);
        TORCH_CHECK(err == cudaSuccess, "bias_act kernel: ", cudaGetErrorString(err));
    });
    return y;
}

torch::Tensor bias_act_grad(torch::Tensor dy, torch::Tensor y, int64_t act, double alpha, double gain,
                            double clamp) {
    TORCH_CHECK(dy.is_cuda() && y.is_cuda() && dy.sizes() == y.sizes() && dy.scalar_type() == y.scalar_type(),
                "bias_act_grad: dy and y must be CUDA tensors of one shape and dtype");
    dy = dy.contiguous();
    y = y.contiguous();
    const c10::cuda::CUDAGuard guard(y.device());
    auto dx = torch::empty_like(y);
    if (y.numel() == 0) return dx;
    auto empty = y.new_empty({0});
    auto p = make_params(y, empty, 0, act, alpha, gain, clamp);
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(y.scalar_type(), "recon_bias_act_grad", [&] {
        auto err = recon::launch_bias_act_grad<scalar_t>(dy.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                                         dx.data_ptr<scalar_t>(), p, stream);
        TORCH_CHECK(err == cudaSuccess, "bias_act_grad kernel: ", cudaGetErrorString(err));
    });
    return dx;
}

torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor f, int64_t up_x, int64_t up_y, int64_t down_x,
                        int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1,
                        bool flip_filter) {
    TORCH_CHECK(x.is_cuda() && x.dim() == 4, "upfirdn2d: x must be a 4D CUDA tensor");
    TORCH_CHECK(f.is_cuda() && f.dim() == 2 && f.scalar_type() == torch::kFloat32 && f.is_contiguous(),
                "upfirdn2d: f must be a contiguous 2D float32 CUDA tensor");
    TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1, "upfirdn2d: factors must be >= 1");
    x = x.contiguous();
    recon::UpFirDn2dParams p;
    p.n = static_cast<int>(x.size(0));
    p.c = static_cast<int>(x.size(1));
    p.in_h = static_cast<int>(x.size(2));
    p.in_w = static_cast<int>(x.size(3));
    p.up_x = static_cast<int>(up_x);
    p.up_y = static_cast<int>(up_y);
    p.down_x = static_cast<int>(down_x);
    p.down_y = static_cast<int>(down_y);
    p.pad_x0 = static_cast<int>(pad_x0);
    p.pad_y0 = static_cast<int>(pad_y0);
    p.f_h = static_cast<int>(f.size(0));
    p.f_w = static_cast<int>(f.size(1));
    p.flip_filter = flip_filter;
    p.out_h = static_cast<int>((x.size(2) * up_y + pad_y0 + pad_y1 - p.f_h) / down_y + 1);
    p.out_w = static_cast<int>((x.size(3) * up_x + pad_x0 + pad_x1 - p.f_w) / down_x + 1);
    TORCH_CHECK(p.out_h >= 1 && p.out_w >= 1, "upfirdn2d: output would be empty");
    const c10::cuda::CUDAGuard guard(x.device());
    auto y = torch::empty({x.size(0), x.size(1), p.out_h, p.out_w}, x.options());
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(x.scalar_type(), "recon_upfirdn2d", [&] {
        auto err = recon::launch_upfirdn2d<scalar_t>(x.data_ptr<scalar_t>(), f.data_ptr<float>(),
                                                     y.data_ptr<scalar_t>(), p, stream);
        TORCH_CHECK(err == cudaSuccess, "upfirdn2d kernel: ", cudaGetErrorString(err));
    });
    return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act, "bias + activation + gain + clamp (CUDA)");
    m.def("bias_act_grad", &bias_act_grad, "gradient of bias_act w.r.t. x + b, from its output (CUDA)");
    m.def("upfirdn2d", &upfirdn2d, "upsample, pad, FIR filter, downsample (CUDA)");
}
