public import CohortAggregation
public import CohortCore

/// Folds a round's accepted updates into a running sum as they arrive, off the Coordinator's
/// executor, so a large model's arithmetic never delays check-ins.
public actor Aggregator {
  public let strategy: FederatedAveraging
  public let layout: WeightsLayout
  private var round: Int?
  private var accumulator: UpdateAccumulator

  public init(strategy: FederatedAveraging, layout: WeightsLayout) {
    self.strategy = strategy
    self.layout = layout
    accumulator = UpdateAccumulator(layout: layout)
  }

  /// Starts a new round's sum, discarding anything left from an abandoned one.
  public func begin(round: Int) {
    self.round = round
    accumulator = UpdateAccumulator(layout: layout)
  }

  /// Folds updates, each with its example count, in the order given.
  public func fold(_ updates: [(Weights, Int)], round: Int) {
    precondition(self.round == round, "folding updates of round \(round) into round \(self.round ?? 0)")
    for (update, examples) in updates { strategy.fold(update, examples: examples, into: &accumulator) }
  }

  /// The round's sum, handed over and reset.
  public func finish(round: Int) -> UpdateAccumulator {
    precondition(self.round == round, "finishing round \(round) while aggregating round \(self.round ?? 0)")
    let result = accumulator
    accumulator = UpdateAccumulator(layout: layout)
    self.round = nil
    return result
  }
}
