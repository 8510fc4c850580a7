// log p(x|z) of a discretised logistic mixture (vae/model/likelihoods.py, LogisticMixture) for
// many decoder outputs: the 8-bit IWAE evaluation's hot loop, as an XLA FFI custom call on CPU.
// Built by vae/native/build.py and called through vae/native/mixture.py; the same numbers as the
// XLA path (`likelihoods.tiled_mixture_log_prob`) up to float rounding, and NaN wherever an output
// of the row is NaN, as there (tests/test_mixture_kernel.py).
//
// One pass over each row (an image's D x 3K decoder outputs, pixel-major): W pixels at a time in
// vector registers, each component's mass σ(a)·σ(−b)·(1 − e^−w) as a probability (four exps, as
// `_mixture_probability`), the row's product of probabilities kept as a mantissa and an exponent
// (one log per lane at the end). A pixel under 1e-30 takes the exact log-space form in double
// (`discretized_logistic_mixture_log_prob`'s). Rows are shared among XLA's intra-op threads.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int W = 16;                  // pixels per vector
constexpr float kMinLogScale = -7.0f;  // likelihoods.MIN_LOG_SCALE
constexpr float kSmallest = 1e-30f;    // likelihoods._SMALLEST_FAST_PROBABILITY
constexpr int kMaxComponents = 10;

typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));
typedef uint32_t vu __attribute__((vector_size(4 * W)));

// NaN in, NaN out, as XLA's max does: a NaN decoder output must reach its row's log p(x|z) (a
// diverged model's NLL is NaN, not a number). `vmax` is NaN where either operand is; the bounds
// keep a NaN x (a comparison with NaN is false), at the cost of a plain one.
inline vf vmax(vf a, vf b) { return (a > b) | (a != a) ? a : b; }
inline vf at_least(vf x, float low) { return x < low ? vf{} + low : x; }
inline vf at_most(vf x, float high) { return x > high ? vf{} + high : x; }

// e^x on W lanes (Cephes' expf: a degree-6 polynomial on [−ln2/2, ln2/2] times 2^n, within 2 ulp),
// x clamped to [−87, 88] so 2^n stays a normal float: a mass it makes finite instead of 0 or inf
// is far under 1e-30 and takes the exact form. n = round(x/ln2) by adding 1.5·2^23 (the float's
// integer bits then hold it), so no lane is converted to an integer: a NaN lane stays NaN.
inline vf vexp(vf x) {
  x = at_most(at_least(x, -87.0f), 88.0f);
  constexpr float kRound = 12582912.0f;  // 1.5·2^23
  const vf shifted = x * 1.44269504088896341f + kRound;
  const vf nf = shifted - kRound;
  const vu n = (vu)shifted - (vu)(vf{} + kRound);
  const vf r = x - nf * 0.693359375f + nf * 2.12194440e-4f;  // ln 2 in two parts
  vf p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * (vf)((n + 127) << 23);
}

// e^x − 1 for x <= 0: its Taylor series to x^8 above −0.3 (error under 1e-8 of it), e^x − 1 below.
inline vf vexpm1_negative(vf x) {
  const vf series = x * (1.0f + x * (1.0f / 2 + x * (1.0f / 6 + x * (1.0f / 24 + x * (1.0f / 120 +
                    x * (1.0f / 720 + x * (1.0f / 5040 + x * (1.0f / 40320))))))));
  return x > -0.3f ? series : vexp(x) - 1.0f;
}

// Σ_k π_k P_k(level) of W pixels: px holds their 3K outputs each (logits, means, log-scales).
template <int K>
inline vf mixture_probability(const float* __restrict px, const int32_t* __restrict level) {
  constexpr int P = 3 * K;
  alignas(64) float columns[P][W];  // component-major, a vector each
  for (int j = 0; j < W; ++j)
    for (int i = 0; i < P; ++i) columns[i][j] = px[j * P + i];
  vf v[P];
  for (int i = 0; i < P; ++i) std::memcpy(&v[i], columns[i], sizeof(vf));
  vi lv;
  std::memcpy(&lv, level, sizeof(vi));
  const vf centre = __builtin_convertvector(lv, vf) * (2.0f / 255) - (1.0f + 1.0f / 255);  // c − 1/255
  const vi low = lv == 0, high = lv == 255;
  const vf one = vf{} + 1.0f;
  vf logit_max = v[0];
  for (int i = 1; i < K; ++i) logit_max = vmax(logit_max, v[i]);
  vf probability = {}, weight_sum = {};
  for (int i = 0; i < K; ++i) {
    const vf inv_scale = vexp(-at_least(v[2 * K + i], kMinLogScale));
    const vf b = inv_scale * (centre - v[K + i]);
    const vf em1 = vexpm1_negative(inv_scale * (-2.0f / 255));  // e^−w − 1
    const vf exp_b = vexp(b);
    const vf exp_minus_a = (1.0f + em1) / exp_b;
    const vf mass = ((low | high) ? one : -em1) /
                    ((high ? one : 1.0f + exp_minus_a) * (low ? one : 1.0f + exp_b));
    const vf weight = vexp(v[i] - logit_max);
    probability += weight * mass;
    weight_sum += weight;
  }
  return probability / weight_sum;
}

double softplus(double v) { return v > 0 ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v)); }

// log Σ_k π_k P_k(level) of one pixel in log space (double): a bin far in a tail keeps its log-mass.
double exact_log_probability(const float* px, int k, int level) {
  double logit_max = -INFINITY, normaliser = 0, term[kMaxComponents], term_max = -INFINITY, sum = 0;
  for (int i = 0; i < k; ++i) logit_max = std::max(logit_max, double(px[i]));
  for (int i = 0; i < k; ++i) normaliser += std::exp(px[i] - logit_max);
  for (int i = 0; i < k; ++i) {
    const double inv_scale = std::exp(-std::max(double(px[2 * k + i]), double(kMinLogScale)));
    const double centre = level * (2.0 / 255) - 1.0 - px[k + i];
    const double a = inv_scale * (centre + 1.0 / 255), b = inv_scale * (centre - 1.0 / 255);
    const double log_mass = level == 0 ? -softplus(-a) : level == 255 ? -softplus(b)
                          : a - softplus(a) - softplus(b) + std::log(-std::expm1(b - a));
    term[i] = px[i] + log_mass;
    term_max = std::max(term_max, term[i]);
  }
  for (int i = 0; i < k; ++i) sum += std::exp(term[i] - term_max);
  return term_max + std::log(sum) - logit_max - std::log(normaliser);
}

// log p(x|z) of one row: D pixels' outputs and levels.
template <int K>
double row_log_prob(const float* out, const int32_t* level, int64_t d) {
  constexpr int P = 3 * K;
  alignas(64) float mantissa[W], probability[W], padded[W * P];
  alignas(64) int32_t exponent[W], padded_level[W];
  for (int j = 0; j < W; ++j) mantissa[j] = 1.0f, exponent[j] = 0;
  double exact = 0;
  for (int64_t d0 = 0; d0 < d; d0 += W) {
    const int n = int(std::min<int64_t>(W, d - d0));
    const float* px = out + d0 * P;
    const int32_t* lv = level + d0;
    if (n < W) {  // the last, partial vector: its first pixel repeated, and not counted
      for (int j = 0; j < W; ++j) {
        std::memcpy(padded + j * P, px + (j < n ? j : 0) * P, P * sizeof(float));
        padded_level[j] = lv[j < n ? j : 0];
      }
      px = padded, lv = padded_level;
    }
    const vf q = mixture_probability<K>(px, lv);
    std::memcpy(probability, &q, sizeof(vf));
    bool any_small = false;
    for (int j = 0; j < W; ++j) {
      const bool counted = j < n, fast = probability[j] >= kSmallest;
      any_small |= counted && !fast;
      float m = mantissa[j] * (counted && fast ? probability[j] : 1.0f);
      int32_t bits;
      std::memcpy(&bits, &m, 4);
      exponent[j] += ((bits >> 23) & 255) - 127;
      bits = (bits & 0x807fffff) | 0x3f800000;  // m in [1, 2)
      std::memcpy(&mantissa[j], &bits, 4);
    }
    if (any_small)
      for (int j = 0; j < n; ++j)
        if (!(probability[j] >= kSmallest)) exact += exact_log_probability(px + j * P, K, lv[j]);
  }
  double total = exact;
  for (int j = 0; j < W; ++j) total += std::log(double(mantissa[j])) + exponent[j] * 0.6931471805599453;
  return total;
}

template <int K>
void rows_log_prob(const float* out, const int32_t* level, float* log_p, int64_t begin, int64_t end,
                   int64_t images, int64_t d) {
  for (int64_t row = begin; row < end; ++row)
    log_p[row] = float(row_log_prob<K>(out + row * d * 3 * K, level + (row % images) * d, d));
}

using RowsFn = void (*)(const float*, const int32_t*, float*, int64_t, int64_t, int64_t, int64_t);

template <int K>
RowsFn rows_fn(int64_t k) {
  if constexpr (K > kMaxComponents) return nullptr;
  else return k == K ? rows_log_prob<K> : rows_fn<K + 1>(k);
}

// Rows in blocks that whoever is free takes next: the calling thread and the tasks it puts on
// XLA's intra-op pool. The caller waits only for blocks already being worked on, never for a task
// still queued (so a busy or one-thread pool cannot deadlock it); a task that starts after the
// last block was taken finds nothing to do. State is shared so it outlives the call.
struct Work {
  RowsFn fn;
  const float* out;
  const int32_t* level;
  float* log_p;
  int64_t rows, images, d, block;
  std::atomic<int64_t> next{0}, finished{0};
  std::mutex mutex;
  std::condition_variable all_done;
  int64_t blocks() const { return (rows + block - 1) / block; }
};

void work_on(const std::shared_ptr<Work>& w) {
  for (int64_t b; (b = w->next++) < w->blocks();) {
    w->fn(w->out, w->level, w->log_p, b * w->block, std::min(w->rows, (b + 1) * w->block), w->images, w->d);
    if (++w->finished == w->blocks()) {
      std::lock_guard<std::mutex> lock(w->mutex);
      w->all_done.notify_all();
    }
  }
}

// out: N x (D·3K) float32; levels: B x D int32, row r taking image r mod B; log_p: N float32.
ffi::Error MixtureLogProb(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::S32> levels,
                          ffi::ResultBuffer<ffi::F32> log_p, int64_t components) {
  const auto out_dims = out.dimensions(), level_dims = levels.dimensions();
  if (out_dims.size() != 2 || level_dims.size() != 2)
    return ffi::Error::InvalidArgument("mixture kernel: expects N x P outputs and B x D levels");
  const int64_t rows = out_dims[0], images = level_dims[0], d = level_dims[1];
  const RowsFn fn = rows_fn<1>(components);
  if (fn == nullptr || out_dims[1] != d * 3 * components || images < 1)
    return ffi::Error::InvalidArgument("mixture kernel: outputs are not D x 3K per row, K <= 10");
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  auto w = std::make_shared<Work>();
  w->fn = fn, w->out = out.typed_data(), w->level = levels.typed_data(), w->log_p = log_p->typed_data();
  w->rows = rows, w->images = images, w->d = d;
  w->block = std::max<int64_t>(1, rows / (4 * threads));
  for (int64_t t = 1; t < std::min(threads, w->blocks()); ++t) pool.Schedule([w] { work_on(w); });
  work_on(w);
  std::unique_lock<std::mutex> lock(w->mutex);
  w->all_done.wait(lock, [&] { return w->finished == w->blocks(); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(vae_mixture_log_prob, MixtureLogProb,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("components"));
