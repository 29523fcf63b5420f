public import CohortCore
import Foundation

/// Central DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language
/// Models", ICLR 2018) with optional adaptive clipping (Andrew et al., "Differentially Private
/// Learning with Adaptive Clipping", NeurIPS 2021): what the server does to a round's sum of
/// clipped updates, and the privacy it costs.
///
/// Devices clip their update Δ to L2 norm C. The server adds N(0, (z_Δ·C)²) to every coordinate
/// of Σ Δᵢ and divides by the expected cohort (the fixed-denominator estimator). With adaptive
/// clipping each device also reports bᵢ = 1{‖Δᵢ‖ ≤ C}; the server forms b̄ = (Σ bᵢ + N(0, σ_b²)) /
/// expected cohort and moves C ← C·exp(−η(b̄ − γ)).
///
/// In simulation pure and deterministic: the noise of round r comes from the stream (seed,
/// "dp-noise", r), the count's from (seed, "dp-count-noise", r), so a simulated run is
/// reproducible bit for bit. A served run without a seed (`seed == nil`) draws its noise from
/// libsodium instead: noise an observer could predict would protect nothing.
public struct CentralGaussianMechanism: Sendable {
  public let plan: PrivacyPlan
  /// The divisor of the noisy sum: the plan's `server.cohort.goal`.
  public let expectedCohort: Int
  /// z_Δ: the noise multiplier of the update's sum (z itself without adaptive clipping).
  public let updateNoiseMultiplier: Double
  /// q = expected cohort / population, when the population size is known; the accountant needs it.
  public let samplingRate: Double?
  /// The seed of the noise streams; nil draws the noise from libsodium (production).
  public let seed: UInt64?

  /// nil when the plan asks for no central noise, or when its update noise multiplier is
  /// undefined (plan validation rejects such plans).
  public init?(plan: PrivacyPlan, expectedCohort: Int, populationSize: Int?, seed: UInt64?) {
    // The distributed mechanism uses this too: its noise comes from the devices, but the fixed
    // denominator, the clip and the accountant are the same.
    guard plan.isPrivate, expectedCohort > 0, let z = plan.updateNoiseMultiplier else { return nil }
    self.plan = plan
    self.expectedCohort = expectedCohort
    updateNoiseMultiplier = z
    samplingRate = populationSize.flatMap { $0 > 0 ? min(1, Double(expectedCohort) / Double($0)) : nil }
    self.seed = seed
  }

  // MARK: Noise

  /// Adds N(0, (z_Δ·clip)²) to each coordinate of `sum`, from the stream of `round`.
  public func addNoise(to sum: inout [Double], clip: Double, round: Int) {
    let sigma = updateNoiseMultiplier * clip
    // Under the distributed mechanism the sum arrives noisy from secure aggregation.
    guard plan.isCentral, sigma > 0 else { return }
    guard let seed else {
      var random = SecureRandom()
      sum.withUnsafeMutableBufferPointer { s in
        var i = 0
        while i < s.count {
          let (a, b) = random.normalPair()
          s[i] += sigma * a
          if i + 1 < s.count { s[i + 1] += sigma * b }
          i += 2
        }
      }
      return
    }
    var rng = RandomStream(seed: seed, purpose: "dp-noise", round: round)
    sum.withUnsafeMutableBufferPointer { s in
      for i in 0..<s.count { s[i] += sigma * rng.normal() }
    }
  }

  // MARK: Adaptive clipping

  /// The clip for the round after `round`, given how many of its updates had norm at most
  /// `clip`; without adaptive clipping the clip is fixed and returned unchanged.
  public func nextClip(after round: Int, clip: Double, unclipped: Int) -> Double {
    guard let adaptive = plan.adaptiveClipping else { return clip }
    let normal: Double
    if let seed {
      var rng = RandomStream(seed: seed, purpose: "dp-count-noise", round: round)
      normal = rng.normal()
    } else {
      var random = SecureRandom()
      normal = random.normalPair().0
    }
    let noisy = Double(unclipped) + adaptive.countNoiseMultiplier * normal
    return Self.nextClip(
      clip, unclippedFraction: noisy / Double(expectedCohort), targetQuantile: adaptive.targetQuantile,
      learningRate: adaptive.learningRate)
  }

  /// Andrew et al. 2021, geometric update: C · exp(−η (b̄ − γ)). Above the target quantile
  /// (too many updates unclipped) the clip shrinks; below it, it grows.
  public static func nextClip(
    _ clip: Double, unclippedFraction: Double, targetQuantile: Double, learningRate: Double
  ) -> Double {
    clip * exp(-learningRate * (unclippedFraction - targetQuantile))
  }

  // MARK: Accounting

  /// ε after `rounds` rounds at the plan's δ (Poisson-subsampled Gaussian RDP at the plan's z:
  /// with adaptive clipping the update and the count together cost exactly that). nil when the
  /// sampling rate is unknown or the plan adds no noise (ε would be infinite).
  public func epsilon(afterRounds rounds: Int) -> Double? {
    guard let q = samplingRate, rounds >= 1, plan.noiseMultiplier > 0 else { return nil }
    return try? PrivacyAccountant.epsilon(
      samplingRate: q, noiseMultiplier: plan.noiseMultiplier, steps: rounds, delta: plan.delta
    ).epsilon
  }

  /// With a `target_epsilon`, the last round up to `rounds` whose ε stays within it (0 when even
  /// the first round would exceed it), and why the run stops there; `rounds` and nil otherwise.
  public func roundLimit(rounds: Int) -> (rounds: Int, reason: String?) {
    guard let target = plan.targetEpsilon, samplingRate != nil, rounds >= 1 else { return (rounds, nil) }
    func within(_ r: Int) -> Bool { (epsilon(afterRounds: r) ?? .infinity) <= target }
    if within(rounds) { return (rounds, nil) }
    // ε grows with the rounds: the largest r with ε(r) ≤ target, by bisection on [0, rounds).
    var low = 0
    var high = rounds
    while high - low > 1 {
      let mid = (low + high) / 2
      if within(mid) { low = mid } else { high = mid }
    }
    let over = epsilon(afterRounds: low + 1) ?? .infinity
    let reason =
      "privacy budget reached: ε after round \(low + 1) would be \(Self.format(over)) > target "
      + "\(Self.format(target)) (δ = \(plan.delta)); stopping after round \(low)"
    return (low, reason)
  }

  static func format(_ x: Double) -> String { String(format: "%.4f", x) }
}
