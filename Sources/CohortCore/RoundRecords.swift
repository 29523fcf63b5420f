/// The records of a round as the results store keeps them and reports show them: what the
/// protocol machines decide, in the vocabulary every module shares.

/// How a round ended: its aggregate became the next global model, or it was given up
/// (too few devices selected or reporting before the deadline).
public enum RoundOutcome: String, Sendable, Hashable, Codable, CaseIterable {
  case committed
  case abandoned
}

/// One row of the `rounds` table: what happened in one round of one run.
///
/// Times are seconds on whatever clock the caller drives the round with: virtual time in a
/// simulation, wall-clock seconds (e.g. since the run started) on a server. The run is not part
/// of the record; it is the `RunID` the record is committed under.
public struct RoundRecord: Sendable, Hashable, Codable {
  /// The round number, from 1.
  public var round: Int
  public var startedAt: Double
  public var endedAt: Double
  public var outcome: RoundOutcome
  /// Why the round was abandoned; nil when it was committed.
  public var abandonReason: String?
  /// Devices selected for the round (goal × over-selection, or fewer if fewer checked in).
  public var selected: Int
  /// Devices whose update was accepted into the aggregate.
  public var reported: Int
  /// Selected devices that dropped out before reporting.
  public var dropped: Int
  /// Reports that arrived after the round had closed.
  public var late: Int
  /// Reports rejected as malformed (wrong size, bad checksum, non-finite values).
  public var rejected: Int
  /// Bytes sent to devices (plans and checkpoints) and received from them (updates).
  public var bytesDown: Int
  public var bytesUp: Int
  /// Mean local training loss reported by the devices.
  public var trainLoss: Double?
  /// Loss and accuracy of the new global model on the central test set, when evaluated.
  public var evalLoss: Double?
  public var evalAccuracy: Double?
  /// Loss and accuracy measured by devices on their own held-out examples, and how many.
  public var federatedEvalLoss: Double?
  public var federatedEvalAccuracy: Double?
  public var federatedEvalExamples: Int?
  /// Cumulative differential-privacy ε after this round, when the plan adds DP noise.
  public var epsilon: Double?
  /// Seconds the round took on the run's clock (`endedAt − startedAt`): simulated seconds in a
  /// simulation, wall-clock seconds on a server. The `duration_seconds` column (once
  /// `wall_seconds`, a misleading name for simulated time).
  public var durationSeconds: Double
  /// Real seconds the process spent on the round, from configuration to close, on the machine's
  /// clock: what a simulated round costs to compute. Nil when unknown (files written before it
  /// was recorded, a round in flight across a resume).
  public var realSeconds: Double?
  /// `server.mode: async`: the mean and largest staleness (versions applied between a device's
  /// download and its update's folding) of the updates this version folded; nil for rounds.
  public var meanStaleness: Double?
  public var maximumStaleness: Int?

  public init(
    round: Int, startedAt: Double, endedAt: Double, outcome: RoundOutcome = .committed,
    abandonReason: String? = nil, selected: Int = 0, reported: Int = 0, dropped: Int = 0, late: Int = 0,
    rejected: Int = 0, bytesDown: Int = 0, bytesUp: Int = 0, trainLoss: Double? = nil,
    evalLoss: Double? = nil, evalAccuracy: Double? = nil, federatedEvalLoss: Double? = nil,
    federatedEvalAccuracy: Double? = nil, federatedEvalExamples: Int? = nil, epsilon: Double? = nil,
    durationSeconds: Double = 0, realSeconds: Double? = nil, meanStaleness: Double? = nil,
    maximumStaleness: Int? = nil
  ) {
    self.meanStaleness = meanStaleness
    self.maximumStaleness = maximumStaleness
    self.round = round
    self.startedAt = startedAt
    self.endedAt = endedAt
    self.outcome = outcome
    self.abandonReason = abandonReason
    self.selected = selected
    self.reported = reported
    self.dropped = dropped
    self.late = late
    self.rejected = rejected
    self.bytesDown = bytesDown
    self.bytesUp = bytesUp
    self.trainLoss = trainLoss
    self.evalLoss = evalLoss
    self.evalAccuracy = evalAccuracy
    self.federatedEvalLoss = federatedEvalLoss
    self.federatedEvalAccuracy = federatedEvalAccuracy
    self.federatedEvalExamples = federatedEvalExamples
    self.epsilon = epsilon
    self.durationSeconds = durationSeconds
    self.realSeconds = realSeconds
  }
}

/// What one selected device did in a round, for the device counters and the per-device
/// evaluations (`device_evaluations`).
public struct DeviceParticipation: Sendable, Hashable {
  /// The device's index in the population (simulation) or registry (server).
  public var device: Int
  /// Its update was accepted into the aggregate.
  public var reported: Bool
  /// It dropped out after being selected.
  public var dropped: Bool
  /// Its evaluation of the model it received on its own held-out examples, when its accepted
  /// report carried one with at least one example: what the round's `federated_eval_*` sum.
  public var evaluation: Evaluation?
  /// Its updates that counted, and its dropouts: at most one each in a round, but in a version
  /// of `server.mode: async` a device may count twice (two updates, trained on two versions,
  /// folded into the same buffer) or drop out, come back and drop out again.
  public var reports: Int
  public var dropouts: Int

  public init(
    device: Int, reported: Bool, dropped: Bool, evaluation: Evaluation? = nil, reports: Int? = nil,
    dropouts: Int? = nil
  ) {
    self.device = device
    self.reported = reported
    self.dropped = dropped
    self.evaluation = evaluation
    self.reports = reports ?? (reported ? 1 : 0)
    self.dropouts = dropouts ?? (dropped ? 1 : 0)
  }

  /// One entry per device of an asynchronous version, from the devices folded and dropped
  /// since the previous version (each as often as it happened).
  public static func versionEntries(folded: [Int], dropped: [Int]) -> [DeviceParticipation] {
    var reports: [Int: Int] = [:]
    var dropouts: [Int: Int] = [:]
    for d in folded { reports[d, default: 0] += 1 }
    for d in dropped { dropouts[d, default: 0] += 1 }
    return Set(reports.keys).union(dropouts.keys).sorted().map { d in
      let r = reports[d] ?? 0
      let o = dropouts[d] ?? 0
      return DeviceParticipation(device: d, reported: r > 0, dropped: r == 0, reports: r, dropouts: o)
    }
  }
}

/// One step of a round's secure aggregation: one row of `secure_aggregation_steps`.
public struct SecureAggregationStepRecord: Sendable, Hashable, Codable {
  /// `advertise_keys`, `share_keys`, `masked_input`, `consistency_check` or `unmasking`.
  public var step: String
  /// Devices the step started with.
  public var entered: Int
  /// Of those, devices that did not answer before the step closed.
  public var dropped: Int
  /// Bytes the devices sent the server, and the server sent the devices, in this step.
  public var bytesUp: Int
  public var bytesDown: Int
  /// Wall-clock seconds the server spent on the step (processing messages and closing it).
  public var serverSeconds: Double

  public init(step: String, entered: Int, dropped: Int, bytesUp: Int, bytesDown: Int, serverSeconds: Double) {
    self.step = step
    self.entered = entered
    self.dropped = dropped
    self.bytesUp = bytesUp
    self.bytesDown = bytesDown
    self.serverSeconds = serverSeconds
  }
}
