import CohortCore
import CohortPrivacy
import CohortSimulator
import CohortStore
import Foundation
import Logging
import Testing

/// A small scenario (120 devices, 12 per round) with the given `privacy` section.
func privateScenario(
  seed: UInt64, privacy: String, rounds: Int = 5, secure: Bool = false, dropout: Double = 0
) throws -> Scenario {
  try Scenario.parse(
    yaml: """
      plan:
        name: small-dp
        model: {kind: logistic_regression, inputs: 60, classes: 10}
        device: {epochs: 1, batch_size: 10, optimizer: {kind: sgd, learning_rate: 0.05}}
        server:
          rounds: \(rounds)
          cohort: {goal: 12, over_selection: 1.25, minimum_fraction: 0.75}
        secure_aggregation: {enabled: \(secure)}
        privacy: \(privacy)
      data: {kind: synthetic_fedprox, alpha: 0.5, beta: 0.5, devices: 120, max_samples: 150}
      partition: {kind: natural}
      devices: {dropout: \(dropout), check_in_interval: 1m}
      seed: \(seed)
      """, file: "small-dp.yaml")
}

@Suite struct PrivacySimulationTests {
  @Test func everyRoundRecordsTheAccountantsEpsilon() async throws {
    let seed: UInt64 = 31
    let scenario = try privateScenario(
      seed: seed, privacy: "{kind: central_gaussian, clip: 0.5, noise_multiplier: 1.1, delta: 1e-5}")
    let run = try await SecureRun(scenario)
    #expect(run.summary.roundsCommitted == 5, "seed \(seed)")
    var previous = 0.0
    for r in run.rounds where r.outcome == .committed {
      let expected = try PrivacyAccountant.epsilon(
        samplingRate: 12.0 / 120.0, noiseMultiplier: 1.1, steps: r.round, delta: 1e-5
      ).epsilon
      #expect(r.epsilon == expected, "seed \(seed) round \(r.round)")
      #expect(expected > previous, "seed \(seed) round \(r.round): ε grows")
      previous = expected
    }
    #expect(run.summary.epsilon == previous && run.summary.delta == 1e-5 && run.summary.stopReason == nil)
    // Same seed, same noise: the run is reproducible bit for bit.
    let again = try await SecureRun(scenario)
    #expect(again.summary.checkpointSHA256 == run.summary.checkpointSHA256, "seed \(seed)")
    // The noise is there: without it the model differs.
    let plain = try await SecureRun(
      try privateScenario(seed: seed, privacy: "{kind: central_gaussian, clip: 0.5, noise_multiplier: 0}"))
    #expect(plain.summary.checkpointSHA256 != run.summary.checkpointSHA256, "seed \(seed)")
    #expect(plain.rounds.allSatisfy { $0.epsilon == nil }, "z = 0 has no finite ε")
  }

  @Test func targetEpsilonStopsBeforeExceedingIt() async throws {
    let seed: UInt64 = 32
    let e3 = try PrivacyAccountant.epsilon(samplingRate: 0.1, noiseMultiplier: 1, steps: 3, delta: 1e-5)
      .epsilon
    let e4 = try PrivacyAccountant.epsilon(samplingRate: 0.1, noiseMultiplier: 1, steps: 4, delta: 1e-5)
      .epsilon
    let target = (e3 + e4) / 2
    let run = try await SecureRun(
      try privateScenario(
        seed: seed, privacy: "{kind: central_gaussian, noise_multiplier: 1, target_epsilon: \(target)}",
        rounds: 8))
    #expect(run.summary.roundsAttempted == 3, "seed \(seed): \(run.rounds.map(\.round))")
    #expect(run.rounds.compactMap(\.epsilon).allSatisfy { $0 <= target }, "seed \(seed)")
    let reason = try #require(run.summary.stopReason)
    #expect(reason.hasPrefix("privacy budget reached: ε after round 4 would be"), "\(reason)")
    #expect(reason.hasSuffix("stopping after round 3"), "\(reason)")
  }

  @Test func centralNoiseRunsOnTheSecureSum() async throws {
    let seed: UInt64 = 33
    let run = try await SecureRun(
      try privateScenario(seed: seed, privacy: "{kind: central_gaussian, clip: 0.5}", secure: true))
    #expect(run.summary.roundsCommitted == 5, "seed \(seed)")
    #expect(run.rounds.allSatisfy { $0.epsilon != nil }, "seed \(seed)")
    #expect(!run.steps.isEmpty, "seed \(seed): the sum came from secure aggregation")
  }

  @Test func adaptiveClippingRunsReproducibly() async throws {
    let seed: UInt64 = 34
    let adaptive = try privateScenario(
      seed: seed, privacy: "{kind: central_gaussian, clip: 0.5, noise_multiplier: 0.5, adaptive_clipping: {}}"
    )
    let run = try await SecureRun(adaptive)
    #expect(run.summary.roundsCommitted == 5, "seed \(seed)")
    let again = try await SecureRun(adaptive)
    #expect(again.summary.checkpointSHA256 == run.summary.checkpointSHA256, "seed \(seed)")
    // The clip moves after round 1, so later rounds clip differently from a fixed clip of 0.5.
    let fixed = try await SecureRun(
      try privateScenario(seed: seed, privacy: "{kind: central_gaussian, clip: 0.5, noise_multiplier: 0.5}"))
    #expect(fixed.summary.checkpointSHA256 != run.summary.checkpointSHA256, "seed \(seed)")
  }
}
