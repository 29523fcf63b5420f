import Foundation

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

/// The Adam update (Kingma and Ba 2015) on raw buffers, as PyTorch's `torch.optim.Adam` computes
/// it, with the regularisation gradients folded in:
///
///     g' = g + weightDecay · w + μ · (w − anchor)
///     m  = β₁ · m + (1 − β₁) · g'
///     v  = β₂ · v + (1 − β₂) · g'²
///     w −= (learningRate / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
///
/// for step t = 1, 2, … of one training call; m and v start at zero.
struct Adam {
  var learningRate: Float
  var beta1: Float
  var beta2: Float
  var epsilon: Float
  var weightDecay: Float
  var proximalMu: Float

  init(_ optimizer: OptimizerConfiguration, proximalMu: Float) {
    learningRate = optimizer.learningRate
    beta1 = optimizer.beta1
    beta2 = optimizer.beta2
    epsilon = optimizer.epsilon
    weightDecay = optimizer.weightDecay
    self.proximalMu = proximalMu
  }

  var needsAnchor: Bool { proximalMu != 0 }

  /// Step `t` (1-based); `anchor` must be given when `needsAnchor`.
  func step(
    weights w: UnsafeMutablePointer<Float>, gradient g: UnsafePointer<Float>,
    firstMoment m: UnsafeMutablePointer<Float>, secondMoment v: UnsafeMutablePointer<Float>,
    anchor: UnsafePointer<Float>?, count n: Int, t: Int
  ) {
    // The bias corrections in Double, so that β^t neither underflows early nor loses digits.
    let correction1 = 1 - pow(Double(beta1), Double(t))
    let correction2 = 1 - pow(Double(beta2), Double(t))
    let stepSize = Float(Double(learningRate) / correction1)
    let root2 = Float(correction2.squareRoot())
    let (b1, b2, eps, wd, mu) = (beta1, beta2, epsilon, weightDecay, proximalMu)
    let a = mu != 0 ? anchor : nil
    for i in 0..<n {
      var gi = g[i] + wd * w[i]
      if let a { gi += mu * (w[i] - a[i]) }
      let mi = b1 * m[i] + (1 - b1) * gi
      let vi = b2 * v[i] + (1 - b2) * gi * gi
      m[i] = mi
      v[i] = vi
      w[i] -= stepSize * mi / (vi.squareRoot() / root2 + eps)
    }
  }
}
