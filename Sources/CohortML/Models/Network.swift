public import CohortCore

/// A sequential stack of layers whose last output is the logits of a softmax cross-entropy loss.
///
/// A network is only a description: shapes, the parameter layout and the kernels that run it. The
/// parameters themselves live in one flat `Weights` vector (Principle 5); each layer reads its
/// tensors at fixed offsets, so aggregation, compression and privacy see a plain vector.
public struct Network: Sendable, Hashable {
  /// One step of the stack. Examples are flat in memory, so `dense` flattens whatever it gets.
  public enum Layer: Sendable, Hashable {
    /// Fully connected: `y = W x + b` with `W` stored `[outputs, inputs]` (PyTorch's layout).
    case dense(outputs: Int)
    /// max(x, 0), element-wise.
    case relu
    /// 2-D convolution, stride 1, `padding` zeros on every side (`(kernel − 1) / 2` keeps the
    /// size, 'same'). Needs a `[channels, height, width]` input; weight `[filters, channels, k, k]`.
    case conv2d(filters: Int, kernel: Int, padding: Int)
    /// Max over non-overlapping `size × size` windows (stride `size`; a ragged edge is dropped).
    case maxPool(size: Int)
  }

  public private(set) var layers: [Layer]
  /// Named tensors, e.g. `conv0.weight`, `conv0.bias`, `dense0.weight`, `dense0.bias`.
  public private(set) var layout: WeightsLayout
  /// The shape of one example: `[features]` or `[channels, height, width]`.
  public private(set) var inputShape: [Int]
  public private(set) var classes: Int
  /// The layers resolved against their input shapes and parameter offsets.
  let kernels: [LayerKernel]

  /// A network with `layers` applied in order to examples of `inputShape`; the number of classes
  /// is the size of the last layer's output.
  public init(inputShape: [Int], layers: [Layer]) {
    precondition(
      !inputShape.isEmpty && inputShape.allSatisfy { $0 > 0 },
      "input shape \(inputShape) must have positive sizes")
    var shape = inputShape
    var specs: [TensorSpec] = []
    // Each parametric layer's tensors, resolved to offsets once the layout is known.
    var pending: [(kind: Layer, input: [Int], output: [Int], weight: Int, bias: Int)] = []
    var denseCount = 0
    var convCount = 0
    for layer in layers {
      let input = shape
      var weightSpec = -1
      switch layer {
      case .dense(let outputs):
        precondition(outputs > 0, "dense layer needs at least one output")
        let inputs = input.reduce(1, *)
        weightSpec = specs.count
        specs.append(TensorSpec("dense\(denseCount).weight", [outputs, inputs]))
        specs.append(TensorSpec("dense\(denseCount).bias", [outputs]))
        denseCount += 1
        shape = [outputs]
      case .relu:
        break
      case .conv2d(let filters, let kernel, let padding):
        precondition(input.count == 3, "conv2d needs a [channels, height, width] input, got \(input)")
        precondition(filters > 0 && kernel > 0 && padding >= 0, "conv2d needs positive sizes")
        let outHeight = input[1] + 2 * padding - kernel + 1
        let outWidth = input[2] + 2 * padding - kernel + 1
        precondition(outHeight > 0 && outWidth > 0, "conv2d kernel \(kernel) is larger than input \(input)")
        weightSpec = specs.count
        specs.append(TensorSpec("conv\(convCount).weight", [filters, input[0], kernel, kernel]))
        specs.append(TensorSpec("conv\(convCount).bias", [filters]))
        convCount += 1
        shape = [filters, outHeight, outWidth]
      case .maxPool(let size):
        precondition(input.count == 3, "maxPool needs a [channels, height, width] input, got \(input)")
        precondition(size > 0 && input[1] >= size && input[2] >= size, "maxPool \(size) too big for \(input)")
        // The positions of the maxima are kept as Int32 offsets into one example.
        precondition(input.reduce(1, *) <= Int(Int32.max), "maxPool input \(input) is too large")
        shape = [input[0], input[1] / size, input[2] / size]
      }
      pending.append((layer, input, shape, weightSpec, weightSpec + 1))
    }
    let layout = WeightsLayout(specs)
    self.kernels = pending.map { p in
      let weight = p.weight >= 0 ? layout.offsets[p.weight] : 0
      let bias = p.weight >= 0 ? layout.offsets[p.bias] : 0
      switch p.kind {
      case .dense(let outputs):
        return .dense(
          DenseKernel(inputs: p.input.reduce(1, *), outputs: outputs, weight: weight, bias: bias))
      case .relu:
        return .relu(ReLUKernel(count: p.input.reduce(1, *)))
      case .conv2d(let filters, let kernel, let padding):
        return .conv(
          ConvKernel(
            channels: p.input[0], height: p.input[1], width: p.input[2], filters: filters,
            kernel: kernel, padding: padding, outHeight: p.output[1], outWidth: p.output[2],
            weight: weight, bias: bias))
      case .maxPool(let size):
        return .maxPool(
          MaxPoolKernel(
            channels: p.input[0], height: p.input[1], width: p.input[2], size: size,
            outHeight: p.output[1], outWidth: p.output[2]))
      }
    }
    self.layers = layers
    self.layout = layout
    self.inputShape = inputShape
    self.classes = shape.reduce(1, *)
  }

  /// Multinomial logistic regression: one dense layer into the softmax.
  public static func logisticRegression(inputs: Int, classes: Int) -> Network {
    Network(inputShape: [inputs], layers: [.dense(outputs: classes)])
  }

  /// A multilayer perceptron with ReLU hidden layers. McMahan et al. (2017)'s "2NN" is
  /// `mlp(inputs: 784, hidden: [200, 200], classes: 10)`.
  public static func mlp(inputs: Int, hidden: [Int], classes: Int) -> Network {
    var layers: [Layer] = []
    for width in hidden { layers += [.dense(outputs: width), .relu] }
    layers.append(.dense(outputs: classes))
    return Network(inputShape: [inputs], layers: layers)
  }

  /// The CNN of McMahan et al. (2017): two 5×5 'same' convolutions (32 and 64 channels), each
  /// followed by ReLU and 2×2 max pooling, then a 512-unit ReLU layer and the output layer.
  /// 1,663,370 parameters on `[1, 28, 28]` with 10 classes.
  public static func cnn(inputShape: [Int], classes: Int) -> Network {
    precondition(inputShape.count == 3, "cnn needs a [channels, height, width] input shape")
    return Network(
      inputShape: inputShape,
      layers: [
        .conv2d(filters: 32, kernel: 5, padding: 2), .relu, .maxPool(size: 2),
        .conv2d(filters: 64, kernel: 5, padding: 2), .relu, .maxPool(size: 2),
        .dense(outputs: 512), .relu, .dense(outputs: classes),
      ])
  }

  /// The first layer with parameters: training backpropagates no further than this.
  var firstParametricLayer: Int {
    kernels.firstIndex { $0.hasParameters } ?? kernels.count
  }

  /// Values per example.
  public var inputCount: Int { inputShape.reduce(1, *) }

  /// Fresh parameters with biases zero. Without a scheme (`model.init: auto`) weights are uniform
  /// in ±√(6 / fan_in) (He) for layers followed by ReLU and ±√(6 / (fan_in + fan_out)) (Glorot)
  /// otherwise; `glorotUniform` uses the latter everywhere, `heNormal` draws N(0, 2 / fan_in)
  /// everywhere, `zeros` draws nothing. Convolutions count fan_in = channels · k² and fan_out =
  /// filters · k². Draws come from `rng` only, in layout order, so the same stream gives the
  /// same weights.
  public func initialWeights(
    _ rng: inout RandomStream, scheme: ModelPlan.Initialization? = nil
  ) -> Weights {
    var values = [Float](repeating: 0, count: layout.count)
    if scheme == .zeros { return Weights(layout: layout, values: values) }
    for (index, kernel) in kernels.enumerated() {
      let followedByReLU = index + 1 < layers.count && layers[index + 1] == .relu
      let offset: Int
      let count: Int
      let fanIn: Int
      let fanOut: Int
      switch kernel {
      case .dense(let d):
        (offset, count, fanIn, fanOut) = (d.weight, d.inputs * d.outputs, d.inputs, d.outputs)
      case .conv(let c):
        let area = c.kernel * c.kernel
        (offset, count, fanIn, fanOut) = (c.weight, c.filters * c.patch, c.patch, c.filters * area)
      case .relu, .maxPool:
        continue
      }
      if scheme == .heNormal {
        let deviation = (2 / Double(fanIn)).squareRoot()
        for i in offset..<(offset + count) { values[i] = Float(rng.normal() * deviation) }
        continue
      }
      let he = followedByReLU && scheme == nil
      let limit = Float(he ? (6 / Double(fanIn)).squareRoot() : (6 / Double(fanIn + fanOut)).squareRoot())
      for i in offset..<(offset + count) { values[i] = (2 * rng.uniformFloat() - 1) * limit }
    }
    return Weights(layout: layout, values: values)
  }

  /// Floating-point operations of one training example: the multiply-adds of the forward pass and
  /// of the backward pass as the trainer runs it (weight gradients everywhere, input gradients for
  /// every layer but the first), times two. Biases, activations, pooling and the softmax are
  /// negligible and not counted. Used by the benchmark to turn samples/s into GFLOP/s.
  public func flopsPerExample() -> Double {
    var multiplyAdds = 0.0
    let first = firstParametricLayer
    for (index, kernel) in kernels.enumerated() {
      let forward: Double
      switch kernel {
      case .dense(let d): forward = Double(d.inputs * d.outputs)
      case .conv(let c): forward = Double(c.filters * c.patch * c.outPixels)
      case .relu, .maxPool: continue
      }
      // Forward, weight gradient and (except for the first layer) input gradient cost the same.
      multiplyAdds += forward * (index == first ? 2 : 3)
    }
    return 2 * multiplyAdds
  }
}
