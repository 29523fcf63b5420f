public import CohortAggregation
public import CohortCore
public import CohortPrivacy

/// The server's step from a full asynchronous buffer to the next model version: central DP
/// noise on the buffered sum, FedAvg's η_g or the server optimizer's step along the buffered
/// mean, and the refusal of a model that overflowed Float32. Pure but for the noise, which comes
/// from the seeded stream of the version (simulator) or from libsodium (server, no seed).
/// `cohort simulate` and `cohort serve` take this same step, so one plan makes the same model
/// from the same buffer in both.
public struct AsyncModelStep: Sendable {
  public let strategy: ServerStrategy
  /// Central DP: noise per application, dividing by the buffer size.
  public let privacy: CentralGaussianMechanism?
  /// FedAvg/FedProx: η_g, the step along the buffered mean; nil for the server optimizers,
  /// which step by their own rate.
  public let stepSize: Double?
  /// K, the updates in one buffer.
  public let bufferSize: Int
  /// `server.evaluation.every` and `server.rounds`: which versions are evaluated centrally.
  let evaluationEvery: Int
  let versions: Int

  /// Why an asynchronous plan cannot run (one built in code, past the plan reader's checks),
  /// nil when it can.
  public static func refusal(of plan: Plan) -> CohortError? {
    guard plan.secureAggregation.enabled else { return nil }
    return CohortError(
      .invalidConfiguration,
      "secure aggregation with server.mode: async is not carried out yet: each buffer would be one "
        + "secure-aggregation group, but a device masks its update before its staleness weight is known",
      fix: "set secure_aggregation.enabled: false, or server.mode: sync")
  }

  /// - Parameters:
  ///   - population: devices in the population, when known (only SCAFFOLD needs it, and it
  ///     does not run asynchronously).
  ///   - privacySeed: the seed of the DP noise; nil draws it from libsodium.
  public init?(plan: Plan, layout: WeightsLayout, population: Int?, privacySeed: UInt64?) {
    guard let asynchronous = plan.server.asynchronous else { return nil }
    bufferSize = asynchronous.buffer
    evaluationEvery = max(1, plan.server.evaluation.every)
    versions = plan.server.rounds
    // The buffer weighs the updates (by examples or once each) and the staleness; the strategy
    // only steps along the mean it is given.
    strategy = ServerStrategy(
      plan: plan.server.strategy, layout: layout, population: population.map { max(1, $0) },
      equalWeights: plan.privacy.isPrivate)
    privacy =
      plan.privacy.isCentral
      ? CentralGaussianMechanism(
        plan: plan.privacy, expectedCohort: asynchronous.buffer, populationSize: nil, seed: privacySeed)
      : nil
    stepSize = [.fedavg, .fedprox].contains(plan.server.strategy.kind) ? asynchronous.stepSize : nil
  }

  /// The model `application` makes from `global`, or nil when it is not finite (the version is
  /// then abandoned, and `global`, `state` and `clip` stay, as after an abandoned round).
  /// - Parameter unclipped: folded updates that were within the clip before clipping.
  public func apply(
    _ application: AsyncBuffer.Application, to global: Weights, state: inout StrategyState,
    clip: inout Double?, unclipped: Int
  ) -> Weights? {
    var sum = application.sum
    var denominator = application.denominator
    var nextClip = clip
    if let privacy, let c = clip {
      // Each folded update is clipped and weighs at most 1: the sensitivity is the clip.
      privacy.addNoise(to: &sum, clip: c, round: application.version)
      denominator = Double(bufferSize)
      nextClip = privacy.nextClip(after: application.version, clip: c, unclipped: unclipped)
    }
    if let stepSize, stepSize != 1 {
      for i in 0..<sum.count { sum[i] *= stepSize }
    }
    var aggregate = strategy.makeRound()
    strategy.foldSecureSum(
      sum, totalWeight: denominator, count: application.folded, examples: application.examples,
      into: &aggregate)
    var next = state
    guard let model = strategy.nextGlobal(from: global, aggregate, state: &next),
      model.values.allSatisfy(\.isFinite)
    else { return nil }
    state = next
    clip = nextClip
    return model
  }

  /// Whether `version` is evaluated centrally: every `server.evaluation.every` versions and the
  /// last, as a synchronous run evaluates its rounds.
  public func evaluates(version: Int) -> Bool {
    version % evaluationEvery == 0 || version == versions
  }
}

/// What happened since the previous version: the counts of the next version's row of `rounds`,
/// kept alike by the simulator and the server.
public struct AsyncVersionBook: Sendable, Hashable, Codable {
  /// When the previous version was made (or the run started).
  public var startedAt: Double
  public var dropped = 0
  /// Reports refused as staler than `server.async.max_staleness`: the row's `late`.
  public var tooStale = 0
  public var rejected = 0
  public var bytesUp = 0
  public var bytesDown = 0
  /// Devices that dropped out, each as often as it did, for the device counters; at most
  /// `droppedDevicesLimit` (the row's `dropped` counts on beyond it).
  public var droppedDevices: [DeviceID] = []
  /// Training losses of the folded updates, summed in folding order.
  public var lossSum = 0.0
  public var lossCount = 0
  /// Folded updates that were within the DP clip before clipping (adaptive clipping).
  public var unclipped = 0

  public static let droppedDevicesLimit = 10_000

  public init(startedAt: Double) { self.startedAt = startedAt }

  /// An update folded in.
  public mutating func folded(trainLoss: Double, withinClip: Bool?) {
    lossSum += trainLoss
    lossCount += 1
    if withinClip == true { unclipped += 1 }
  }

  /// A report refused.
  public mutating func refused(_ reason: AsyncBuffer.Refusal) {
    if reason == .tooStale { tooStale += 1 } else { rejected += 1 }
  }

  /// A device that was training dropped out.
  public mutating func dropped(_ device: DeviceID) {
    dropped += 1
    if droppedDevices.count < Self.droppedDevicesLimit { droppedDevices.append(device) }
  }

  /// The row of the version `application` made at `endedAt` (abandoned when `model` is nil).
  public func record(
    _ application: AsyncBuffer.Application, endedAt: Double, model: Weights?, evaluation: Evaluation?
  ) -> RoundRecord {
    RoundRecord(
      round: application.version, startedAt: startedAt, endedAt: endedAt,
      outcome: model == nil ? .abandoned : .committed,
      abandonReason: model == nil ? "the buffered update made a model that is not finite" : nil,
      selected: application.folded, reported: application.folded, dropped: dropped, late: tooStale,
      rejected: rejected, bytesDown: bytesDown, bytesUp: bytesUp,
      trainLoss: lossCount == 0 ? nil : lossSum / Double(lossCount), evalLoss: evaluation?.loss,
      evalAccuracy: evaluation?.accuracy, durationSeconds: endedAt - startedAt,
      meanStaleness: application.meanStaleness, maximumStaleness: application.maximumStaleness)
  }

  /// The version's entries for the device counters: each device folded or dropped since the
  /// previous version, with how often.
  public func devices(_ application: AsyncBuffer.Application) -> [DeviceParticipation] {
    DeviceParticipation.versionEntries(folded: application.devices, dropped: droppedDevices)
  }

  /// Whether a book read back from storage holds counts a later `+=` cannot overflow (a longer
  /// list of dropped devices is cut to the limit by `restored`, not refused).
  public var isPlausible: Bool {
    let counts = [dropped, tooStale, rejected, bytesUp, bytesDown, lossCount, unclipped]
    return counts.allSatisfy { (0..<Int.max / 4).contains($0) } && lossSum.isFinite && startedAt.isFinite
  }

  /// The book as read back from storage, its list of dropped devices cut to the limit.
  public var restored: AsyncVersionBook {
    var book = self
    book.droppedDevices = Array(droppedDevices.prefix(Self.droppedDevicesLimit))
    return book
  }
}
