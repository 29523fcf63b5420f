import CohortCore
import CohortStore
import Foundation
import Testing

/// A fresh directory for one test, removed when `body` returns.
func withTemporaryDirectory<T>(_ body: (URL) throws -> T) throws -> T {
  let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cohort-store-\(UUID().uuidString)")
  try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
  defer { try? FileManager.default.removeItem(at: dir) }
  return try body(dir)
}

/// 2026-03-01T12:00:00Z plus `seconds`: fixed times, no clock.
func fixedDate(_ seconds: Double = 0) -> Date {
  Date(timeIntervalSince1970: 1_772_366_400 + seconds)
}

func makeScenario(planName: String = "tiny-fedavg", seed: UInt64 = 42, rounds: Int = 10) -> Scenario {
  let plan = Plan(
    name: planName, model: ModelPlan(kind: .logisticRegression, inputShape: [4], classes: 3),
    server: ServerPlan(rounds: rounds, cohort: CohortPlan(goal: 5)))
  var devices = PopulationPlan(count: 20)
  devices.dropout = 0.1
  return Scenario(
    planPath: "/plans/\(planName).yaml", plan: plan,
    data: .syntheticFedProx(.init(alpha: 1, beta: 1, devices: 20)), partition: .dirichlet(alpha: 0.5),
    devices: devices, seed: seed)
}

let modelLayout = WeightsLayout([TensorSpec("dense/kernel", [4, 3]), TensorSpec("dense/bias", [3])])

/// Weights whose values include the awkward ones a blob must keep bit for bit.
func makeWeights(_ salt: Float, layout: WeightsLayout = modelLayout) -> Weights {
  var values = (0..<layout.count).map { Float($0) * 0.125 + salt }
  let specials: [Float] = [
    -0.0, .leastNonzeroMagnitude, .greatestFiniteMagnitude, .infinity,
    Float(bitPattern: 0x7fc0_1234),  // a NaN with a payload
  ]
  for (i, s) in specials.enumerated() where i < values.count { values[i] = s }
  return Weights(layout: layout, values: values)
}

func bits(_ w: Weights) -> [UInt32] { w.values.map(\.bitPattern) }

func record(
  _ round: Int, outcome: RoundOutcome = .committed, accuracy: Double? = nil, reason: String? = nil
) -> RoundRecord {
  RoundRecord(
    round: round, startedAt: Double(round) * 100, endedAt: Double(round) * 100 + 42.5, outcome: outcome,
    abandonReason: reason, selected: 7, reported: outcome == .committed ? 5 : 2, dropped: 1, late: 1,
    rejected: 0, bytesDown: 7 * 60, bytesUp: 5 * 60,
    trainLoss: outcome == .committed ? 1.0 / Double(round) : nil,
    evalLoss: accuracy.map { 1 - $0 }, evalAccuracy: accuracy, federatedEvalLoss: accuracy.map { 1.1 - $0 },
    federatedEvalAccuracy: accuracy.map { $0 - 0.01 }, federatedEvalExamples: accuracy == nil ? nil : 250,
    epsilon: nil, durationSeconds: 42.5, realSeconds: 0.25)
}

/// The CohortError `body` throws, failing the test when it throws none or another error.
func storeError<T>(
  _ body: () throws -> T, sourceLocation: SourceLocation = #_sourceLocation
) -> CohortError? {
  do {
    _ = try body()
    Issue.record("expected a CohortError, but nothing was thrown", sourceLocation: sourceLocation)
  } catch let error as CohortError {
    return error
  } catch {
    Issue.record("expected a CohortError, got \(error)", sourceLocation: sourceLocation)
  }
  return nil
}
