import Foundation

/// Softmax cross-entropy over a batch of logits, computed stably: with m = max z,
/// −log softmax(z)_y = m + log Σ exp(z − m) − z_y, so no exponential overflows.
enum SoftmaxCrossEntropy {
  /// The summed (not averaged) loss of the batch in Double, and how many rows have their label as
  /// the first largest logit. When `gradient` is given it receives ∂(mean loss)/∂z =
  /// (softmax(z) − onehot(y)) / batch.
  static func evaluate(
    logits: UnsafePointer<Float>, labels: UnsafePointer<Int32>, batch: Int, classes: Int,
    gradient: UnsafeMutablePointer<Float>?
  ) -> (lossSum: Double, correct: Int) {
    var lossSum = 0.0
    var correct = 0
    let scale = 1 / Float(batch)
    for row in 0..<batch {
      let z = logits + row * classes
      let y = Int(labels[row])
      var m = z[0]
      var best = 0
      for j in 1..<classes where z[j] > m {
        m = z[j]
        best = j
      }
      if best == y { correct += 1 }
      var sum: Float = 0
      if let gradient {
        // Keep the exponentials in the gradient row so each is computed once.
        let g = gradient + row * classes
        for j in 0..<classes {
          let e = exp(z[j] - m)
          g[j] = e
          sum += e
        }
        let k = scale / sum
        for j in 0..<classes { g[j] *= k }
        g[y] -= scale
      } else {
        for j in 0..<classes { sum += exp(z[j] - m) }
      }
      lossSum += Double(m - z[y]) + Double(log(sum))
    }
    return (lossSum, correct)
  }
}
