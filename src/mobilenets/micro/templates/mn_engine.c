/* mobilenets int8 engine: row kernels and the demand-driven row scheduler (see mn_engine.h). */
#include "mn_engine.h"

#include <string.h>

#if defined(__ARM_FEATURE_SIMD32)
#include <arm_acle.h>
#define MN_SIMD32 1
#else
#define MN_SIMD32 0
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

static int8_t mn_out(const mn_conv_params *p, int32_t acc, int c)
{
    int32_t v = mn_requantize(acc, p->m0[c], p->shift[c]) + p->out_zp;
    if (v < p->act_min) v = p->act_min;
    if (v > p->act_max) v = p->act_max;
    return (int8_t)v;
}

#if MN_SIMD32
static int32_t mn_rd32(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}
static int32_t mn_ror8(int32_t v)
{
    uint32_t u = (uint32_t)v;
    return (int32_t)((u >> 8) | (u << 24));
}
#endif

/* Pointwise (1x1, stride 1) and fully connected: out[p][o] = sum_i in[p][i] * w[o][i], with the
 * input zero point folded into bias_eff. Two pixels by two output channels per step. */
static void mn_pw_block(const mn_conv_params *p, const int8_t *x0, const int8_t *x1,
                        int8_t *y0, int8_t *y1)
{
    const int cin = p->cin, cout = p->cout;
    int o;
    for (o = 0; o < cout; o += 2) {
        const int two = o + 1 < cout;
        const int8_t *w0 = p->w + (size_t)o * cin;
        const int8_t *w1 = two ? w0 + cin : w0;
        int32_t a00 = p->bias_eff[o], a01 = p->bias_eff[two ? o + 1 : o];
        int32_t a10 = a00, a11 = a01;
        int i = 0;
#if MN_SIMD32
        for (; i + 4 <= cin; i += 4) {
            int32_t xa = mn_rd32(x0 + i), xb = mn_rd32(x1 + i);
            int32_t wa = mn_rd32(w0 + i), wb = mn_rd32(w1 + i);
            int16x2_t xa0 = __sxtb16(xa), xa1 = __sxtb16(mn_ror8(xa));
            int16x2_t xb0 = __sxtb16(xb), xb1 = __sxtb16(mn_ror8(xb));
            int16x2_t wa0 = __sxtb16(wa), wa1 = __sxtb16(mn_ror8(wa));
            int16x2_t wb0 = __sxtb16(wb), wb1 = __sxtb16(mn_ror8(wb));
            a00 = __smlad(xa0, wa0, a00);
            a00 = __smlad(xa1, wa1, a00);
            a01 = __smlad(xa0, wb0, a01);
            a01 = __smlad(xa1, wb1, a01);
            a10 = __smlad(xb0, wa0, a10);
            a10 = __smlad(xb1, wa1, a10);
            a11 = __smlad(xb0, wb0, a11);
            a11 = __smlad(xb1, wb1, a11);
        }
#endif
        for (; i < cin; ++i) {
            const int32_t wa = w0[i], wb = w1[i];
            a00 += x0[i] * wa;
            a01 += x0[i] * wb;
            a10 += x1[i] * wa;
            a11 += x1[i] * wb;
        }
        y0[o] = mn_out(p, a00, o);
        if (y1) y1[o] = mn_out(p, a10, o);
        if (two) {
            y0[o + 1] = mn_out(p, a01, o + 1);
            if (y1) y1[o + 1] = mn_out(p, a11, o + 1);
        }
    }
}

void mn_pointwise(const mn_conv_params *p, const int8_t *in, int npix, int8_t *out)
{
    int px;
    for (px = 0; px + 1 < npix; px += 2) {
        const int8_t *x0 = in + (size_t)px * p->cin;
        mn_pw_block(p, x0, x0 + p->cin, out + (size_t)px * p->cout,
                    out + (size_t)(px + 1) * p->cout);
    }
    if (px < npix) {
        const int8_t *x0 = in + (size_t)px * p->cin;
        mn_pw_block(p, x0, x0, out + (size_t)px * p->cout, NULL);
    }
}

/* General convolution (the stem): taps outside the input are padding and contribute nothing,
 * as TFLite's zero-point padding does. */
void mn_conv_row(const mn_conv_params *p, const int8_t *const *rows, int kh, int kw, int sw,
                 int pl, int in_w, int8_t *out, int out_w)
{
    const int cin = p->cin, cout = p->cout;
    int ox, o, ky, kx, i;
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
                    x = row + (size_t)ix * cin;
                    w = p->w + (((size_t)o * kh + ky) * kw + kx) * cin;
                    for (i = 0; i < cin; ++i) acc += (x[i] + p->in_offset) * w[i];
                }
            }
            out[(size_t)ox * cout + o] = mn_out(p, acc, o);
        }
    }
}

/* Depthwise convolution, depth multiplier m: output channel o reads input channel o / m. */
void mn_dw_row(const mn_conv_params *p, const int8_t *const *rows, int kh, int kw, int sw, int pl,
               int in_w, int8_t *out, int out_w)
{
    const int cin = p->cin, cout = p->cout, m = p->mult;
    const int32_t off = p->in_offset;
    int ox, o, ky, kx;
    int full_rows = 1;
    for (ky = 0; ky < kh; ++ky) full_rows &= rows[ky] != NULL;
    for (ox = 0; ox < out_w; ++ox) {
        const int ix0 = ox * sw - pl;
        int8_t *y = out + (size_t)ox * cout;
        if (full_rows && ix0 >= 0 && ix0 + kw <= in_w && m == 1 && kh == 3 && kw == 3) {
            /* interior 3x3: every tap is inside, the zero point is folded into bias_eff */
            const int8_t *r0 = rows[0] + (size_t)ix0 * cin;
            const int8_t *r1 = rows[1] + (size_t)ix0 * cin;
            const int8_t *r2 = rows[2] + (size_t)ix0 * cin;
            const int8_t *w = p->w;
            for (o = 0; o < cout; ++o) {
                int32_t acc = p->bias_eff[o];
                acc += r0[o] * w[o] + r0[o + cin] * w[o + cout] + r0[o + 2 * cin] * w[o + 2 * cout];
                acc += r1[o] * w[o + 3 * cout] + r1[o + cin] * w[o + 4 * cout] +
                       r1[o + 2 * cin] * w[o + 5 * cout];
                acc += r2[o] * w[o + 6 * cout] + r2[o + cin] * w[o + 7 * cout] +
                       r2[o + 2 * cin] * w[o + 8 * cout];
                y[o] = mn_out(p, acc, o);
            }
            continue;
        }
        for (o = 0; o < cout; ++o) {
            const int ci = o / m;
            int32_t acc = p->bias[o];
            for (ky = 0; ky < kh; ++ky) {
                const int8_t *row = rows[ky];
                if (!row) continue;
                for (kx = 0; kx < kw; ++kx) {
                    const int ix = ix0 + kx;
                    if (ix < 0 || ix >= in_w) continue;
                    acc += (row[(size_t)ix * cin + ci] + off) * p->w[((size_t)ky * kw + kx) * cout + o];
                }
            }
            y[o] = mn_out(p, acc, o);
        }
    }
}

void mn_add_row(const mn_add_params *p, const int8_t *a, const int8_t *b, int8_t *out, int n)
{
    int i;
    for (i = 0; i < n; ++i) {
        const int32_t sa = mn_requantize((a[i] + p->in1_offset) * (1 << 20), p->m1, p->s1);
        const int32_t sb = mn_requantize((b[i] + p->in2_offset) * (1 << 20), p->m2, p->s2);
        int32_t v = mn_requantize(sa + sb, p->mo, p->so) + p->out_zp;
        if (v < p->act_min) v = p->act_min;
        if (v > p->act_max) v = p->act_max;
        out[i] = (int8_t)v;
    }
}

void mn_pool_row(const mn_pool_params *p, int32_t *acc, const int8_t *row, int w, int c, int first)
{
    int x, i;
    const int32_t off = p->mode == 1 ? -p->in_zp : 0;
    if (first)
        for (i = 0; i < c; ++i) acc[i] = 0;
    for (x = 0; x < w; ++x)
        for (i = 0; i < c; ++i) acc[i] += row[(size_t)x * c + i] + off;
}

void mn_pool_finish(const mn_pool_params *p, const int32_t *acc, int8_t *out, int c)
{
    const int32_t n = p->count;
    int i;
    for (i = 0; i < c; ++i) {
        int32_t v = acc[i];
        if (p->mode == 1) v = mn_requantize(v, p->m0, p->shift);
        v = v > 0 ? (v + n / 2) / n : (v - n / 2) / n;
        if (p->mode == 1) v += p->out_zp;
        if (v < p->act_min) v = p->act_min;
        if (v > p->act_max) v = p->act_max;
        out[i] = (int8_t)v;
    }
}

/* ---- scheduler: compute rows on demand, as planner.simulate replays it ---- */

static int8_t *mn_row(uint8_t *arena, const mn_tensor *t, int r)
{
    return (int8_t *)(arena + t->offset + (size_t)(r % t->ring) * (size_t)(t->w * t->c));
}

static int mn_needed(const mn_stage *s, int r, int in_h)
{
    int hi;
    switch (s->kind) {
    case MN_CONV:
    case MN_DW:
        hi = r * s->sh - s->pt + s->kh - 1;
        return hi < in_h - 1 ? hi : in_h - 1;
    case MN_FC:
        return in_h - 1;
    default:
        return r;
    }
}

static void mn_compute(const mn_net *net, uint8_t *arena, const mn_stage *s, int r)
{
    const mn_tensor *in = &net->tensors[s->in0], *ot = &net->tensors[s->out];
    const int8_t *rows[7];
    int ky;
    switch (s->kind) {
    case MN_CONV:
    case MN_DW: {
        const mn_conv_params *p = (const mn_conv_params *)s->params;
        const int lo = r * s->sh - s->pt;
        for (ky = 0; ky < s->kh; ++ky) {
            const int y = lo + ky;
            rows[ky] = (y >= 0 && y < in->h) ? mn_row(arena, in, y) : NULL;
        }
        if (s->kind == MN_DW)
            mn_dw_row(p, rows, s->kh, s->kw, s->sw, s->pl, in->w, mn_row(arena, ot, r), ot->w);
        else if (p->bias_eff)
            mn_pointwise(p, rows[0], in->w, mn_row(arena, ot, r));
        else
            mn_conv_row(p, rows, s->kh, s->kw, s->sw, s->pl, in->w, mn_row(arena, ot, r), ot->w);
        break;
    }
    case MN_ADD:
        mn_add_row((const mn_add_params *)s->params, mn_row(arena, in, r),
                   mn_row(arena, &net->tensors[s->in1], r), mn_row(arena, ot, r), ot->w * ot->c);
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
            for (i = 0; i < 2 && !missing; ++i) {
                const int in = i == 0 ? s->in0 : s->in1;
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
