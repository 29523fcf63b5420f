import CohortCore
import Foundation
import GRDB
import Testing

@testable import CohortStore

@Suite struct RunLabelsTests {
  @Test func runIDListsTakeRangesOnceEachInOrder() {
    #expect(RunID.list("3") == [RunID(3)])
    #expect(RunID.list("3-5") == [RunID(3), RunID(4), RunID(5)])
    #expect(RunID.list("1,3-5") == [1, 3, 4, 5].map(RunID.init))
    #expect(RunID.list("5,3-5,1") == [5, 3, 4, 1].map(RunID.init))
    for bad in ["", ",", "a", "5-3", "-1", "1-", "1,,2", "0-1000000000000", "1 2"] {
      #expect(RunID.list(bad) == nil, "\(bad)")
    }
    #expect(RunID.compact([1, 3, 4, 5, 9, 8].map(RunID.init)) == "1,3-5,8-9")
    #expect(RunID.compact([]) == "")
  }

  @Test func labelsAreStoredAndOldFilesGainTheColumns() throws {
    try withTemporaryDirectory { dir in
      let path = dir.appendingPathComponent("old.sqlite").path
      // A file written before labels existed: the first three migrations and one run.
      do {
        let queue = try DatabaseQueue(path: path)
        try Schema.migrator.migrate(queue, upTo: "v3: secure aggregation steps")
        try queue.write { db in
          try db.execute(sql: "INSERT INTO plans VALUES ('abc', 'old-plan', '{}')")
          let scenario = String(decoding: try JSONEncoder().encode(makeScenario()), as: UTF8.self)
          try db.execute(
            sql: """
              INSERT INTO runs (name, created_at, scenario_json, plan_sha256, seed, status)
              VALUES ('old seed 1', '2026-03-01T12:00:00.000Z', ?, 'abc', 1, 'finished')
              """, arguments: [scenario])
        }
      }
      let store = try ResultsStore(path: path)
      let old = try #require(try store.runs().first)
      #expect(old.name == "old seed 1" && old.labels == RunLabels())
      let labels = RunLabels(experiment: "e", scenario: "tiny", variant: "fedadam")
      let new = try store.createRun(
        name: "x", scenario: makeScenario(), createdAt: fixedDate(), labels: labels)
      #expect(try store.run(new).labels == labels)
      #expect(try store.runs().map(\.labels) == [RunLabels(), labels])
    }
  }

  @Test func fingerprintsIgnoreOnlyTheSeed() throws {
    let store = try ResultsStore.inMemory()
    let a = try store.createRun(name: "a", scenario: makeScenario(seed: 1), createdAt: fixedDate())
    let b = try store.createRun(name: "b", scenario: makeScenario(seed: 2), createdAt: fixedDate())
    let c = try store.createRun(
      name: "c", scenario: makeScenario(seed: 1, rounds: 11), createdAt: fixedDate())
    #expect(try store.configurationFingerprint(a) == store.configurationFingerprint(b))
    #expect(try store.configurationFingerprint(a) != store.configurationFingerprint(c))
  }

  @Test func deletingRunsRemovesTheirRowsEverywhereAndNothingElse() throws {
    try withTemporaryDirectory { dir in try deleting(at: dir.appendingPathComponent("d.sqlite").path) }
  }

  func deleting(at path: String) throws {
    let store = try ResultsStore(path: path)
    var runs: [RunID] = []
    for (i, plan) in ["kept-plan", "gone-plan", "gone-plan"].enumerated() {
      let run = try store.createRun(
        name: "r\(i)", scenario: makeScenario(planName: plan), createdAt: fixedDate())
      for round in 1...3 {
        try store.commitRound(
          run, record(round, accuracy: 0.5), checkpoint: makeWeights(Float(round)),
          devices: [DeviceParticipation(device: round, reported: true, dropped: false)],
          resumeState: Data([1, 2, 3]),
          secureAggregation: [
            SecureAggregationStepRecord(
              step: "advertise_keys", entered: 5, dropped: 0, bytesUp: 10, bytesDown: 10, serverSeconds: 0)
          ])
      }
      runs.append(run)
    }
    let missing = storeError { try store.deleteRuns([runs[1], RunID(99)]) }
    #expect(missing?.message.contains("no run 99") == true)
    #expect(try store.runs().count == 3)  // nothing deleted

    try store.deleteRuns([runs[1], runs[2]])
    #expect(try store.runs().map(\.id) == [runs[0]])
    #expect(try store.rounds(runs[0]).count == 3 && store.devices(runs[0]).count == 3)
    #expect(try store.latestCheckpoint(runs[0])?.round == 3)
    #expect(try store.secureAggregationSteps(runs[0]).count == 3)
    for gone in runs[1...] {
      #expect(storeError { try store.rounds(gone) } != nil)
    }
    // No row of a deleted run is left in any table, and its plan went with it.
    let queue = try DatabaseQueue(path: path)
    try queue.read { db in
      for table in ["rounds", "checkpoints", "devices", "secure_aggregation_steps"] {
        let left = try Int.fetchOne(
          db, sql: "SELECT count(*) FROM \(table) WHERE run_id <> ?", arguments: [runs[0].rawValue])
        #expect(left == 0, "\(table)")
      }
      #expect(try String.fetchAll(db, sql: "SELECT name FROM plans") == ["kept-plan"])
    }
    let created = try store.createRun(
      name: "after", scenario: makeScenario(planName: "kept-plan"), createdAt: fixedDate())
    #expect(created.rawValue > runs[2].rawValue)  // ids are never reused
  }
}
