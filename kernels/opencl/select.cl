// gather_last(x [T,H], qsl [S+1], out [S,H], S, H)      grid (S), block 256
// argmax(logits [S,V], out [S], S, V)                  grid (S), block 512
// sample(logits [S,V], temperature [S], noise [S,V], out [S], S, V)
//                                                      grid (S), block 512
//
// Port of kernels/cuda/select.cu. The warp-shuffle argmax becomes a tree
// reduction of (value, index) pairs in local memory, with the same merge rule
// so the result is the same: the lowest index of the largest value, NaN never
// wins, 0 when nothing beats -inf.

__kernel void gather_last(const __global float* restrict x, const __global int* restrict qsl,
                          __global float* restrict out, int S, int H) {
    const int s = get_group_id(0);
    if (s >= S) return;  // no barriers in this kernel
    const int a = qsl[s];
    const int b = qsl[s + 1];
    __global float* o = out + (long)s * H;
    if (b > a) {
        const __global float* src = x + (long)(b - 1) * H;
        for (int j = get_local_id(0); j < H; j += get_local_size(0)) o[j] = src[j];
    } else {
        for (int j = get_local_id(0); j < H; j += get_local_size(0)) o[j] = 0.0f;
    }
}

#define SEL_BLOCK 512
#define SEL_NO_INDEX 0x7fffffff

// Candidate (v, i) replaces (*bv, *bi) if it is strictly larger, or equal with
// a lower index. Only values > -inf are ever accepted (NaN never compares),
// so an untouched (-inf, SEL_NO_INDEX) means "nothing beats -inf".
TSR_INLINE void sel_take(float v, int i, float* bv, int* bi) {
    if (v > *bv || (v == *bv && i < *bi && v > TSR_NEG_INF)) {
        *bv = v;
        *bi = i;
    }
}

// Group reduce of (bv, bi); returns the winning index to every work-item.
// The merge is commutative and associative on the states sel_take produces
// (-inf/NO_INDEX or the max with its lowest index), so the tree order gives
// the CUDA result. get_local_size(0) must be a power of two <= SEL_BLOCK.
TSR_INLINE int sel_argmax_group(float bv, int bi, __local float* sv, __local int* si) {
    const int l = get_local_id(0);
    sv[l] = bv;
    si[l] = bi;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int o = get_local_size(0) / 2; o > 0; o >>= 1) {
        if (l < o) {
            float v = sv[l];
            int i = si[l];
            sel_take(sv[l + o], si[l + o], &v, &i);
            sv[l] = v;
            si[l] = i;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const int r = si[0];
    return r == SEL_NO_INDEX ? 0 : r;
}

// A group past S (none with the host's grid) runs with an empty row (v = 0)
// rather than returning before the barriers, and writes nothing.
__kernel void argmax(const __global float* restrict logits, __global int* restrict out, int S,
                     int V) {
    __local float sv[SEL_BLOCK];
    __local int si[SEL_BLOCK];
    const int s = get_group_id(0);
    const int v = s < S ? V : 0;
    const __global float* row = logits + (long)s * V;
    float bv = TSR_NEG_INF;
    int bi = SEL_NO_INDEX;
    for (int i = get_local_id(0); i < v; i += get_local_size(0)) sel_take(row[i], i, &bv, &bi);
    const int r = sel_argmax_group(bv, bi, sv, si);
    if (get_local_id(0) == 0 && s < S) out[s] = r;
}

__kernel void sample(const __global float* restrict logits,
                     const __global float* restrict temperature,
                     const __global float* restrict noise, __global int* restrict out, int S,
                     int V) {
    __local float sv[SEL_BLOCK];
    __local int si[SEL_BLOCK];
    const int s = get_group_id(0);
    const int v = s < S ? V : 0;
    const long base = (long)s * V;
    const __global float* row = logits + base;
    const __global float* nz = noise + base;
    const float t = s < S ? temperature[s] : 0.0f;
    float bv = TSR_NEG_INF;
    int bi = SEL_NO_INDEX;
    if (t <= 0.0f) {
        for (int i = get_local_id(0); i < v; i += get_local_size(0)) {
            sel_take(row[i], i, &bv, &bi);
        }
    } else {
        for (int i = get_local_id(0); i < v; i += get_local_size(0)) {
            sel_take(row[i] / t + nz[i], i, &bv, &bi);
        }
    }
    const int r = sel_argmax_group(bv, bi, sv, si);
    if (get_local_id(0) == 0 && s < S) out[s] = r;
}
