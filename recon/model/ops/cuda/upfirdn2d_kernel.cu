// upfirdn2d on the GPU, matching recon.model.ops.upfirdn2d.upfirdn2d_ref.
//
// Two kernels, after the design of NVIDIA's stylegan3 torch_utils/ops/upfirdn2d.cu (written anew):
//  * a tiled kernel for the cases the generator runs (4x4 filters at up 2, down 2, or neither):
//    a block stages its input tile and the (flipped) filter in shared memory once, then every
//    thread computes several outputs from them; factors and filter size are template constants,
//    so the tap loops unroll and the zero-insertion test folds into predicates; 32-bit indices.
//  * a generic kernel for everything else: one thread per output pixel, filter from global
//    memory, 64-bit indices only when the tensors need them.
#include "kernels.h"
#include <c10/util/Half.h>

namespace recon {
namespace {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

// Floor division that stays correct for negative numerators (negative padding).
template <typename I>
__device__ __forceinline__ I floor_div(I a, I b) { return (a >= 0) ? a / b : -((-a + b - 1) / b); }

constexpr int kTileOutW = 32;
constexpr int kTileOutH = 32;
constexpr int kThreadsX = 32;
constexpr int kThreadsY = 8;

template <typename T, int UP, int DOWN, int FH, int FW>
__global__ void __launch_bounds__(kThreadsX * kThreadsY)
upfirdn2d_tiled(const T* __restrict__ x, const float* __restrict__ f, T* __restrict__ y, UpFirDn2dParams p) {
    using A = typename Acc<T>::type;
    // Input rows/columns one output tile can reach (an upper bound; the load clips to the image).
    constexpr int kTileInH = ((kTileOutH - 1) * DOWN + FH - 1) / UP + 2;
    constexpr int kTileInW = ((kTileOutW - 1) * DOWN + FW - 1) / UP + 2;
    __shared__ A sf[FH][FW];
    __shared__ A sx[kTileInH][kTileInW];

    const int tid = threadIdx.y * kThreadsX + threadIdx.x;
    constexpr int kThreads = kThreadsX * kThreadsY;
    // The filter as the correlation applies it: flipped unless flip_filter.
    for (int i = tid; i < FH * FW; i += kThreads) {
        const int ky = i / FW, kx = i % FW;
        const int fy = p.flip_filter ? ky : FH - 1 - ky;
        const int fx = p.flip_filter ? kx : FW - 1 - kx;
        sf[ky][kx] = static_cast<A>(f[fy * FW + fx]);
    }

    const int ox0 = blockIdx.x * kTileOutW;
    const int oy0 = blockIdx.y * kTileOutH;
    // Upsampled coordinates of the tile's first tap, and the first input row/column it reads.
    const int uy_min = oy0 * DOWN - p.pad_y0;
    const int ux_min = ox0 * DOWN - p.pad_x0;
    const int iy0 = floor_div(uy_min + UP - 1, UP);
    const int ix0 = floor_div(ux_min + UP - 1, UP);
    const int planes = p.n * p.c;

    for (int plane = blockIdx.z; plane < planes; plane += gridDim.z) {
        const T* xp = x + plane * (p.in_h * p.in_w);
        T* yp = y + plane * (p.out_h * p.out_w);
        __syncthreads();    // the previous plane's tile is no longer read
        for (int i = tid; i < kTileInH * kTileInW; i += kThreads) {
            const int r = i / kTileInW, c = i % kTileInW;
            const int iy = iy0 + r, ix = ix0 + c;
            A v = A(0);
            if (iy >= 0 && iy < p.in_h && ix >= 0 && ix < p.in_w) v = static_cast<A>(xp[iy * p.in_w + ix]);
            sx[r][c] = v;
        }
        __syncthreads();

        for (int ty = threadIdx.y; ty < kTileOutH; ty += kThreadsY) {
            const int oy = oy0 + ty;
            if (oy >= p.out_h) break;
            const int uy = oy * DOWN - p.pad_y0;
            for (int tx = threadIdx.x; tx < kTileOutW; tx += kThreadsX) {
                const int ox = ox0 + tx;
                if (ox >= p.out_w) break;
                const int ux = ox * DOWN - p.pad_x0;
                A acc = A(0);
#pragma unroll
                for (int ky = 0; ky < FH; ++ky) {
                    const int vy = uy + ky;                   // a real sample only at multiples of UP
                    if (UP > 1 && floor_div(vy, UP) * UP != vy) continue;
                    const int r = floor_div(vy, UP) - iy0;
#pragma unroll
                    for (int kx = 0; kx < FW; ++kx) {
                        const int vx = ux + kx;
                        if (UP > 1 && floor_div(vx, UP) * UP != vx) continue;
                        acc += sx[r][floor_div(vx, UP) - ix0] * sf[ky][kx];
                    }
                }
                yp[oy * p.out_w + ox] = static_cast<T>(acc);
            }
        }
    }
}

template <typename T, typename I>
__global__ void upfirdn2d_generic(const T* __restrict__ x, const float* __restrict__ f, T* __restrict__ y,
                                  UpFirDn2dParams p) {
    using A = typename Acc<T>::type;
    const I total = (I)p.n * p.c * p.out_h * p.out_w;
    for (I idx = (I)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (I)blockDim.x * gridDim.x) {
        const int ox = (int)(idx % p.out_w);
        const int oy = (int)((idx / p.out_w) % p.out_h);
        const I plane = idx / ((I)p.out_w * p.out_h);
        const T* xp = x + plane * (I)p.in_h * p.in_w;
        const int uy0 = oy * p.down_y - p.pad_y0;
        const int ux0 = ox * p.down_x - p.pad_x0;
        // First tap that lands on a multiple of `up`, so the loops step straight over the zeros.
        const int ky_first = floor_div(uy0 + p.up_y - 1, p.up_y) * p.up_y - uy0;
        const int kx_first = floor_div(ux0 + p.up_x - 1, p.up_x) * p.up_x - ux0;
        A acc = A(0);
        for (int ky = ky_first; ky < p.f_h; ky += p.up_y) {
            const int iy = (uy0 + ky) / p.up_y;
            if (iy < 0 || iy >= p.in_h) continue;
            const int fy = p.flip_filter ? ky : (p.f_h - 1 - ky);
            for (int kx = kx_first; kx < p.f_w; kx += p.up_x) {
                const int ix = (ux0 + kx) / p.up_x;
                if (ix < 0 || ix >= p.in_w) continue;
                const int fx = p.flip_filter ? kx : (p.f_w - 1 - kx);
                acc += static_cast<A>(xp[(I)iy * p.in_w + ix]) * static_cast<A>(f[fy * p.f_w + fx]);
            }
        }
        y[idx] = static_cast<T>(acc);
    }
}

template <typename T, int UP, int DOWN>
cudaError_t launch_tiled(const T* x, const float* f, T* y, const UpFirDn2dParams& p, cudaStream_t stream) {
    const dim3 block(kThreadsX, kThreadsY);
    const int planes = p.n * p.c;
    const dim3 grid((p.out_w + kTileOutW - 1) / kTileOutW, (p.out_h + kTileOutH - 1) / kTileOutH,
                    planes < 65535 ? planes : 65535);
    upfirdn2d_tiled<T, UP, DOWN, 4, 4><<<grid, block, 0, stream>>>(x, f, y, p);
    return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_upfirdn2d(const T* x, const float* f, T* y, const UpFirDn2dParams& p, cudaStream_t stream) {
    const int64_t in_numel = (int64_t)p.n * p.c * p.in_h * p.in_w;
    const int64_t out_numel = (int64_t)p.n * p.c * p.out_h * p.out_w;
    const bool small_index = in_numel < (1LL << 31) && out_numel < (1LL << 31);
    const bool square = p.up_x == p.up_y && p.down_x == p.down_y;
    if (small_index && square && p.f_h == 4 && p.f_w == 4) {
        if (p.up_x == 1 && p.down_x == 1) return launch_tiled<T, 1, 1>(x, f, y, p, stream);
        if (p.up_x == 2 && p.down_x == 1) return launch_tiled<T, 2, 1>(x, f, y, p, stream);
        if (p.up_x == 1 && p.down_x == 2) return launch_tiled<T, 1, 2>(x, f, y, p, stream);
    }
    const int block = 256;
    int64_t grid = (out_numel + block - 1) / block;
    if (grid < 1) grid = 1;
    if (grid > 65535 * 8) grid = 65535 * 8;
    if (small_index) {
        upfirdn2d_generic<T, int><<<(int)grid, block, 0, stream>>>(x, f, y, p);
    } else {
        upfirdn2d_generic<T, int64_t><<<(int)grid, block, 0, stream>>>(x, f, y, p);
    }
    return cudaGetLastError();
}

template cudaError_t launch_upfirdn2d<float>(const float*, const float*, float*, const UpFirDn2dParams&, cudaStream_t);
template cudaError_t launch_upfirdn2d<double>(const double*, const float*, double*, const UpFirDn2dParams&, cudaStream_t);
template cudaError_t launch_upfirdn2d<c10::Half>(const c10::Half*, const float*, c10::Half*, const UpFirDn2dParams&, cudaStream_t);

}  // namespace recon
