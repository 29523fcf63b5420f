public import CohortCore

/// Runs a client's local training: epochs of shuffled minibatch SGD from given weights.
///
/// Pure arithmetic: no I/O, no clock, and every random draw comes from the stream passed in, so
/// the same weights, data, configuration and stream give bit-identical results on one machine.
/// Call `BLAS.useOneThread()` once before running trainers in parallel.
public struct LocalTrainer: Sendable {
  public let network: Network

  public init(network: Network) {
    self.network = network
  }

  /// Trains for `configuration.epochs` passes over `data` (only the examples at `indices` when
  /// given, which may repeat). Each epoch draws one permutation from `rng` and walks it in
  /// batches of `batchSize`; the last, partial batch is a step too.
  public func train(
    from weights: Weights, on data: Dataset, indices: [Int]? = nil,
    configuration: TrainingConfiguration, rng: inout RandomStream, controlVariates: ControlVariates? = nil
  ) -> TrainingResult {
    precondition(weights.layout == network.layout, "weights do not have this network's layout")
    precondition(
      data.featureCount == network.inputCount,
      "examples of shape \(data.featureShape) do not fit a network input of \(network.inputShape)")
    precondition(configuration.epochs >= 0, "epochs must not be negative")
    precondition(configuration.batchSize > 0, "batch size must be positive")
    if let indices {
      precondition(indices.allSatisfy { $0 >= 0 && $0 < data.count }, "an index is outside the dataset")
    }
    let base = indices ?? Array(0..<data.count)
    let n = base.count
    guard n > 0, configuration.epochs > 0 else {
      return TrainingResult(weights: weights, meanLoss: 0, examples: 0, steps: 0)
    }

    let sgd = SGD(configuration.optimizer, proximalMu: configuration.proximalMu)
    let adam =
      configuration.optimizer.kind == .adam
      ? Adam(configuration.optimizer, proximalMu: configuration.proximalMu) : nil
    let batchSize = min(configuration.batchSize, n)
    let workspace = Workspace(network: network, capacity: batchSize, backward: true)
    let count = network.layout.count
    var parameters = weights.values
    var gradient = [Float](repeating: 0, count: count)
    // SGD's velocity, or Adam's first moment; Adam's second moment. Fresh for every call.
    let needsVelocity = adam != nil || sgd.needsVelocity
    var velocity = [Float](repeating: 0, count: needsVelocity ? count : 0)
    var secondMoment = [Float](repeating: 0, count: adam != nil ? count : 0)
    // w_global for FedProx: the starting weights, shared with `weights` (no copy).
    let anchor = weights.values
    // SCAFFOLD: every step's gradient becomes g − c_k + c; the difference is formed once.
    var correction: [Float] = []
    if let cv = controlVariates {
      precondition(
        cv.server.layout == network.layout && cv.device.layout == network.layout,
        "control variates do not have this network's layout")
      correction = cv.server.difference(cv.device).values
    }
    let corrected = !correction.isEmpty
    var order = base
    var lossSum = 0.0
    var steps = 0

    data.features.withUnsafeBufferPointer { features in
      data.labels.withUnsafeBufferPointer { labels in
        parameters.withUnsafeMutableBufferPointer { w in
          gradient.withUnsafeMutableBufferPointer { g in
            velocity.withUnsafeMutableBufferPointer { v in
              secondMoment.withUnsafeMutableBufferPointer { s in
                anchor.withUnsafeBufferPointer { a in
                  let w = w.start
                  let gradientBuffer = g
                  let g = g.start
                  let v = needsVelocity ? v.baseAddress : nil
                  let a = sgd.needsAnchor ? a.baseAddress : nil
                  for _ in 0..<configuration.epochs {
                    order.withUnsafeMutableBufferPointer { order in
                      // One fresh permutation of the client's examples per epoch.
                      _ = order.update(fromContentsOf: base)
                      rng.shuffle(&order)
                      let order = UnsafeBufferPointer(order)
                      var start = 0
                      while start < n {
                        let batch = min(batchSize, n - start)
                        workspace.load(
                          features: features, labels: labels, order: order, range: start..<(start + batch))
                        workspace.forward(parameters: w, batch: batch)
                        lossSum +=
                          workspace.lossAndBackward(parameters: w, gradient: g, batch: batch).lossSum
                        if corrected {
                          correction.withUnsafeBufferPointer { Vector.axpy(1, $0, gradientBuffer) }
                        }
                        if let adam, let v, let s = s.baseAddress {
                          adam.step(
                            weights: w, gradient: g, firstMoment: v, secondMoment: s, anchor: a, count: count,
                            t: steps + 1)
                        } else {
                          sgd.step(weights: w, gradient: g, velocity: v, anchor: a, count: count)
                        }
                        steps += 1
                        start += batch
                      }
                    }
                  }
                }
              }
            }
          }
        }
      }
    }
    let examples = n * configuration.epochs
    return TrainingResult(
      weights: Weights(layout: network.layout, values: parameters),
      meanLoss: lossSum / Double(examples), examples: examples, steps: steps)
  }
}

extension Network {
  /// Mean cross-entropy and accuracy of `weights` on `data` (only the examples at `indices` when
  /// given). A prediction is the first class with the largest logit.
  public func evaluate(_ weights: Weights, on data: Dataset, indices: [Int]? = nil) -> Evaluation {
    precondition(weights.layout == layout, "weights do not have this network's layout")
    precondition(
      data.featureCount == inputCount,
      "examples of shape \(data.featureShape) do not fit a network input of \(inputShape)")
    let order = indices ?? Array(0..<data.count)
    let n = order.count
    guard n > 0 else { return Evaluation(loss: 0, accuracy: 0, examples: 0) }
    if indices != nil {
      precondition(order.allSatisfy { $0 >= 0 && $0 < data.count }, "an index is outside the dataset")
    }
    // Batches big enough for efficient sgemm, small enough that activations stay near 16 MB.
    let perExample = inputCount + kernels.reduce(0) { $0 + $1.outputCount }
    let capacity = min(n, max(1, min(256, (4 << 20) / perExample)))
    let workspace = Workspace(network: self, capacity: capacity, backward: false)
    var lossSum = 0.0
    var correct = 0
    data.features.withUnsafeBufferPointer { features in
      data.labels.withUnsafeBufferPointer { labels in
        weights.values.withUnsafeBufferPointer { w in
          order.withUnsafeBufferPointer { order in
            var start = 0
            while start < n {
              let batch = min(capacity, n - start)
              workspace.load(features: features, labels: labels, order: order, range: start..<(start + batch))
              workspace.forward(parameters: w.start, batch: batch)
              let r = workspace.lossAndBackward(parameters: w.start, gradient: nil, batch: batch)
              lossSum += r.lossSum
              correct += r.correct
              start += batch
            }
          }
        }
      }
    }
    return Evaluation(loss: lossSum / Double(n), accuracy: Double(correct) / Double(n), examples: n)
  }
}
