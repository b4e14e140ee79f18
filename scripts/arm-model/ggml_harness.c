// Calls one of llama.cpp's aarch64 CPU kernels (ggml-cpu/arch/arm/quants.c, repack.cpp) on random
// blocks, between the markers mark_begin()/mark_end() that scripts/arm-model/trace.py cuts the qemu
// execution trace at. The data are random bytes: these kernels have no data-dependent branches, and
// llvm-mca does not model data-dependent timing.
//
// usage: ggml_harness vecdot|gemv|gemm TYPE N ROWS TOKENS
//   vecdot: ggml_vec_dot_TYPE_q8_x once per (row, token), in ggml_compute_forward_mul_mat_one_chunk's
//           order (16x16 blocks of rows and tokens);
//   gemv:   the repacked ggml_gemv_TYPE_RxC (one call per token over all rows, as forward_mul_mat does
//           for a token count below 4);
//   gemm:   the repacked ggml_gemm_TYPE_RxC (one call over all rows and tokens; TOKENS a multiple of 4).
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*vec_dot_t)(int, float *, size_t, const void *, size_t, const void *, size_t, int);
typedef void (*gemx_t)(int, float *, size_t, const void *, const void *, int, int);

#define VD(t, y) void ggml_vec_dot_##t##_##y(int, float *, size_t, const void *, size_t, const void *, size_t, int);
VD(q4_0, q8_0) VD(q4_1, q8_1) VD(q5_0, q8_0) VD(q5_1, q8_1) VD(q8_0, q8_0) VD(q4_K, q8_K) VD(q5_K, q8_K) VD(q6_K, q8_K)
#define GM(k, t, y) void ggml_##k##_##t##_##y(int, float *, size_t, const void *, const void *, int, int);
GM(gemv, q4_0_4x4, q8_0) GM(gemm, q4_0_4x4, q8_0) GM(gemv, q8_0_4x4, q8_0) GM(gemm, q8_0_4x4, q8_0)
GM(gemv, q4_K_8x4, q8_K) GM(gemm, q4_K_8x4, q8_K) GM(gemv, q5_K_8x4, q8_K) GM(gemm, q5_K_8x4, q8_K)
GM(gemv, q6_K_8x4, q8_K) GM(gemm, q6_K_8x4, q8_K)

struct ty {
    const char *name;
    int block, wbytes, ybytes; // elements per block, bytes per weight block, per activation block
    vec_dot_t vec_dot;
    gemx_t gemv, gemm;
};
static const struct ty TYPES[] = {
    {"q4_0", 32, 18, 34, ggml_vec_dot_q4_0_q8_0, ggml_gemv_q4_0_4x4_q8_0, ggml_gemm_q4_0_4x4_q8_0},
    {"q4_1", 32, 20, 36, ggml_vec_dot_q4_1_q8_1, 0, 0},
    {"q5_0", 32, 22, 34, ggml_vec_dot_q5_0_q8_0, 0, 0},
    {"q5_1", 32, 24, 36, ggml_vec_dot_q5_1_q8_1, 0, 0},
    {"q8_0", 32, 34, 34, ggml_vec_dot_q8_0_q8_0, ggml_gemv_q8_0_4x4_q8_0, ggml_gemm_q8_0_4x4_q8_0},
    {"q4_k", 256, 144, 292, ggml_vec_dot_q4_K_q8_K, ggml_gemv_q4_K_8x4_q8_K, ggml_gemm_q4_K_8x4_q8_K},
    {"q5_k", 256, 176, 292, ggml_vec_dot_q5_K_q8_K, ggml_gemv_q5_K_8x4_q8_K, ggml_gemm_q5_K_8x4_q8_K},
    {"q6_k", 256, 210, 292, ggml_vec_dot_q6_K_q8_K, ggml_gemv_q6_K_8x4_q8_K, ggml_gemm_q6_K_8x4_q8_K},
};

__attribute__((noinline)) void mark_begin(void) { __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void mark_end(void) { __asm__ volatile("" ::: "memory"); }

static unsigned char *random_bytes(size_t len) {
    unsigned char *p = aligned_alloc(64, (len + 63) / 64 * 64);
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < len; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        p[i] = (unsigned char)s;
    }
    return p;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s vecdot|gemv|gemm TYPE N ROWS TOKENS\n", argv[0]);
        return 2;
    }
    const char *kind = argv[1];
    int n = atoi(argv[3]), rows = atoi(argv[4]), toks = atoi(argv[5]);
    const struct ty *t = 0;
    for (size_t i = 0; i < sizeof TYPES / sizeof TYPES[0]; i++)
        if (!strcmp(TYPES[i].name, argv[2])) t = &TYPES[i];
    if (!t || n % t->block) return 2;
    size_t wrow = (size_t)n / t->block * t->wbytes, yrow = (size_t)n / t->block * t->ybytes;
    // Repacked activations (block_q8_0x4 / block_q8_Kx4) are at most 4 bytes per token and element more.
    unsigned char *w = random_bytes(wrow * rows), *y = random_bytes((yrow + 4 * (size_t)n) * (toks + 4));
    float *out = calloc((size_t)rows * toks + 64, sizeof(float));
    if (!strcmp(kind, "vecdot")) {
        mark_begin();
        for (int it = 0; it < toks; it += 16)
            for (int ir = 0; ir < rows; ir += 16)
                for (int j = it; j < toks && j < it + 16; j++)
                    for (int i = ir; i < rows && i < ir + 16; i++)
                        t->vec_dot(n, out + (size_t)j * rows + i, 0, w + i * wrow, 0, y + j * yrow, 0, 1);
        mark_end();
    } else if (!strcmp(kind, "gemv") && t->gemv) {
        mark_begin();
        for (int j = 0; j < toks; j++) t->gemv(n, out + (size_t)j * rows, rows, w, y + j * yrow, 1, rows);
        mark_end();
    } else if (!strcmp(kind, "gemm") && t->gemm && toks % 4 == 0) {
        mark_begin();
        t->gemm(n, out, rows, w, y, toks, rows);
        mark_end();
    } else {
        return 2;
    }
    return out[0] == 12345.0f; // keep the results alive
}
