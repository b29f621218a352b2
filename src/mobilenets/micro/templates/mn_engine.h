/* mobilenets int8 engine: row kernels and the demand-driven row scheduler.
 * Written by mobilenets (https://github.com/...); integer only, no malloc, C99.
 * Arithmetic follows the LiteRT int8 spec as TFLite Micro's reference kernels compute it. */
#ifndef MN_ENGINE_H
#define MN_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* kernel ids and limits: generated from the op registry (mobilenets.micro.ops) */
@MN_OPS@

#define MN_FAST_ZP 2

/* conv weights start on a word, so that kernels may read them four bytes at a time */
#if defined(__GNUC__)
#define MN_ALIGN4 __attribute__((aligned(4)))
#else
#define MN_ALIGN4
#endif

/* Per-channel requantization of a conv, depthwise conv or fully connected op. */
typedef struct {
    int32_t cin, cout, mult; /* mult: depth multiplier of a depthwise conv */
    int32_t in_offset;       /* -input zero point */
    int32_t out_zp, act_min, act_max;
    const int8_t *w;         /* conv OHWI (rows padded to a multiple of 4 when im2col runs,
                              * see mn_conv_row), FC (O, I); depthwise: groups of 4 channels, each
                              * holding its kh*kw taps of 4 bytes, then the last cout % 4
                              * channels tap-major (see mn_dw_widx) */
    const int32_t *bias;     /* int32 bias, scale s_in * s_w[c] */
    const int32_t *bias_eff; /* bias - zp_in * sum(w): pointwise and FC fast path, else NULL */
    const int32_t *m0;       /* Q31 multipliers */
    const int32_t *shift;    /* power-of-two exponents (TFLite convention) */
    int32_t fast;            /* bit 0: every shift <= -1 and |accumulator| < 2^30 (checked at
                              * generation), so requantization takes the short exact path;
                              * bit 1 (MN_FAST_ZP): also every shift >= -22, so
                              * out_zp * 2^-shift joins the rounding constant without
                              * overflow */
} mn_conv_params;

/* TFLite int8 ADD: both inputs shifted left by 20, rescaled, summed, rescaled. */
typedef struct {
    int32_t in1_offset, in2_offset, m1, s1, m2, s2, mo, so, out_zp, act_min, act_max;
} mn_add_params;

/* Global pooling: mode 0 = AVERAGE_POOL_2D (same scale in and out), 1 = MEAN (m0 and shift
 * hold s_in / s_out and the division by count). */
typedef struct {
    int32_t mode, count, in_zp, out_zp, m0, shift, act_min, act_max;
    int32_t acc_offset; /* int32 sums, one per channel, in the arena */
} mn_pool_params;

/* TFLite int8 MUL: (a - za) * (b - zb) rescaled; b is a row of the same size or is broadcast
 * (squeeze-excite: one row of c values for every pixel). */
typedef struct {
    int32_t in1_offset, in2_offset, m0, shift, out_zp, act_min, act_max;
} mn_mul_params;

/* TFLite int8 ADD or MUL by a constant (Keras's hard sigmoid multiplies by 1/6): k holds one
 * value or one per channel, prepared once: MUL's (c - zc); ADD's (c - zc) << 20 already rescaled
 * by its own multiplier, so only the input's rescale (m1, s1) and the output's (mo, so) run. */
typedef struct {
    int32_t is_add, in_offset, nk;
    const int32_t *k;
    int32_t m1, s1, mo, so, out_zp, act_min, act_max;
} mn_const_params;

/* TFLite int8 HARD_SWISH: Q15 multipliers (int16) and their exponents, from Prepare. */
typedef struct {
    int32_t in_zp, out_zp, out_m, out_e, relu_m, relu_e;
} mn_hswish_params;

/* TFLite int8 LOGISTIC and SOFTMAX (output scale 1/256, zero point -128): the input (or its
 * difference to the row maximum) to Q4.27 (Q5.26) by m0 << shift; radius: LOGISTIC's input
 * radius, SOFTMAX's -diff_min. */
typedef struct {
    int32_t in_zp, m0, shift, radius;
} mn_prob_params;

/* AVERAGE_POOL_2D (mode 0: the mean of the taps inside the input) or MAX_POOL_2D (mode 1). */
typedef struct {
    int32_t mode, c, act_min, act_max;
} mn_pool2d_params;

/* PAD/PADV2 of H and W with one int8 value (PAD: the zero point). */
typedef struct {
    int32_t value;
} mn_pad_params;

/* A float island (litert-torch's float32 residual ADDs): n_in int8 inputs (tensor ids in
 * summation order), each DEQUANTIZEd through its table of 256 float32 values (lut[256 * k + q +
 * 128], TFLite Micro's values), summed in float32 left to right, divided by out_scale, rounded
 * half away from zero, plus out_zp, clamped: TFLite Micro's float32 arithmetic, bit for bit. */
typedef struct {
    int32_t n_in;
    const int16_t *in;
    const float *lut;
    float out_scale;
    int32_t out_zp;
} mn_fadd_params;

typedef struct {
    int32_t h, w, c;  /* rows of w * c bytes */
    int32_t offset;   /* in the arena */
    int32_t ring;     /* rows held: h for a whole tensor, fewer for a row ring */
    int32_t producer; /* stage index, -1 for the model input */
} mn_tensor;

typedef struct {
    uint8_t kind, kh, kw, sh, sw, pt, pl;
    uint8_t whole; /* 1: row 0 needs every (virtual) row of in0, e.g. a pooled vector */
    int16_t in0, in1, out;
    const void *params;
} mn_stage;

typedef struct {
    const mn_tensor *tensors;
    const mn_stage *stages;
    const int16_t *drive; /* tensors to complete, in order */
    int32_t n_tensors, n_drive, input;
    int32_t patch_offset; /* arena scratch (depthwise border patches, im2col rows), or -1 */
} mn_net;

int32_t mn_requantize(int32_t acc, int32_t m0, int32_t shift);

void mn_conv_row(const mn_conv_params *p, const int8_t *const *rows, int kh, int kw, int sw,
                 int pl, int in_w, int8_t *out, int out_w, int8_t *scratch);
void mn_pointwise(const mn_conv_params *p, const int8_t *in, int npix, int8_t *out);
void mn_dw_row(const mn_conv_params *p, const int8_t *const *rows, int kh, int kw, int sw, int pl,
               int in_w, int8_t *out, int out_w, int8_t *patch);
void mn_add_row(const mn_add_params *p, const int8_t *a, const int8_t *b, int8_t *out, int n);
void mn_mul_row(const mn_mul_params *p, const int8_t *a, const int8_t *b, int nb, int8_t *out,
                int n);
void mn_const_row(const mn_const_params *p, const int8_t *a, int8_t *out, int n);
void mn_hswish_row(const mn_hswish_params *p, const int8_t *in, int8_t *out, int n);
void mn_logistic_row(const mn_prob_params *p, const int8_t *in, int8_t *out, int n);
void mn_softmax_row(const mn_prob_params *p, const int8_t *in, int8_t *out, int npix, int c);
void mn_pool2d_row(const mn_pool2d_params *p, const int8_t *const *rows, int kh, int kw, int sw,
                   int pl, int in_w, int8_t *out, int out_w);
void mn_fadd_row(const mn_fadd_params *p, const int8_t *const *in, int8_t *out, int n);
void mn_pool_row(const mn_pool_params *p, int32_t *acc, const int8_t *row, int w, int c, int first);
void mn_pool_finish(const mn_pool_params *p, const int32_t *acc, int8_t *out, int c);

/* Runs the network: ``next`` holds n_tensors counters and ``stack`` 2 * n_tensors entries
 * (both on the caller's stack). Returns 0. */
int mn_run(const mn_net *net, uint8_t *arena, int16_t *next, int16_t *stack);

#ifdef __cplusplus
}
#endif

#endif
