import CohortCore
import Foundation
import GRDB
import Testing

@testable import CohortStore

@Suite struct RoundTimeAndRetentionTests {
  /// A file written before v4 kept the round's duration (simulated time, in a simulation) as
  /// `wall_seconds`: it opens, the column is renamed to `duration_seconds` with its values, and
  /// `real_seconds` is NULL for those old rounds.
  @Test func aFileWithWallSecondsOpensWithItsDurationsAndNoRealTime() throws {
    try withTemporaryDirectory { dir in
      let path = dir.appendingPathComponent("old.sqlite").path
      do {
        let old = try DatabaseQueue(path: path)
        try Schema.migrator.migrate(old, upTo: "v3: secure aggregation steps")
        try old.write { db in
          try db.execute(
            sql: """
              INSERT INTO plans (sha256, name, canonical_json) VALUES ('p', 'old', '{}');
              INSERT INTO runs (name, created_at, scenario_json, plan_sha256, seed)
                VALUES ('old run', '2026-03-01T12:00:00.000Z', '{}', 'p', 1);
              INSERT INTO rounds (run_id, round, started_at, ended_at, outcome, selected, reported, dropped,
                late, rejected, bytes_down, bytes_up, wall_seconds)
                VALUES (1, 1, 100, 160.5, 'committed', 3, 3, 0, 0, 0, 10, 10, 60.5);
              """)
        }
      }
      let store = try ResultsStore(path: path)
      let rounds = try store.rounds(RunID(1))
      #expect(rounds.map(\.durationSeconds) == [60.5])
      #expect(rounds.map(\.realSeconds) == [nil])
      // New rounds carry both.
      var next = record(2)
      next.realSeconds = 0.125
      try store.commitRound(RunID(1), next, checkpoint: nil, devices: [])
      #expect(try store.rounds(RunID(1)).last?.realSeconds == 0.125)
      #expect(RoundsCSV.render(try store.rounds(RunID(1))).hasPrefix("round,"))
      #expect(
        RoundsCSV.columns.suffix(4) == [
          "duration_seconds", "real_seconds", "mean_staleness", "max_staleness",
        ])
    }
  }

  @Test func retentionKeepsWhatItSaysAndAlwaysTheLatest() throws {
    #expect(CheckpointRetention("all") == .all && CheckpointRetention("last") == .last)
    #expect(CheckpointRetention("every:3") == .every(3))
    for bad in ["", "every:0", "every:-1", "every:", "some", "every:x"] {
      #expect(CheckpointRetention(bad) == nil)
    }

    func stored(_ retention: CheckpointRetention, before: Int = .max) throws -> [Int] {
      let store = try ResultsStore.inMemory()
      let run = try store.createRun(name: "r", scenario: makeScenario(), createdAt: fixedDate())
      for round in 1...7 {
        // Round 6 is abandoned: it has no checkpoint.
        let abandoned = round == 6
        try store.commitRound(
          run, record(round, outcome: abandoned ? .abandoned : .committed),
          checkpoint: abandoned ? nil : makeWeights(Float(round)), devices: [])
        try store.pruneCheckpoints(run, keeping: retention, before: before)
      }
      return try store.checkpointRounds(run)
    }
    #expect(try stored(.all) == [1, 2, 3, 4, 5, 7])
    #expect(try stored(.last) == [7])
    #expect(try stored(.every(2)) == [2, 4, 7])
    // Checkpoints a simulation's devices in flight still train from (round 3's model on) stay.
    #expect(try stored(.last, before: 3) == [3, 4, 5, 7])
  }

  @Test func closingLeavesOneSelfContainedFile() throws {
    try withTemporaryDirectory { dir in
      let path = dir.appendingPathComponent("r.sqlite").path
      let store = try ResultsStore(path: path, durability: .processCrash)
      let run = try store.createRun(name: "r", scenario: makeScenario(), createdAt: fixedDate())
      try store.commitRound(run, record(1), checkpoint: makeWeights(1), devices: [])
      #expect(FileManager.default.fileExists(atPath: path + "-wal"))
      try store.close()
      #expect(!FileManager.default.fileExists(atPath: path + "-wal"))
      #expect(!FileManager.default.fileExists(atPath: path + "-shm"))
      // Everything is in the main file.
      let reopened = try ResultsStore(path: path)
      #expect(try reopened.checkpointRounds(run) == [1])
    }
  }
}
