// One round of the lossless coder's search over the levels of many sub-pixels under a logistic
// mixture in fixed point (vae/coding/fixed_point.py, `next_round` and `mixture_cdf`), as an XLA FFI
// custom call on CPU. Built by vae/native/build.py and called through vae/native/search_round.py. Integer
// arithmetic, and each part's probability its counts times the reciprocal of the interval's, as
// there: the XLA path's numbers exactly, on every machine (tests/test_search_round_kernel.py).
//
// The counts at level j of a sub-pixel, with the table's argument a in 1/2^16 of a unit:
//   a = clip((((j·S − S/2) − mean[n,k]) · inverse_scale[n,k] + 2^(shift−1)) >> shift, ±limit)
//   C(j) = Σ_k weight[n,k] · interpolate(table, a) + floor · j
// Rows are taken in blocks of B sub-pixels, copied component-major, so that the inner loop runs
// over sub-pixels with unit strides and vectorises (64-bit lanes, the table read by gathers);
// blocks are shared among XLA's intra-op threads. Where XLA's version makes N x E x K arrays and
// picks the interval's ends with selects, this is one pass: with 5 components a round takes about a
// third of XLA's time here; with 2, both are bound by the memory the state takes.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t B = 256;  // sub-pixels per block
constexpr int64_t kMaxComponents = 16;
constexpr int64_t kMaxParts = 16;

struct Constants {
  int64_t table_size, offset, limit, mean_steps, shift, fraction_bits, floor;
};

// A search round's inputs and outputs (`fixed_point.next_round`).
struct Round {
  int64_t last_step = 0, step = 0, last_parts = 0, parts = 0;
  const int64_t *low = nullptr, *edges = nullptr;
  const int32_t* part = nullptr;
  double* probabilities = nullptr;
  int64_t *new_low = nullptr, *new_edges = nullptr;
};

struct Work {
  const int64_t *weights, *means, *inverse_scales, *table;
  int64_t n, k;
  Constants c;
  Round round;
  std::atomic<int64_t> next{0}, finished{0};
  std::mutex mutex;
  std::condition_variable all_done;
  int64_t blocks() const { return (n + B - 1) / B; }
};

// The counts C(j) of `rows` sub-pixels (from `first`) at the points j of each: `point(r, j)` gives
// them, `put(r, j, count)` takes the counts.
template <typename Point, typename Put>
void counts_of(const Work& w, int64_t first, int64_t rows, int64_t points, Point point_of, Put put) {
  const Constants& c = w.c;
  const int64_t k = w.k;
  alignas(64) int64_t weight[kMaxComponents][B], mean[kMaxComponents][B], inverse[kMaxComponents][B];
  alignas(64) int64_t point[B], total[B];
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t q = 0; q < k; ++q) {
      weight[q][r] = w.weights[(first + r) * k + q];
      mean[q][r] = w.means[(first + r) * k + q];
      inverse[q][r] = w.inverse_scales[(first + r) * k + q];
    }
  const int64_t* __restrict table = w.table;
  const int64_t half_step = c.mean_steps / 2, round = int64_t{1} << (c.shift - 1), shift = c.shift;
  const int64_t limit = c.limit, offset = c.offset, mean_steps = c.mean_steps, floor = c.floor;
  const int64_t fraction_bits = c.fraction_bits, fraction_mask = (int64_t{1} << fraction_bits) - 1;
  for (int64_t j = 0; j < points; ++j) {
    for (int64_t r = 0; r < rows; ++r) {
      point[r] = point_of(r, j);
      total[r] = floor * point[r];
    }
    for (int64_t q = 0; q < k; ++q) {
      const int64_t* __restrict wq = weight[q];
      const int64_t* __restrict mq = mean[q];
      const int64_t* __restrict iq = inverse[q];
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t distance = point[r] * mean_steps - half_step - mq[r];
        int64_t a = (distance * iq[r] + round) >> shift;
        a = a < -limit ? -limit : a;
        a = a > limit ? limit : a;
        const int64_t index = (a >> fraction_bits) + offset, fraction = a & fraction_mask;
        const int64_t low = table[index], high = table[index + 1];
        total[r] += wq[r] * (low + (((high - low) * fraction) >> fraction_bits));
      }
    }
    for (int64_t r = 0; r < rows; ++r) put(r, j, total[r]);
  }
}

void block_counts(const Work& w, int64_t first, int64_t last) {
  // After the part the last round decoded: the interval's new low level and the counts at its ends
  // (picked from the last round's edges), then the counts at the parts' inner edges and each part's
  // probability.
  const Round& g = w.round;
  const int64_t rows = last - first, last_edges = g.last_parts + 1, edges = g.parts + 1;
  alignas(64) int64_t low[B];
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = first + r, part = g.part[n];
    low[r] = g.low[n] + part * g.last_step;
    g.new_low[n] = low[r];
    g.new_edges[n * edges] = g.edges[n * last_edges + part];
    g.new_edges[n * edges + g.parts] = g.edges[n * last_edges + part + 1];
  }
  counts_of(w, first, rows, g.parts - 1, [&](int64_t r, int64_t j) { return low[r] + (j + 1) * g.step; },
            [&](int64_t r, int64_t j, int64_t count) { g.new_edges[(first + r) * edges + j + 1] = count; });
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t* e = g.new_edges + (first + r) * edges;
    // each part's counts times the reciprocal of the interval's, as fixed_point._probabilities
    const double reciprocal = 1.0 / static_cast<double>(e[g.parts] - e[0]);
    for (int64_t j = 0; j < g.parts; ++j)
      g.probabilities[(first + r) * g.parts + j] = static_cast<double>(e[j + 1] - e[j]) * reciprocal;
  }
}

void work_on(const std::shared_ptr<Work>& w) {
  for (int64_t b; (b = w->next++) < w->blocks();) {
    block_counts(*w, b * B, std::min(w->n, (b + 1) * B));
    if (++w->finished == w->blocks()) {
      std::lock_guard<std::mutex> lock(w->mutex);
      w->all_done.notify_all();
    }
  }
}

void run(ffi::ThreadPool& pool, const std::shared_ptr<Work>& w) {
  if (w->n == 0) return;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  for (int64_t t = 1; t < std::min(threads, w->blocks()); ++t) pool.Schedule([w] { work_on(w); });
  work_on(w);
  std::unique_lock<std::mutex> lock(w->mutex);
  w->all_done.wait(lock, [&] { return w->finished == w->blocks(); });
}

// The mixture's parameters and constants, checked: nullptr and the error where they do not fit.
std::shared_ptr<Work> parameters(ffi::Buffer<ffi::S64>& weights, ffi::Buffer<ffi::S64>& means,
                                 ffi::Buffer<ffi::S64>& inverse_scales, ffi::Buffer<ffi::S64>& table,
                                 int64_t offset, int64_t limit, int64_t mean_steps, int64_t shift,
                                 int64_t fraction_bits, int64_t floor, ffi::Error& error) {
  const auto wd = weights.dimensions(), md = means.dimensions(), id = inverse_scales.dimensions();
  if (wd.size() != 2 || md.size() != 2 || id.size() != 2 || md[0] != wd[0] || md[1] != wd[1] ||
      id[0] != wd[0] || id[1] != wd[1] || wd[1] < 1 || wd[1] > kMaxComponents) {
    error = ffi::Error::InvalidArgument("search round kernel: expects N x K parameters, K <= 16");
    return nullptr;
  }
  const int64_t table_size = table.dimensions()[0];
  if (shift < 1 || fraction_bits < 1 || limit < 0 || offset - (limit >> fraction_bits) < 0 ||
      offset + (limit >> fraction_bits) + 1 >= table_size) {
    error = ffi::Error::InvalidArgument("search round kernel: the argument's range is outside the table");
    return nullptr;
  }
  auto w = std::make_shared<Work>();
  w->weights = weights.typed_data(), w->means = means.typed_data();
  w->inverse_scales = inverse_scales.typed_data(), w->table = table.typed_data();
  w->n = wd[0], w->k = wd[1];
  w->c = Constants{table_size, offset, limit, mean_steps, shift, fraction_bits, floor};
  return w;
}

// One search round (`fixed_point.next_round`): low (N), edges (N x (last_parts + 1)) and part (N)
// of the last round give the interval; returns each part's probability (N x parts, float64), the
// interval's low level (N) and the counts at the parts' edges (N x (parts + 1)).
ffi::Error MixtureRound(ffi::ThreadPool pool, ffi::Buffer<ffi::S64> weights, ffi::Buffer<ffi::S64> means,
                        ffi::Buffer<ffi::S64> inverse_scales, ffi::Buffer<ffi::S64> table,
                        ffi::Buffer<ffi::S64> low, ffi::Buffer<ffi::S64> edges, ffi::Buffer<ffi::S32> part,
                        ffi::ResultBuffer<ffi::F64> probabilities, ffi::ResultBuffer<ffi::S64> new_low,
                        ffi::ResultBuffer<ffi::S64> new_edges, int64_t offset, int64_t limit, int64_t mean_steps,
                        int64_t shift, int64_t fraction_bits, int64_t floor, int64_t last_step, int64_t step,
                        int64_t parts) {
  ffi::Error error = ffi::Error::Success();
  auto w = parameters(weights, means, inverse_scales, table, offset, limit, mean_steps, shift, fraction_bits,
                      floor, error);
  if (!w) return error;
  const auto ed = edges.dimensions();
  if (low.dimensions()[0] != w->n || part.dimensions()[0] != w->n || ed.size() != 2 || ed[0] != w->n ||
      ed[1] < 2 || parts < 2 || parts > kMaxParts)
    return ffi::Error::InvalidArgument("search round kernel: expects N lows, parts and rows of edges");
  Round& g = w->round;
  g.last_step = last_step, g.step = step, g.last_parts = ed[1] - 1, g.parts = parts;
  g.low = low.typed_data(), g.edges = edges.typed_data(), g.part = part.typed_data();
  g.probabilities = probabilities->typed_data(), g.new_low = new_low->typed_data();
  g.new_edges = new_edges->typed_data();
  run(pool, w);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(vae_mixture_round, MixtureRound,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S64>>()
                                  .Arg<ffi::Buffer<ffi::S64>>()
                                  .Arg<ffi::Buffer<ffi::S64>>()
                                  .Arg<ffi::Buffer<ffi::S64>>()
                                  .Arg<ffi::Buffer<ffi::S64>>()
                                  .Arg<ffi::Buffer<ffi::S64>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F64>>()
                                  .Ret<ffi::Buffer<ffi::S64>>()
                                  .Ret<ffi::Buffer<ffi::S64>>()
                                  .Attr<int64_t>("offset")
                                  .Attr<int64_t>("limit")
                                  .Attr<int64_t>("mean_steps")
                                  .Attr<int64_t>("shift")
                                  .Attr<int64_t>("fraction_bits")
                                  .Attr<int64_t>("floor")
                                  .Attr<int64_t>("last_step")
                                  .Attr<int64_t>("step")
                                  .Attr<int64_t>("parts"));
