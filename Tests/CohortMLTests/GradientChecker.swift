import CohortCore
import CohortML

/// Central finite differences against an analytic gradient, for the gradient-check tests.
///
/// Float32 forward passes make the numeric derivative noisy, so the error of one component is
/// measured relative to its own size plus a floor of 1% of the largest numeric component: tiny
/// components are then held to an absolute tolerance instead of an impossible relative one.
struct GradientChecker {
  var step: Float = 1e-2
  var tolerance: Double = 1e-2

  struct Report: CustomStringConvertible {
    var maxError: Double
    var worst: Int
    var analytic: Float
    var numeric: Double
    var checked: Int
    /// Coordinates left out because a perturbed point crossed a kink.
    var skipped: Int

    var description: String {
      "max error \(maxError) at \(worst) (analytic \(analytic), numeric \(numeric)) over \(checked) values, \(skipped) skipped"
    }
  }

  /// The numeric derivative of `loss` at `point` along each coordinate in `indices`; nil where
  /// `valid` rejects one of the two perturbed points.
  func numeric(
    at point: [Float], indices: [Int], valid: ([Float]) -> Bool = { _ in true }, loss: ([Float]) -> Double
  ) -> [Double?] {
    var x = point
    return indices.map { i in
      let original = x[i]
      let plus = original + step
      let minus = original - step
      x[i] = plus
      let up = loss(x)
      let upValid = valid(x)
      x[i] = minus
      let down = loss(x)
      let downValid = valid(x)
      x[i] = original
      guard upValid && downValid else { return nil }
      // Divide by the step actually taken in Float, not by the nominal 2h.
      return (up - down) / (Double(plus) - Double(minus))
    }
  }

  func compare(analytic: [Float], numeric: [Double?], indices: [Int]) -> Report {
    let scale = numeric.map { abs($0 ?? 0) }.max() ?? 0
    let floor = max(1e-2 * scale, 1e-6)
    let checked = numeric.count { $0 != nil }
    var report = Report(maxError: 0, worst: -1, analytic: 0, numeric: 0, checked: checked, skipped: 0)
    for (k, i) in indices.enumerated() {
      guard let n = numeric[k] else { continue }
      let a = Double(analytic[i])
      let error = abs(a - n) / (abs(a) + abs(n) + floor)
      if error > report.maxError || report.worst < 0 {
        report = Report(
          maxError: error, worst: i, analytic: analytic[i], numeric: n, checked: checked, skipped: 0)
      }
    }
    report.skipped = indices.count - checked
    return report
  }

  func check(
    analytic: [Float], at point: [Float], indices: [Int]? = nil, valid: ([Float]) -> Bool = { _ in true },
    loss: ([Float]) -> Double
  ) -> Report {
    let indices = indices ?? Array(point.indices)
    let numeric = numeric(at: point, indices: indices, valid: valid, loss: loss)
    return compare(analytic: analytic, numeric: numeric, indices: indices)
  }

  /// Small error, and at most a tenth of the coordinates skipped for straddling a kink.
  func passes(_ report: Report) -> Bool {
    report.maxError < tolerance && report.skipped * 10 <= report.checked + report.skipped
  }
}

/// Random test inputs from a seeded stream.
extension RandomStream {
  mutating func normals(_ count: Int, scale: Float = 1) -> [Float] {
    (0..<count).map { _ in Float(normal()) * scale }
  }

  mutating func labels(_ count: Int, classes: Int) -> [Int32] {
    (0..<count).map { _ in Int32(int(below: classes)) }
  }

  /// Weights with every value drawn, biases included, so bias paths are exercised off zero.
  mutating func weights(for network: Network, scale: Float = 0.5) -> Weights {
    Weights(layout: network.layout, values: normals(network.layout.count, scale: scale))
  }
}

/// Which side of every kink a batch is on: the sign of each ReLU input and the winner of each
/// max-pool window, computed layer by layer through prefix networks (whose layouts are prefixes
/// of the full layout). A finite difference whose two points have a different pattern from the
/// centre straddles a kink and says nothing about the gradient, so the checker skips it.
struct ActivationPattern {
  let network: Network
  private let prefixes: [(layer: Int, network: Network)]

  init(_ network: Network) {
    self.network = network
    var prefixes: [(Int, Network)] = []
    for (l, layer) in network.layers.enumerated() {
      switch layer {
      case .relu, .maxPool:
        prefixes.append((l, Network(inputShape: network.inputShape, layers: Array(network.layers[0..<l]))))
      case .dense, .conv2d:
        continue
      }
    }
    self.prefixes = prefixes
  }

  func callAsFunction(_ weights: [Float], _ features: [Float]) -> [Int] {
    var pattern: [Int] = []
    for (l, prefix) in prefixes {
      let values = Weights(layout: prefix.layout, values: Array(weights[0..<prefix.layout.count]))
      let inputs = prefix.logits(values, features: features)
      if case .maxPool(let size) = network.layers[l] {
        pattern += poolWinners(inputs, shape: prefixShape(network, upTo: l), size: size)
      } else {
        pattern += inputs.map { $0 > 0 ? 1 : 0 }
      }
    }
    return pattern
  }
}

/// The output shape of the first `l` layers.
func prefixShape(_ network: Network, upTo l: Int) -> [Int] {
  var shape = network.inputShape
  for layer in network.layers[0..<l] {
    switch layer {
    case .dense(let outputs): shape = [outputs]
    case .relu: break
    case .conv2d(let filters, let kernel, let padding):
      shape = [filters, shape[1] + 2 * padding - kernel + 1, shape[2] + 2 * padding - kernel + 1]
    case .maxPool(let size): shape = [shape[0], shape[1] / size, shape[2] / size]
    }
  }
  return shape
}

/// The position of the (first) largest value of every pooling window, written independently of
/// the library's kernel.
func poolWinners(_ values: [Float], shape: [Int], size: Int) -> [Int] {
  let (c, h, w) = (shape[0], shape[1], shape[2])
  let perExample = c * h * w
  var winners: [Int] = []
  for e in 0..<(values.count / perExample) {
    for ch in 0..<c {
      for oy in 0..<(h / size) {
        for ox in 0..<(w / size) {
          var best = -1
          for dy in 0..<size {
            for dx in 0..<size {
              let i = e * perExample + (ch * h + oy * size + dy) * w + ox * size + dx
              if best < 0 || values[i] > values[best] { best = i }
            }
          }
          winners.append(best)
        }
      }
    }
  }
  return winners
}
