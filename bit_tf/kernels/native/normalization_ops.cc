// CPU kernels for BiT's GroupNorm(+ReLU) and weight standardization, forward and backward.
//
// Each kernel works on one cache-sized piece at a time (one example for GroupNorm, a block of
// output channels for weight standardization) and makes all its passes over that piece while
// it is in the core's cache: one read from memory for the statistics and one for the output,
// instead of one full pass over the tensor per reduction. Statistics are two-pass (mean, then
// the mean squared deviation) and summed in double. Built and loaded by bit_tf.kernels.native.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace bit_tf {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// Runs work(begin, end) over [0, total) on the op's intra-op threads.
template <typename Work>
void InParallel(OpKernelContext* context, int64_t total, int64_t cost_per_unit, Work work) {
  auto* threads = context->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(threads->num_threads, threads->workers, total, cost_per_unit, work);
}

::absl::Status GroupStatisticsShape(InferenceContext* c, int output) {
  ShapeHandle x;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 2, &x));
  int64_t groups;
  TF_RETURN_IF_ERROR(c->GetAttr("groups", &groups));
  c->set_output(output, c->MakeShape({c->Dim(x, 0), groups, 1}));
  return ::absl::OkStatus();
}

// ----------------------------------------------------------------------------------------------
// GroupNorm over the last axis of [batch, ..., channels], then ReLU if asked.

// Pixels (or kernel rows) summed in float before their sum is added to the double total: the
// float sums vectorize twice as wide, and the double totals keep the statistics exact enough
// for any image size.
constexpr int64_t kChunk = 32;

// Inputs and outputs are float32 or bfloat16; all arithmetic is in float (and double).
inline float ToFloat(float value) { return value; }
inline float ToFloat(::tensorflow::bfloat16 value) { return static_cast<float>(value); }
template <typename T>
inline T FromFloat(float value) {
  return static_cast<T>(value);
}

// total[c] += sum over the rows [0, count) of rows[r * stride + c], for c < width.
template <typename T>
inline void AddColumnSums(const T* __restrict rows, int64_t count, int64_t stride,
                          int64_t width, float* __restrict partial, double* __restrict total) {
  for (int64_t start = 0; start < count; start += kChunk) {
    std::fill(partial, partial + width, 0.0f);
    const int64_t stop = std::min(count, start + kChunk);
    for (int64_t r = start; r < stop; ++r) {
      const T* __restrict row = rows + r * stride;
      for (int64_t c = 0; c < width; ++c) partial[c] += ToFloat(row[c]);
    }
    for (int64_t c = 0; c < width; ++c) total[c] += partial[c];
  }
}

// total[c] += sum over the rows of (rows[r * stride + c] - center[c])^2, for c < width.
template <typename T>
inline void AddSquaredDeviations(const T* __restrict rows, int64_t count, int64_t stride,
                                 int64_t width, const float* __restrict center,
                                 float* __restrict partial, double* __restrict total) {
  for (int64_t start = 0; start < count; start += kChunk) {
    std::fill(partial, partial + width, 0.0f);
    const int64_t stop = std::min(count, start + kChunk);
    for (int64_t r = start; r < stop; ++r) {
      const T* __restrict row = rows + r * stride;
      for (int64_t c = 0; c < width; ++c) {
        const float deviation = ToFloat(row[c]) - center[c];
        partial[c] += deviation * deviation;
      }
    }
    for (int64_t c = 0; c < width; ++c) total[c] += partial[c];
  }
}

// The sum of group g's per-channel sums.
inline double GroupTotal(const double* sums, int64_t g, int64_t per_group) {
  double total = 0.0;
  for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) total += sums[c];
  return total;
}

// The per-channel scale and offset of one example: y = x * scale + offset.
void ScaleAndOffset(const float* gamma, const float* beta, const float* mean,
                    const float* inverse, int64_t channels, int64_t per_group, float* scale,
                    float* offset) {
  for (int64_t c = 0; c < channels; ++c) {
    const int64_t g = c / per_group;
    scale[c] = inverse[g] * gamma[c];
    offset[c] = beta[c] - mean[g] * scale[c];
  }
}

// y = x * scale + offset (then ReLU) for one pixel's channels.
template <typename T>
inline void NormalizeRow(const T* __restrict x, const float* __restrict scale,
                         const float* __restrict offset, int64_t channels, bool relu,
                         T* __restrict y) {
  if (relu) {
    for (int64_t c = 0; c < channels; ++c) {
      y[c] = FromFloat<T>(std::max(ToFloat(x[c]) * scale[c] + offset[c], 0.0f));
    }
  } else {
    for (int64_t c = 0; c < channels; ++c) y[c] = FromFloat<T>(ToFloat(x[c]) * scale[c] + offset[c]);
  }
}

// The upstream gradient through the ReLU (zero where the forward output was), for one pixel.
// The mask is the forward pass's own float expression, so both passes agree on it exactly.
inline float Masked(float x, float scale, float offset, float upstream) {
  return x * scale + offset > 0.0f ? upstream : 0.0f;
}

// sum_dz[c] += dz, sum_dz_x[c] += dz * x for one pixel, dz the upstream through the ReLU.
template <typename T>
inline void AddMaskedProducts(const T* __restrict x, const T* __restrict upstream,
                              const float* __restrict scale, const float* __restrict offset,
                              int64_t channels, bool relu, float* __restrict sum_dz,
                              float* __restrict sum_dz_x) {
  if (relu) {
    for (int64_t c = 0; c < channels; ++c) {
      const float value = ToFloat(x[c]);
      const float dz = Masked(value, scale[c], offset[c], ToFloat(upstream[c]));
      sum_dz[c] += dz;
      sum_dz_x[c] += dz * value;
    }
  } else {
    for (int64_t c = 0; c < channels; ++c) {
      const float dz = ToFloat(upstream[c]);
      sum_dz[c] += dz;
      sum_dz_x[c] += dz * ToFloat(x[c]);
    }
  }
}

// dx = a dz + b x + c0 for one pixel.
template <typename T>
inline void InputGradientRow(const T* __restrict x, const T* __restrict upstream,
                             const float* __restrict scale, const float* __restrict offset,
                             const float* __restrict a, const float* __restrict b,
                             const float* __restrict c0, int64_t channels, bool relu,
                             T* __restrict dx) {
  if (relu) {
    for (int64_t c = 0; c < channels; ++c) {
      const float value = ToFloat(x[c]);
      const float dz = Masked(value, scale[c], offset[c], ToFloat(upstream[c]));
      dx[c] = FromFloat<T>(dz * a[c] + value * b[c] + c0[c]);
    }
  } else {
    for (int64_t c = 0; c < channels; ++c) {
      dx[c] = FromFloat<T>(ToFloat(upstream[c]) * a[c] + ToFloat(x[c]) * b[c] + c0[c]);
    }
  }
}

template <typename T>
class GroupNormOp : public OpKernel {
 public:
  explicit GroupNormOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("groups", &groups_));
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(context, context->GetAttr("relu", &relu_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const Tensor& gamma = context->input(1);
    const Tensor& beta = context->input(2);
    OP_REQUIRES(context, x.dims() >= 2,
                ::absl::InvalidArgumentError(::absl::StrCat(
                    "BitGroupNorm: x needs a batch and a channel axis, got shape ",
                    x.shape().DebugString())));
    const int64_t batch = x.dim_size(0);
    const int64_t channels = x.dim_size(x.dims() - 1);
    OP_REQUIRES(context, groups_ > 0 && channels % groups_ == 0,
                ::absl::InvalidArgumentError(::absl::StrCat("BitGroupNorm: ", channels,
                                                            " channels do not split into ",
                                                            groups_, " groups")));
    OP_REQUIRES(context, gamma.NumElements() == channels && beta.NumElements() == channels,
                ::absl::InvalidArgumentError(::absl::StrCat(
                    "BitGroupNorm: gamma and beta need one value per channel (", channels,
                    "), got ", gamma.NumElements(), " and ", beta.NumElements())));
    Tensor *y, *mean, *inverse;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &y));
    const TensorShape statistics_shape({batch, groups_, 1});
    OP_REQUIRES_OK(context, context->allocate_output(1, statistics_shape, &mean));
    OP_REQUIRES_OK(context, context->allocate_output(2, statistics_shape, &inverse));
    if (batch == 0 || channels == 0) return;
    const int64_t pixels = x.NumElements() / (batch * channels);
    const int64_t per_group = channels / groups_;
    const T* x_data = x.flat<T>().data();
    const float* gamma_data = gamma.flat<float>().data();
    const float* beta_data = beta.flat<float>().data();
    T* y_data = y->flat<T>().data();
    float* mean_data = mean->flat<float>().data();
    float* inverse_data = inverse->flat<float>().data();
    const int64_t groups = groups_;
    const double epsilon = epsilon_;
    const bool relu = relu_;
    auto work = [&](int64_t begin, int64_t end) {
      std::vector<double> sums(channels);
      std::vector<float> partial(channels), mean_by_channel(channels), scale(channels),
          offset(channels);
      const double count = static_cast<double>(pixels * per_group);
      for (int64_t n = begin; n < end; ++n) {
        const T* xn = x_data + n * pixels * channels;
        T* yn = y_data + n * pixels * channels;
        float* mean_n = mean_data + n * groups;
        float* inverse_n = inverse_data + n * groups;
        std::fill(sums.begin(), sums.end(), 0.0);
        AddColumnSums(xn, pixels, channels, channels, partial.data(), sums.data());
        for (int64_t g = 0; g < groups; ++g) {
          mean_n[g] = static_cast<float>(GroupTotal(sums.data(), g, per_group) / count);
          std::fill(mean_by_channel.begin() + g * per_group,
                    mean_by_channel.begin() + (g + 1) * per_group, mean_n[g]);
        }
        std::fill(sums.begin(), sums.end(), 0.0);
        AddSquaredDeviations(xn, pixels, channels, channels, mean_by_channel.data(),
                             partial.data(), sums.data());
        for (int64_t g = 0; g < groups; ++g) {
          const double variance = GroupTotal(sums.data(), g, per_group) / count;
          inverse_n[g] = static_cast<float>(1.0 / std::sqrt(variance + epsilon));
        }
        ScaleAndOffset(gamma_data, beta_data, mean_n, inverse_n, channels, per_group, scale.data(),
                       offset.data());
        for (int64_t p = 0; p < pixels; ++p) {
          NormalizeRow(xn + p * channels, scale.data(), offset.data(), channels, relu,
                       yn + p * channels);
        }
      }
    };
    InParallel(context, batch, 6 * pixels * channels, work);
  }

 private:
  int64_t groups_;
  float epsilon_;
  bool relu_;
};

// The gradient of GroupNorm(+ReLU) from the forward pass's statistics. The ReLU's mask is
// recomputed from x (the same float expression as the forward pass), so y is not read.
template <typename T>
class GroupNormGradOp : public OpKernel {
 public:
  explicit GroupNormGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("groups", &groups_));
    OP_REQUIRES_OK(context, context->GetAttr("relu", &relu_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& upstream = context->input(0);
    const Tensor& x = context->input(1);
    const Tensor& gamma = context->input(2);
    const Tensor& beta = context->input(3);
    const Tensor& mean = context->input(4);
    const Tensor& inverse = context->input(5);
    OP_REQUIRES(context, x.dims() >= 2 && upstream.shape() == x.shape(),
                ::absl::InvalidArgumentError(::absl::StrCat(
                    "BitGroupNormGrad: upstream ", upstream.shape().DebugString(), " and x ",
                    x.shape().DebugString(), " must have one shape with a channel axis")));
    const int64_t batch = x.dim_size(0);
    const int64_t channels = x.dim_size(x.dims() - 1);
    const int64_t groups = groups_;
    OP_REQUIRES(context,
                groups > 0 && channels % groups == 0 && gamma.NumElements() == channels &&
                    beta.NumElements() == channels && mean.NumElements() == batch * groups &&
                    inverse.NumElements() == batch * groups,
                ::absl::InvalidArgumentError(::absl::StrCat(
                    "BitGroupNormGrad: x has ", batch, " examples of ", channels, " channels in ",
                    groups, " groups, but gamma has ", gamma.NumElements(), " values, beta ",
                    beta.NumElements(), ", the means ", mean.NumElements(), " and the inverses ",
                    inverse.NumElements())));
    Tensor *dx, *d_gamma, *d_beta;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({channels}), &d_gamma));
    OP_REQUIRES_OK(context, context->allocate_output(2, TensorShape({channels}), &d_beta));
    float* d_gamma_data = d_gamma->flat<float>().data();
    float* d_beta_data = d_beta->flat<float>().data();
    std::fill(d_gamma_data, d_gamma_data + channels, 0.0f);
    std::fill(d_beta_data, d_beta_data + channels, 0.0f);
    if (batch == 0 || channels == 0) return;
    const int64_t pixels = x.NumElements() / (batch * channels);
    const int64_t per_group = channels / groups;
    const T* dy_data = upstream.flat<T>().data();
    const T* x_data = x.flat<T>().data();
    const float* gamma_data = gamma.flat<float>().data();
    const float* beta_data = beta.flat<float>().data();
    const float* mean_data = mean.flat<float>().data();
    const float* inverse_data = inverse.flat<float>().data();
    T* dx_data = dx->flat<T>().data();
    const bool relu = relu_;
    // Per-example sums of dz and dz * x_hat per channel, reduced over the batch afterwards.
    std::vector<double> example_sum_dz(batch * channels), example_sum_dz_xhat(batch * channels);
    auto work = [&](int64_t begin, int64_t end) {
      std::vector<double> sum_dz(channels), sum_dz_x(channels);
      std::vector<float> scale(channels), offset(channels), a(channels), b(channels), c0(channels),
          partial_dz(channels), partial_dz_x(channels);
      const double count = static_cast<double>(pixels * per_group);
      for (int64_t n = begin; n < end; ++n) {
        const T* xn = x_data + n * pixels * channels;
        const T* dyn = dy_data + n * pixels * channels;
        T* dxn = dx_data + n * pixels * channels;
        const float* mean_n = mean_data + n * groups;
        const float* inverse_n = inverse_data + n * groups;
        ScaleAndOffset(gamma_data, beta_data, mean_n, inverse_n, channels, per_group, scale.data(),
                       offset.data());
        std::fill(sum_dz.begin(), sum_dz.end(), 0.0);
        std::fill(sum_dz_x.begin(), sum_dz_x.end(), 0.0);
        for (int64_t start = 0; start < pixels; start += kChunk) {
          std::fill(partial_dz.begin(), partial_dz.end(), 0.0f);
          std::fill(partial_dz_x.begin(), partial_dz_x.end(), 0.0f);
          for (int64_t p = start; p < std::min(pixels, start + kChunk); ++p) {
            AddMaskedProducts(xn + p * channels, dyn + p * channels, scale.data(), offset.data(),
                              channels, relu, partial_dz.data(), partial_dz_x.data());
          }
          for (int64_t c = 0; c < channels; ++c) {
            sum_dz[c] += partial_dz[c];
            sum_dz_x[c] += partial_dz_x[c];
          }
        }
        double* out_sum_dz = example_sum_dz.data() + n * channels;
        double* out_sum_dz_xhat = example_sum_dz_xhat.data() + n * channels;
        for (int64_t g = 0; g < groups; ++g) {
          double mean_dxhat = 0.0, mean_dxhat_xhat = 0.0;
          const double m = mean_n[g], inv = inverse_n[g];
          for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
            const double sum_dz_xhat = (sum_dz_x[c] - m * sum_dz[c]) * inv;
            out_sum_dz[c] = sum_dz[c];
            out_sum_dz_xhat[c] = sum_dz_xhat;
            mean_dxhat += gamma_data[c] * sum_dz[c];
            mean_dxhat_xhat += gamma_data[c] * sum_dz_xhat;
          }
          mean_dxhat /= count;
          mean_dxhat_xhat /= count;
          // dx = inverse * (gamma * dz - mean_dxhat - x_hat * mean_dxhat_xhat) = a dz + b x + c0
          const float b_g = static_cast<float>(-inv * inv * mean_dxhat_xhat);
          const float c_g = static_cast<float>(inv * (m * inv * mean_dxhat_xhat - mean_dxhat));
          for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
            a[c] = static_cast<float>(inv * gamma_data[c]);
            b[c] = b_g;
            c0[c] = c_g;
          }
        }
        for (int64_t p = 0; p < pixels; ++p) {
          InputGradientRow(xn + p * channels, dyn + p * channels, scale.data(), offset.data(),
                           a.data(), b.data(), c0.data(), channels, relu, dxn + p * channels);
        }
      }
    };
    InParallel(context, batch, 12 * pixels * channels, work);
    for (int64_t c = 0; c < channels; ++c) {
      double total_dz = 0.0, total_dz_xhat = 0.0;
      for (int64_t n = 0; n < batch; ++n) {
        total_dz += example_sum_dz[n * channels + c];
        total_dz_xhat += example_sum_dz_xhat[n * channels + c];
      }
      d_beta_data[c] = static_cast<float>(total_dz);
      d_gamma_data[c] = static_cast<float>(total_dz_xhat);
    }
  }

 private:
  int64_t groups_;
  bool relu_;
};

// ----------------------------------------------------------------------------------------------
// Weight standardization of a [..., out_channels] kernel: each output channel (column) to mean
// 0 and variance 1 over all other axes (rows). Works on blocks of columns so that a block's
// rows stay in cache across the passes.

constexpr int64_t kColumnBlock = 16;

// (w - mean) * inverse for one row of a block of columns.
inline void StandardizeRow(const float* __restrict w, const float* __restrict mean,
                           const float* __restrict inverse, int64_t width,
                           float* __restrict out) {
  for (int64_t j = 0; j < width; ++j) out[j] = (w[j] - mean[j]) * inverse[j];
}

// sum_g[j] += g, sum_g_standardized[j] += g * standardized(w), for one row.
inline void AddGradientSums(const float* __restrict w, const float* __restrict g,
                            const float* __restrict mean, const float* __restrict inverse,
                            int64_t width, float* __restrict sum_g,
                            float* __restrict sum_g_standardized) {
  for (int64_t j = 0; j < width; ++j) {
    sum_g[j] += g[j];
    sum_g_standardized[j] += g[j] * ((w[j] - mean[j]) * inverse[j]);
  }
}

// The kernel's gradient for one row: (g - mean(g) - standardized * mean(g * standardized)) / std.
inline void KernelGradientRow(const float* __restrict w, const float* __restrict g,
                              const float* __restrict mean, const float* __restrict inverse,
                              const float* __restrict mean_g,
                              const float* __restrict mean_g_standardized, int64_t width,
                              float* __restrict out) {
  for (int64_t j = 0; j < width; ++j) {
    const float standardized = (w[j] - mean[j]) * inverse[j];
    out[j] = (g[j] - mean_g[j] - standardized * mean_g_standardized[j]) * inverse[j];
  }
}

class StandardizeKernelOp : public OpKernel {
 public:
  explicit StandardizeKernelOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& kernel = context->input(0);
    OP_REQUIRES(context, kernel.dims() >= 1,
                ::absl::InvalidArgumentError(
                    "BitStandardizeKernel: the kernel needs an output axis, got a scalar"));
    const int64_t columns = kernel.dim_size(kernel.dims() - 1);
    Tensor *standardized, *mean, *inverse;
    OP_REQUIRES_OK(context, context->allocate_output(0, kernel.shape(), &standardized));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({1, columns}), &mean));
    OP_REQUIRES_OK(context, context->allocate_output(2, TensorShape({1, columns}), &inverse));
    if (columns == 0 || kernel.NumElements() == 0) return;
    const int64_t rows = kernel.NumElements() / columns;
    const float* w = kernel.flat<float>().data();
    float* out = standardized->flat<float>().data();
    float* mean_data = mean->flat<float>().data();
    float* inverse_data = inverse->flat<float>().data();
    const double epsilon = epsilon_;
    const int64_t blocks = (columns + kColumnBlock - 1) / kColumnBlock;
    auto work = [&](int64_t begin, int64_t end) {
      double sums[kColumnBlock];
      float partial[kColumnBlock], means[kColumnBlock], inverses[kColumnBlock];
      for (int64_t block = begin; block < end; ++block) {
        const int64_t first = block * kColumnBlock;
        const int64_t width = std::min(kColumnBlock, columns - first);
        std::fill(sums, sums + kColumnBlock, 0.0);
        AddColumnSums(w + first, rows, columns, width, partial, sums);
        for (int64_t j = 0; j < width; ++j) means[j] = static_cast<float>(sums[j] / rows);
        std::fill(sums, sums + kColumnBlock, 0.0);
        AddSquaredDeviations(w + first, rows, columns, width, means, partial, sums);
        for (int64_t j = 0; j < width; ++j) {
          inverses[j] = static_cast<float>(1.0 / std::sqrt(sums[j] / rows + epsilon));
          mean_data[first + j] = means[j];
          inverse_data[first + j] = inverses[j];
        }
        for (int64_t r = 0; r < rows; ++r) {
          StandardizeRow(w + r * columns + first, means, inverses, width,
                         out + r * columns + first);
        }
      }
    };
    InParallel(context, blocks, 6 * rows * kColumnBlock, work);
  }

 private:
  float epsilon_;
};

class StandardizeKernelGradOp : public OpKernel {
 public:
  explicit StandardizeKernelGradOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& upstream = context->input(0);
    const Tensor& kernel = context->input(1);
    const Tensor& mean = context->input(2);
    const Tensor& inverse = context->input(3);
    OP_REQUIRES(context, upstream.shape() == kernel.shape(),
                ::absl::InvalidArgumentError(::absl::StrCat(
                    "BitStandardizeKernelGrad: upstream ", upstream.shape().DebugString(),
                    " and kernel ", kernel.shape().DebugString(), " differ in shape")));
    const int64_t columns = kernel.dim_size(kernel.dims() - 1);
    OP_REQUIRES(context, mean.NumElements() == columns && inverse.NumElements() == columns,
                ::absl::InvalidArgumentError(::absl::StrCat(
                    "BitStandardizeKernelGrad: ", mean.NumElements(), " means and ",
                    inverse.NumElements(), " inverses for ", columns, " output channels")));
    Tensor* d_kernel;
    OP_REQUIRES_OK(context, context->allocate_output(0, kernel.shape(), &d_kernel));
    if (columns == 0 || kernel.NumElements() == 0) return;
    const int64_t rows = kernel.NumElements() / columns;
    const float* g = upstream.flat<float>().data();
    const float* w = kernel.flat<float>().data();
    const float* mean_data = mean.flat<float>().data();
    const float* inverse_data = inverse.flat<float>().data();
    float* out = d_kernel->flat<float>().data();
    const int64_t blocks = (columns + kColumnBlock - 1) / kColumnBlock;
    auto work = [&](int64_t begin, int64_t end) {
      double sum_g[kColumnBlock], sum_g_standardized[kColumnBlock];
      float partial_g[kColumnBlock], partial_g_standardized[kColumnBlock];
      float mean_g[kColumnBlock], mean_g_standardized[kColumnBlock];
      for (int64_t block = begin; block < end; ++block) {
        const int64_t first = block * kColumnBlock;
        const int64_t width = std::min(kColumnBlock, columns - first);
        const float* means = mean_data + first;
        const float* inverses = inverse_data + first;
        std::fill(sum_g, sum_g + kColumnBlock, 0.0);
        std::fill(sum_g_standardized, sum_g_standardized + kColumnBlock, 0.0);
        for (int64_t start = 0; start < rows; start += kChunk) {
          std::fill(partial_g, partial_g + kColumnBlock, 0.0f);
          std::fill(partial_g_standardized, partial_g_standardized + kColumnBlock, 0.0f);
          for (int64_t r = start; r < std::min(rows, start + kChunk); ++r) {
            AddGradientSums(w + r * columns + first, g + r * columns + first, means, inverses,
                            width, partial_g, partial_g_standardized);
          }
          for (int64_t j = 0; j < width; ++j) {
            sum_g[j] += partial_g[j];
            sum_g_standardized[j] += partial_g_standardized[j];
          }
        }
        for (int64_t j = 0; j < width; ++j) {
          mean_g[j] = static_cast<float>(sum_g[j] / rows);
          mean_g_standardized[j] = static_cast<float>(sum_g_standardized[j] / rows);
        }
        for (int64_t r = 0; r < rows; ++r) {
          KernelGradientRow(w + r * columns + first, g + r * columns + first, means, inverses,
                            mean_g, mean_g_standardized, width, out + r * columns + first);
        }
      }
    };
    InParallel(context, blocks, 10 * rows * kColumnBlock, work);
  }
};

}  // namespace
}  // namespace bit_tf

REGISTER_OP("BitGroupNorm")
    .Input("x: T")
    .Input("gamma: float")
    .Input("beta: float")
    .Attr("T: {float, bfloat16} = DT_FLOAT")
    .Attr("groups: int")
    .Attr("epsilon: float")
    .Attr("relu: bool")
    .Output("y: T")
    .Output("mean: float")
    .Output("inverse: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      TF_RETURN_IF_ERROR(bit_tf::GroupStatisticsShape(c, 1));
      return bit_tf::GroupStatisticsShape(c, 2);
    });

REGISTER_OP("BitGroupNormGrad")
    .Input("upstream: T")
    .Input("x: T")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("mean: float")
    .Input("inverse: float")
    .Attr("T: {float, bfloat16} = DT_FLOAT")
    .Attr("groups: int")
    .Attr("relu: bool")
    .Output("dx: T")
    .Output("d_gamma: float")
    .Output("d_beta: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      c->set_output(2, c->input(3));
      return ::absl::OkStatus();
    });

REGISTER_OP("BitStandardizeKernel")
    .Input("kernel: float")
    .Attr("epsilon: float")
    .Output("standardized: float")
    .Output("mean: float")
    .Output("inverse: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      auto columns = c->Dim(c->input(0), -1);
      c->set_output(1, c->MakeShape({1, columns}));
      c->set_output(2, c->MakeShape({1, columns}));
      return ::absl::OkStatus();
    });

REGISTER_OP("BitStandardizeKernelGrad")
    .Input("upstream: float")
    .Input("kernel: float")
    .Input("mean: float")
    .Input("inverse: float")
    .Output("d_kernel: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      return ::absl::OkStatus();
    });

#define BIT_TF_REGISTER_GROUP_NORM(T)                                                      \
  REGISTER_KERNEL_BUILDER(                                                                 \
      Name("BitGroupNorm").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),        \
      bit_tf::GroupNormOp<T>);                                                             \
  REGISTER_KERNEL_BUILDER(                                                                 \
      Name("BitGroupNormGrad").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),    \
      bit_tf::GroupNormGradOp<T>);
BIT_TF_REGISTER_GROUP_NORM(float)
BIT_TF_REGISTER_GROUP_NORM(::tensorflow::bfloat16)
REGISTER_KERNEL_BUILDER(Name("BitStandardizeKernel").Device(::tensorflow::DEVICE_CPU),
                        bit_tf::StandardizeKernelOp);
REGISTER_KERNEL_BUILDER(Name("BitStandardizeKernelGrad").Device(::tensorflow::DEVICE_CPU),
                        bit_tf::StandardizeKernelGradOp);
