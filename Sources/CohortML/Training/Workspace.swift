/// Every buffer one forward and backward pass needs for up to `capacity` examples, allocated once
/// per training or evaluation call and reused by every step, so the hot loop never allocates.
///
/// It owns raw memory (not arrays) so that the kernels can hold pointers into it across a whole
/// step without copy-on-write checks or exclusivity bookkeeping. It is confined to the call that
/// made it and never shared between tasks.
final class Workspace {
  let kernels: [LayerKernel]
  let capacity: Int
  let classes: Int
  /// `activations[0]` is the input batch; `activations[l + 1]` is the output of layer l.
  let activations: [UnsafeMutablePointer<Float>]
  /// The gradient of a layer's output and of its input, swapped after every layer.
  let gradientBuffers: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>)?
  let labels: UnsafeMutablePointer<Int32>
  /// One example's im2col matrix and its gradient (for the largest convolution).
  let columns: UnsafeMutablePointer<Float>
  let columnsGradient: UnsafeMutablePointer<Float>
  /// Where each max-pool output came from; empty for other layers.
  let argmax: [UnsafeMutablePointer<Int32>]
  private var allocations: [UnsafeMutableRawPointer] = []

  init(network: Network, capacity: Int, backward: Bool) {
    precondition(capacity > 0, "a workspace needs room for at least one example")
    self.kernels = network.kernels
    self.capacity = capacity
    self.classes = network.classes
    var counts = [network.inputCount]
    for k in network.kernels { counts.append(k.outputCount) }
    var allocations: [UnsafeMutableRawPointer] = []
    func floats(_ count: Int) -> UnsafeMutablePointer<Float> {
      let p = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(count, 1))
      p.initialize(repeating: 0, count: Swift.max(count, 1))
      allocations.append(UnsafeMutableRawPointer(p))
      return p
    }
    func ints(_ count: Int) -> UnsafeMutablePointer<Int32> {
      let p = UnsafeMutablePointer<Int32>.allocate(capacity: Swift.max(count, 1))
      p.initialize(repeating: 0, count: Swift.max(count, 1))
      allocations.append(UnsafeMutableRawPointer(p))
      return p
    }
    activations = counts.map { floats(capacity * $0) }
    let widest = counts.max() ?? 1
    gradientBuffers = backward ? (floats(capacity * widest), floats(capacity * widest)) : nil
    labels = ints(capacity)
    var columnsCount = 0
    for case .conv(let c) in network.kernels { columnsCount = Swift.max(columnsCount, c.columnsCount) }
    columns = floats(columnsCount)
    columnsGradient = floats(backward ? columnsCount : 0)
    argmax = network.kernels.map { kernel in
      if case .maxPool = kernel { return ints(capacity * kernel.outputCount) }
      return ints(0)
    }
    self.allocations = allocations
  }

  deinit {
    for p in allocations { p.deallocate() }
  }

  var inputCount: Int { kernels.first?.inputCount ?? classes }
  var logits: UnsafeMutablePointer<Float> { activations[kernels.count] }

  /// Copies examples `order[range]` of the dataset into the input and label buffers.
  func load(
    features: UnsafeBufferPointer<Float>, labels source: UnsafeBufferPointer<Int32>,
    order: UnsafeBufferPointer<Int>, range: Range<Int>
  ) {
    let d = inputCount
    let input = activations[0]
    let base = features.start
    var row = 0
    for i in range {
      let example = order[i]
      (input + row * d).update(from: base + example * d, count: d)
      let y = source[example]
      precondition(y >= 0 && Int(y) < classes, "label \(y) of example \(example) is outside 0..<\(classes)")
      labels[row] = y
      row += 1
    }
  }

  /// Runs every layer on the first `batch` loaded examples; the logits end in `logits`.
  func forward(parameters: UnsafePointer<Float>, batch: Int) {
    for (l, kernel) in kernels.enumerated() {
      let x = UnsafePointer(activations[l])
      let y = activations[l + 1]
      switch kernel {
      case .dense(let k): k.forward(x, y, parameters: parameters, batch: batch)
      case .relu(let k): k.forward(x, y, batch: batch)
      case .conv(let k): k.forward(x, y, parameters: parameters, batch: batch, columns: columns)
      case .maxPool(let k): k.forward(x, y, argmax: argmax[l], batch: batch)
      }
    }
  }

  /// The softmax cross-entropy of the last forward pass and, when `gradient` is given, the
  /// backward pass: it writes ∂(mean loss)/∂parameters into `gradient` (every parameter is
  /// written) and returns the summed loss. With `inputGradient` the gradient of the mean loss
  /// with respect to the inputs is written there as well; without it the pass stops at the
  /// first layer that has parameters, since nothing before it can change.
  func lossAndBackward(
    parameters: UnsafePointer<Float>, gradient: UnsafeMutablePointer<Float>?, batch: Int,
    inputGradient: UnsafeMutablePointer<Float>? = nil
  ) -> (lossSum: Double, correct: Int) {
    guard let gradient, var (dy, dx) = gradientBuffers else {
      return SoftmaxCrossEntropy.evaluate(
        logits: logits, labels: labels, batch: batch, classes: classes, gradient: nil)
    }
    let result = SoftmaxCrossEntropy.evaluate(
      logits: logits, labels: labels, batch: batch, classes: classes, gradient: dy)
    let stop = inputGradient == nil ? firstParametric : 0
    var l = kernels.count - 1
    while l >= stop {
      let x = UnsafePointer(activations[l])
      let y = UnsafePointer(activations[l + 1])
      let gy = UnsafePointer(dy)
      let gx: UnsafeMutablePointer<Float>? = l > stop || inputGradient != nil ? dx : nil
      switch kernels[l] {
      case .dense(let k):
        k.backward(x, gy, gx, parameters: parameters, gradient: gradient, batch: batch)
      case .relu(let k):
        if let gx { k.backward(y, gy, gx, batch: batch) }
      case .conv(let k):
        k.backward(
          x, gy, gx, parameters: parameters, gradient: gradient, batch: batch, columns: columns,
          columnsGradient: columnsGradient)
      case .maxPool(let k):
        if let gx { k.backward(gy, gx, argmax: argmax[l], batch: batch) }
      }
      swap(&dy, &dx)
      l -= 1
    }
    if let inputGradient {
      // After the last swap the input's gradient is in `dy` (with no layers, it is the logits').
      inputGradient.update(from: dy, count: batch * inputCount)
    }
    return result
  }

  private var firstParametric: Int { kernels.firstIndex { $0.hasParameters } ?? kernels.count }
}

extension UnsafeBufferPointer where Element == Float {
  /// The first element's address, or a non-null dangling one for an empty buffer (whose
  /// `baseAddress` may be nil): a network without parameters has an empty weight vector, and the
  /// kernels never dereference a pointer to zero elements.
  var start: UnsafePointer<Float> {
    baseAddress ?? UnsafePointer(bitPattern: MemoryLayout<Float>.alignment)!
  }
}

extension UnsafeMutableBufferPointer where Element == Float {
  /// As `UnsafeBufferPointer.start`.
  var start: UnsafeMutablePointer<Float> {
    baseAddress ?? UnsafeMutablePointer(bitPattern: MemoryLayout<Float>.alignment)!
  }
}
