public import CohortAggregation

/// Folds a round's accepted updates as they arrive, off the Coordinator's executor, so a large
/// model's arithmetic never delays check-ins. Streaming strategies keep a running sum; robust
/// ones keep the round's updates (they need them all).
public actor Aggregator {
  public let strategy: ServerStrategy
  private var round: Int?
  private var aggregate: RoundAggregate

  public init(strategy: ServerStrategy) {
    self.strategy = strategy
    aggregate = strategy.makeRound()
  }

  /// Starts a new round, discarding anything left from an abandoned one.
  public func begin(round: Int) {
    self.round = round
    aggregate = strategy.makeRound()
  }

  /// Folds updates in the order given.
  public func fold(_ updates: [ClientUpdate], round: Int) {
    precondition(self.round == round, "folding updates of round \(round) into round \(self.round ?? 0)")
    for u in updates { strategy.fold(u, into: &aggregate) }
  }

  /// Folds the decoded result of secure aggregation.
  public func foldSecureSum(_ sum: [Double], totalWeight: Double, count: Int, examples: Int, round: Int) {
    precondition(self.round == round, "folding a secure sum of round \(round) into round \(self.round ?? 0)")
    strategy.foldSecureSum(sum, totalWeight: totalWeight, count: count, examples: examples, into: &aggregate)
  }

  /// The round's aggregate, handed over and reset.
  public func finish(round: Int) -> RoundAggregate {
    precondition(self.round == round, "finishing round \(round) while aggregating round \(self.round ?? 0)")
    let result = aggregate
    aggregate = strategy.makeRound()
    self.round = nil
    return result
  }
}
