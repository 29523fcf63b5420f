import CohortCore
import CohortSimulator
import CohortStore
import Foundation
import Logging
import Testing

/// Cohort sampling in the simulator: uniform by default, every device of a small federation in
/// every round, `rounds` counting committed rounds.
@Suite struct CohortSamplingSimulationTests {
  /// `devices` devices with few examples each; `goal` of them per round.
  func scenario(
    devices: Int, goal: Int, overSelection: Double = 1, rounds: Int, sampling: String? = nil,
    seed: UInt64 = 5,
    checkInInterval: String = "2m", dropout: Double = 0
  ) throws -> Scenario {
    let samplingKey = sampling.map { ", sampling: \($0)" } ?? ""
    return try Scenario.parse(
      yaml: """
        plan:
          name: sampling
          model: {kind: logistic_regression, inputs: 60, classes: 10}
          device: {epochs: 1, batch_size: 10, optimizer: {kind: sgd, learning_rate: 0.05}}
          server:
            rounds: \(rounds)
            cohort: {goal: \(goal), over_selection: \(overSelection), minimum_fraction: 0.8\(samplingKey)}
            evaluation: {every: 1000}
        data: {kind: synthetic_fedprox, alpha: 0, beta: 0, iid: true, devices: \(devices), max_samples: 51}
        partition: {kind: natural}
        devices:
          compute: {kind: lognormal, median: 100, sigma: 0.5}
          check_in_interval: \(checkInInterval)
          dropout: \(dropout)
        seed: \(seed)
        """, file: "sampling.yaml")
  }

  func run(_ scenario: Scenario) async throws -> (SimulationSummary, ResultsStore, RunID) {
    let store = try ResultsStore.inMemory()
    let run = try store.createRun(name: "t", scenario: scenario, createdAt: Date(timeIntervalSince1970: 0))
    let summary = try await Simulation(
      scenario: scenario, store: store, run: run, logger: Logger(label: "test")
    )
    .run()
    return (summary, store, run)
  }

  /// Standard deviation of the devices' selection counts, devices never selected included.
  func participationDeviation(_ store: ResultsStore, _ run: RunID, devices: Int) throws -> Double {
    var counts = [Int](repeating: 0, count: devices)
    for d in try store.devices(run) { counts[d.device] = d.participations }
    let mean = Double(counts.reduce(0, +)) / Double(devices)
    let variance = counts.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / Double(devices)
    return variance.squareRoot()
  }

  @Test func uniformCohortsSpreadParticipationAsUniformSamplingDoes() async throws {
    // 200 rounds of 100 of 1,000 devices at a 2-minute check-in interval.
    let s = try scenario(devices: 1000, goal: 100, rounds: 200)
    let (summary, store, run) = try await run(s)
    #expect(summary.roundsCommitted == 200, "seed \(s.seed)")
    let deviation = try participationDeviation(store, run, devices: 1000)
    // Selection counts under uniform sampling: Binomial(200, 0.1), standard deviation √18 ≈ 4.24.
    let uniform = (200 * 0.1 * 0.9).squareRoot()
    #expect(deviation <= 1.3 * uniform, "seed \(s.seed): deviation \(deviation) vs uniform \(uniform)")
  }

  @Test func threeDevicesTakePartInEveryOneOfTwentyRounds() async throws {
    for sampling in [nil, "check_in"] {
      let s = try scenario(devices: 3, goal: 3, overSelection: 1.3, rounds: 20, sampling: sampling)
      let (summary, store, run) = try await run(s)
      let rounds = try store.rounds(run)
      let story = rounds.map {
        "\($0.round) \($0.outcome) \($0.abandonReason ?? "") \($0.selected)/\($0.reported)"
      }
      // Uniform sampling starts every round with all three; check-in order may first miss a
      // round or two while the devices' first spontaneous check-ins trickle in, and then, since
      // each device checks in again as soon as it has reported, never again.
      let attempts = sampling == nil ? 20 : 22
      #expect(
        summary.roundsCommitted == 20 && summary.roundsAttempted <= attempts,
        "sampling \(sampling ?? "default"): \(story)")
      #expect(
        rounds.filter { $0.outcome == .committed }.allSatisfy { $0.reported == 3 },
        "sampling \(sampling ?? "default")")
    }
  }

  @Test func roundsCountCommittedRoundsAndARunThatCommitsNothingEnds() async throws {
    // Every device (nearly) drops out of every round: nothing commits, and the attempt budget
    // (3 × rounds) ends the run instead of looping forever.
    let s = try scenario(devices: 20, goal: 5, rounds: 4, dropout: 0.99)
    let (summary, _, _) = try await run(s)
    #expect(summary.roundsCommitted == 0 && summary.roundsAttempted == 12, "seed \(s.seed)")
  }
}
