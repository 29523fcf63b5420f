import CohortCore
import CohortML
import CohortStore
import CohortTesting
import Foundation
import Logging
import Testing

@testable import CohortSimulator

/// A run that starts from `model.initial`, and runs with the other device optimizers.
@Suite struct InitialModelSimulationTests {
  static let fixtures = repositoryRoot.appendingPathComponent("Tests/Fixtures/initial-weights")

  /// The values `Tests/Fixtures/initial-weights/make_initial.py` writes, recomputed: element k of
  /// tensor t is ((37k + 11t) mod 101 − 50) / 256, exact in Float32.
  static func fixtureValues(_ layout: WeightsLayout) -> [Float] {
    var values: [Float] = []
    for (t, tensor) in layout.tensors.enumerated() {
      values += (0..<tensor.count).map { k in Float((37 * k + 11 * t) % 101 - 50) / 256 }
    }
    return values
  }

  /// A scenario beside the fixture (so `initial: initial.safetensors` resolves to it) with an
  /// inline plan: an MLP 60 → 4 → 10 on synthetic data.
  func scenario(model: String, optimizer: String = "{kind: sgd, learning_rate: 0.05}", rounds: Int = 2) throws
    -> Scenario
  {
    try Scenario.parse(
      yaml: """
        plan:
          name: initial
          model: \(model)
          device: {epochs: 1, batch_size: 10, optimizer: \(optimizer)}
          server: {rounds: \(rounds), cohort: {goal: 6, over_selection: 1, minimum_fraction: 1}}
        data: {kind: synthetic_fedprox, alpha: 0.5, beta: 0.5, devices: 30, max_samples: 100}
        devices: {dropout: 0}
        seed: 8
        """, file: Self.fixtures.appendingPathComponent("scenario.yaml").path)
  }

  func simulation(_ scenario: Scenario) throws -> (Simulation, ResultsStore, RunID) {
    let store = try ResultsStore.inMemory()
    let run = try store.createRun(name: "t", scenario: scenario, createdAt: Date(timeIntervalSince1970: 0))
    return (
      try Simulation(scenario: scenario, store: store, run: run, logger: Logger(label: "test")), store, run
    )
  }

  @Test func aRunStartsFromTheGivenWeightsExactly() async throws {
    let s = try scenario(
      model: "{kind: mlp, inputs: 60, hidden: [4], classes: 10, initial: initial.safetensors}")
    #expect(s.plan.model.initial == Self.fixtures.appendingPathComponent("initial.safetensors").path)
    let (sim, store, run) = try simulation(s)
    let start = try sim.model(afterRound: 0)
    #expect(
      start.layout.tensors.map(\.name) == ["dense0.weight", "dense0.bias", "dense1.weight", "dense1.bias"])
    // Bit for bit what NumPy wrote, mapped from the file's name order to the model's layout.
    #expect(start.values.map(\.bitPattern) == Self.fixtureValues(start.layout).map(\.bitPattern))
    let summary = try await sim.run()
    #expect(summary.roundsCommitted == 2)
    // Round 1 trained from that model: the same run drawn from the seed ends elsewhere.
    let first = try store.checkpoint(run, round: 1).weights
    #expect(first != start)
    let drawn = try simulation(try scenario(model: "{kind: mlp, inputs: 60, hidden: [4], classes: 10}")).0
    #expect(try drawn.model(afterRound: 0) != start)
  }

  @Test func aFileThatDoesNotFitTheModelStopsTheRunBeforeItStarts() throws {
    // The fixture holds a 4-unit hidden layer; this plan's has 5.
    let s = try scenario(
      model: "{kind: mlp, inputs: 60, hidden: [5], classes: 10, initial: initial.safetensors}")
    do {
      _ = try simulation(s)
      Issue.record("a mismatched initial model was accepted")
    } catch let error as CohortError {
      #expect(error.code == .shapeMismatch)
      #expect(
        error.message.contains("tensor \"dense0.weight\" has shape [4, 60], expected [5, 60]"), "\(error)")
    }
  }

  @Test func initSchemesChangeOnlyTheStartingModel() throws {
    let zeros = try simulation(
      try scenario(model: "{kind: logistic_regression, inputs: 60, classes: 10, init: zeros}")
    ).0
    #expect(try zeros.model(afterRound: 0).values.allSatisfy { $0 == 0 })
    let auto = try simulation(
      try scenario(model: "{kind: logistic_regression, inputs: 60, classes: 10, init: auto}")
    ).0
    let unset = try simulation(try scenario(model: "{kind: logistic_regression, inputs: 60, classes: 10}")).0
    #expect(try auto.model(afterRound: 0) == unset.model(afterRound: 0))
  }

  @Test func adamWithACosineScheduleRunsAndRepeats() async throws {
    let s = try scenario(
      model: "{kind: logistic_regression, inputs: 60, classes: 10}",
      optimizer: "{kind: adam, learning_rate: 0.01, schedule: {kind: cosine}}", rounds: 3)
    #expect(s.plan.device.optimizer.schedule == .cosine(rounds: 3, minimumLearningRate: 0))
    let a = try await simulation(s).0.run()
    let b = try await simulation(s).0.run()
    #expect(a.roundsCommitted == 3 && a.checkpointSHA256 == b.checkpointSHA256)
    let sgd = try await simulation(
      try scenario(model: "{kind: logistic_regression, inputs: 60, classes: 10}", rounds: 3)
    ).0.run()
    #expect(sgd.checkpointSHA256 != a.checkpointSHA256)
  }
}
