public import CohortCore

/// FedAvg (McMahan et al. 2017): the next global model is the current one plus the mean of the
/// cohort's updates, each weighted by its example count (or equally, when `weighted` is false).
public struct FederatedAveraging: Sendable, Hashable {
  public var weighted: Bool

  public init(weighted: Bool = true) { self.weighted = weighted }

  public init(plan: StrategyPlan) { self.init(weighted: plan.weighted) }

  /// The weight an update from a device with `examples` examples carries in the mean.
  public func weight(examples: Int) -> Double { weighted ? Double(examples) : 1 }

  /// Folds one update into the round's running sum.
  public func fold(_ update: Weights, examples: Int, into accumulator: inout UpdateAccumulator) {
    accumulator.fold(update, weight: weight(examples: examples), examples: examples)
  }

  /// The next global model, or nil when no update carried weight (the caller abandons the round).
  public func nextGlobal(from global: Weights, _ accumulator: UpdateAccumulator) -> Weights? {
    guard let mean = accumulator.weightedMean() else { return nil }
    var next = global
    next.axpy(1, mean)
    return next
  }
}
