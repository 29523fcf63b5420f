import CohortCore
import CohortSimulator
import CohortStore
import CohortTesting
import Foundation
import Logging
import Testing

/// `cohort simulate` keeps each reporting device's evaluation, and they sum to the round's
/// federated evaluation.
@Suite struct DeviceEvaluationSimulationTests {
  @Test func everyReportingDeviceEvaluationIsStored() async throws {
    let dir = TemporaryDirectory()
    typealias F = FederatedEvaluationTests
    dir.write("train.csv", F.csv(F.examples(perUser: 20, purpose: "train"), clientColumn: true))
    dir.write("test.csv", F.csv(F.examples(perUser: 5, purpose: "test"), clientColumn: true))
    let scenario = try F.scenario(
      "{kind: csv, path: train.csv, client_column: user, test_path: test.csv}", in: dir)
    let store = try ResultsStore.inMemory()
    let run = try store.createRun(name: "t", scenario: scenario, createdAt: Date(timeIntervalSince1970: 0))
    _ = try await Simulation(scenario: scenario, store: store, run: run, logger: Logger(label: "test")).run()
    let rounds = try store.rounds(run)
    let evaluations = try store.deviceEvaluations(run)
    #expect(rounds.count == 3)
    for r in rounds {
      let mine = evaluations.filter { $0.round == r.round }
      let note: Comment = "round \(r.round): \(r) \(mine)"
      // Every reporting device evaluated on its five test examples, once.
      #expect(mine.count == r.reported && r.reported == 4, note)
      #expect(
        Set(mine.map(\.device)).count == mine.count && mine.allSatisfy { (0..<6).contains($0.device) }, note)
      #expect(mine.allSatisfy { $0.examples == 5 && (0...1).contains($0.accuracy) && $0.loss.isFinite }, note)
      // Their example-weighted means are the round's federated evaluation.
      let examples = mine.map(\.examples).reduce(0, +)
      #expect(examples == r.federatedEvalExamples, note)
      let accuracy = mine.map { $0.accuracy * Double($0.examples) }.reduce(0, +) / Double(examples)
      let loss = mine.map { $0.loss * Double($0.examples) }.reduce(0, +) / Double(examples)
      #expect(abs(accuracy - (r.federatedEvalAccuracy ?? -1)) < 1e-12, note)
      #expect(abs(loss - (r.federatedEvalLoss ?? -1)) < 1e-12, note)
    }
  }
}
