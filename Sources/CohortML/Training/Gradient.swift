public import CohortCore

/// Penalties added to the mean cross-entropy: `(weightDecay / 2) · ‖w‖² + (proximalMu / 2) ·
/// ‖w − anchor‖²`. Training applies the same terms through `OptimizerConfiguration.weightDecay`
/// and `TrainingConfiguration.proximalMu` (with the starting weights as the anchor).
public struct Regularization: Sendable, Hashable {
  public var weightDecay: Float
  public var proximalMu: Float
  /// The point the proximal term pulls towards; required when `proximalMu` is not 0.
  public var anchor: Weights?

  public init(weightDecay: Float = 0, proximalMu: Float = 0, anchor: Weights? = nil) {
    precondition(proximalMu == 0 || anchor != nil, "a proximal term needs an anchor")
    self.weightDecay = weightDecay
    self.proximalMu = proximalMu
    self.anchor = anchor
  }
}

/// The loss of a batch and its gradients with respect to the parameters and the inputs.
public struct LossGradient: Sendable {
  /// Mean cross-entropy over the batch plus the regularisation terms.
  public var loss: Double
  /// ∂loss/∂weights, in the network's layout.
  public var weights: Weights
  /// ∂loss/∂features, batch-major like the features.
  public var inputs: [Float]
}

extension Network {
  /// The loss of one batch (`labels.count` examples, features batch-major) and its exact
  /// gradients, through the same kernels that training runs. For gradient checks, per-example
  /// gradients (e.g. DP-SGD) and analysis; training itself never allocates per step like this.
  public func lossAndGradient(
    _ weights: Weights, features: [Float], labels: [Int32],
    regularization: Regularization = Regularization()
  ) -> LossGradient {
    precondition(weights.layout == layout, "weights do not have this network's layout")
    let batch = labels.count
    precondition(batch > 0, "a batch needs at least one example")
    precondition(
      features.count == batch * inputCount,
      "\(features.count) feature values do not make \(batch) examples of \(inputShape)")
    let workspace = Workspace(network: self, capacity: batch, backward: true)
    var gradient = [Float](repeating: 0, count: layout.count)
    var inputs = [Float](repeating: 0, count: features.count)
    let order = Array(0..<batch)
    var lossSum = 0.0
    features.withUnsafeBufferPointer { f in
      labels.withUnsafeBufferPointer { y in
        order.withUnsafeBufferPointer { o in
          workspace.load(features: f, labels: y, order: o, range: 0..<batch)
        }
      }
    }
    weights.values.withUnsafeBufferPointer { w in
      gradient.withUnsafeMutableBufferPointer { g in
        inputs.withUnsafeMutableBufferPointer { dx in
          workspace.forward(parameters: w.start, batch: batch)
          lossSum =
            workspace.lossAndBackward(
              parameters: w.start, gradient: g.start, batch: batch,
              inputGradient: dx.start
            ).lossSum
        }
      }
    }
    var loss = lossSum / Double(batch)
    var result = Weights(layout: layout, values: gradient)
    if regularization.weightDecay != 0 {
      result.axpy(regularization.weightDecay, weights)
      loss += Double(regularization.weightDecay) / 2 * weights.dot(weights)
    }
    if regularization.proximalMu != 0, let anchor = regularization.anchor {
      let offset = weights.difference(anchor)
      result.axpy(regularization.proximalMu, offset)
      loss += Double(regularization.proximalMu) / 2 * offset.dot(offset)
    }
    return LossGradient(loss: loss, weights: result, inputs: inputs)
  }

  /// The network's outputs before the softmax, batch-major (`classes` per example).
  public func logits(_ weights: Weights, features: [Float]) -> [Float] {
    precondition(weights.layout == layout, "weights do not have this network's layout")
    precondition(features.count % inputCount == 0, "features are not whole examples of \(inputShape)")
    let batch = features.count / inputCount
    guard batch > 0 else { return [] }
    let workspace = Workspace(network: self, capacity: batch, backward: false)
    features.withUnsafeBufferPointer { f in
      workspace.activations[0].update(from: f.start, count: f.count)
    }
    weights.values.withUnsafeBufferPointer { w in
      workspace.forward(parameters: w.start, batch: batch)
    }
    return Array(UnsafeBufferPointer(start: workspace.logits, count: batch * classes))
  }
}
