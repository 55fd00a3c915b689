// rope(x [T,n_heads,head_dim], positions [T], inv_freq [head_dim/2], out, T,
//      n_heads, head_dim, pos_scale, interleaved)
// grid (T), block 128. out does not alias x.
//
// Port of kernels/cuda/rope.cu. Each work-item owns one frequency index i
// (computes cos/sin once) and walks a strided subset of the heads.
__kernel void rope(const __global float* restrict x, const __global int* restrict positions,
                   const __global float* restrict inv_freq, __global float* restrict out,
                   int T, int n_heads, int head_dim, float pos_scale, int interleaved) {
    const int t = get_group_id(0);
    if (t >= T) return;
    const int hd = head_dim >> 1;
    if (hd <= 0) return;
    const int tid = get_local_id(0);
    const int nt = get_local_size(0);
    const bool fits = nt >= hd;
    const int hstep = fits ? nt / hd : 1;  // heads processed in parallel
    const int h0 = fits ? tid / hd : 0;
    // tid % hd written out: a div/rem pair makes LLVM emit `freeze`, which
    // llvm-spirv-15 cannot translate.
    const int i0 = fits ? tid - h0 * hd : tid;
    const int istep = fits ? hd : nt;
    if (h0 >= hstep) return;  // no barriers in this kernel

    const float p = (float)positions[t] * pos_scale;
    const long row = (long)t * n_heads;
    for (int i = i0; i < hd; i += istep) {
        const float a = p * inv_freq[i];
        const float c = cos(a);
        const float s = sin(a);
        const int j0 = interleaved ? 2 * i : i;
        const int j1 = interleaved ? 2 * i + 1 : i + hd;
        for (int h = h0; h < n_heads; h += hstep) {
            const long base = (row + h) * head_dim;
            const float x0 = x[base + j0];
            const float x1 = x[base + j1];
            out[base + j0] = x0 * c - x1 * s;
            out[base + j1] = x1 * c + x0 * s;
        }
    }
}
