/* keypatch native kernels (CPU, AVX2 + FMA), compiled on first use by keypatch.reconstructors.native.
 *
 * decoder_attention: the attention of the masked queries of a one-block MAE decoder, for M visible
 * sets at once (see MAE._decode_masked for the same arithmetic in torch). A masked position p
 * queries with its mask-token query q0[p]; its softmax runs over the J visible tokens of the set
 * (cls first), whose keys and values come in `kv`, and over the masked positions, whose terms are
 * precomputed totals over all N mask-token keys minus the K visible positions' terms:
 *
 *   s_i   = q0[p] . k_i                         (i < J)
 *   mx    = max(m0[p], max_i s_i);  a = exp(m0[p] - mx)
 *   den   = sum_i exp(s_i - mx) + a (es0[p] - sum_l e0[vis_l, p])
 *   out   = (sum_i exp(s_i - mx) v_i + a (ev0[p] - sum_l e0[vis_l, p] v0[vis_l])) / den
 *
 * Eight query positions are processed per vector (lanes = positions), so every product is a
 * vertical FMA; only the masked positions' rows are written, in the order of `masked`.
 */
#include <stdint.h>
#include <stdlib.h>
#include <immintrin.h>
#include <math.h>

#if !defined(__AVX2__) || !defined(__FMA__)
#error "keypatch native kernels need AVX2 and FMA"
#endif

#define LANES 8

int keypatch_abi(void) { return 1; }

/* exp(x) on 8 floats: x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial (Cephes expf), ~1 ulp. */
static inline __m256 vexp(__m256 x)
{
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* Shapes: H heads of width D (a multiple of 8), N positions padded to NP (a multiple of 8).
 *   q0t  (H, D, NP)  mask-token queries, scaled, transposed (positions last)
 *   m0   (H, NP)     row maxima of the mask-token scores
 *   e0t  (H, N, NP)  exp(scores - m0), keys first
 *   v0   (H, N, D)   mask-token values
 *   ev0t (H, D, NP)  e0 @ v0, transposed
 *   es0  (H, NP)     e0 summed over keys (padding: any positive value)
 *   kv   (M, J, 2, H, D)  keys and values of the visible tokens (cls first)
 *   visible (M, K), masked (M, R) int64 patch indices
 *   out  (M, R, H * D)
 * Returns 0, or -1 if a work buffer could not be allocated (out is then incomplete). */
int decoder_attention(int M, int J, int K, int R, int H, int N, int NP, int D, int threads,
                      const float *q0t, const float *m0, const float *e0t, const float *v0,
                      const float *ev0t, const float *es0, const float *kv,
                      const int64_t *visible, const int64_t *masked, float *out)
{
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|: failed)
    {
        float *w = aligned_alloc(32, sizeof(float) * (size_t)(J + K) * LANES + 32);
        const float **vrow = malloc(sizeof(float *) * (size_t)(J + K + 1));
        int *rank = malloc(sizeof(int) * (size_t)NP);
        float tmp[8 * LANES] __attribute__((aligned(32)));
        if (!w || !vrow || !rank) failed = 1;
        #pragma omp for collapse(2) schedule(static)
        for (int m = 0; m < M; m++) {
            for (int h = 0; h < H; h++) {
                if (!w || !vrow || !rank) continue;
                const float *kvm = kv + (size_t)m * J * 2 * H * D;
                const int64_t *vis = visible + (size_t)m * K;
                const int64_t *msk = masked + (size_t)m * R;
                for (int p = 0; p < NP; p++) rank[p] = -1;
                for (int r = 0; r < R; r++) rank[msk[r]] = r;
                for (int i = 0; i < J; i++) vrow[i] = kvm + ((size_t)i * 2 * H + H + h) * D;
                for (int k = 0; k < K; k++) vrow[J + k] = v0 + ((size_t)h * N + vis[k]) * D;
                const float *qh = q0t + (size_t)h * D * NP;
                const float *eh = ev0t + (size_t)h * D * NP;
                const float *et = e0t + (size_t)h * N * NP;
                for (int p0 = 0; p0 < N; p0 += LANES) {
                    int any = 0;
                    for (int l = 0; l < LANES && p0 + l < N; l++) any |= rank[p0 + l] >= 0;
                    if (!any) continue;
                    __m256 m0v = _mm256_loadu_ps(m0 + (size_t)h * NP + p0);
                    __m256 mx = m0v;
                    /* scores on the visible keys, four keys per pass (independent accumulators) */
                    int i = 0;
                    for (; i + 4 <= J; i += 4) {
                        const float *k0 = kvm + ((size_t)(i + 0) * 2 * H + h) * D;
                        const float *k1 = kvm + ((size_t)(i + 1) * 2 * H + h) * D;
                        const float *k2 = kvm + ((size_t)(i + 2) * 2 * H + h) * D;
                        const float *k3 = kvm + ((size_t)(i + 3) * 2 * H + h) * D;
                        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                        for (int d = 0; d < D; d++) {
                            __m256 q = _mm256_loadu_ps(qh + (size_t)d * NP + p0);
                            a0 = _mm256_fmadd_ps(q, _mm256_broadcast_ss(k0 + d), a0);
                            a1 = _mm256_fmadd_ps(q, _mm256_broadcast_ss(k1 + d), a1);
                            a2 = _mm256_fmadd_ps(q, _mm256_broadcast_ss(k2 + d), a2);
                            a3 = _mm256_fmadd_ps(q, _mm256_broadcast_ss(k3 + d), a3);
                        }
                        _mm256_store_ps(w + (i + 0) * LANES, a0);
                        _mm256_store_ps(w + (i + 1) * LANES, a1);
                        _mm256_store_ps(w + (i + 2) * LANES, a2);
                        _mm256_store_ps(w + (i + 3) * LANES, a3);
                        mx = _mm256_max_ps(mx, _mm256_max_ps(_mm256_max_ps(a0, a1), _mm256_max_ps(a2, a3)));
                    }
                    for (; i < J; i++) {
                        const float *k0 = kvm + ((size_t)i * 2 * H + h) * D;
                        __m256 a0 = _mm256_setzero_ps();
                        for (int d = 0; d < D; d++)
                            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + (size_t)d * NP + p0), _mm256_broadcast_ss(k0 + d), a0);
                        _mm256_store_ps(w + i * LANES, a0);
                        mx = _mm256_max_ps(mx, a0);
                    }
                    /* softmax weights: visible tokens, then minus the visible positions' mask-token terms */
                    __m256 alpha = vexp(_mm256_sub_ps(m0v, mx));
                    __m256 den = _mm256_setzero_ps();
                    for (i = 0; i < J; i++) {
                        __m256 e = vexp(_mm256_sub_ps(_mm256_load_ps(w + i * LANES), mx));
                        _mm256_store_ps(w + i * LANES, e);
                        den = _mm256_add_ps(den, e);
                    }
                    __m256 removed = _mm256_setzero_ps();
                    __m256 neg_alpha = _mm256_sub_ps(_mm256_setzero_ps(), alpha);
                    for (int k = 0; k < K; k++) {
                        __m256 e = _mm256_loadu_ps(et + (size_t)vis[k] * NP + p0);
                        removed = _mm256_add_ps(removed, e);
                        _mm256_store_ps(w + (J + k) * LANES, _mm256_mul_ps(e, neg_alpha));
                    }
                    den = _mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(es0 + (size_t)h * NP + p0), removed), alpha, den);
                    __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), den);
                    /* weighted values, eight output dimensions per pass */
                    for (int d0 = 0; d0 < D; d0 += 8) {
                        __m256 c[8];
                        for (int dd = 0; dd < 8; dd++)
                            c[dd] = _mm256_mul_ps(alpha, _mm256_loadu_ps(eh + (size_t)(d0 + dd) * NP + p0));
                        for (int t = 0; t < J + K; t++) {
                            __m256 wt = _mm256_load_ps(w + t * LANES);
                            const float *vv = vrow[t] + d0;
                            for (int dd = 0; dd < 8; dd++) c[dd] = _mm256_fmadd_ps(wt, _mm256_broadcast_ss(vv + dd), c[dd]);
                        }
                        for (int dd = 0; dd < 8; dd++) _mm256_store_ps(tmp + dd * LANES, _mm256_mul_ps(c[dd], inv));
                        for (int l = 0; l < LANES && p0 + l < N; l++) {
                            int r = rank[p0 + l];
                            if (r < 0) continue;
                            float *o = out + ((size_t)m * R + r) * H * D + (size_t)h * D + d0;
                            for (int dd = 0; dd < 8; dd++) o[dd] = tmp[dd * LANES + l];
                        }
                    }
                }
            }
        }
        free(w);
        free(vrow);
        free(rank);
    }
    return failed ? -1 : 0;
}

/* Horizontal max and sum of 8 floats. */
static inline float hmax8(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}

static inline float hsum8(__m256 v)
{
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_add_ss(m, _mm_shuffle_ps(m, m, 1)));
}

/* encoder_attention: multi-head self-attention of M short sequences (the encoder of each visible set).
 *   qkv (M, n, 3, H, D): packed projections; out (M, n, H * D): softmax(q k^T * scale) v per head.
 * Scores: lanes over keys (K transposed into a work buffer), four queries at a time; weighted sums:
 * lanes over the head dimension, two queries at a time. D must be a multiple of 32.
 * Returns 0, -1 if a work buffer could not be allocated (out is then incomplete), -2 for a bad D. */
int encoder_attention(int M, int n, int H, int D, float scale, int threads, const float *qkv, float *out)
{
    const int np = (n + LANES - 1) / LANES * LANES;
    int failed = 0;
    if (D % 32) return -2;
    #pragma omp parallel num_threads(threads) reduction(|: failed)
    {
        float *kt = aligned_alloc(32, sizeof(float) * (size_t)D * np);
        float *s = aligned_alloc(32, sizeof(float) * (size_t)4 * np);
        if (!kt || !s) failed = 1;
        #pragma omp for collapse(2) schedule(static)
        for (int m = 0; m < M; m++) {
            for (int h = 0; h < H; h++) {
                if (!kt || !s) continue;
                const size_t row = (size_t)3 * H * D;
                const float *base = qkv + (size_t)m * n * row;
                for (int d = 0; d < D; d++)
                    for (int j = n; j < np; j++) kt[(size_t)d * np + j] = 0.0f;
                for (int j = 0; j < n; j++) {
                    const float *k = base + (size_t)j * row + (size_t)(H + h) * D;
                    for (int d = 0; d < D; d++) kt[(size_t)d * np + j] = k[d];
                }
                for (int i0 = 0; i0 < n; i0 += 4) {
                    const int nq = n - i0 < 4 ? n - i0 : 4;
                    const float *q[4];
                    for (int r = 0; r < 4; r++) q[r] = base + (size_t)(i0 + (r < nq ? r : 0)) * row + (size_t)h * D;
                    /* scores of (up to) four queries, 8 keys per vector */
                    for (int j0 = 0; j0 < np; j0 += LANES) {
                        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                        for (int d = 0; d < D; d++) {
                            __m256 k = _mm256_load_ps(kt + (size_t)d * np + j0);
                            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(q[0] + d), k, a0);
                            a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(q[1] + d), k, a1);
                            a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(q[2] + d), k, a2);
                            a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(q[3] + d), k, a3);
                        }
                        __m256 sc = _mm256_set1_ps(scale);
                        __m256 a[4] = {_mm256_mul_ps(a0, sc), _mm256_mul_ps(a1, sc), _mm256_mul_ps(a2, sc),
                                       _mm256_mul_ps(a3, sc)};
                        if (j0 + LANES > n) {  /* padded keys get no weight */
                            __m256 idx = _mm256_add_ps(_mm256_set1_ps((float)j0), _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7));
                            __m256 valid = _mm256_cmp_ps(idx, _mm256_set1_ps((float)n), _CMP_LT_OQ);
                            for (int r = 0; r < 4; r++) a[r] = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), a[r], valid);
                        }
                        for (int r = 0; r < 4; r++) _mm256_store_ps(s + (size_t)r * np + j0, a[r]);
                    }
                    /* softmax of each row (unnormalised; 1 / sum kept for the end) */
                    float inv[4];
                    for (int r = 0; r < nq; r++) {
                        float *sr = s + (size_t)r * np;
                        __m256 mx = _mm256_set1_ps(-INFINITY);
                        for (int j0 = 0; j0 < np; j0 += LANES) mx = _mm256_max_ps(mx, _mm256_load_ps(sr + j0));
                        __m256 mxv = _mm256_set1_ps(hmax8(mx)), sum = _mm256_setzero_ps();
                        for (int j0 = 0; j0 < np; j0 += LANES) {
                            __m256 e = vexp(_mm256_sub_ps(_mm256_load_ps(sr + j0), mxv));
                            if (j0 + LANES > n) {
                                __m256 idx = _mm256_add_ps(_mm256_set1_ps((float)j0), _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7));
                                e = _mm256_and_ps(e, _mm256_cmp_ps(idx, _mm256_set1_ps((float)n), _CMP_LT_OQ));
                            }
                            _mm256_store_ps(sr + j0, e);
                            sum = _mm256_add_ps(sum, e);
                        }
                        inv[r] = 1.0f / hsum8(sum);
                    }
                    /* weighted values: two queries x 32 dimensions per pass */
                    for (int r = 0; r < nq; r += 2) {
                        const int two = r + 1 < nq;
                        const float *p0 = s + (size_t)r * np, *p1 = s + (size_t)(r + two) * np;
                        float *o0 = out + ((size_t)m * n + i0 + r) * H * D + (size_t)h * D;
                        float *o1 = out + ((size_t)m * n + i0 + r + two) * H * D + (size_t)h * D;
                        for (int d0 = 0; d0 < D; d0 += 32) {
                            __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
                            __m256 e0 = c0, e1 = c0, e2 = c0, e3 = c0;
                            for (int j = 0; j < n; j++) {
                                const float *v = base + (size_t)j * row + (size_t)(2 * H + h) * D + d0;
                                __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8);
                                __m256 v2 = _mm256_loadu_ps(v + 16), v3 = _mm256_loadu_ps(v + 24);
                                __m256 w0 = _mm256_broadcast_ss(p0 + j), w1 = _mm256_broadcast_ss(p1 + j);
                                c0 = _mm256_fmadd_ps(w0, v0, c0); c1 = _mm256_fmadd_ps(w0, v1, c1);
                                c2 = _mm256_fmadd_ps(w0, v2, c2); c3 = _mm256_fmadd_ps(w0, v3, c3);
                                e0 = _mm256_fmadd_ps(w1, v0, e0); e1 = _mm256_fmadd_ps(w1, v1, e1);
                                e2 = _mm256_fmadd_ps(w1, v2, e2); e3 = _mm256_fmadd_ps(w1, v3, e3);
                            }
                            __m256 s0 = _mm256_set1_ps(inv[r]);
                            _mm256_storeu_ps(o0 + d0, _mm256_mul_ps(c0, s0));
                            _mm256_storeu_ps(o0 + d0 + 8, _mm256_mul_ps(c1, s0));
                            _mm256_storeu_ps(o0 + d0 + 16, _mm256_mul_ps(c2, s0));
                            _mm256_storeu_ps(o0 + d0 + 24, _mm256_mul_ps(c3, s0));
                            if (two) {
                                __m256 s1 = _mm256_set1_ps(inv[r + 1]);
                                _mm256_storeu_ps(o1 + d0, _mm256_mul_ps(e0, s1));
                                _mm256_storeu_ps(o1 + d0 + 8, _mm256_mul_ps(e1, s1));
                                _mm256_storeu_ps(o1 + d0 + 16, _mm256_mul_ps(e2, s1));
                                _mm256_storeu_ps(o1 + d0 + 24, _mm256_mul_ps(e3, s1));
                            }
                        }
                    }
                }
            }
        }
        free(kt);
        free(s);
    }
    return failed ? -1 : 0;
}
