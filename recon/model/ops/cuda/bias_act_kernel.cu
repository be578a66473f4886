// Elementwise bias + activation + gain + clamp and its first derivative, computed in float
// (double for double tensors), matching recon.model.ops.bias_act.bias_act_ref. As in NVIDIA's
// bias_act.cu, the index math is 32-bit whenever the tensor allows it (64-bit division costs
// several times more per element), and the activation is a template constant.
#include "kernels.h"
#include <c10/util/Half.h>

namespace recon {
namespace {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename A>
__device__ __forceinline__ A activate(A v, int act, A alpha) {
    if (act == 2) return v > A(0) ? v : A(0);
    if (act == 3) return v > A(0) ? v : v * alpha;
    return v;
}

template <typename T, typename I, int ACT>
__global__ void bias_act_kernel(const T* __restrict__ x, const T* __restrict__ b, T* __restrict__ y,
                                BiasActParams p) {
    using A = typename Acc<T>::type;
    const I numel = (I)p.numel, inner = (I)p.inner, channels = (I)p.channels;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < numel; i += (I)blockDim.x * gridDim.x) {
        A v = static_cast<A>(x[i]);
        if (channels > 0) v += static_cast<A>(b[(i / inner) % channels]);
        v = activate<A>(v, ACT, static_cast<A>(p.alpha)) * static_cast<A>(p.gain);
        if (p.clamp >= 0.f) {
            const A c = static_cast<A>(p.clamp);
            v = v > c ? c : (v < -c ? -c : v);
        }
        y[i] = static_cast<T>(v);
    }
}

template <typename T, typename I>
__global__ void bias_act_grad_kernel(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx,
                                     BiasActParams p) {
    using A = typename Acc<T>::type;
    const I numel = (I)p.numel;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < numel; i += (I)blockDim.x * gridDim.x) {
        const A yv = static_cast<A>(y[i]);
        A slope = A(1);
        if (p.act == 2) slope = yv > A(0) ? A(1) : A(0);
        if (p.act == 3) slope = yv > A(0) ? A(1) : static_cast<A>(p.alpha);
        A g = static_cast<A>(dy[i]) * slope * static_cast<A>(p.gain);
        if (p.clamp >= 0.f && !(fabs(yv) < static_cast<A>(p.clamp))) g = A(0);
        dx[i] = static_cast<T>(g);
    }
}

inline int grid_for(int64_t numel, int block) {
    int64_t g = (numel + block - 1) / block;
    return static_cast<int>(g < 65535 * 8 ? (g > 0 ? g : 1) : 65535 * 8);
}

template <typename T, typename I>
void launch_bias_act_as(const T* x, const T* b, T* y, const BiasActParams& p, cudaStream_t stream) {
    const int block = 256, grid = grid_for(p.numel, block);
    if (p.act == 2) bias_act_kernel<T, I, 2><<<grid, block, 0, stream>>>(x, b, y, p);
    else if (p.act == 3) bias_act_kernel<T, I, 3><<<grid, block, 0, stream>>>(x, b, y, p);
    else bias_act_kernel<T, I, 1><<<grid, block, 0, stream>>>(x, b, y, p);
}

inline bool fits_int32(int64_t numel) { return numel < (1LL << 31) - 65535LL * 8 * 256; }

}  // namespace

template <typename T>
cudaError_t launch_bias_act(const T* x, const T* b, T* y, const BiasActParams& p, cudaStream_t stream) {
    if (fits_int32(p.numel)) launch_bias_act_as<T, int>(x, b, y, p, stream);
    else launch_bias_act_as<T, int64_t>(x, b, y, p, stream);
    return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bias_act_grad(const T* dy, const T* y, T* dx, const BiasActParams& p, cudaStream_t stream) {
    const int block = 256, grid = grid_for(p.numel, block);
    if (fits_int32(p.numel)) bias_act_grad_kernel<T, int><<<grid, block, 0, stream>>>(dy, y, dx, p);
    else bias_act_grad_kernel<T, int64_t><<<grid, block, 0, stream>>>(dy, y, dx, p);
    return cudaGetLastError();
}

#define RECON_INSTANTIATE(T)                                                                         \
    template cudaError_t launch_bias_act<T>(const T*, const T*, T*, const BiasActParams&, cudaStream_t); \
    template cudaError_t launch_bias_act_grad<T>(const T*, const T*, T*, const BiasActParams&, cudaStream_t);
RECON_INSTANTIATE(float)
RECON_INSTANTIATE(double)
RECON_INSTANTIATE(c10::Half)
#undef RECON_INSTANTIATE

}  // namespace recon
