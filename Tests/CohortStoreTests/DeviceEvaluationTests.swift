import CohortCore
import Foundation
import GRDB
import Testing

@testable import CohortStore

@Suite struct DeviceEvaluationTests {
  /// Device 3 reported and evaluated, 5 reported without evaluating, 8 dropped.
  static let cohort = [
    DeviceParticipation(
      device: 3, reported: true, dropped: false,
      evaluation: Evaluation(loss: 0.1 + 0.2, accuracy: 1.0 / 3.0, examples: 12)),
    DeviceParticipation(device: 5, reported: true, dropped: false),
    DeviceParticipation(device: 8, reported: false, dropped: true),
    DeviceParticipation(
      device: 11, reported: true, dropped: false,
      evaluation: Evaluation(loss: .leastNonzeroMagnitude, accuracy: 0, examples: 1)),
  ]

  @Test func evaluationsRoundTripBitForBitAndGoWithTheirRun() throws {
    try withTemporaryDirectory { dir in
      let path = dir.appendingPathComponent("e.sqlite").path
      do {
        let store = try ResultsStore(path: path)
        let run = try store.createRun(name: "r", scenario: makeScenario(), createdAt: fixedDate())
        try store.commitRound(run, record(1, accuracy: 0.5), checkpoint: nil, devices: Self.cohort)
        // A round whose devices did not evaluate has no rows.
        try store.commitRound(
          run, record(2), checkpoint: nil,
          devices: [DeviceParticipation(device: 3, reported: true, dropped: false)])
        try store.close()
      }
      let store = try ResultsStore(path: path)
      let run = RunID(1)
      let stored = try store.deviceEvaluations(run)
      #expect(
        stored == [
          DeviceEvaluationRecord(round: 1, device: 3, accuracy: 1.0 / 3.0, loss: 0.1 + 0.2, examples: 12),
          DeviceEvaluationRecord(
            round: 1, device: 11, accuracy: 0, loss: .leastNonzeroMagnitude, examples: 1),
        ])
      #expect(
        stored.map(\.loss.bitPattern) == [(0.1 + 0.2).bitPattern, Double.leastNonzeroMagnitude.bitPattern])
      // The device counters are what they were.
      #expect(try store.devices(run).map(\.reports) == [2, 1, 0, 1])
      try store.deleteRuns([run])
      let rows = try DatabaseQueue(path: path).read {
        try Int.fetchOne($0, sql: "SELECT count(*) FROM device_evaluations")
      }
      #expect(rows == 0)
    }
  }

  @Test func aFileFromBeforePerDeviceEvaluationsOpensAndGainsTheTable() throws {
    try withTemporaryDirectory { dir in
      let path = dir.appendingPathComponent("old.sqlite").path
      // A file written by the previous version: migrations up to v5, one run with one round.
      do {
        let queue = try DatabaseQueue(path: path)
        try Schema.migrator.migrate(queue, upTo: "v5: experiment, scenario and variant of a run")
        try queue.write { db in
          try db.execute(
            sql: """
              INSERT INTO plans (sha256, name, canonical_json) VALUES ('p', 'old', '{}');
              INSERT INTO runs (name, created_at, scenario_json, plan_sha256, seed)
                VALUES ('old run', '2026-03-01T12:00:00.000Z', '{}', 'p', 1);
              INSERT INTO rounds (run_id, round, started_at, ended_at, outcome, selected, reported, dropped,
                late, rejected, bytes_down, bytes_up, federated_eval_loss, federated_eval_accuracy,
                federated_eval_examples, duration_seconds)
                VALUES (1, 1, 0, 10, 'committed', 4, 4, 0, 0, 0, 10, 10, 0.7, 0.6, 40, 10);
              """)
        }
      }
      let store = try ResultsStore(path: path)
      let run = RunID(1)
      #expect(try store.deviceEvaluations(run).isEmpty)
      let old = try #require(try store.rounds(run).first)
      #expect(old.federatedEvalAccuracy == 0.6 && old.federatedEvalExamples == 40)
      try store.commitRound(run, record(2), checkpoint: nil, devices: Self.cohort)
      #expect(try store.deviceEvaluations(run).map(\.device) == [3, 11])
    }
  }
}
