/// The SGD update on raw buffers, with the regularisation gradients folded in so that each step
/// reads and writes every parameter once:
///
///     g' = g + weightDecay · w + μ · (w − anchor)
///     v  = momentum · v + g'          (skipped when momentum is 0: v = g')
///     w −= learningRate · v
///
/// Each combination of active terms has its own loop, so the common cases (plain SGD, FedAvg)
/// stream no more memory than they need and every loop vectorises.
struct SGD {
  var learningRate: Float
  var momentum: Float
  var weightDecay: Float
  var proximalMu: Float

  init(_ optimizer: OptimizerConfiguration, proximalMu: Float) {
    learningRate = optimizer.learningRate
    momentum = optimizer.momentum
    weightDecay = optimizer.weightDecay
    self.proximalMu = proximalMu
  }

  var needsVelocity: Bool { momentum != 0 }
  var needsAnchor: Bool { proximalMu != 0 }

  /// `velocity` must be given when `needsVelocity`, `anchor` when `needsAnchor`.
  func step(
    weights w: UnsafeMutablePointer<Float>, gradient g: UnsafePointer<Float>,
    velocity: UnsafeMutablePointer<Float>?, anchor: UnsafePointer<Float>?, count n: Int
  ) {
    let lr = learningRate
    let wd = weightDecay
    let mu = proximalMu
    if let v = velocity, momentum != 0 {
      let m = momentum
      if let a = anchor, mu != 0 {
        for i in 0..<n {
          let vi = m * v[i] + (g[i] + wd * w[i] + mu * (w[i] - a[i]))
          v[i] = vi
          w[i] -= lr * vi
        }
      } else {
        for i in 0..<n {
          let vi = m * v[i] + (g[i] + wd * w[i])
          v[i] = vi
          w[i] -= lr * vi
        }
      }
      return
    }
    precondition(momentum == 0, "momentum needs a velocity buffer")
    if let a = anchor, mu != 0 {
      for i in 0..<n { w[i] -= lr * (g[i] + wd * w[i] + mu * (w[i] - a[i])) }
    } else if wd != 0 {
      for i in 0..<n { w[i] -= lr * (g[i] + wd * w[i]) }
    } else {
      for i in 0..<n { w[i] -= lr * g[i] }
    }
  }
}
