public import CohortAggregation
public import CohortCore
public import CohortPrivacy
public import CohortProtocol

/// Turns a round's reports into the next global model, off the Coordinator's executor, so a
/// large model's arithmetic never delays check-ins. It folds accepted updates as they arrive
/// (streaming strategies keep a running sum; robust ones keep the round's updates, they need
/// them all) or the round's secure sum, adds central DP noise, and steps the plan's strategy,
/// whose state (momentum, moments, SCAFFOLD's control variate) it owns between rounds.
public actor Aggregator {
  /// What a round's aggregation gave.
  public struct Result: Sendable {
    /// The next global model; nil when the round produced none.
    public var model: Weights?
    /// The strategy's state after this round, for the Coordinator's tasks and snapshots.
    public var strategyState: StrategyState
    /// What the round pipeline needs to close the round.
    public var aggregation: RoundPipeline.Aggregation
  }

  public let strategy: ServerStrategy
  public private(set) var strategyState: StrategyState
  private var round: Int?
  private var aggregate: RoundAggregate

  public init(strategy: ServerStrategy, state: StrategyState? = nil) {
    self.strategy = strategy
    strategyState = state ?? strategy.initialState()
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

  /// A replica's part of the round: the updates folded here, taken out unstepped for the leader
  /// to combine with the other replicas' (`finish(round:combined:…)`).
  public func partial(round: Int, last: [ClientUpdate]) -> RoundAggregate {
    fold(last, round: round)
    defer {
      aggregate = strategy.makeRound()
      self.round = nil
    }
    return aggregate
  }

  /// The leader's step from the replicas' combined aggregate, as `finish` steps from its own,
  /// but without keeping the strategy's new state: that is adopted (`adopt`) only once the round
  /// is committed, since another replica may decide it instead.
  public func step(
    round: Int, combined: RoundAggregate, secureSum: SecureSum?, global: Weights,
    privacy: CentralGaussianMechanism?,
    clip: Double
  ) -> Result {
    let kept = strategyState
    defer { strategyState = kept }
    self.round = round
    aggregate = combined
    return finish(round: round, last: [], secureSum: secureSum, global: global, privacy: privacy, clip: clip)
  }

  /// Takes the strategy's state the leader committed with a round (a replica that followed it).
  public func adopt(_ state: StrategyState) {
    strategyState = state
  }

  /// Ends the round: folds the `last` updates and the round's secure sum, if any, adds central
  /// DP noise (`privacy`, for updates clipped to `clip`) and steps the strategy from `global`.
  public func finish(
    round: Int, last: [ClientUpdate], secureSum: SecureSum?, global: Weights,
    privacy: CentralGaussianMechanism?, clip: Double
  ) -> Result {
    fold(last, round: round)
    var aggregation = RoundPipeline.Aggregation(producedModel: false)
    if let secure = secureSum {
      aggregation.secureSteps = secure.steps
      aggregation.secureRejected = secure.rejectedMessages
      if let sum = secure.weightedSum {
        strategy.foldSecureSum(
          sum, totalWeight: secure.totalWeight, count: secure.survivors.count, examples: secure.examples,
          into: &aggregate)
      } else {
        aggregation.secureFailure = secure.failure ?? "secure aggregation gave no sum"
      }
    }
    var result = aggregate
    aggregate = strategy.makeRound()
    self.round = nil
    var model: Weights?
    if aggregation.secureFailure == nil {
      if let privacy, result.count > 0 {
        // DP-FedAvg: noise on the sum of clipped updates, divided by the expected cohort.
        result.privatize(denominator: Double(privacy.expectedCohort)) {
          privacy.addNoise(to: &$0, clip: clip, round: round)
        }
      }
      var next = strategyState
      model = strategy.nextGlobal(from: global, result, state: &next)
      // Finite updates can still overflow Float32 together (3e38 each); such a model would
      // destroy every later round, so the round is abandoned and the model stays as it was.
      if let m = model, !m.values.allSatisfy(\.isFinite) {
        model = nil
        aggregation.nonFiniteModel = true
      } else {
        strategyState = next
      }
    }
    aggregation.producedModel = model != nil
    return Result(model: model, strategyState: strategyState, aggregation: aggregation)
  }
}

/// Accepted updates waiting to go to the `Aggregator`: they travel in batches, one actor hop per
/// batch rather than per device, while a batch stays small next to the cohort (the sum is never
/// held per device).
struct UpdateBatch {
  static let maximumUpdates = 32
  static let maximumValues = 4 << 20

  private var updates: [ClientUpdate] = []
  private var values = 0

  /// Adds an update; the batch to fold now when it is full.
  mutating func add(_ update: ClientUpdate) -> [ClientUpdate]? {
    updates.append(update)
    values += update.update.count
    return values >= Self.maximumValues || updates.count >= Self.maximumUpdates ? take() : nil
  }

  /// Empties the batch.
  mutating func take() -> [ClientUpdate] {
    defer {
      updates = []
      values = 0
    }
    return updates
  }
}
