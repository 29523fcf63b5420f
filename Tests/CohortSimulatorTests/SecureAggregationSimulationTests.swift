import CohortCore
import CohortSimulator
import CohortStore
import Foundation
import Logging
import Testing

/// The small scenario of SimulationTests with or without secure aggregation; `extra` continues
/// the secure_aggregation mapping (and may close it to add further plan keys).
func secureScenario(seed: UInt64, enabled: Bool, dropout: Double, extra: String = "") throws -> Scenario {
  try smallScenario(
    seed: seed, dropout: dropout, planKeys: ["secure_aggregation: {enabled: \(enabled)\(extra)}"])
}

struct SecureRun {
  var summary: SimulationSummary
  var rounds: [RoundRecord]
  var steps: [(round: Int, SecureAggregationStepRecord)]
  var model: Weights

  init(_ scenario: Scenario) async throws {
    let store = try ResultsStore.inMemory()
    let run = try store.createRun(name: "t", scenario: scenario, createdAt: Date(timeIntervalSince1970: 0))
    summary = try await Simulation(scenario: scenario, store: store, run: run, logger: Logger(label: "test"))
      .run()
    rounds = try store.rounds(run)
    steps = try store.secureAggregationSteps(run)
    model = try #require(try store.latestCheckpoint(run)).weights
  }
}

@Suite struct SecureAggregationSimulationTests {
  @Test func secureSumMatchesPlainFedAvgWithinTheEncoding() async throws {
    // Without dropouts the same devices are summed either way: the models differ only by the
    // 16-bit fixed-point encoding (one step is clip / 32767 per coordinate and device).
    let plain = try await SecureRun(try secureScenario(seed: 5, enabled: false, dropout: 0))
    let secure = try await SecureRun(try secureScenario(seed: 5, enabled: true, dropout: 0))
    #expect(plain.summary.roundsCommitted == 4 && secure.summary.roundsCommitted == 4)
    let gap = zip(plain.model.values, secure.model.values).map { abs($0 - $1) }.max() ?? 1
    // Each round's mean is off by at most n steps over Σ wᵢ (weights are examples / weight_cap,
    // about 0.1 each here): 12 · 3.1e-5 / 1.2 ≈ 3e-4, and training carries it into later rounds.
    #expect(gap < 1e-3, "seed 5: largest difference \(gap)")
    #expect(gap > 0, "seed 5: the encoding must leave some trace")
    let accuracyGap = abs((plain.summary.finalAccuracy ?? 0) - (secure.summary.finalAccuracy ?? 1))
    #expect(
      accuracyGap < 0.01,
      "seed 5: accuracy \(plain.summary.finalAccuracy ?? 0) vs \(secure.summary.finalAccuracy ?? 0)")
  }

  @Test func everyRoundRecordsItsProtocolSteps() async throws {
    let secure = try await SecureRun(try secureScenario(seed: 6, enabled: true, dropout: 0.2))
    let committed = secure.rounds.filter { $0.outcome == .committed }
    #expect(!committed.isEmpty)
    for r in committed {
      let steps = secure.steps.filter { $0.round == r.round }.map(\.1)
      #expect(
        steps.map(\.step) == ["advertise_keys", "share_keys", "masked_input", "unmasking"], "round \(r.round)"
      )
      #expect(steps.first?.entered == r.reported, "round \(r.round): every reporter enters the protocol")
      for (a, b) in zip(steps, steps.dropFirst()) {
        #expect(b.entered <= a.entered - a.dropped, "round \(r.round): \(a.step) → \(b.step)")
      }
      #expect(steps.allSatisfy { $0.bytesUp > 0 && $0.serverSeconds >= 0 })
      // No update travels in the clear: the round's upload bytes are the protocol's.
      #expect(r.bytesUp == steps.reduce(0) { $0 + $1.bytesUp }, "round \(r.round)")
    }
    // With 20% dropout spread over the steps, some device left mid-protocol in some round.
    #expect(secure.steps.contains { $0.1.dropped > 0 }, "seed 6")
  }

  @Test func secureRunsReplayFromTheirSeed() async throws {
    let a = try await SecureRun(try secureScenario(seed: 7, enabled: true, dropout: 0.1))
    let b = try await SecureRun(try secureScenario(seed: 7, enabled: true, dropout: 0.1))
    #expect(a.summary.checkpointSHA256 == b.summary.checkpointSHA256, "seed 7")
  }

  @Test func activeVariantAndCompleteGraphRunInSimulation() async throws {
    let secure = try await SecureRun(
      try secureScenario(seed: 8, enabled: true, dropout: 0.1, extra: ", variant: active, graph: complete"))
    #expect(secure.summary.roundsCommitted > 0)
    let steps = secure.steps.filter { $0.round == 1 }.map(\.1.step)
    #expect(steps.contains("consistency_check"), "seed 8: \(steps)")
  }
}

@Suite struct DistributedNoiseSimulationTests {
  @Test func distributedDiscreteGaussianRunsInsideSecureAggregation() async throws {
    let privacy = "privacy: {kind: distributed_discrete_gaussian, clip: 1.0, noise_multiplier: 0.5}"
    let distributed = try await SecureRun(
      try secureScenario(seed: 9, enabled: true, dropout: 0, extra: "}\n  \(privacy.dropLast())"))
    let central = try await SecureRun(
      try secureScenario(
        seed: 9, enabled: true, dropout: 0,
        extra: "}\n  privacy: {kind: central_gaussian, clip: 1.0, noise_multiplier: 0.5"))
    #expect(distributed.summary.roundsCommitted == 4, "seed 9")
    // The same accountant: ε after each round is the same for both mechanisms.
    let epsilons = distributed.rounds.map(\.epsilon)
    #expect(epsilons.allSatisfy { $0 != nil } && epsilons == central.rounds.map(\.epsilon), "seed 9")
    #expect(zip(epsilons, epsilons.dropFirst()).allSatisfy { ($0 ?? 0) < ($1 ?? 0) })
    // Different noise (from the devices, not the server), so a different model, but a model
    // that moved from the initial one by a bounded amount: the noisy mean of clipped updates.
    #expect(distributed.model.values != central.model.values)
    #expect(distributed.model.values.allSatisfy { $0.isFinite })
    // Each device's masked input is the padded, rotated encoding: 1,024 words (of the
    // mechanism's ring, 28 bits here), more than 610 words could take even at 32 bits.
    let masked = try #require(distributed.steps.first { $0.1.step == "masked_input" }?.1)
    #expect(masked.bytesUp / max(masked.entered - masked.dropped, 1) > 610 * 4 + 18, "seed 9")
  }
}
