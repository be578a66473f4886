// Direct upfirdn2d: one thread per output pixel sums the filter taps that land on real (non-zero)
// input samples of the zero-upsampled, padded image. Matches recon.ops.upfirdn2d.upfirdn2d_ref.
#include "kernels.h"
#include <c10/util/Half.h>

namespace recon {
namespace {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

// Floor division and modulo that stay correct for negative numerators (negative padding).
__device__ __forceinline__ int floor_div(int a, int b) { return (a >= 0) ? a / b : -((-a + b - 1) / b); }

template <typename T>
__global__ void upfirdn2d_kernel(const T* __restrict__ x, const float* __restrict__ f, T* __restrict__ y,
                                 UpFirDn2dParams p) {
    using A = typename Acc<T>::type;
    const int64_t total = (int64_t)p.n * p.c * p.out_h * p.out_w;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)blockDim.x * gridDim.x) {
        const int ox = (int)(idx % p.out_w);
        const int oy = (int)((idx / p.out_w) % p.out_h);
        const int64_t plane = idx / ((int64_t)p.out_w * p.out_h);
        const T* xp = x + plane * (int64_t)p.in_h * p.in_w;

        // Window origin in upsampled (unpadded) coordinates.
        const int uy0 = oy * p.down_y - p.pad_y0;
        const int ux0 = ox * p.down_x - p.pad_x0;
        // First tap that hits a multiple of `up`, so the loops step straight over the zeros.
        const int ky_first = ((floor_div(uy0 + p.up_y - 1, p.up_y)) * p.up_y) - uy0;
        const int kx_first = ((floor_div(ux0 + p.up_x - 1, p.up_x)) * p.up_x) - ux0;

        A acc = A(0);
        for (int ky = ky_first; ky < p.f_h; ky += p.up_y) {
            const int iy = (uy0 + ky) / p.up_y;
            if (iy < 0 || iy >= p.in_h) continue;
            const int fy = p.flip_filter ? ky : (p.f_h - 1 - ky);
            for (int kx = kx_first; kx < p.f_w; kx += p.up_x) {
                const int ix = (ux0 + kx) / p.up_x;
                if (ix < 0 || ix >= p.in_w) continue;
                const int fx = p.flip_filter ? kx : (p.f_w - 1 - kx);
                acc += static_cast<A>(xp[(int64_t)iy * p.in_w + ix]) * static_cast<A>(f[fy * p.f_w + fx]);
            }
        }
        y[idx] = static_cast<T>(acc);
    }
}

}  // namespace

template <typename T>
cudaError_t launch_upfirdn2d(const T* x, const float* f, T* y, const UpFirDn2dParams& p, cudaStream_t stream) {
    const int block = 256;
    const int64_t total = (int64_t)p.n * p.c * p.out_h * p.out_w;
    int64_t grid = (total + block - 1) / block;
    if (grid < 1) grid = 1;
    if (grid > 65535 * 8) grid = 65535 * 8;
    upfirdn2d_kernel<T><<<(int)grid, block, 0, stream>>>(x, f, y, p);
    return cudaGetLastError();
}

template cudaError_t launch_upfirdn2d<float>(const float*, const float*, float*, const UpFirDn2dParams&, cudaStream_t);
template cudaError_t launch_upfirdn2d<double>(const double*, const float*, double*, const UpFirDn2dParams&, cudaStream_t);
template cudaError_t launch_upfirdn2d<c10::Half>(const c10::Half*, const float*, c10::Half*, const UpFirDn2dParams&, cudaStream_t);

}  // namespace recon
