import CohortCore
import CohortSimulator
import CohortStore
import Foundation
import Logging
import Testing

/// 120 devices, 12 per round, 4 rounds: small enough for a debug build. `planKeys` are extra
/// lines of the plan (`secure_aggregation: …`, `compression: …`, `privacy: …`).
func smallScenario(seed: UInt64, dropout: Double = 0.1, rounds: Int = 4, planKeys: [String] = []) throws
  -> Scenario
{
  let extra = planKeys.map { "\n  " + $0 }.joined()
  return try Scenario.parse(
    yaml: """
      plan:
        name: small
        model: {kind: logistic_regression, inputs: 60, classes: 10}
        device: {epochs: 1, batch_size: 10, optimizer: {kind: sgd, learning_rate: 0.05}}
        server:
          rounds: \(rounds)
          cohort: {goal: 12, over_selection: 1.25, minimum_fraction: 0.75}\(extra)
      data: {kind: synthetic_fedprox, alpha: 0.5, beta: 0.5, devices: 120, max_samples: 150}
      partition: {kind: natural}
      devices: {dropout: \(dropout), check_in_interval: 1m}
      seed: \(seed)
      """, file: "small.yaml")
}

func simulate(_ scenario: Scenario) async throws -> (SimulationSummary, [RoundRecord]) {
  let store = try ResultsStore.inMemory()
  let run = try store.createRun(name: "t", scenario: scenario, createdAt: Date(timeIntervalSince1970: 0))
  let summary = try await Simulation(
    scenario: scenario, store: store, run: run, logger: Logger(label: "test")
  ).run()
  return (summary, try store.rounds(run))
}

@Suite struct SimulationTests {
  @Test func roundsRunThroughTheProtocolAndAreRecorded() async throws {
    let (summary, rounds) = try await simulate(try smallScenario(seed: 3))
    #expect(summary.roundsAttempted == 4 && rounds.count == 4)
    for r in rounds where r.outcome == .committed {
      #expect(r.selected == 15, "round \(r.round): \(r)")
      // The goal closes the round; with dropouts, everyone having reported or dropped does.
      #expect((9...12).contains(r.reported) && r.reported + r.dropped <= r.selected, "round \(r.round): \(r)")
      #expect(r.bytesDown == r.selected * 610 * 4 && r.bytesUp >= r.reported * 610 * 4)
      #expect(r.evalAccuracy != nil && r.trainLoss != nil)
      // Natural synthetic devices hold test examples: the cohort evaluated the model it received.
      #expect((r.federatedEvalExamples ?? 0) > 0)
      #expect(r.endedAt > r.startedAt)
    }
    #expect(summary.virtualSeconds > 0 && summary.localTrainings >= 4 * 12)
  }

  @Test func aSelectionWindowEndingDuringReportingDoesNotStallTheRun() async throws {
    // Seed 34: round 5's selection window ends while round 4 still reports; the run used to
    // re-fire that past deadline forever (virtual time stood still at 89 s).
    let (summary, _) = try await simulate(try smallScenario(seed: 34, dropout: 0.1, rounds: 6))
    #expect(summary.roundsAttempted == 6, "seed 34")
  }

  @Test func sameSeedSameModelOtherSeedOtherModel() async throws {
    let a = try await simulate(try smallScenario(seed: 3)).0
    let b = try await simulate(try smallScenario(seed: 3)).0
    let c = try await simulate(try smallScenario(seed: 4)).0
    #expect(a.checkpointSHA256 == b.checkpointSHA256, "seed 3 twice")
    #expect(a.checkpointSHA256 != c.checkpointSHA256, "seeds 3 and 4")
  }

  @Test func everyoneDroppingOutAbandonsRoundsAndKeepsTheModel() async throws {
    let (summary, rounds) = try await simulate(try smallScenario(seed: 3, dropout: 0.99, rounds: 2))
    #expect(rounds.allSatisfy { $0.outcome == .abandoned && $0.abandonReason == "too_few_reports" })
    #expect(summary.roundsCommitted == 0)
  }
}

@Suite struct StrategySimulationTests {
  /// Every strategy kind runs through the simulator: rounds commit, the model learns something,
  /// and a stateful strategy (server optimizer, SCAFFOLD's control variates) is deterministic.
  @Test(arguments: [
    "fedavgm", "fedprox, mu: 0.1", "fedadagrad, server_learning_rate: 0.1",
    "fedadam, server_learning_rate: 0.01",
    "fedyogi, server_learning_rate: 0.01", "fedmedian", "fedtrimmedavg, beta: 0.2", "krum, byzantine: 1",
    "multikrum, byzantine: 1", "bulyan, byzantine: 1", "qfedavg, q: 1", "scaffold",
  ])
  func strategyRunsInSimulation(_ strategy: String) async throws {
    let yaml = """
      plan:
        name: strategies
        model: {kind: logistic_regression, inputs: 60, classes: 10}
        device: {epochs: 1, batch_size: 10, optimizer: {kind: sgd, learning_rate: 0.05}}
        server:
          rounds: 4
          cohort: {goal: 12, over_selection: 1.0, minimum_fraction: 1}
          strategy: {kind: \(strategy)}
      data: {kind: synthetic_fedprox, alpha: 0, beta: 0, iid: true, devices: 120, max_samples: 150}
      devices: {check_in_interval: 1m}
      seed: 8
      """
    let scenario = try Scenario.parse(yaml: yaml, file: "strategies.yaml")
    let (a, rounds) = try await simulate(scenario)
    let b = try await simulate(scenario).0
    #expect(rounds.filter { $0.outcome == .committed }.count == 4, "\(strategy): \(rounds)")
    #expect((a.finalAccuracy ?? 0) > 0.15, "\(strategy): final accuracy \(a.finalAccuracy ?? -1)")
    #expect(a.checkpointSHA256 == b.checkpointSHA256, "\(strategy) is not deterministic")
  }
}

@Suite struct WholePopulationTests {
  /// Every device is in every round: while a round runs nobody is free to check in, and
  /// check-ins must resume when the devices are released.
  @Test func aCohortAsLargeAsThePopulationKeepsGoing() async throws {
    let scenario = try Scenario.parse(
      yaml: """
        plan:
          name: everyone
          model: {kind: logistic_regression, inputs: 60, classes: 10}
          server:
            rounds: 3
            cohort: {goal: 12, over_selection: 1.0, minimum_fraction: 1}
            windows: {selection: 10m}
        data: {kind: synthetic_fedprox, alpha: 0, beta: 0, iid: true, devices: 12, max_samples: 100}
        devices: {check_in_interval: 1m}
        seed: 2
        """, file: "everyone.yaml")
    let (summary, rounds) = try await simulate(scenario)
    #expect(summary.roundsCommitted == 3, "\(rounds)")
    #expect(rounds.allSatisfy { $0.selected == 12 && $0.reported == 12 })
  }
}
