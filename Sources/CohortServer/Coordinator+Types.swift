public import CohortAggregation
public import CohortCore
import CohortPrivacy
public import CohortProtocol
public import CohortStore

/// Evaluates a global model on the central test set (held by the simulator or the operator).
public protocol CentralEvaluator: Sendable {
  func evaluate(_ weights: Weights) async -> Evaluation
}

extension Coordinator {
  public struct Configuration: Sendable {
    public var plan: Plan
    public var population: String
    /// The run this coordinator commits rounds to, when it has a store.
    public var run: RunID?
    /// Commit each closed round at once (network server). The simulator turns this off and
    /// calls `takePending()` at a quiet point, so it can store its own state with the round.
    public var autoCommit: Bool
    /// Devices in the population, N, when known (the simulator): SCAFFOLD and the privacy
    /// accountant need it, and a population no larger than the goal takes part whole.
    public var populationSize: Int?
    /// Runs secure aggregation when the plan enables it: reports then carry no update, and the
    /// round's sum comes from the protocol.
    public var secureAggregation: (any SecureAggregationDriver)?
    /// The seed of central DP noise (the simulator passes the scenario's, so runs reproduce);
    /// nil draws the noise itself from libsodium (a served run).
    public var privacySeed: UInt64?
    /// How cohorts are drawn when the plan does not say (`server.cohort.sampling`).
    public var sampling: CohortSampling
    /// Seeds the draw of uniform cohorts.
    public var samplingSeed: UInt64
    /// Commit attempts for a round before the coordinator gives up (see `failure`), and the
    /// first wait between them in seconds (it doubles).
    public var commitAttempts: Int
    public var commitBackoff: Double
    /// This coordinator is one replica of a run served by several (`ReplicaLink`).
    public var replica: ReplicaLink?

    public init(
      plan: Plan, population: String = "default", run: RunID? = nil, autoCommit: Bool = true,
      populationSize: Int? = nil, secureAggregation: (any SecureAggregationDriver)? = nil,
      privacySeed: UInt64? = nil, sampling: CohortSampling = .checkIn, samplingSeed: UInt64 = 0,
      commitAttempts: Int = 6, commitBackoff: Double = 1, replica: ReplicaLink? = nil
    ) {
      self.plan = plan
      self.population = population
      self.run = run
      self.autoCommit = autoCommit
      self.populationSize = populationSize
      self.secureAggregation = secureAggregation
      self.privacySeed = privacySeed
      self.sampling = sampling
      self.samplingSeed = samplingSeed
      self.commitAttempts = commitAttempts
      self.commitBackoff = commitBackoff
      self.replica = replica
    }

    /// Central or distributed DP as the plan asks, nil without it.
    var privacy: CentralGaussianMechanism? {
      CentralGaussianMechanism(
        plan: plan.privacy, expectedCohort: plan.server.cohort.goal, populationSize: populationSize,
        seed: privacySeed)
    }

    /// The plan's rounds cut to what the privacy budget (`target_epsilon`) allows, and why.
    var roundLimit: (rounds: Int, reason: String?) {
      guard let privacy else { return (plan.server.rounds, nil) }
      return privacy.roundLimit(rounds: plan.server.rounds)
    }

    /// What the pipeline decides with: the plan's server part (its rounds cut to the privacy
    /// budget) with this coordinator's population, sampling and seeds.
    public var pipeline: RoundPipeline.Configuration {
      var server = plan.server
      server.rounds = roundLimit.rounds
      var machine = RoundStateMachine.Configuration(
        plan: server, population: population, sampling: sampling, populationSize: populationSize,
        seed: samplingSeed, commitAttempts: commitAttempts, commitBackoff: commitBackoff)
      if replica != nil {
        machine.sharedCohort = true
        machine.minimumGroup = plan.secureAggregation.enabled ? plan.secureAggregation.minimumGroup : 0
      }
      return RoundPipeline.Configuration(
        machine: machine,
        evaluationEvery: plan.server.evaluation.every, privacy: privacy)
    }
  }

  /// The state a coordinator needs to continue exactly where it stood before a round was handed
  /// over: the pipeline, the round being handed over, and the strategy's state.
  public struct Snapshot: Sendable {
    var pipeline: RoundPipeline
    var pendingRound: Int?
    var strategyState: StrategyState

    /// Writes the snapshot in the binary form of `SnapshotWriter`.
    public func save(into w: inout SnapshotWriter) {
      pipeline.save(into: &w)
      w.write(pendingRound)
      strategyState.save(into: &w)
    }

    /// The snapshot `save` wrote, for a coordinator of `configuration`.
    public init(configuration: Configuration, restoring r: inout SnapshotReader) throws(CohortError) {
      pipeline = try RoundPipeline(configuration: configuration.pipeline, restoring: &r)
      pendingRound = try r.optionalInt()
      strategyState = try StrategyState(restoring: &r)
    }

    init(pipeline: RoundPipeline, pendingRound: Int?, strategyState: StrategyState) {
      self.pipeline = pipeline
      self.pendingRound = pendingRound
      self.strategyState = strategyState
    }
  }

  /// A closed round ready to be written: its record, its model (nil when abandoned), who took
  /// part, and late reports that arrived for earlier rounds since the last write.
  public struct ClosedRound: Sendable {
    public var record: RoundRecord
    public var model: Weights?
    public var participants: [DeviceParticipation]
    public var lateReports: [Int: Int]
    /// The round's secure-aggregation steps; empty without secure aggregation.
    public var secureAggregation: [SecureAggregationStepRecord]
  }

  /// What a driver checks after each event, in one call.
  public struct Status: Sendable {
    public var isFinished: Bool
    public var globalRound: Int
    public var hasPendingCommit: Bool
    public var nextDeadline: Double?
    /// Set once the coordinator has stopped working (see `Coordinator.failure`).
    public var failure: CohortError?
  }
}

extension StrategyState {
  /// Writes the state a round leaves for the next (stored with each snapshot, and with each round
  /// a replica leads, for the replicas that follow it).
  public func save(into w: inout SnapshotWriter) {
    for vector in [velocity, firstMoment, secondMoment] {
      w.write(vector != nil)
      if let vector { w.write(vector) }
    }
    w.write(control != nil)
    if let control { w.write(control) }
  }

  public init(restoring r: inout SnapshotReader) throws(CohortError) {
    func vector() throws(CohortError) -> [Double]? { try r.bool() ? try r.doubles() : nil }
    self.init(
      velocity: try vector(), firstMoment: try vector(), secondMoment: try vector(),
      control: try r.bool() ? try r.floats() : nil)
  }
}
