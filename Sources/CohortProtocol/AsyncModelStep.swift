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

  /// - Parameters:
  ///   - population: devices in the population, when known (only SCAFFOLD needs it, and it
  ///     does not run asynchronously).
  ///   - privacySeed: the seed of the DP noise; nil draws it from libsodium.
  public init?(plan: Plan, layout: WeightsLayout, population: Int?, privacySeed: UInt64?) {
    guard let asynchronous = plan.server.asynchronous else { return nil }
    bufferSize = asynchronous.buffer
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
  /// then abandoned and `global` stays). `state` moves on only with a new model; adaptive
  /// clipping moves `clip` after every application, as after every synchronous round.
  /// - Parameter unclipped: folded updates that were within the clip before clipping.
  public func apply(
    _ application: AsyncBuffer.Application, to global: Weights, state: inout StrategyState,
    clip: inout Double?, unclipped: Int
  ) -> Weights? {
    var sum = application.sum
    var denominator = application.denominator
    if let privacy, let c = clip {
      // Each folded update is clipped and weighs at most 1: the sensitivity is the clip.
      privacy.addNoise(to: &sum, clip: c, round: application.version)
      denominator = Double(bufferSize)
      clip = privacy.nextClip(after: application.version, clip: c, unclipped: unclipped)
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
    return model
  }
}
