import CohortCore
import CohortOperations
import CohortProtocol
import CohortServer
import CohortServing
import CohortStore
import Foundation
import Logging
import Testing

/// A fixed central evaluation, standing in for `serve --test-data`.
private struct FixedEvaluator: CentralEvaluator {
  func evaluate(_ weights: Weights) async -> Evaluation {
    Evaluation(loss: 0.75, accuracy: 0.625, examples: 8)
  }
}

@Suite struct MetricsExpositionTests {
  /// Every metric a server exports carries `# HELP`, and after a commit the gauges say where the
  /// run stands: its last committed round and that model's central accuracy and loss.
  @Test func everyMetricHasHelpAndTheLastCommitIsAGauge() async throws {
    let endpoint = MetricsEndpoint()
    let plan = Plan(
      name: "metrics", model: ModelPlan(kind: .logisticRegression, inputShape: [1], classes: 2),
      server: ServerPlan(
        rounds: 2, cohort: CohortPlan(goal: 2, overSelection: 1.5, minimumFraction: 1),
        windows: WindowsPlan(selection: 60, reporting: 300)))
    let store = try ResultsStore.inMemory()
    // Built, not started: its transport registers its metrics; the coordinator is driven directly.
    let server = try FederationServer(
      configuration: .init(plan: plan, security: .insecureLoopback), store: store,
      evaluator: FixedEvaluator(),
      logger: Logger(label: "test"), metrics: endpoint.metricsFactory)
    let coordinator = server.coordinator
    await coordinator.start()
    for d in 1...3 { _ = await coordinator.checkIn(CheckIn(device: d, population: "default")) }
    let layout = await coordinator.global.layout
    for d in 1...2 {
      _ = await coordinator.report(
        UpdateReport(
          device: d, round: 1,
          update: Weights(layout: layout, values: [Float](repeating: 0.5, count: layout.count)),
          examples: 1, trainLoss: 0.5, bytes: 8))
    }
    #expect(await coordinator.committedRounds == 1)
    // The round's central evaluation is stored, as a simulation's is.
    let run = try #require(server.run)
    let round = try #require(try store.rounds(run).first)
    #expect(round.evalAccuracy == 0.625 && round.evalLoss == 0.75)

    let text = String(decoding: endpoint.registry.emitToBuffer(), as: UTF8.self)
    let lines = text.split(separator: "\n")
    let typed = lines.filter { $0.hasPrefix("# TYPE ") }.map { $0.split(separator: " ")[2] }
    #expect(typed.count >= 15, "\(text)")
    for name in typed {
      #expect(lines.contains { $0.hasPrefix("# HELP \(name) ") }, "\(name) has no HELP:\n\(text)")
    }
    #expect(lines.contains("cohort_last_committed_round 1.0"), "\(text)")
    #expect(lines.contains("cohort_last_committed_accuracy 0.625"), "\(text)")
    #expect(lines.contains("cohort_last_committed_loss 0.75"), "\(text)")
    // No differential privacy, so no ε gauge that could only read 0.
    #expect(!text.contains("cohort_privacy_epsilon"), "\(text)")
  }
}
