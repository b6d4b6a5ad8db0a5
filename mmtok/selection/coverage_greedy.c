/* MMTok's greedy coverage maximisation on one crop, in C: the compiled path of
 * mmtok/selection/mmtok.py (method "compiled"; mmtok/selection/native.py builds and loads it).
 *
 * The picks must be the dense greedy's (and so the authors' kernel's) exactly: at each step the
 * first maximum of the float32 gains gain[j] = sum_r max(C[r, j] - best[r], 0) as torch sums them.
 * Torch's order of additions is its own, so this file never decides a step by float32 sums.
 * Instead it keeps, per column, the exact sum of its terms rounded to a fixed grid: every term
 * relu(C[r, j] - best[r]) (a float32, the same bits as torch's, since the subtraction and clamp are
 * elementwise IEEE operations) is scaled by a power of two and rounded to an integer held in a
 * double (exact below 2^53), and integer sums are exact in any order, so each column's sum can be
 * updated by adding (new - old) for the rows a pick changes only. That sum is within R / 2 grid
 * units of the column's exact real sum. A step is decided here when its largest sum beats every
 * other live column by more than any float32 summation order of R non-negative terms could undo
 * (the factor rho, mmtok.py's _tie_ratio); otherwise mmtok_run returns, and the caller sums the
 * float32 term matrix kept here with torch's own reduction, as the dense greedy does, takes the
 * first maximum, and passes that pick back in. Either way the pick is the dense greedy's.
 *
 * Layout: C and terms are row-major [R, n] float32 (terms = relu(C - best) for the current best);
 * sums is [n]; dead [n] marks excluded and chosen columns; picks [k]. `scale` is a power of two
 * chosen by the caller so that every term and every column's grid sum stays below 2^51, where
 * GRID_ROUND rounds exactly (C must be finite).
 * Compiled without -ffast-math and with -ffp-contract=off (native.py): every operation here is
 * plain IEEE arithmetic in the order written.
 */
#include <stdint.h>

/* 2^52: adding and subtracting it rounds a double in [0, 2^51] to the nearest integer. */
#define GRID_ROUND 4503599627370496.0

static inline double grid(float x, double scale) { return ((double)x * scale + GRID_ROUND) - GRID_ROUND; }

/* The first pick, j (terms = relu(C) until now, from the caller): the rows it raises get their
 * terms rewritten, and every column's grid sum is computed from all the terms. */
static void first_pick(const float *restrict C, float *restrict terms, float *restrict best, double *restrict sums,
                       int64_t R, int64_t n, double scale, int64_t j) {
    for (int64_t c = 0; c < n; ++c) sums[c] = 0.0;
    for (int64_t r = 0; r < R; ++r) {
        const float *restrict Cr = C + r * n;
        float *restrict Tr = terms + r * n;
        float b = Cr[j];
        if (b > best[r]) {
            best[r] = b;
            for (int64_t c = 0; c < n; ++c) {
                float x = Cr[c] - b;
                x = x > 0.0f ? x : 0.0f;
                Tr[c] = x;
                sums[c] += grid(x, scale);
            }
        } else {
            for (int64_t c = 0; c < n; ++c) sums[c] += grid(Tr[c], scale);
        }
    }
}

/* Column j is picked: best = max(best, C[:, j]); the rows that rise get their terms rewritten and
 * their change added to the grid sums. */
static void pick(const float *restrict C, float *restrict terms, float *restrict best, double *restrict sums,
                 int64_t R, int64_t n, double scale, int64_t j) {
    for (int64_t r = 0; r < R; ++r) {
        const float *restrict Cr = C + r * n;
        float b = Cr[j];
        if (!(b > best[r])) continue;
        best[r] = b;
        float *restrict Tr = terms + r * n;
        for (int64_t c = 0; c < n; ++c) {
            float x = Cr[c] - b;
            x = x > 0.0f ? x : 0.0f;
            sums[c] += grid(x, scale) - grid(Tr[c], scale);
            Tr[c] = x;
        }
    }
}

/* Decides steps from `step` on, up to k, while they are certain. With `torch_gains` set, the
 * first step is decided by `gains` instead ([n] float32: the dense greedy's own sums of the current
 * terms, from the caller): its first maximum over the live columns, as torch.argmax takes it.
 * Step 0 is always decided so (the grid sums do not exist before the first pick). Returns the
 * number of steps done: k, or the step the caller must sum in torch (the terms are current for
 * it). */
int64_t mmtok_run(const float *restrict C, float *restrict terms, float *restrict best, double *restrict sums,
                  uint8_t *restrict dead, int64_t *restrict picks, const float *restrict gains, int64_t R, int64_t n,
                  int64_t step, int64_t k, double scale, double rho, int64_t torch_gains) {
    const double slack = 0.5 * (double)R; /* grid units between a grid sum and the exact sum */
    for (;;) {
        int64_t j = -1;
        if (torch_gains) {
            torch_gains = 0;
            for (int64_t c = 0; c < n; ++c)
                if (!dead[c] && (j < 0 || gains[c] > gains[j])) j = c;
        } else {
            double first = -1.0, second = -1.0;
            for (int64_t c = 0; c < n; ++c) {
                if (dead[c]) continue;
                double s = sums[c];
                if (s > first) {
                    second = first;
                    first = s;
                    j = c;
                } else if (s > second) {
                    second = s;
                }
            }
            /* Certain: the smallest float32 gain column j can have exceeds the largest any other
             * live column can have, in any order of additions (a single live column is certain). */
            if (second >= 0.0 && !((first - slack) * rho > second + slack)) return step;
        }
        picks[step++] = j;
        dead[j] = 1;
        if (step == k) return step;
        if (step == 1)
            first_pick(C, terms, best, sums, R, n, scale, j);
        else
            pick(C, terms, best, sums, R, n, scale, j);
    }
}
