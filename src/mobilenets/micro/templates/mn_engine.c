/* mobilenets int8 engine: row kernels and the demand-driven row scheduler (see mn_engine.h). */
#include "mn_engine.h"

#include <string.h>

#if defined(__ARM_FEATURE_SIMD32)
#include <arm_acle.h>
#define MN_SIMD32 1
#else
#define MN_SIMD32 0
#endif

#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)
#include <arm_mve.h>
#define MN_MVE 1
#else
#define MN_MVE 0
#endif

/* TFLite MultiplyByQuantizedMultiplier: saturating rounding doubling high multiply, then a
 * rounding divide by a power of two (both round half away from zero). */
int32_t mn_requantize(int32_t acc, int32_t m0, int32_t shift)
{
    int64_t x = acc;
    int32_t right = shift > 0 ? 0 : -shift;
    if (shift > 0) {
        x = x * ((int64_t)1 << shift);
        if (x > INT32_MAX) x = INT32_MAX;
        if (x < INT32_MIN) x = INT32_MIN;
    }
    {
        int64_t ab = x * (int64_t)m0;
        int64_t t = ab + (ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30)));
        int32_t high = (int32_t)(t >= 0 ? (t >> 31) : -((-t) >> 31));
        int32_t mask, rem, threshold;
        if (right == 0) return high;
        mask = (int32_t)(((uint32_t)1 << right) - 1u);
        rem = high & mask;
        threshold = (mask >> 1) + (high < 0 ? 1 : 0);
        return (high >> right) + (rem > threshold ? 1 : 0);
    }
}

/* mn_requantize for shift <= 0 (multipliers below 1, the usual case), inlined. TFLite's
 * nudged, truncating high multiply equals floor((acc * m0 + 2^30) / 2^31) for m0 > 0, and
 * the rounding divide is gemmlowp's (remainder against a threshold). */
static inline int32_t mn_rq(int32_t acc, int32_t m0, int32_t shift)
{
    if (shift > 0) return mn_requantize(acc, m0, shift);
    {
        const int32_t x = (int32_t)(((int64_t)acc * m0 + ((int64_t)1 << 30)) >> 31);
        const int32_t e = -shift;
        const int32_t mask = (int32_t)(((uint32_t)1 << e) - 1u);
        return (x >> e) + ((x & mask) > ((mask >> 1) + (x < 0)) ? 1 : 0);
    }
}

#if MN_SIMD32
static inline int32_t mn_smmulr(int32_t a, int32_t b)
{
    int32_t r;
    __asm__("smmulr %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
#endif

/* The short exact path of mn_requantize, valid when shift <= 0 and |acc| < 2^30:
 * floor((acc * m0 + 2^30) / 2^31) is SMMULR(2 * acc, m0), and the rounding divide by 2^e
 * (half away from zero) is (x + 2^(e-1) - (x < 0)) >> e, which cannot overflow here. */
static inline int32_t mn_rq_fast(int32_t acc, int32_t m0, int32_t shift)
{
    const int32_t e = -shift;
#if MN_SIMD32
    const int32_t x = mn_smmulr(acc * 2, m0);
#else
    const int32_t x = (int32_t)(((int64_t)acc * m0 + ((int64_t)1 << 30)) >> 31);
#endif
    return (x + (int32_t)(((uint32_t)1 << e) >> 1) - (int32_t)((uint32_t)x >> 31)) >> e;
}

/* mn_rq_fast with the channel's right shift e = -shift >= 1 and rnd = 2^(e-1) precomputed. */
static inline int32_t mn_rq_e(int32_t acc, int32_t m0, int32_t e, int32_t rnd)
{
#if MN_SIMD32
    const int32_t x = mn_smmulr(acc * 2, m0);
#else
    const int32_t x = (int32_t)(((int64_t)acc * m0 + ((int64_t)1 << 30)) >> 31);
#endif
    return (x + rnd - (int32_t)((uint32_t)x >> 31)) >> e;
}

/* The same for e >= 0 (ADD's input multiplier is exactly 1/2 for the larger scale: e = 0). */
static inline int32_t mn_rq_e0(int32_t acc, int32_t m0, int32_t e, int32_t rnd)
{
#if MN_SIMD32
    const int32_t x = mn_smmulr(acc * 2, m0);
#else
    const int32_t x = (int32_t)(((int64_t)acc * m0 + ((int64_t)1 << 30)) >> 31);
#endif
    return e ? (x + rnd - (int32_t)((uint32_t)x >> 31)) >> e : x;
}

static inline int8_t mn_sat(int32_t v, int32_t lo, int32_t hi)
{
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    return (int8_t)v;
}

#if MN_SIMD32
/* 2 * zp + 1: with MN_FAST_ZP, (2 * zp + 1) << (e - 1) = 2^(e-1) + zp * 2^e is the rounding
 * constant of mn_rq_e with the output zero point folded in (no overflow for e <= 22). */
static inline uint32_t mn_zp_round(int32_t zp)
{
    return (uint32_t)(2 * zp + 1);
}

/* mn_rq_e(acc, m0, e, 2^(e-1)) + zp for e = -shift, from mn_zp_round(zp) */
static inline int32_t mn_rq_zp(int32_t acc, int32_t m0, int32_t shift, uint32_t zr)
{
    return mn_rq_e(acc, m0, -shift, (int32_t)(zr << (~shift)));
}

/* v clamped to the int8 range: one SSAT (gcc 12 builds compares and branches from the C) */
static inline int8_t mn_sat8(int32_t v)
{
    __asm__("ssat %0, #8, %1" : "=r"(v) : "r"(v));
    return (int8_t)v;
}
#endif

/* The requantized, clamped int8 output; callers keep the parameters in locals, since every
 * int8 store may alias the parameter block as far as the compiler knows. */
static inline int8_t mn_clamp8(int32_t acc, int32_t m0, int32_t shift, int32_t zp, int32_t lo,
                               int32_t hi, int32_t fast)
{
    int32_t v = (fast ? mn_rq_fast(acc, m0, shift) : mn_rq(acc, m0, shift)) + zp;
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    return (int8_t)v;
}

#define MN_OUT(acc, c) mn_clamp8((acc), m0[c], sh[c], zp, lo, hi, fast)
#define MN_PARAMS(p)                                                                              \
    const int32_t *const m0 = (p)->m0, *const sh = (p)->shift;                                   \
    const int32_t zp = (p)->out_zp, lo = (p)->act_min, hi = (p)->act_max, fast = (p)->fast

static inline int8_t mn_out(const mn_conv_params *p, int32_t acc, int c)
{
    return mn_clamp8(acc, p->m0[c], p->shift[c], p->out_zp, p->act_min, p->act_max, 0);
}

#if MN_SIMD32
/* Four bytes at p, any alignment (ARMv7E-M's LDR allows it). Compilers that assume strict
 * alignment (Debian's clang for arm-none-eabi leaves __ARM_FEATURE_UNALIGNED undefined, and then
 * builds memcpy from four LDRB) get one LDR written out; the "m" operand tells them what it
 * reads. */
typedef struct {
    int8_t b[4];
} mn_bytes4;

static inline int32_t mn_rd32(const int8_t *p)
{
    int32_t v;
#if defined(__ARM_FEATURE_UNALIGNED) || !defined(__clang__)
    memcpy(&v, p, 4);
#else
    __asm__("ldr %0, %1" : "=r"(v) : "m"(*(const mn_bytes4 *)(const void *)p));
#endif
    return v;
}
/* a = the word at p, b = the word at p + k, then p += 4: two LDR whose addressing forms every
 * compiler keeps (clang otherwise spills rebased pointers). Only the word at p is declared to
 * the compiler: callers read memory nothing writes during the call, after MN_FENCE(). */
#define MN_LD2(a, b, p, k)                                                                        \
    __asm__("ldr %1, [%2, %3]\n\tldr %0, [%2], #4"                                              \
            : "=&r"(a), "=&r"(b), "+r"(p)                                                       \
            : "r"(k), "m"(*(const mn_bytes4 *)(const void *)(p)))
/* bytes 1 and 3 sign-extended to two halfwords: SXTB16 with its ROR #8 operand */
static inline int16x2_t mn_sxtb16_odd(int32_t v)
{
    int16x2_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}
#endif

/* Four dot products of length k: inputs x0 and x0 + xs by weight rows w0 and w0 + ws, added to
 * a.v[0] (x0.w0), a.v[1] (x0.w1), a.v[2] (x1.w0), a.v[3] (x1.w1). The inner loop of the
 * pointwise kernels below; always inlined, so the accumulators stay in registers. */
typedef struct {
    int32_t v[4];
} mn_acc4;

#if defined(__GNUC__)
/* no instruction: every store before it is done before any load after it */
#define MN_FENCE() __asm__ __volatile__("" ::: "memory")
#define MN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define MN_FENCE()
#define MN_ALWAYS_INLINE inline
#endif


#if MN_SIMD32
/* Four int8 weights of two output channels (wa, wb) times four int8 inputs of two pixels
   (xa, xb), added to the 2x2 accumulators: the inner step of both 2x2 pointwise kernels. */
#define MN_MAC2X2(wa, wb, xa, xb, a00, a01, a10, a11) do { \
        const int16x2_t wa0_ = __sxtb16(wa), wa1_ = mn_sxtb16_odd(wa); \
        const int16x2_t wb0_ = __sxtb16(wb), wb1_ = mn_sxtb16_odd(wb); \
        int16x2_t v0_ = __sxtb16(xa), v1_ = mn_sxtb16_odd(xa); \
        (a00) = __smlad(v0_, wa0_, (a00)); \
        (a00) = __smlad(v1_, wa1_, (a00)); \
        (a01) = __smlad(v0_, wb0_, (a01)); \
        (a01) = __smlad(v1_, wb1_, (a01)); \
        v0_ = __sxtb16(xb); \
        v1_ = mn_sxtb16_odd(xb); \
        (a10) = __smlad(v0_, wa0_, (a10)); \
        (a10) = __smlad(v1_, wa1_, (a10)); \
        (a11) = __smlad(v0_, wb0_, (a11)); \
        (a11) = __smlad(v1_, wb1_, (a11)); \
    } while (0)
#endif

static MN_ALWAYS_INLINE mn_acc4 mn_mac2x2(mn_acc4 a, const int8_t *w0, ptrdiff_t ws,
                                          const int8_t *x0, ptrdiff_t xs, int k)
{
    int32_t a00 = a.v[0], a01 = a.v[1], a10 = a.v[2], a11 = a.v[3];
    int i;
#if MN_SIMD32
    const int8_t *w = w0, *x = x0;
    int n = k >> 2;
    while (n-- > 0) {
        const int32_t wa = mn_rd32(w), wb = mn_rd32(w + ws);
        const int32_t xa = mn_rd32(x), xb = mn_rd32(x + xs);
        MN_MAC2X2(wa, wb, xa, xb, a00, a01, a10, a11);
        w += 4;
        x += 4;
    }
    i = k & ~3;
#else
    i = 0;
#endif
    for (; i < k; ++i) {
        const int32_t wa = w0[i], wb = w0[ws + i];
        a00 += x0[i] * wa;
        a01 += x0[i] * wb;
        a10 += x0[xs + i] * wa;
        a11 += x0[xs + i] * wb;
    }
    a.v[0] = a00;
    a.v[1] = a01;
    a.v[2] = a10;
    a.v[3] = a11;
    return a;
}

/* out[o] = requant(bias_eff[o] + sum_i x[i] * w[o][i]) for two inputs x0, x1 of length k, two
 * output channels per step: the core of pointwise and im2col convolution. */
static void mn_dot_block(const mn_conv_params *p, int k, const int8_t *x0, const int8_t *x1,
                         int8_t *y0, int8_t *y1)
{
    const int cout = p->cout;
    const int8_t *const wt = p->w;
    const int32_t *const be = p->bias_eff;
    MN_PARAMS(p);
    int o;
    for (o = 0; o < cout; o += 2) {
        const int two = o + 1 < cout;
        const int8_t *const wr = wt + (size_t)o * (size_t)k;
        const ptrdiff_t ws = two ? k : 0;
        const mn_acc4 init = {{be[o], be[o + two], be[o], be[o + two]}};
        const mn_acc4 a = mn_mac2x2(init, wr, ws, x0, x1 - x0, k);
        y0[o] = MN_OUT(a.v[0], o);
        y1[o] = MN_OUT(a.v[2], o);
        if (two) {
            y0[o + 1] = MN_OUT(a.v[1], o + 1);
            y1[o + 1] = MN_OUT(a.v[3], o + 1);
        }
    }
}

/* One input of length k (the fully connected layer, an odd last pixel): two channels per step. */
static void mn_dot_one(const mn_conv_params *p, int k, const int8_t *x0, int8_t *y0)
{
    const int cout = p->cout;
    const int8_t *const wt = p->w;
    const int32_t *const be = p->bias_eff;
    MN_PARAMS(p);
    int o;
    for (o = 0; o < cout; o += 2) {
        const int two = o + 1 < cout;
        const int8_t *const wr = wt + (size_t)o * (size_t)k;
        const ptrdiff_t ws = two ? k : 0;
        int32_t a0 = be[o], a1 = be[o + two];
        int i;
#if MN_SIMD32
        const int8_t *w = wr, *x = x0;
        int n = k >> 2;
        while (n-- > 0) {
            const int32_t xa = mn_rd32(x), wa = mn_rd32(w), wb = mn_rd32(w + ws);
            const int16x2_t v0 = __sxtb16(xa), v1 = mn_sxtb16_odd(xa);
            a0 = __smlad(v0, __sxtb16(wa), a0);
            a0 = __smlad(v1, mn_sxtb16_odd(wa), a0);
            a1 = __smlad(v0, __sxtb16(wb), a1);
            a1 = __smlad(v1, mn_sxtb16_odd(wb), a1);
            w += 4;
            x += 4;
        }
        i = k & ~3;
#else
        i = 0;
#endif
        for (; i < k; ++i) {
            a0 += x0[i] * wr[i];
            a1 += x0[i] * wr[ws + i];
        }
        y0[o] = MN_OUT(a0, o);
        if (two) y0[o + 1] = MN_OUT(a1, o + 1);
    }
}

/* The fast path of mn_pointwise_k over ``pairs`` pixel pairs: two output channels by two
 * pixels per step, the output-channel pair outermost so that its weights, bias and
 * multipliers stay in registers. Requires p->fast. */
static void mn_pw_pairs(const mn_conv_params *p, int k, const int8_t *in, int pairs, int8_t *out)
{
    const int cout = p->cout;
    const int8_t *const wt = p->w;
    const int32_t *const be = p->bias_eff;
    MN_PARAMS(p);
    int o;
    (void)fast;
    for (o = 0; o < cout; o += 2) {
        const int two = o + 1 < cout, o1 = o + two;
        const int8_t *const wr = wt + (size_t)o * (size_t)k;
        const ptrdiff_t ws = two ? k : 0;
        const mn_acc4 init = {{be[o], be[o1], be[o], be[o1]}};
        const int32_t ma = m0[o], ea = -sh[o], ra = (1 << ea) >> 1;
        const int32_t mb = m0[o1], eb = -sh[o1], rb = (1 << eb) >> 1;
        const int8_t *x0 = in;
        int8_t *y0 = out + o;
        int px;
        for (px = 0; px < pairs; ++px) {
            const mn_acc4 a = mn_mac2x2(init, wr, ws, x0, k, k);
            y0[0] = mn_sat(mn_rq_e(a.v[0], ma, ea, ra) + zp, lo, hi);
            y0[cout] = mn_sat(mn_rq_e(a.v[2], ma, ea, ra) + zp, lo, hi);
            if (two) {
                y0[1] = mn_sat(mn_rq_e(a.v[1], mb, eb, rb) + zp, lo, hi);
                y0[cout + 1] = mn_sat(mn_rq_e(a.v[3], mb, eb, rb) + zp, lo, hi);
            }
            x0 += 2 * k;
            y0 += 2 * cout;
        }
    }
}

#if MN_SIMD32
/* mn_pw_pairs when cout is even, k a multiple of 4, the input and weights word-aligned,
 * MN_FAST_ZP set and the clamp the whole int8 range (one SSAT): the row length k steps to both
 * the second weight row and the second pixel, so the inner loop needs four pointers and
 * counters, and the constants are read after it. */
static void mn_pw_even(const mn_conv_params *p, int k, const int8_t *in, int pairs, int8_t *out)
{
    const int cout = p->cout, n4 = k >> 2;
    int o;
    for (o = 0; o < cout; o += 2) {
        const int8_t *const wr = p->w + (size_t)o * (size_t)k;
        const int8_t *xp = in;
        int8_t *y = out + o;
        int px;
        for (px = 0; px < pairs; ++px) { /* constants reloaded after the loop: fewer spills */
            int32_t a00 = p->bias_eff[o], a01 = p->bias_eff[o + 1], a10 = a00, a11 = a01;
            const int8_t *x = xp, *w = wr;
            int n;
            for (n = n4; n > 0; --n) {
                int32_t wa, wb, xa, xb;
                MN_LD2(wa, wb, w, k);
                MN_LD2(xa, xb, x, k);
                MN_MAC2X2(wa, wb, xa, xb, a00, a01, a10, a11);
            }
            {   /* read through p after the loop: nothing but p and o stays live across it */
                const uint32_t zr = mn_zp_round(p->out_zp);
                y[0] = mn_sat8(mn_rq_zp(a00, p->m0[o], p->shift[o], zr));
                y[cout] = mn_sat8(mn_rq_zp(a10, p->m0[o], p->shift[o], zr));
                y[1] = mn_sat8(mn_rq_zp(a01, p->m0[o + 1], p->shift[o + 1], zr));
                y[cout + 1] = mn_sat8(mn_rq_zp(a11, p->m0[o + 1], p->shift[o + 1], zr));
            }
            xp += 2 * k;
            y += 2 * cout;
        }
    }
}
#endif

#if MN_MVE
/* ---- Helium (MVE) kernels, bit-identical to the plain C paths above ---- */

/* The fast requantization of four accumulators: VQRDMULH is SMMULR(2 * acc, m0) (no
 * saturation: |acc| < 2^30), then a rounding right shift by -shift that rounds half away from
 * zero: a negative x is lowered by one first when the shift is not zero (the sign bit of
 * x & shift), and VRSHL adds 2^(e-1) before shifting. */
static inline int32x4_t mn_rq_mve(int32x4_t acc, int32x4_t m0, int32x4_t shift)
{
    const int32x4_t x = vqrdmulhq_s32(acc, m0);
    const int32x4_t fix = vshrq_n_s32(vandq_s32(x, shift), 31);
    return vrshlq_s32(vaddq_s32(x, fix), shift);
}

/* + zero point, clamp, and the four low bytes stored at y */
static inline void mn_st4_mve(int8_t *y, int32x4_t v, int32_t zp, int32_t lo, int32_t hi)
{
    v = vaddq_n_s32(v, zp);
    v = vmaxq_s32(v, vdupq_n_s32(lo));
    v = vminq_s32(v, vdupq_n_s32(hi));
    vstrbq_s32(y, v);
}

/* Four dot products of length k: x by the weight rows w, w + k, w + 2k, w + 3k, sixteen
 * lanes per VMLADAVA; the last k % 16 under a tail predicate. */
static inline int32x4_t mn_dot4_mve(const int8_t *x, const int8_t *w, int k)
{
    const int kf = k & ~15;
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int32x4_t r = vdupq_n_s32(0);
    int i;
    for (i = 0; i < kf; i += 16) {
        const int8x16_t xv = vld1q_s8(x + i);
        a0 = vmladavaq_s8(a0, xv, vld1q_s8(w + i));
        a1 = vmladavaq_s8(a1, xv, vld1q_s8(w + k + i));
        a2 = vmladavaq_s8(a2, xv, vld1q_s8(w + 2 * k + i));
        a3 = vmladavaq_s8(a3, xv, vld1q_s8(w + 3 * k + i));
    }
    if (kf < k) {
        const mve_pred16_t t = vctp8q((uint32_t)(k - kf));
        const int8x16_t xv = vldrbq_z_s8(x + kf, t);
        a0 = vmladavaq_s8(a0, xv, vldrbq_z_s8(w + kf, t));
        a1 = vmladavaq_s8(a1, xv, vldrbq_z_s8(w + k + kf, t));
        a2 = vmladavaq_s8(a2, xv, vldrbq_z_s8(w + 2 * k + kf, t));
        a3 = vmladavaq_s8(a3, xv, vldrbq_z_s8(w + 3 * k + kf, t));
    }
    r = vsetq_lane_s32(a0, r, 0);
    r = vsetq_lane_s32(a1, r, 1);
    r = vsetq_lane_s32(a2, r, 2);
    return vsetq_lane_s32(a3, r, 3);
}

/* Eight dot products of length k from the bias be[0..3]: pixels x and x + k by the weight
 * rows w, w + k, w + 2k, w + 3k; each weight vector serves both pixels. */
typedef struct {
    int32x4_t p0, p1;
} mn_acc2x4_mve;

static inline mn_acc2x4_mve mn_dot4x2_mve(const int8_t *x, const int8_t *w, int k,
                                          const int32_t *be)
{
    const int kf = k & ~15;
    const int8_t *const x1 = x + k, *const w1 = w + k, *const w2 = w1 + k, *const w3 = w2 + k;
    int32_t a0 = be[0], a1 = be[1], a2 = be[2], a3 = be[3];
    int32_t b0 = a0, b1 = a1, b2 = a2, b3 = a3;
    mn_acc2x4_mve r;
    int i;
#define MN_ROW2(a, b, wv)                                                                         \
    do {                                                                                          \
        const int8x16_t v_ = (wv);                                                                \
        a = vmladavaq_s8(a, xa, v_);                                                              \
        b = vmladavaq_s8(b, xb, v_);                                                              \
    } while (0)
    for (i = 0; i < kf; i += 16) {
        const int8x16_t xa = vld1q_s8(x + i), xb = vld1q_s8(x1 + i);
        MN_ROW2(a0, b0, vld1q_s8(w + i));
        MN_ROW2(a1, b1, vld1q_s8(w1 + i));
        MN_ROW2(a2, b2, vld1q_s8(w2 + i));
        MN_ROW2(a3, b3, vld1q_s8(w3 + i));
    }
    if (kf < k) {
        const mve_pred16_t t = vctp8q((uint32_t)(k - kf));
        const int8x16_t xa = vldrbq_z_s8(x + kf, t), xb = vldrbq_z_s8(x1 + kf, t);
        MN_ROW2(a0, b0, vldrbq_z_s8(w + kf, t));
        MN_ROW2(a1, b1, vldrbq_z_s8(w1 + kf, t));
        MN_ROW2(a2, b2, vldrbq_z_s8(w2 + kf, t));
        MN_ROW2(a3, b3, vldrbq_z_s8(w3 + kf, t));
    }
#undef MN_ROW2
    r.p0 = vsetq_lane_s32(a3, vsetq_lane_s32(a2, vsetq_lane_s32(a1, vdupq_n_s32(a0), 1), 2), 3);
    r.p1 = vsetq_lane_s32(b3, vsetq_lane_s32(b2, vsetq_lane_s32(b1, vdupq_n_s32(b0), 1), 2), 3);
    return r;
}

/* One pixel of mn_pw_mve from output channel o0 (a multiple of 4): four channels per step. */
static void mn_pw1_mve(const mn_conv_params *p, int k, const int8_t *x, int8_t *y, int o0)
{
    const int cout = p->cout, c4 = cout & ~3;
    const int8_t *const wt = p->w;
    const int32_t *const be = p->bias_eff;
    MN_PARAMS(p);
    int o;
    (void)fast;
    for (o = o0; o < c4; o += 4) {
        const int32x4_t acc = vaddq_s32(vld1q_s32(be + o),
                                        mn_dot4_mve(x, wt + (size_t)o * (size_t)k, k));
        mn_st4_mve(y + o, mn_rq_mve(acc, vld1q_s32(m0 + o), vld1q_s32(sh + o)), zp, lo, hi);
    }
    for (; o < cout; ++o) {
        const int8_t *const w = wt + (size_t)o * (size_t)k;
        int32_t a = be[o];
        int i;
        for (i = 0; i < k; ++i) a += x[i] * w[i];
        y[o] = MN_OUT(a, o);
    }
}

/* Pointwise (and im2col, FC) convolution: two pixels by four output channels per step, the
 * channels past cout & ~3 and an odd last pixel one pixel at a time. Requires p->fast. */
static void mn_pw_mve(const mn_conv_params *p, int k, const int8_t *in, int npix, int8_t *out)
{
    const int cout = p->cout, c4 = cout & ~3;
    const int8_t *const wt = p->w;
    const int32_t *const be = p->bias_eff;
    MN_PARAMS(p);
    int px, o;
    (void)fast;
    for (px = 0; px + 1 < npix; px += 2) {
        const int8_t *const x = in + (size_t)px * (size_t)k;
        int8_t *const y = out + (size_t)px * (size_t)cout;
        for (o = 0; o < c4; o += 4) {
            const mn_acc2x4_mve a = mn_dot4x2_mve(x, wt + (size_t)o * (size_t)k, k, be + o);
            const int32x4_t m = vld1q_s32(m0 + o), s = vld1q_s32(sh + o);
            mn_st4_mve(y + o, mn_rq_mve(a.p0, m, s), zp, lo, hi);
            mn_st4_mve(y + cout + o, mn_rq_mve(a.p1, m, s), zp, lo, hi);
        }
        if (c4 < cout) {
            mn_pw1_mve(p, k, x, y, c4);
            mn_pw1_mve(p, k, x + k, y + cout, c4);
        }
    }
    if (npix & 1)
        mn_pw1_mve(p, k, in + (size_t)(npix - 1) * (size_t)k, out + (size_t)(npix - 1) * (size_t)cout,
                   0);
}

/* s + x * w, lane by lane (MVE multiplies vector by vector, accumulates by scalar only) */
static inline int32x4_t mn_mla_mve(int32x4_t s, int32x4_t x, int32x4_t w)
{
    return vaddq_s32(s, vmulq_s32(x, w));
}

/* No instruction: u and v become opaque and memory is read after it, so the compiler keeps
 * each tap's loads and sums in tap order (gcc 12 otherwise hoists every load and product and
 * spills most vector registers to the stack). */
#define MN_KEEP2(u, v) __asm__ __volatile__("" : "+w"(u), "+w"(v) : : "memory")

/* Depthwise 3x3 interior pixel, eight channels per step in 16-bit lanes: VMULLB and VMULLT
 * widen the even and the odd channels' products to 32 bits, VLD2 splits the per-channel
 * constants the same way and VMOVNB/VMOVNT put the outputs back in order. The weights of
 * channels o..o+3 and o+4..o+7 lie in two groups 36 bytes apart (see mn_dw_widx): one gather.
 * Requires p->fast; returns the channels done (cout & ~7). */
static int mn_dw3x3_mve8(const mn_conv_params *p, const int8_t *a, const int8_t *b,
                         const int8_t *c, int8_t *y)
{
    static const uint16_t groups[8] = {0, 1, 2, 3, 36, 37, 38, 39};
    const int cin = p->cin, c8 = p->cout & ~7;
    const int8_t *w = p->w;
    const int32_t *const be = p->bias_eff;
    const uint16x8_t offs = vld1q_u16(groups);
    MN_PARAMS(p);
    int o;
    (void)fast;
#define MN_TAP8(x, t)                                                                             \
    do {                                                                                          \
        const int16x8_t xv = vldrbq_s16(x), wv = vldrbq_gather_offset_s16(w + 4 * (t), offs);     \
        se = vaddq_s32(se, vmullbq_int_s16(xv, wv));                                              \
        so = vaddq_s32(so, vmulltq_int_s16(xv, wv));                                              \
        MN_KEEP2(se, so);                                                                         \
    } while (0)
    for (o = 0; o < c8; o += 8) {
        const int32x4x2_t bias = vld2q_s32(be + o);
        int32x4_t se = bias.val[0], so = bias.val[1];
        MN_TAP8(a, 0);
        MN_TAP8(a + cin, 1);
        MN_TAP8(a + 2 * cin, 2);
        MN_TAP8(b, 3);
        MN_TAP8(b + cin, 4);
        MN_TAP8(b + 2 * cin, 5);
        MN_TAP8(c, 6);
        MN_TAP8(c + cin, 7);
        MN_TAP8(c + 2 * cin, 8);
        {
            const int32x4x2_t m = vld2q_s32(m0 + o), e = vld2q_s32(sh + o);
            const int32x4_t vlo = vdupq_n_s32(lo), vhi = vdupq_n_s32(hi);
            se = vminq_s32(vmaxq_s32(vaddq_n_s32(mn_rq_mve(se, m.val[0], e.val[0]), zp), vlo), vhi);
            so = vminq_s32(vmaxq_s32(vaddq_n_s32(mn_rq_mve(so, m.val[1], e.val[1]), zp), vlo), vhi);
            vstrbq_s16(y + o, vmovntq_s32(vmovnbq_s32(vdupq_n_s16(0), se), so));
        }
        w += 72;
        a += 8;
        b += 8;
        c += 8;
    }
#undef MN_TAP8
    return c8;
}

/* Depthwise 3x3 interior pixel from channel o0 (a multiple of 4), four channels per step
 * (weights: groups of 4 channels by 9 taps, see mn_dw_widx). Requires p->fast; returns the
 * channels done (cout & ~3). */
static int mn_dw3x3_mve(const mn_conv_params *p, const int8_t *a, const int8_t *b,
                        const int8_t *c, int8_t *y, int o0)
{
    const int cin = p->cin, c4 = p->cout & ~3;
    const int8_t *w = p->w + 9 * o0;
    const int32_t *const be = p->bias_eff;
    MN_PARAMS(p);
    int o;
    (void)fast;
    a += o0;
    b += o0;
    c += o0;
    for (o = o0; o < c4; o += 4) {
        int32x4_t s = vld1q_s32(be + o);
        s = mn_mla_mve(s, vldrbq_s32(a), vldrbq_s32(w));
        s = mn_mla_mve(s, vldrbq_s32(a + cin), vldrbq_s32(w + 4));
        s = mn_mla_mve(s, vldrbq_s32(a + 2 * cin), vldrbq_s32(w + 8));
        s = mn_mla_mve(s, vldrbq_s32(b), vldrbq_s32(w + 12));
        s = mn_mla_mve(s, vldrbq_s32(b + cin), vldrbq_s32(w + 16));
        s = mn_mla_mve(s, vldrbq_s32(b + 2 * cin), vldrbq_s32(w + 20));
        s = mn_mla_mve(s, vldrbq_s32(c), vldrbq_s32(w + 24));
        s = mn_mla_mve(s, vldrbq_s32(c + cin), vldrbq_s32(w + 28));
        s = mn_mla_mve(s, vldrbq_s32(c + 2 * cin), vldrbq_s32(w + 32));
        mn_st4_mve(y + o, mn_rq_mve(s, vld1q_s32(m0 + o), vld1q_s32(sh + o)), zp, lo, hi);
        w += 36;
        a += 4;
        b += 4;
        c += 4;
    }
    return c4;
}

/* ADD's short exact path, four values per step; returns the values done (n & ~3). */
static int mn_add_mve(const mn_add_params *p, const int8_t *a, const int8_t *b, int8_t *out,
                      int n)
{
    const int32x4_t m1 = vdupq_n_s32(p->m1), s1 = vdupq_n_s32(p->s1);
    const int32x4_t m2 = vdupq_n_s32(p->m2), s2 = vdupq_n_s32(p->s2);
    const int32x4_t mo = vdupq_n_s32(p->mo), so = vdupq_n_s32(p->so);
    int i;
    for (i = 0; i + 4 <= n; i += 4) {
        const int32x4_t xa = vshlq_n_s32(vaddq_n_s32(vldrbq_s32(a + i), p->in1_offset), 20);
        const int32x4_t xb = vshlq_n_s32(vaddq_n_s32(vldrbq_s32(b + i), p->in2_offset), 20);
        const int32x4_t sum = vaddq_s32(mn_rq_mve(xa, m1, s1), mn_rq_mve(xb, m2, s2));
        mn_st4_mve(out + i, mn_rq_mve(sum, mo, so), p->out_zp, p->act_min, p->act_max);
    }
    return n & ~3;
}
#endif

static void mn_pointwise_k(const mn_conv_params *p, int k, const int8_t *in, int npix,
                           int8_t *out);

#if MN_SIMD32
/* Eight input channels (the first expansions): the two pixels' unpacked inputs stay in
 * registers while every output channel passes over them. Requires p->fast. */
static void mn_pw8(const mn_conv_params *p, const int8_t *in, int npix, int8_t *out)
{
    const int k = 8, cout = p->cout;
    const int8_t *const wt = p->w;
    const int32_t *const be = p->bias_eff;
    MN_PARAMS(p);
    const int sat8 = (fast & MN_FAST_ZP) && lo == -128 && hi == 127;
    const uint32_t zr = mn_zp_round(zp);
    int o, px;
    for (px = 0; px + 1 < npix; px += 2) {
        const int8_t *const x = in + (size_t)px * (size_t)8;
        const int16x2_t p0 = __sxtb16(mn_rd32(x)), p1 = mn_sxtb16_odd(mn_rd32(x));
        const int16x2_t p2 = __sxtb16(mn_rd32(x + 4)), p3 = mn_sxtb16_odd(mn_rd32(x + 4));
        const int16x2_t q0 = __sxtb16(mn_rd32(x + 8)), q1 = mn_sxtb16_odd(mn_rd32(x + 8));
        const int16x2_t q2 = __sxtb16(mn_rd32(x + 12)), q3 = mn_sxtb16_odd(mn_rd32(x + 12));
        int8_t *const y = out + (size_t)px * (size_t)cout;
        const int8_t *w = wt;
        for (o = 0; o < cout; ++o) {
            const int32_t wa = mn_rd32(w), wb = mn_rd32(w + 4);
            const int16x2_t w0 = __sxtb16(wa), w1 = mn_sxtb16_odd(wa);
            const int16x2_t w2 = __sxtb16(wb), w3 = mn_sxtb16_odd(wb);
            int32_t a = __smlad(p0, w0, be[o]), b = __smlad(q0, w0, be[o]);
            a = __smlad(p1, w1, a);
            b = __smlad(q1, w1, b);
            a = __smlad(p2, w2, a);
            b = __smlad(q2, w2, b);
            a = __smlad(p3, w3, a);
            b = __smlad(q3, w3, b);
            if (sat8) {
                y[o] = mn_sat8(mn_rq_zp(a, m0[o], sh[o], zr));
                y[cout + o] = mn_sat8(mn_rq_zp(b, m0[o], sh[o], zr));
            } else {
                const int32_t e = -sh[o], r = (1 << e) >> 1, m = m0[o];
                y[o] = mn_sat(mn_rq_e(a, m, e, r) + zp, lo, hi);
                y[cout + o] = mn_sat(mn_rq_e(b, m, e, r) + zp, lo, hi);
            }
            w += 8;
        }
    }
    if (npix & 1)
        mn_dot_one(p, k, in + (size_t)(npix - 1) * (size_t)k, out + (size_t)(npix - 1) * (size_t)cout);
}
#endif


void mn_pointwise(const mn_conv_params *p, const int8_t *in, int npix, int8_t *out)
{
    MN_FENCE(); /* the input rows are stored before the kernels read them */
    mn_pointwise_k(p, p->cin, in, npix, out);
}

/* k: the length of each input vector and weight row (cin, or an im2col patch). */

/* Pointwise convolution of npix input vectors of length k (cin, or an im2col patch). */
static void mn_pointwise_k(const mn_conv_params *p, int k, const int8_t *in, int npix,
                           int8_t *out)
{
    const int cout = p->cout, fast = p->fast;
#if MN_MVE
    if (fast) {
        mn_pw_mve(p, k, in, npix, out);
        return;
    }
#endif
    if (npix == 1) {
        mn_dot_one(p, k, in, out);
        return;
    }
#if MN_SIMD32
    if (fast && k == 8) {
        mn_pw8(p, in, npix, out);
        return;
    }
#endif
    if (!fast) {
        int px;
        for (px = 0; px + 1 < npix; px += 2)
            mn_dot_block(p, k, in + (size_t)px * (size_t)k, in + (size_t)(px + 1) * (size_t)k,
                         out + (size_t)px * (size_t)cout, out + (size_t)(px + 1) * (size_t)cout);
    }
#if MN_SIMD32
    if (fast && !(cout & 1) && !(k & 3) && p->act_min == -128 && p->act_max == 127 &&
        (fast & MN_FAST_ZP) && !(((uintptr_t)in | (uintptr_t)p->w) & 3u))
        mn_pw_even(p, k, in, npix >> 1, out);
    else
#endif
        if (fast)
        mn_pw_pairs(p, k, in, npix >> 1, out);
    if (npix & 1)
        mn_dot_one(p, k, in + (size_t)(npix - 1) * (size_t)k, out + (size_t)(npix - 1) * (size_t)cout);
}

/* One im2col patch (ky, kx, c) of output column ox; padding taps hold the input zero point,
 * which bias_eff cancels exactly (TFLite's zero-point padding contributes nothing). */
static void mn_gather(const mn_conv_params *p, const int8_t *const *rows, int kh, int kw, int sw,
                      int pl, int in_w, int ox, int8_t *dst)
{
    const int cin = p->cin, ix0 = ox * sw - pl;
    const int inside = ix0 >= 0 && ix0 + kw <= in_w;
    int ky, kx;
    for (ky = 0; ky < kh; ++ky) {
        if (rows[ky] && inside) { /* the kw taps of a row are contiguous */
            memcpy(dst, rows[ky] + (size_t)ix0 * (size_t)cin, (size_t)kw * (size_t)cin);
            dst += kw * cin;
            continue;
        }
        for (kx = 0; kx < kw; ++kx) {
            const int ix = ix0 + kx;
            if (rows[ky] && ix >= 0 && ix < in_w)
                memcpy(dst, rows[ky] + (size_t)ix * (size_t)cin, (size_t)cin);
            else
                memset(dst, -p->in_offset, (size_t)cin);
            dst += cin;
        }
    }
}

/* General convolution (the stem): when the patch kh*kw*cin is at most MN_PATCH_MAX, the row's
 * patches are gathered (im2col, padded to a multiple of 4 with zero weights) into the arena's
 * scratch and run as a pointwise convolution; else taps outside the input are skipped. */
void mn_conv_row(const mn_conv_params *p, const int8_t *const *rows, int kh, int kw, int sw,
                 int pl, int in_w, int8_t *out, int out_w, int8_t *scratch)
{
    const int cin = p->cin, cout = p->cout, k = kh * kw * cin, kp = (k + 3) & ~3;
    int ox, o, ky, kx, i;
    if (k <= MN_PATCH_MAX && scratch) {
        for (ox = 0; ox < out_w; ++ox) {
            int8_t *dst = scratch + (size_t)ox * (size_t)kp;
            mn_gather(p, rows, kh, kw, sw, pl, in_w, ox, dst);
            for (i = k; i < kp; ++i) dst[i] = 0;
        }
        MN_FENCE(); /* the gathered patches are stored before the kernels read them */
        mn_pointwise_k(p, kp, scratch, out_w, out);
        return;
    }
    for (ox = 0; ox < out_w; ++ox) {
        const int ix0 = ox * sw - pl;
        for (o = 0; o < cout; ++o) {
            int32_t acc = p->bias[o];
            for (ky = 0; ky < kh; ++ky) {
                const int8_t *row = rows[ky];
                if (!row) continue;
                for (kx = 0; kx < kw; ++kx) {
                    const int ix = ix0 + kx;
                    const int8_t *x, *w;
                    if (ix < 0 || ix >= in_w) continue;
                    x = row + (size_t)ix * (size_t)cin;
                    w = p->w + (((size_t)o * (size_t)kh + (size_t)ky) * (size_t)kw + (size_t)kx) * (size_t)cin;
                    for (i = 0; i < cin; ++i) acc += (x[i] + p->in_offset) * w[i];
                }
            }
            out[(size_t)ox * (size_t)cout + (size_t)o] = mn_out(p, acc, o);
        }
    }
}

/* Index of tap t of output channel o in the reordered depthwise weights (see mn_engine.h). */
static inline size_t mn_dw_widx(int t, int o, int cout, int taps)
{
    const int c4 = cout & ~3;
    return o < c4 ? (size_t)(o >> 2) * (size_t)taps * (size_t)4u + (size_t)t * (size_t)4u + (size_t)(o & 3)
                  : (size_t)c4 * (size_t)taps + (size_t)t * (size_t)(cout - c4) + (size_t)(o - c4);
}

/* Depthwise 3x3, depth multiplier 1, one output pixel whose nine taps are all inside: the zero
 * point is folded into bias_eff. Four channels per step (SMLABB/SMLATT on SXTB16 halves). */
static void mn_dw3x3_pixel(const mn_conv_params *p, const int8_t *a, const int8_t *b,
                           const int8_t *c, int8_t *y)
{
    const int cin = p->cin, cout = p->cout, c4 = cout & ~3;
    const int8_t *w = p->w;
    const int32_t *const be = p->bias_eff;
    MN_PARAMS(p);
    int o = 0, t;
#if MN_MVE
    if (fast) {
        o = mn_dw3x3_mve(p, a, b, c, y, mn_dw3x3_mve8(p, a, b, c, y));
        a += o;
        b += o;
        c += o;
        w += 9 * o;
    }
#endif
#if MN_SIMD32
    const int cin2 = 2 * cin, sat8 = (fast & MN_FAST_ZP) && lo == -128 && hi == 127;
    const uint32_t zr = mn_zp_round(zp);
#define MN_TAP(x)                                                                                 \
    do {                                                                                          \
        const int32_t xv = mn_rd32(x), wv = mn_rd32(w);                                           \
        const int16x2_t xe = __sxtb16(xv), xo = mn_sxtb16_odd(xv);                                \
        const int16x2_t we = __sxtb16(wv), wo = mn_sxtb16_odd(wv);                                \
        s0 = __smlabb(xe, we, s0);                                                                \
        s2 = __smlatt(xe, we, s2);                                                                \
        s1 = __smlabb(xo, wo, s1);                                                                \
        s3 = __smlatt(xo, wo, s3);                                                                \
        w += 4;                                                                                   \
    } while (0)
    for (; o < c4; o += 4) {
        int32_t s0 = be[o], s1 = be[o + 1], s2 = be[o + 2], s3 = be[o + 3];
        MN_TAP(a);
        MN_TAP(a + cin);
        MN_TAP(a + cin2);
        MN_TAP(b);
        MN_TAP(b + cin);
        MN_TAP(b + cin2);
        MN_TAP(c);
        MN_TAP(c + cin);
        MN_TAP(c + cin2);
        if (sat8) {
            y[o] = mn_sat8(mn_rq_zp(s0, m0[o], sh[o], zr));
            y[o + 1] = mn_sat8(mn_rq_zp(s1, m0[o + 1], sh[o + 1], zr));
            y[o + 2] = mn_sat8(mn_rq_zp(s2, m0[o + 2], sh[o + 2], zr));
            y[o + 3] = mn_sat8(mn_rq_zp(s3, m0[o + 3], sh[o + 3], zr));
        } else if (fast) {
            y[o] = mn_sat(mn_rq_e(s0, m0[o], -sh[o], (1 << -sh[o]) >> 1) + zp, lo, hi);
            y[o + 1] = mn_sat(mn_rq_e(s1, m0[o + 1], -sh[o + 1], (1 << -sh[o + 1]) >> 1) + zp, lo, hi);
            y[o + 2] = mn_sat(mn_rq_e(s2, m0[o + 2], -sh[o + 2], (1 << -sh[o + 2]) >> 1) + zp, lo, hi);
            y[o + 3] = mn_sat(mn_rq_e(s3, m0[o + 3], -sh[o + 3], (1 << -sh[o + 3]) >> 1) + zp, lo, hi);
        } else {
            y[o] = MN_OUT(s0, o);
            y[o + 1] = MN_OUT(s1, o + 1);
            y[o + 2] = MN_OUT(s2, o + 2);
            y[o + 3] = MN_OUT(s3, o + 3);
        }
        a += 4;
        b += 4;
        c += 4;
    }
#undef MN_TAP
#else
    for (; o < c4; o += 4) {
        int j;
        for (j = 0; j < 4; ++j) {
            int32_t acc = be[o + j];
            for (t = 0; t < 3; ++t) {
                acc += a[j + t * cin] * w[4 * t + j];
                acc += b[j + t * cin] * w[4 * (t + 3) + j];
                acc += c[j + t * cin] * w[4 * (t + 6) + j];
            }
            y[o + j] = MN_OUT(acc, o + j);
        }
        w += 36;
        a += 4;
        b += 4;
        c += 4;
    }
#endif
    for (; o < cout; ++o) {
        const int n = cout - c4, j = o - c4;
        int32_t acc = be[o];
        for (t = 0; t < 3; ++t) {
            acc += a[j + t * cin] * w[t * n + j];
            acc += b[j + t * cin] * w[(t + 3) * n + j];
            acc += c[j + t * cin] * w[(t + 6) * n + j];
        }
        y[o] = MN_OUT(acc, o);
    }
}

/* Depthwise convolution, depth multiplier m: output channel o reads input channel o / m.
 * Border pixels skip the taps outside the input (zero-point padding contributes nothing). */
void mn_dw_row(const mn_conv_params *p, const int8_t *const *rows, int kh, int kw, int sw, int pl,
               int in_w, int8_t *out, int out_w, int8_t *patch)
{
    const int cin = p->cin, cout = p->cout, m = p->mult;
    const int32_t off = p->in_offset;
    const int8_t *const wt = p->w;
    const int32_t *const bias = p->bias;
    MN_PARAMS(p);
    int ox, o, ky, kx;
    const int k3 = m == 1 && kh == 3 && kw == 3;
    const int full_rows = k3 && rows[0] && rows[1] && rows[2];
    for (ox = 0; ox < out_w; ++ox) {
        const int ix0 = ox * sw - pl;
        int8_t *y = out + (size_t)ox * (size_t)cout;
        if (full_rows && ix0 >= 0 && ix0 + 3 <= in_w) {
            const size_t at = (size_t)ix0 * (size_t)cin;
            mn_dw3x3_pixel(p, rows[0] + at, rows[1] + at, rows[2] + at, y);
            continue;
        }
        if (k3 && patch) { /* border: a 3x3 patch with zero-point padding (bias_eff cancels it) */
            for (ky = 0; ky < 3; ++ky) {
                for (kx = 0; kx < 3; ++kx) {
                    const int ix = ix0 + kx;
                    int8_t *dst = patch + (size_t)(ky * 3 + kx) * (size_t)cin;
                    if (rows[ky] && ix >= 0 && ix < in_w)
                        memcpy(dst, rows[ky] + (size_t)ix * (size_t)cin, (size_t)cin);
                    else
                        memset(dst, -off, (size_t)cin);
                }
            }
            mn_dw3x3_pixel(p, patch, patch + 3 * (size_t)cin, patch + 6 * (size_t)cin, y);
            continue;
        }
        for (o = 0; o < cout; ++o) {
            const int ci = o / m;
            int32_t acc = bias[o];
            for (ky = 0; ky < kh; ++ky) {
                const int8_t *row = rows[ky];
                if (!row) continue;
                for (kx = 0; kx < kw; ++kx) {
                    const int ix = ix0 + kx;
                    if (ix < 0 || ix >= in_w) continue;
                    acc += (row[(size_t)ix * (size_t)cin + (size_t)ci] + off) * wt[mn_dw_widx(ky * kw + kx, o, cout, kh * kw)];
                }
            }
            y[o] = MN_OUT(acc, o);
        }
    }
}

void mn_add_row(const mn_add_params *p, const int8_t *a, const int8_t *b, int8_t *out, int n)
{
    const int32_t oa = p->in1_offset, ob = p->in2_offset, zp = p->out_zp;
    const int32_t lo = p->act_min, hi = p->act_max;
    int i;
    if (p->s1 <= 0 && p->s2 <= 0 && p->so <= 0) {
        /* |(x - zp) << 20| < 2^28 and the rescaled sum < 2^29: the short exact path applies */
        const int32_t m1 = p->m1, e1 = -p->s1, r1 = (1 << e1) >> 1;
        const int32_t m2 = p->m2, e2 = -p->s2, r2 = (1 << e2) >> 1;
        const int32_t mo = p->mo, eo = -p->so, ro = (1 << eo) >> 1;
        i = 0;
#if MN_MVE
        i = mn_add_mve(p, a, b, out, n);
#endif
        for (; i < n; ++i) {
            const int32_t sa = mn_rq_e0((a[i] + oa) * (1 << 20), m1, e1, r1);
            const int32_t sb = mn_rq_e0((b[i] + ob) * (1 << 20), m2, e2, r2);
            out[i] = mn_sat(mn_rq_e0(sa + sb, mo, eo, ro) + zp, lo, hi);
        }
        return;
    }
    for (i = 0; i < n; ++i) {
        const int32_t sa = mn_requantize((a[i] + oa) * (1 << 20), p->m1, p->s1);
        const int32_t sb = mn_requantize((b[i] + ob) * (1 << 20), p->m2, p->s2);
        out[i] = mn_sat(mn_requantize(sa + sb, p->mo, p->so) + zp, lo, hi);
    }
}

/* b has nb values: nb == n (same shape) or nb == c, repeated for each pixel (broadcast). */
void mn_mul_row(const mn_mul_params *p, const int8_t *a, const int8_t *b, int nb, int8_t *out,
                int n)
{
    const int32_t oa = p->in1_offset, ob = p->in2_offset, m0 = p->m0, sh = p->shift;
    const int32_t zp = p->out_zp, lo = p->act_min, hi = p->act_max;
    int i, j = 0;
    for (i = 0; i < n; ++i) {
        out[i] = mn_sat(mn_requantize((a[i] + oa) * (b[j] + ob), m0, sh) + zp, lo, hi);
        j = j + 1 == nb ? 0 : j + 1;
    }
}

/* ADD or MUL by a constant: k[j] cycles over nk values (one, or one per channel). */
void mn_const_row(const mn_const_params *p, const int8_t *a, int8_t *out, int n)
{
    const int32_t oa = p->in_offset, zp = p->out_zp, lo = p->act_min, hi = p->act_max;
    int i, j = 0;
    for (i = 0; i < n; ++i) {
        const int32_t v = a[i] + oa;
        const int32_t acc =
            p->is_add ? mn_requantize(mn_requantize(v * (1 << 20), p->m1, p->s1) + p->k[j], p->mo,
                                      p->so)
                      : mn_requantize(v * p->k[j], p->mo, p->so);
        out[i] = mn_sat(acc + zp, lo, hi);
        j = j + 1 == p->nk ? 0 : j + 1;
    }
}

/* gemmlowp's int16 SaturatingRoundingDoublingHighMul (rounds, then truncates toward zero). */
static int16_t mn_srdhm16(int16_t a, int16_t b)
{
    const int32_t ab = (int32_t)a * (int32_t)b;
    if (a == INT16_MIN && b == INT16_MIN) return INT16_MAX;
    return (int16_t)((ab + (ab >= 0 ? (1 << 14) : 1 - (1 << 14))) / (1 << 15));
}

/* TFLite's SaturatingDoublingHighMul: a * b / 2^15, truncated toward zero. */
static int16_t mn_sdhm16(int16_t a, int16_t b)
{
    if (a == INT16_MIN && b == INT16_MIN) return INT16_MAX;
    return (int16_t)(((int32_t)a * (int32_t)b) / (1 << 15));
}

static int16_t mn_lsl16_sat(int32_t v, int amount)
{
    v = v * (1 << amount);
    return (int16_t)(v > INT16_MAX ? INT16_MAX : (v < INT16_MIN ? INT16_MIN : v));
}

static int32_t mn_rdbp(int32_t x, int32_t e)
{
    const int32_t mask = (int32_t)(((uint32_t)1 << e) - 1u);
    return (x >> e) + ((x & mask) > ((mask >> 1) + (x < 0 ? 1 : 0)) ? 1 : 0);
}

/* HARD_SWISH as TFLite's reference: x * relu6(x + 3) / 6 in int16 fixed point. */
void mn_hswish_row(const mn_hswish_params *p, const int8_t *in, int8_t *out, int n)
{
    const int16_t om = (int16_t)p->out_m, rm = (int16_t)p->relu_m;
    const int32_t oe = p->out_e, re = p->relu_e;
    int i;
    for (i = 0; i < n; ++i) {
        const int16_t hires = (int16_t)((in[i] - p->in_zp) * 128);
        const int16_t pre = mn_srdhm16(hires, om);
        int16_t relu = hires;
        int32_t v;
        if (re > 0) relu = mn_lsl16_sat(relu, (int)re - 1);
        relu = mn_srdhm16(relu, rm);
        if (re > 0) relu = mn_lsl16_sat(relu, 1);
        if (re < 0) relu = (int16_t)mn_rdbp(relu, -re);
        relu = (int16_t)((relu + (1 << 15)) >> 1);
        v = mn_rdbp(mn_sdhm16(relu, pre), -oe) + p->out_zp;
        out[i] = mn_sat(v, -128, 127);
    }
}

/* Windowed pooling: only the taps inside the input count (TFLite's SAME padding). */
void mn_pool2d_row(const mn_pool2d_params *p, const int8_t *const *rows, int kh, int kw, int sw,
                   int pl, int in_w, int8_t *out, int out_w)
{
    const int c = p->c, is_max = p->mode == 1;
    int ox, ch, ky, kx;
    for (ox = 0; ox < out_w; ++ox) {
        const int ix0 = ox * sw - pl;
        for (ch = 0; ch < c; ++ch) {
            int32_t acc = is_max ? -128 : 0, n = 0;
            for (ky = 0; ky < kh; ++ky) {
                if (!rows[ky]) continue;
                for (kx = 0; kx < kw; ++kx) {
                    const int ix = ix0 + kx;
                    int32_t v;
                    if (ix < 0 || ix >= in_w) continue;
                    v = rows[ky][(size_t)ix * (size_t)c + (size_t)ch];
                    acc = is_max ? (v > acc ? v : acc) : acc + v;
                    ++n;
                }
            }
            if (!is_max && n) acc = acc > 0 ? (acc + n / 2) / n : (acc - n / 2) / n;
            out[(size_t)ox * (size_t)c + (size_t)ch] = mn_sat(acc, p->act_min, p->act_max);
        }
    }
}

static void mn_pad_row(const mn_pad_params *p, const int8_t *in, int in_w, int pl, int8_t *out,
                       int out_w, int c)
{
    const int right = out_w - in_w - pl;
    if (!in) {
        memset(out, p->value, (size_t)out_w * (size_t)c);
        return;
    }
    memset(out, p->value, (size_t)pl * (size_t)c);
    memcpy(out + (size_t)pl * (size_t)c, in, (size_t)in_w * (size_t)c);
    memset(out + (size_t)(pl + in_w) * (size_t)c, p->value, (size_t)right * (size_t)c);
}

/* ---- gemmlowp-style fixed point (TFLite's LOGISTIC and SOFTMAX): int32 raw values with
 * ib integer bits and 31 - ib fractional bits. */

static int32_t mn_srdhm(int32_t a, int32_t b)
{
    const int64_t ab = (int64_t)a * (int64_t)b;
    const int64_t t = ab + (ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30)));
    if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
    return (int32_t)(t >= 0 ? (t >> 31) : -((-t) >> 31));
}

static int32_t mn_lsl_sat(int32_t x, int e)
{
    const int64_t v = (int64_t)x * ((int64_t)1 << e);
    return (int32_t)(v > INT32_MAX ? INT32_MAX : (v < INT32_MIN ? INT32_MIN : v));
}

static int32_t mn_add32(int32_t a, int32_t b) /* two's complement wrap, as gemmlowp's int32 */
{
    return (int32_t)(uint32_t)((uint32_t)a + (uint32_t)b);
}

/* exp(a) for a in [-1/4, 0), Q0.31: a Taylor expansion around -1/8. */
static int32_t mn_exp_quarter(int32_t a)
{
    const int32_t c = 1895147668, third = 715827883; /* exp(-1/8), 1/3 in Q0.31 */
    const int32_t x = mn_add32(a, 1 << 28);
    const int32_t x2 = mn_srdhm(x, x), x3 = mn_srdhm(x2, x), x4 = mn_srdhm(x2, x2);
    const int32_t poly = mn_rdbp(mn_add32(mn_srdhm(mn_add32(mn_rdbp(x4, 2), x3), third), x2), 1);
    return mn_add32(c, mn_srdhm(c, mn_add32(x, poly)));
}

/* exp(a) for a <= 0 with ib integer bits, Q0.31 (gemmlowp's exp_on_negative_values). */
static int32_t mn_exp_neg(int32_t a, int ib)
{
    static const int32_t mult[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535,
                                    720401, 242}; /* exp(-2^k), k = -2..4, Q0.31 */
    const int fb = 31 - ib;
    const int32_t quarter = (int32_t)1 << (fb - 2);
    const int32_t a_mod = (a & (quarter - 1)) - quarter;
    const int32_t rem = mn_add32(a_mod, (int32_t)(0u - (uint32_t)a));
    int32_t r = mn_exp_quarter(ib ? mn_lsl_sat(a_mod, ib) : a_mod);
    int k;
    for (k = -2; k <= 4; ++k)
        if (ib > k && (rem & ((int32_t)1 << (fb + k)))) r = mn_srdhm(r, mult[k + 2]);
    if (ib > 5 && a < -((int32_t)1 << (36 - ib))) r = 0;
    return a == 0 ? INT32_MAX : r;
}

/* 1 / (1 + a) for a in [0, 1), Q0.31, by three Newton-Raphson steps in Q2.29. */
static int32_t mn_one_over_one_plus(int32_t a)
{
    const int64_t s = (int64_t)a + INT32_MAX;
    const int32_t half = (int32_t)(s >= 0 ? (s + 1) / 2 : (s - 1) / 2);
    int32_t x = mn_add32(1515870810, mn_srdhm(half, -1010580540)); /* 48/17 - 32/17 d */
    int i;
    for (i = 0; i < 3; ++i) {
        const int32_t one_minus = mn_add32(1 << 29, (int32_t)(0u - (uint32_t)mn_srdhm(half, x)));
        x = mn_add32(x, mn_lsl_sat(mn_srdhm(x, one_minus), 2));
    }
    return mn_lsl_sat(x, 1);
}

void mn_logistic_row(const mn_prob_params *p, const int8_t *in, int8_t *out, int n)
{
    const int32_t radius = p->radius;
    int i;
    for (i = 0; i < n; ++i) {
        const int32_t x = in[i] - p->in_zp;
        int32_t q4, r;
        if (x <= -radius) {
            out[i] = -128;
            continue;
        }
        if (x >= radius) {
            out[i] = 127;
            continue;
        }
        q4 = mn_requantize(x, p->m0, p->shift);
        if (q4 == 0) {
            r = 1 << 30;
        } else {
            r = mn_one_over_one_plus(mn_exp_neg(q4 > 0 ? -q4 : q4, 4));
            if (q4 < 0) r = INT32_MAX - r;
        }
        out[i] = mn_sat(mn_rdbp(r, 23) - 128, -128, 127);
    }
}

/* SOFTMAX over the c channels of each of npix pixels (beta folded into m0 at generation). */
void mn_softmax_row(const mn_prob_params *p, const int8_t *in, int8_t *out, int npix, int c)
{
    int px, i;
    for (px = 0; px < npix; ++px, in += c, out += c) {
        int32_t mx = -128, sum = 0, recip, over, headroom = 0;
        uint32_t u;
        for (i = 0; i < c; ++i) mx = in[i] > mx ? in[i] : mx;
        for (i = 0; i < c; ++i) {
            const int32_t d = in[i] - mx;
            if (d >= -p->radius) sum += mn_rdbp(mn_exp_neg(mn_requantize(d, p->m0, p->shift), 5), 12);
        }
        u = (uint32_t)sum;
        while (!(u & 0x80000000u)) {
            u <<= 1;
            ++headroom;
        }
        over = 12 - headroom;
        recip = mn_one_over_one_plus((int32_t)(u - 0x80000000u));
        for (i = 0; i < c; ++i) {
            const int32_t d = in[i] - mx;
            int32_t v = -128;
            if (d >= -p->radius) {
                const int32_t e = mn_exp_neg(mn_requantize(d, p->m0, p->shift), 5);
                v = mn_rdbp(mn_srdhm(recip, e), over + 23) - 128;
            }
            out[i] = mn_sat(v, -128, 127);
        }
    }
}

void mn_pool_row(const mn_pool_params *p, int32_t *acc, const int8_t *row, int w, int c, int first)
{
    int x, i;
    const int32_t off = p->mode == 1 ? -p->in_zp : 0;
    if (first)
        for (i = 0; i < c; ++i) acc[i] = 0;
    for (x = 0; x < w; ++x)
        for (i = 0; i < c; ++i) acc[i] += row[(size_t)x * (size_t)c + (size_t)i] + off;
}

void mn_pool_finish(const mn_pool_params *p, const int32_t *acc, int8_t *out, int c)
{
    const int32_t n = p->count;
    int i;
    for (i = 0; i < c; ++i) {
        int32_t v = acc[i];
        if (p->mode == 1) /* MEAN: the multiplier also divides by n (TFLite's QuantizedMeanOrSum) */
            v = mn_requantize(v, p->m0, p->shift) + p->out_zp;
        else
            v = v > 0 ? (v + n / 2) / n : (v - n / 2) / n;
        if (v < p->act_min) v = p->act_min;
        if (v > p->act_max) v = p->act_max;
        out[i] = (int8_t)v;
    }
}

/* ---- float islands: TFLite Micro's float32 DEQUANTIZE -> ADD ... -> QUANTIZE ---- */

/* AffineQuantize: round(v) half away from zero (std::round; exact: a - (float)q is exact for
 * a <= 512), plus the zero point, clamped. Beyond +-512 the result clamps either way. */
static int8_t mn_quantize_f32(float v, int32_t zp)
{
    float a = v < 0.0f ? -v : v;
    int32_t q;
    if (a > 512.0f) a = 512.0f;
    q = (int32_t)a;
    if (a - (float)q >= 0.5f) ++q;
    return mn_sat((v < 0.0f ? -q : q) + zp, -128, 127);
}

/* Only float32 additions and one division per value: nothing a compiler may contract (FMA). */
void mn_fadd_row(const mn_fadd_params *p, const int8_t *const *in, int8_t *out, int n)
{
    int i, k;
    for (i = 0; i < n; ++i) {
        float acc = p->lut[in[0][i] + 128];
        for (k = 1; k < p->n_in; ++k) acc += p->lut[256 * k + in[k][i] + 128];
        out[i] = mn_quantize_f32(acc / p->out_scale, p->out_zp);
    }
}

/* ---- scheduler: compute rows on demand, as planner.simulate replays it ---- */

/* Input i of a stage (-1: none): in0, in1, or a float island's list. */
static int mn_input(const mn_stage *s, int i)
{
    if (s->kind == MN_FADD) {
        const mn_fadd_params *p = (const mn_fadd_params *)s->params;
        return i < p->n_in ? p->in[i] : -1;
    }
    return i == 0 ? s->in0 : i == 1 ? s->in1 : -1;
}

static int mn_n_inputs(const mn_stage *s)
{
    return s->kind == MN_FADD ? (int)((const mn_fadd_params *)s->params)->n_in : 2;
}

static int8_t *mn_row(uint8_t *arena, const mn_tensor *t, int r)
{
    return (int8_t *)(arena + t->offset + (size_t)(r % t->ring) * (size_t)(t->w * t->c));
}

static int mn_needed(const mn_stage *s, int r, int in_h)
{
    int hi;
    if (s->whole) return in_h - 1;
    switch (s->kind) {
    case MN_CONV:
    case MN_DW:
    case MN_POOL2D:
        hi = r * s->sh - s->pt + s->kh - 1;
        return hi < in_h - 1 ? hi : in_h - 1;
    case MN_PAD:
        hi = r - s->pt;
        return hi >= 0 && hi < in_h ? hi : -1;
    case MN_FC:
        return in_h - 1;
    default: /* row r; a one-row input (squeeze-excite's scale) is broadcast */
        return r < in_h ? r : in_h - 1;
    }
}

/* The kh input rows that output row r of a windowed stage reads (NULL: padding). */
static void mn_window_rows(uint8_t *arena, const mn_stage *s, const mn_tensor *in, int r,
                           const int8_t **rows)
{
    const int lo = r * s->sh - s->pt;
    int ky;
    for (ky = 0; ky < s->kh; ++ky) {
        const int y = lo + ky;
        rows[ky] = (y >= 0 && y < in->h) ? mn_row(arena, in, y) : NULL;
    }
}

static void mn_compute(const mn_net *net, uint8_t *arena, const mn_stage *s, int r)
{
    const mn_tensor *in = &net->tensors[s->in0], *ot = &net->tensors[s->out];
    const int8_t *rows[MN_MAX_KERNEL];
    switch (s->kind) {
    case MN_CONV:
    case MN_DW: {
        const mn_conv_params *p = (const mn_conv_params *)s->params;
        mn_window_rows(arena, s, in, r, rows);
        if (s->kind == MN_DW)
            mn_dw_row(p, rows, s->kh, s->kw, s->sw, s->pl, in->w, mn_row(arena, ot, r), ot->w,
                      net->patch_offset >= 0 ? (int8_t *)(arena + net->patch_offset) : NULL);
        else if (s->kh == 1 && s->kw == 1 && s->sh == 1 && s->sw == 1 && !s->pt && !s->pl)
            mn_pointwise(p, rows[0], in->w, mn_row(arena, ot, r));
        else
            mn_conv_row(p, rows, s->kh, s->kw, s->sw, s->pl, in->w, mn_row(arena, ot, r), ot->w,
                        net->patch_offset >= 0 ? (int8_t *)(arena + net->patch_offset) : NULL);
        break;
    }
    case MN_ADD:
        mn_add_row((const mn_add_params *)s->params, mn_row(arena, in, r),
                   mn_row(arena, &net->tensors[s->in1], r), mn_row(arena, ot, r), ot->w * ot->c);
        break;
    case MN_MUL: {
        const mn_tensor *t1 = &net->tensors[s->in1];
        mn_mul_row((const mn_mul_params *)s->params, mn_row(arena, in, r),
                   mn_row(arena, t1, r < t1->h ? r : t1->h - 1), t1->w * t1->c,
                   mn_row(arena, ot, r), ot->w * ot->c);
        break;
    }
    case MN_CONST:
        mn_const_row((const mn_const_params *)s->params, mn_row(arena, in, r), mn_row(arena, ot, r),
                     ot->w * ot->c);
        break;
    case MN_HSWISH:
        mn_hswish_row((const mn_hswish_params *)s->params, mn_row(arena, in, r),
                      mn_row(arena, ot, r), ot->w * ot->c);
        break;
    case MN_POOL2D:
        mn_window_rows(arena, s, in, r, rows);
        mn_pool2d_row((const mn_pool2d_params *)s->params, rows, s->kh, s->kw, s->sw, s->pl, in->w,
                      mn_row(arena, ot, r), ot->w);
        break;
    case MN_PAD: {
        const int y = r - s->pt;
        mn_pad_row((const mn_pad_params *)s->params,
                   y >= 0 && y < in->h ? mn_row(arena, in, y) : NULL, in->w, s->pl,
                   mn_row(arena, ot, r), ot->w, ot->c);
        break;
    }
    case MN_FADD: {
        const mn_fadd_params *p = (const mn_fadd_params *)s->params;
        int k;
        for (k = 0; k < p->n_in; ++k) rows[k] = mn_row(arena, &net->tensors[p->in[k]], r);
        mn_fadd_row(p, rows, mn_row(arena, ot, r), ot->w * ot->c);
        break;
    }
    case MN_LOGISTIC:
        mn_logistic_row((const mn_prob_params *)s->params, mn_row(arena, in, r),
                        mn_row(arena, ot, r), ot->w * ot->c);
        break;
    case MN_SOFTMAX:
        mn_softmax_row((const mn_prob_params *)s->params, mn_row(arena, in, r),
                       mn_row(arena, ot, r), ot->w, ot->c);
        break;
    case MN_POOL: {
        const mn_pool_params *p = (const mn_pool_params *)s->params;
        int32_t *acc = (int32_t *)(void *)(arena + p->acc_offset);
        mn_pool_row(p, acc, mn_row(arena, in, r), in->w, in->c, r == 0);
        if (r == ot->h - 1) mn_pool_finish(p, acc, mn_row(arena, ot, 0), in->c);
        break;
    }
    default: /* MN_FC: one row from the whole input */
        mn_pointwise((const mn_conv_params *)s->params, mn_row(arena, in, 0), 1,
                     mn_row(arena, ot, 0));
        break;
    }
}

int mn_run(const mn_net *net, uint8_t *arena, int16_t *next, int16_t *stack)
{
    int i, d;
    for (i = 0; i < net->n_tensors; ++i) next[i] = 0;
    next[net->input] = (int16_t)net->tensors[net->input].h;
    for (d = 0; d < net->n_drive; ++d) {
        int sp = 0;
        const int goal = net->drive[d];
        stack[0] = (int16_t)goal;
        stack[1] = (int16_t)(net->tensors[goal].h - 1);
        sp = 1;
        while (sp > 0) {
            const int t = stack[2 * sp - 2], row = stack[2 * sp - 1];
            const mn_stage *s;
            int r, missing = 0;
            if (next[t] > row) {
                --sp;
                continue;
            }
            s = &net->stages[net->tensors[t].producer];
            r = next[t];
            for (i = 0; i < mn_n_inputs(s) && !missing; ++i) {
                const int in = mn_input(s, i);
                int need;
                if (in < 0) continue;
                need = mn_needed(s, r, net->tensors[in].h);
                if (need >= 0 && next[in] <= need) {
                    stack[2 * sp] = (int16_t)in;
                    stack[2 * sp + 1] = (int16_t)need;
                    ++sp;
                    missing = 1;
                }
            }
            if (missing) continue;
            mn_compute(net, arena, s, r);
            next[t] = (int16_t)(r + 1);
        }
    }
    return 0;
}
