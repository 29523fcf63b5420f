public import CohortCore

/// A running weighted sum of client updates in Double: the server folds each update in as it
/// arrives and holds one model-sized sum, not the cohort.
public struct UpdateAccumulator: Sendable {
  public let layout: WeightsLayout
  /// Σ wᵢ·Δᵢ
  public private(set) var sum: [Double]
  /// Σ wᵢ
  public private(set) var totalWeight: Double = 0
  /// Number of updates folded in.
  public private(set) var count = 0
  /// Σ examples over folded updates, whatever the weighting.
  public private(set) var examples = 0

  public init(layout: WeightsLayout) {
    self.layout = layout
    sum = [Double](repeating: 0, count: layout.count)
  }

  /// Adds `weight · update`. The update must have this accumulator's layout.
  public mutating func fold(_ update: Weights, weight: Double, examples: Int) {
    precondition(update.layout == layout, "update layout does not match the accumulator's")
    precondition(weight >= 0 && weight.isFinite, "update weight must be finite and non-negative")
    update.values.withUnsafeBufferPointer { u in
      sum.withUnsafeMutableBufferPointer { s in
        for i in 0..<s.count { s[i] += weight * Double(u[i]) }
      }
    }
    totalWeight += weight
    count += 1
    self.examples += examples
  }

  /// Adds a sum made elsewhere (secure aggregation's): Σ wᵢ·Δᵢ over `count` updates and Σ wᵢ.
  public mutating func add(sum other: [Double], totalWeight weight: Double, count n: Int, examples e: Int) {
    precondition(other.count == sum.count, "sum length does not match the accumulator's")
    precondition(weight >= 0 && weight.isFinite, "total weight must be finite and non-negative")
    for i in 0..<sum.count { sum[i] += other[i] }
    totalWeight += weight
    count += n
    examples += e
  }

  /// Lets `perturb` change Σ wᵢ·Δᵢ (central DP noise) and replaces Σ wᵢ with `denominator`.
  mutating func privatize(denominator: Double, _ perturb: (inout [Double]) -> Void) {
    perturb(&sum)
    totalWeight = denominator
  }

  /// Σ wᵢ·Δᵢ / Σ wᵢ as Float weights, or nil when nothing (or only zero weight) was folded in.
  public func weightedMean() -> Weights? {
    guard totalWeight > 0 else { return nil }
    let scale = 1 / totalWeight
    return Weights(layout: layout, values: sum.map { Float($0 * scale) })
  }
}
