import CohortCore
import CohortSimulator
import CohortStore
import Foundation
import Logging
import Testing

/// 60 devices training in `server.mode: async` (FedBuff): `versions` buffer applications.
func asyncScenario(
  seed: UInt64 = 7, versions: Int = 4, async: String = "{concurrency: 8, buffer: 3}",
  strategy: String = "{kind: fedavg}", privacy: String? = nil, dropout: Double = 0.1, compute: String = "100"
) throws -> Scenario {
  try Scenario.parse(
    yaml: """
      plan:
        name: small-async
        model: {kind: logistic_regression, inputs: 60, classes: 10}
        device: {epochs: 1, batch_size: 10, optimizer: {kind: sgd, learning_rate: 0.05}}
        server:
          rounds: \(versions)
          mode: async
          async: \(async)
          strategy: \(strategy)
      \(privacy.map { "  privacy: \($0)" } ?? "")
      data: {kind: synthetic_fedprox, alpha: 0.5, beta: 0.5, devices: 60, max_samples: 120}
      partition: {kind: natural}
      devices:
        dropout: \(dropout)
        check_in_interval: 1m
        compute: {kind: lognormal, median: \(compute), sigma: 0.8}
      seed: \(seed)
      """, file: "small-async.yaml")
}

/// A run of `scenario` in a fresh in-memory store: its summary, rows and store.
func simulateAsync(_ scenario: Scenario) async throws -> (
  SimulationSummary, [RoundRecord], ResultsStore, RunID
) {
  let store = try ResultsStore.inMemory()
  let run = try store.createRun(name: "t", scenario: scenario, createdAt: Date(timeIntervalSince1970: 0))
  let summary = try await Simulation(
    scenario: scenario, store: store, run: run, logger: Logger(label: "test")
  )
  .run()
  return (summary, try store.rounds(run), store, run)
}

@Suite struct AsyncSimulationTests {
  @Test func theLastVersionIsEvaluatedWhateverTheSchedule() async throws {
    var scenario = try asyncScenario(versions: 5)
    scenario.plan.server.evaluation.every = 4
    let (summary, rounds, _, _) = try await simulateAsync(scenario)
    #expect(rounds.filter { $0.evalAccuracy != nil }.map(\.round) == [4, 5], "\(rounds)")
    #expect(summary.finalAccuracy == rounds.last?.evalAccuracy)
  }

  @Test func versionsAreCommittedWithTheirStaleness() async throws {
    let (summary, rounds, store, run) = try await simulateAsync(try asyncScenario(versions: 5))
    #expect(summary.roundsCommitted == 5 && summary.roundsAttempted == 5)
    #expect(rounds.map(\.round) == [1, 2, 3, 4, 5])
    var previousEnd = 0.0
    for r in rounds {
      let note: Comment = "\(r)"
      #expect(r.outcome == .committed && r.selected == 3 && r.reported == 3, note)
      // Staleness is measured in versions: at most the versions applied so far.
      let mean = try #require(r.meanStaleness, note)
      let maximum = try #require(r.maximumStaleness, note)
      #expect(mean >= 0 && mean <= Double(maximum) && maximum <= r.round - 1, note)
      #expect(r.startedAt == previousEnd && r.endedAt > r.startedAt, note)
      #expect(abs(r.durationSeconds - (r.endedAt - r.startedAt)) < 1e-9, note)
      // The folded updates' uploads (610 Float32 values each) arrived in this interval.
      #expect(r.bytesUp >= 3 * 610 * 4 && r.bytesDown > 0, note)
      #expect(r.evalAccuracy != nil && r.trainLoss != nil, note)
      // What the version cost on the machine's clock is recorded, as for a round.
      #expect((r.realSeconds ?? -1) >= 0, note)
      previousEnd = r.endedAt
    }
    // Later versions fold updates from devices admitted before earlier applications.
    #expect(rounds.contains { ($0.maximumStaleness ?? 0) > 0 }, "\(rounds)")
    // Each version has its checkpoint; the last is the summary's model.
    let last = try store.checkpoint(run, round: 5)
    #expect(last.weights.sha256 == summary.checkpointSHA256)
    #expect(summary.tooStale == 0)
  }

  @Test func theSameSeedGivesTheSameModel() async throws {
    let a = try await simulateAsync(try asyncScenario(seed: 11))
    let b = try await simulateAsync(try asyncScenario(seed: 11))
    let c = try await simulateAsync(try asyncScenario(seed: 12))
    #expect(a.0.checkpointSHA256 == b.0.checkpointSHA256)
    // The same rows, but for what each version cost on the machine's clock.
    func simulated(_ rows: [RoundRecord]) -> [RoundRecord] {
      rows.map {
        var r = $0
        r.realSeconds = nil
        return r
      }
    }
    #expect(simulated(a.1) == simulated(b.1))
    #expect(a.0.checkpointSHA256 != c.0.checkpointSHA256)
  }

  @Test func tooStaleUpdatesAreRefusedAndCounted() async throws {
    // Buffers of one and no staleness allowed: of the devices training at once, only the first to
    // report counts; every other report trained on a version that is gone by then.
    let scenario = try asyncScenario(
      versions: 4, async: "{concurrency: 6, buffer: 1, max_staleness: 0}", dropout: 0, compute: "20")
    let (summary, rounds, _, _) = try await simulateAsync(scenario)
    #expect(summary.roundsCommitted == 4)
    #expect(rounds.allSatisfy { $0.maximumStaleness == 0 && $0.meanStaleness == 0 }, "\(rounds)")
    let late = rounds.map(\.late).reduce(0, +)
    #expect(late > 0, "\(rounds)")
    // Refusals after the last version are counted by the buffer but belong to no row.
    #expect((summary.tooStale ?? -1) >= late)
  }

  @Test func serverOptimizersAndCentralPrivacyRun() async throws {
    let adam = try await simulateAsync(
      try asyncScenario(versions: 3, strategy: "{kind: fedadam, server_learning_rate: 0.1}"))
    #expect(adam.0.roundsCommitted == 3)
    let dp = try asyncScenario(
      versions: 3, privacy: "{kind: central_gaussian, clip: 0.5, noise_multiplier: 0.5}")
    let a = try await simulateAsync(dp)
    let b = try await simulateAsync(dp)
    #expect(a.0.roundsCommitted == 3 && a.0.checkpointSHA256 == b.0.checkpointSHA256)
    #expect(a.1.allSatisfy { $0.epsilon == nil })
    let plain = try await simulateAsync(
      try asyncScenario(versions: 3, privacy: "{kind: central_gaussian, clip: 0.5, noise_multiplier: 0}"))
    #expect(plain.0.checkpointSHA256 != a.0.checkpointSHA256)
    // η_g scales the step: another rate, another model.
    let half = try await simulateAsync(
      try asyncScenario(versions: 3, async: "{concurrency: 8, buffer: 3, server_learning_rate: 0.5}"))
    let full = try await simulateAsync(try asyncScenario(versions: 3))
    #expect(half.0.checkpointSHA256 != full.0.checkpointSHA256)
  }
}
