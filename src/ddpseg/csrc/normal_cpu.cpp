// PyTorch's serial CPU normal draw, replayed exactly and faster.
//
// For a float tensor that is not contiguous (e.g. channels-last noise), torch's `normal_` takes its
// serial path: elements in memory order, each from a double-precision Box–Muller pair drawn from the
// generator's MT19937 (two 53-bit uniforms, each from two 32-bit outputs), the second value of a pair
// kept for the next element. This file reproduces that sequence bit for bit from the generator's state
// bytes (`torch.Generator.get_state()`) and writes the advanced state back, so the caller can
// `set_state` it: the draws, and everything drawn afterwards, are what torch would have produced.
// The uniforms are drawn serially (cheap); the transcendental part runs on several threads.
//
// The Python side (ddpseg.native.randn_like) checks this against torch on first use and falls back
// to torch if the two ever differ (e.g. a torch release with another state layout or algorithm).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr int kStateWords = 624;
constexpr int kShift = 397;
constexpr uint32_t kMatrixA = 0x9908b0dfu;

// byte offsets in the CPU generator state (CPUGeneratorImplState, as get_state() returns it)
constexpr size_t kLeft = 8, kNext = 16, kWords = 24, kNormalY = 5024, kNormalValid = 5040, kStateBytes = 5056;

struct Engine {
  uint32_t words[kStateWords];
  int32_t left;
  uint32_t next;

  static uint32_t mix(uint32_t u, uint32_t v) {  // upper bit of u, lower 31 of v, shifted; twisted by v's low bit
    return (((u & 0x80000000u) | (v & 0x7fffffffu)) >> 1) ^ ((v & 1u) ? kMatrixA : 0u);
  }

  void twist() {  // in place, in order: the later words read already-updated ones, as MT19937 defines
    int i = 0;
    for (; i < kStateWords - kShift; ++i) words[i] = words[i + kShift] ^ mix(words[i], words[i + 1]);
    for (; i < kStateWords - 1; ++i) words[i] = words[i + kShift - kStateWords] ^ mix(words[i], words[i + 1]);
    words[i] = words[kShift - 1] ^ mix(words[i], words[0]);
    left = kStateWords;
    next = 0;
  }

  uint32_t operator()() {
    if (--left == 0) twist();
    uint32_t y = words[next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
  }

  double uniform() {  // 53 random bits of (first << 32 | second), scaled to [0, 1)
    uint64_t first = (*this)();
    uint64_t second = (*this)();
    uint64_t bits = ((first << 32) | second) & ((uint64_t{1} << 53) - 1);
    return static_cast<double>(bits) * (1.0 / static_cast<double>(uint64_t{1} << 53));
  }
};

constexpr double kPi = 3.14159265358979323846;

// out[2k], out[2k+1] (cos and sin halves) of pairs [begin, end); the last pair may be cut (write_second)
void transform(const double* u, float* out, int64_t begin, int64_t end, int64_t n_out, double mean, double std) {
  for (int64_t k = begin; k < end; ++k) {
    const double u1 = u[2 * k], u2 = u[2 * k + 1];
    const double r = std::sqrt(-2.0 * std::log1p(-u2));
    const double theta = 2.0 * kPi * u1;
    const double c = std::cos(theta), s = std::sin(theta);  // unconditional: the compiler may pair them (sincos)
    out[2 * k] = static_cast<float>(r * c * std + mean);
    if (2 * k + 1 < n_out) out[2 * k + 1] = static_cast<float>(r * s * std + mean);
  }
}

}  // namespace

extern "C" {

// Fills out[0..n) and advances the state bytes in place. Returns 0, or -1 for a state of another size.
int ddpseg_serial_normal_f32(uint8_t* state, int64_t state_bytes, float* out, int64_t n, double mean, double std,
                             int threads) {
  if (state_bytes != static_cast<int64_t>(kStateBytes)) return -1;
  Engine engine;
  std::memcpy(&engine.left, state + kLeft, sizeof(int32_t));
  uint64_t next64;
  std::memcpy(&next64, state + kNext, sizeof(uint64_t));
  engine.next = static_cast<uint32_t>(next64);
  for (int i = 0; i < kStateWords; ++i) {
    uint64_t w;
    std::memcpy(&w, state + kWords + 8 * static_cast<size_t>(i), sizeof(uint64_t));
    engine.words[i] = static_cast<uint32_t>(w);
  }
  double cached;
  int32_t cached_valid;
  std::memcpy(&cached, state + kNormalY, sizeof(double));
  std::memcpy(&cached_valid, state + kNormalValid, sizeof(int32_t));

  int64_t done = 0;
  if (n > 0 && cached_valid) {  // the second half of the previous pair comes first
    out[0] = static_cast<float>(cached * std + mean);
    cached_valid = 0;
    done = 1;
  }
  const int64_t remaining = n - done;
  const int64_t pairs = (remaining + 1) / 2;
  const int64_t block = int64_t{1} << 19;  // pairs per block: 8 MB of uniforms
  std::vector<double> u(2 * static_cast<size_t>(std::min(pairs, block)));
  threads = std::max(1, threads);
  float* dst = out + done;
  for (int64_t p0 = 0; p0 < pairs; p0 += block) {
    const int64_t p1 = std::min(pairs, p0 + block);
    for (int64_t k = 0; k < p1 - p0; ++k) {
      u[2 * k] = engine.uniform();
      u[2 * k + 1] = engine.uniform();
    }
    const int64_t count = p1 - p0;
    const int64_t n_out = remaining - 2 * p0;  // outputs left from this block on
    float* block_out = dst + 2 * p0;
    const int use = static_cast<int>(std::min<int64_t>(threads, std::max<int64_t>(1, count / 4096)));
    if (use == 1) {
      transform(u.data(), block_out, 0, count, n_out, mean, std);
    } else {
      std::vector<std::thread> pool;
      for (int t = 0; t < use; ++t) {
        const int64_t b = count * t / use, e = count * (t + 1) / use;
        pool.emplace_back(transform, u.data(), block_out, b, e, n_out, mean, std);
      }
      for (auto& th : pool) th.join();
    }
    if (p1 == pairs && remaining % 2 == 1) {  // the last pair's second half is kept for the next draw
      const int64_t k = count - 1;
      const double r = std::sqrt(-2.0 * std::log1p(-u[2 * k + 1]));
      cached = r * std::sin(2.0 * kPi * u[2 * k]);
      cached_valid = 1;
    }
  }

  std::memcpy(state + kLeft, &engine.left, sizeof(int32_t));
  next64 = engine.next;
  std::memcpy(state + kNext, &next64, sizeof(uint64_t));
  for (int i = 0; i < kStateWords; ++i) {
    uint64_t w = engine.words[i];
    std::memcpy(state + kWords + 8 * static_cast<size_t>(i), &w, sizeof(uint64_t));
  }
  std::memcpy(state + kNormalY, &cached, sizeof(double));
  std::memcpy(state + kNormalValid, &cached_valid, sizeof(int32_t));
  return 0;
}

}  // extern "C"
