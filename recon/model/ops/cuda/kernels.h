// Launchers of recon's CUDA kernels. The .cu files include only CUDA and c10/util headers so that
// they compile with plain nvcc; ops.cpp holds the ATen glue (checks, dispatch, streams).
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace recon {

struct BiasActParams {
    int64_t numel;       // elements of x
    int64_t inner;       // product of the sizes after `dim` (stride of the bias dimension)
    int64_t channels;    // size of `dim`; 0 when there is no bias
    int act;             // 1 linear, 2 relu, 3 lrelu
    float alpha;
    float gain;
    float clamp;         // < 0 disables clamping
};

struct UpFirDn2dParams {
    int n, c, in_h, in_w, out_h, out_w;
    int up_x, up_y, down_x, down_y;
    int pad_x0, pad_y0;
    int f_h, f_w;
    bool flip_filter;
};

template <typename T>
cudaError_t launch_bias_act(const T* x, const T* b, T* y, const BiasActParams& p, cudaStream_t stream);

template <typename T>
cudaError_t launch_bias_act_grad(const T* dy, const T* y, T* dx, const BiasActParams& p, cudaStream_t stream);

template <typename T>
cudaError_t launch_upfirdn2d(const T* x, const float* f, T* y, const UpFirDn2dParams& p, cudaStream_t stream);

}  // namespace recon
