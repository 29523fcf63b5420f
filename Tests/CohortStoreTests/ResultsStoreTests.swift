import CohortCore
import CohortStore
import Foundation
import GRDB
import Testing

@Suite struct ResultsStoreTests {
  @Test func migrationsCreateTheSchemaAndAreIdempotentOnReopen() throws {
    try withTemporaryDirectory { dir in
      let path = dir.appendingPathComponent("results.sqlite").path
      let run: RunID
      do {
        let store = try ResultsStore(path: path)
        run = try store.createRun(name: "first", scenario: makeScenario(), createdAt: fixedDate())
      }
      #expect(FileManager.default.fileExists(atPath: path))
      for _ in 0..<2 {
        let reopened = try ResultsStore(path: path)
        #expect(try reopened.runs().map(\.id) == [run])
      }

      let db = try DatabaseQueue(path: path)
      try db.read { db in
        let tables = try String.fetchAll(
          db, sql: "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        for t in [
          "checkpoints", "devices", "plans", "rounds", "runs", "secure_aggregation_steps",
          "device_evaluations", "async_buffers", "leases", "replicas", "cohort_places", "partial_aggregates",
        ] {
          #expect(tables.contains(t), "\(tables)")
        }
        #expect(try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations").count == 10)
        #expect(try String.fetchOne(db, sql: "PRAGMA journal_mode") == "wal")
        let roundColumns = try db.columns(in: "rounds").map(\.name)
        #expect(
          roundColumns == [
            "run_id", "round", "started_at", "ended_at", "outcome", "abandon_reason", "selected", "reported",
            "dropped", "late", "rejected", "bytes_down", "bytes_up", "train_loss", "eval_loss",
            "eval_accuracy",
            "federated_eval_loss", "federated_eval_accuracy", "federated_eval_examples", "epsilon",
            "duration_seconds", "resume_state", "real_seconds", "mean_staleness", "max_staleness",
          ])
        #expect(try db.foreignKeys(on: "checkpoints").first?.destinationTable == "rounds")
        #expect(try db.foreignKeys(on: "runs").first?.destinationTable == "plans")
      }
    }
  }

  @Test func commitRoundIsAtomicAndSurvivesReopen() throws {
    try withTemporaryDirectory { dir in
      let path = dir.appendingPathComponent("results.sqlite").path
      let model1 = makeWeights(1)
      let model3 = makeWeights(3)
      let run: RunID
      do {
        let store = try ResultsStore(path: path)
        run = try store.createRun(name: "atomic", scenario: makeScenario(), createdAt: fixedDate())
        #expect(try store.latestCheckpoint(run) == nil)
        try store.commitRound(
          run, record(1, accuracy: 0.5), checkpoint: model1,
          devices: [
            DeviceParticipation(device: 0, reported: true, dropped: false),
            DeviceParticipation(device: 1, reported: false, dropped: true),
          ])
        let before = try store.devices(run)

        // A checkpoint with another layout fails after the round row was inserted.
        let otherLayout = WeightsLayout([TensorSpec("dense/kernel", [4, 2])])
        let mismatch = storeError {
          try store.commitRound(
            run, record(2), checkpoint: makeWeights(2, layout: otherLayout),
            devices: [DeviceParticipation(device: 0, reported: true, dropped: false)])
        }
        #expect(mismatch?.code == .shapeMismatch)
        #expect(mismatch?.message.contains("dense/kernel[4, 2]") == true, "\(String(describing: mismatch))")

        // A device listed twice fails after the round row and the checkpoint were inserted.
        let duplicate = storeError {
          try store.commitRound(
            run, record(2), checkpoint: makeWeights(2),
            devices: [
              DeviceParticipation(device: 0, reported: true, dropped: false),
              DeviceParticipation(device: 2, reported: true, dropped: false),
              DeviceParticipation(device: 2, reported: true, dropped: false),
            ])
        }
        #expect(duplicate?.message.contains("device 2 is listed twice") == true)

        // An abandoned round cannot carry a model.
        let abandonedWithModel = storeError {
          try store.commitRound(
            run, record(2, outcome: .abandoned, reason: "too few reports"), checkpoint: makeWeights(2),
            devices: [])
        }
        #expect(abandonedWithModel?.code == .storage)

        // Nothing of round 2 is visible after any of the failures.
        #expect(try store.rounds(run).map(\.round) == [1])
        #expect(try store.latestCheckpoint(run)?.round == 1)
        #expect(storeError { try store.checkpoint(run, round: 2) }?.code == .notFound)
        #expect(try store.devices(run) == before)
        #expect(try store.run(run).roundsCommitted == 1)

        try store.commitRound(
          run, record(2, outcome: .abandoned, reason: "only 2 of 4 reports, by deadline"), checkpoint: nil,
          devices: [DeviceParticipation(device: 0, reported: false, dropped: true)])
        try store.commitRound(
          run, record(3, accuracy: 0.75), checkpoint: model3,
          devices: [
            DeviceParticipation(device: 0, reported: true, dropped: false),
            DeviceParticipation(device: 3, reported: true, dropped: false),
          ])
        let again = storeError { try store.commitRound(run, record(3), checkpoint: nil, devices: []) }
        #expect(again?.message.contains("already committed") == true)
        #expect(again?.fix.contains("round 4") == true)
      }

      // Everything reads back, bit for bit, from a fresh connection to the file.
      let store = try ResultsStore(path: path)
      #expect(
        try store.rounds(run) == [
          record(1, accuracy: 0.5),
          record(2, outcome: .abandoned, reason: "only 2 of 4 reports, by deadline"),
          record(3, accuracy: 0.75),
        ])
      let latest = try #require(try store.latestCheckpoint(run))
      #expect(latest.round == 3)
      #expect(latest.weights.layout == modelLayout)
      #expect(bits(latest.weights) == bits(model3))
      let first = try store.checkpoint(run, round: 1)
      #expect(first.round == 1 && bits(first.weights) == bits(model1))
      #expect(try store.checkpoint(run, round: nil).round == 3)
      #expect(
        try store.devices(run) == [
          DeviceRecord(device: 0, participations: 3, reports: 2, dropouts: 1, lastRound: 3),
          DeviceRecord(device: 1, participations: 1, reports: 0, dropouts: 1, lastRound: 1),
          DeviceRecord(device: 3, participations: 1, reports: 1, dropouts: 0, lastRound: 3),
        ])

      let missing = storeError { try store.checkpoint(run, round: 2) }
      #expect(missing?.code == .notFound)
      #expect(
        missing?.message.contains("2 rounds have one, from 1 to 3") == true, "\(String(describing: missing))")
    }
  }

  @Test func secureAggregationStepsAreStoredWithTheirRound() throws {
    let store = try ResultsStore.inMemory()
    let run = try store.createRun(name: "secagg", scenario: makeScenario(), createdAt: fixedDate())
    let steps = [
      SecureAggregationStepRecord(
        step: "advertise_keys", entered: 10, dropped: 1, bytesUp: 900, bytesDown: 0, serverSeconds: 0.001),
      SecureAggregationStepRecord(
        step: "unmasking", entered: 8, dropped: 0, bytesUp: 4000, bytesDown: 300, serverSeconds: 0.25),
      SecureAggregationStepRecord(
        step: "share_keys", entered: 9, dropped: 1, bytesUp: 5000, bytesDown: 4000, serverSeconds: 0.01),
    ]
    try store.commitRound(run, record(1), checkpoint: makeWeights(1), devices: [], secureAggregation: steps)
    let stored = try store.secureAggregationSteps(run)
    // Read back in protocol order, whatever order they were written in.
    #expect(stored.map(\.1) == [steps[0], steps[2], steps[1]])
    #expect(stored.allSatisfy { $0.round == 1 })
  }

  @Test func aCorruptedCheckpointIsAnErrorNotAWrongModel() throws {
    try withTemporaryDirectory { dir in
      let path = dir.appendingPathComponent("results.sqlite").path
      let store = try ResultsStore(path: path)
      let run = try store.createRun(name: "c", scenario: makeScenario(), createdAt: fixedDate())
      try store.commitRound(run, record(1), checkpoint: makeWeights(1), devices: [])

      let db = try DatabaseQueue(path: path)
      try db.write { db in
        var blob = try Data.fetchOne(db, sql: "SELECT weights FROM checkpoints")!
        blob[5] ^= 0x01
        try db.execute(sql: "UPDATE checkpoints SET weights = ?", arguments: [blob])
      }
      for error in [
        storeError { try store.checkpoint(run, round: 1) }, storeError { try store.latestCheckpoint(run) },
      ] {
        #expect(error?.code == .storage)
        #expect(error?.message.contains("round 1 of run \(run)") == true)
        #expect(error?.message.contains("corrupted") == true, "\(String(describing: error))")
        #expect(error?.fix.isEmpty == false)
      }
    }
  }

  @Test func summariesOfRunsAndRounds() throws {
    let store = try ResultsStore.inMemory()
    #expect(try store.runs().isEmpty)
    let scenario = makeScenario(seed: UInt64.max - 6)
    let a = try store.createRun(name: "alpha", scenario: scenario, createdAt: fixedDate())
    let b = try store.createRun(name: "beta", scenario: makeScenario(), createdAt: fixedDate(60))
    try store.commitRound(a, record(1, accuracy: 0.4), checkpoint: makeWeights(1), devices: [])
    try store.commitRound(a, record(2, accuracy: 0.8), checkpoint: makeWeights(2), devices: [])
    try store.commitRound(a, record(3), checkpoint: makeWeights(3), devices: [])
    try store.commitRound(a, record(4, accuracy: 0.6), checkpoint: makeWeights(4), devices: [])
    try store.commitRound(
      a, record(5, outcome: .abandoned, reason: "selection window closed"), checkpoint: nil, devices: [])
    try store.setStatus(a, .finished, at: fixedDate(3600))

    let runs = try store.runs()
    #expect(runs.map(\.id) == [a, b])
    #expect(runs.map(\.name) == ["alpha", "beta"])
    let summary = try store.run(a)
    #expect(summary.createdAt == fixedDate())
    #expect(summary.status == .finished && summary.finishedAt == fixedDate(3600))
    #expect(summary.seed == UInt64.max - 6)
    #expect(summary.planName == "tiny-fedavg" && summary.planSHA256 == scenario.plan.sha256)
    #expect(summary.roundsCommitted == 4)
    #expect(summary.lastAccuracy == 0.6 && summary.bestAccuracy == 0.8)

    let fresh = try store.run(b)
    #expect(fresh.status == .running && fresh.finishedAt == nil && fresh.createdAt == fixedDate(60))
    #expect(fresh.roundsCommitted == 0 && fresh.lastAccuracy == nil && fresh.bestAccuracy == nil)
    #expect(try store.rounds(b).isEmpty)
    #expect(try store.rounds(a).map(\.round) == [1, 2, 3, 4, 5])
    #expect(try store.scenario(a) == scenario)

    try store.setStatus(a, .running, at: fixedDate(7200))
    #expect(try store.run(a).finishedAt == nil)
    #expect(RunID("12") == RunID(12) && RunID("x") == nil && RunID(12).description == "12")
  }

  @Test func runsSharingAPlanStoreItOnce() throws {
    try withTemporaryDirectory { dir in
      let path = dir.appendingPathComponent("results.sqlite").path
      let store = try ResultsStore(path: path)
      _ = try store.createRun(name: "a", scenario: makeScenario(seed: 1), createdAt: fixedDate())
      _ = try store.createRun(name: "b", scenario: makeScenario(seed: 2), createdAt: fixedDate())
      _ = try store.createRun(name: "c", scenario: makeScenario(rounds: 99), createdAt: fixedDate())
      let plans = try DatabaseQueue(path: path).read { db in
        try Row.fetchAll(db, sql: "SELECT sha256, canonical_json FROM plans")
      }
      #expect(plans.count == 2)
      for row in plans {
        let sha: String = row["sha256"]
        let json: String = row["canonical_json"]
        #expect(SHA256.hex(Data(json.utf8)) == sha)
      }
    }
  }

  @Test func aMissingRunIsAnErrorNamingIt() throws {
    let store = try ResultsStore.inMemory()
    let ghost = RunID(99)
    let errors: [CohortError?] = [
      storeError { try store.run(ghost) }, storeError { try store.rounds(ghost) },
      storeError { try store.scenario(ghost) }, storeError { try store.latestCheckpoint(ghost) },
      storeError { try store.checkpoint(ghost, round: nil) }, storeError { try store.devices(ghost) },
      storeError { try store.setStatus(ghost, .failed, at: fixedDate()) },
      storeError { try store.commitRound(ghost, record(1), checkpoint: nil, devices: []) },
    ]
    for error in errors {
      #expect(error?.code == .notFound)
      #expect(error?.message.contains("run 99") == true, "\(String(describing: error))")
      #expect(error?.fix.contains("cohort runs list") == true)
    }
    let run = try store.createRun(name: "r", scenario: makeScenario(), createdAt: fixedDate())
    let none = storeError { try store.checkpoint(run, round: nil) }
    #expect(none?.code == .notFound && none?.message.contains("no checkpoint yet") == true)
  }

  @Test func openingSomethingThatIsNotAStoreSaysWhatToDo() throws {
    try withTemporaryDirectory { dir in
      let notSQLite = dir.appendingPathComponent("notes.txt")
      try Data(repeating: 0x41, count: 4096).write(to: notSQLite)
      let error = storeError { try ResultsStore(path: notSQLite.path) }
      #expect(error?.code == .storage)
      #expect(error?.fix.contains("not a Cohort results store") == true, "\(String(describing: error))")

      let nowhere = dir.appendingPathComponent("missing-dir/results.sqlite").path
      let cannotOpen = storeError { try ResultsStore(path: nowhere) }
      #expect(cannotOpen?.code == .storage)
      #expect(cannotOpen?.message.contains(nowhere) == true)
      #expect(cannotOpen?.fix.contains("directory") == true, "\(String(describing: cannotOpen))")
    }
  }

  @Test func aDatabaseHasOneWriterAtATimeAndReadersNeedNone() throws {
    try withTemporaryDirectory { dir in
      let path = dir.appendingPathComponent("results.sqlite").path
      do {
        let first = try ResultsStore(path: path, exclusiveWriter: "cohort serve plan.yaml")
        do throws(CohortError) {
          _ = try ResultsStore(path: path, exclusiveWriter: "cohort simulate")
          Issue.record("a second writer opened a database that has one")
        } catch {
          #expect(error.code == .storage)
          #expect(error.message.contains("being written by another process"), "\(error)")
          #expect(error.message.contains("pid \(getpid()): cohort serve plan.yaml"), "\(error)")
        }
        // Readers (runs list, reports) read while the writer writes.
        #expect(try ResultsStore(path: path).runs().isEmpty)
        _ = first
      }
      // Released with the store (or the process, however it ends): the next writer may start.
      _ = try ResultsStore(path: path, exclusiveWriter: "cohort serve plan.yaml")
    }
  }

  @Test func theWriterLockDoesNotFollowASymlink() throws {
    try withTemporaryDirectory { dir in
      let path = dir.appendingPathComponent("results.sqlite").path
      let target = dir.appendingPathComponent("elsewhere").path
      try FileManager.default.createSymbolicLink(atPath: path + ".lock", withDestinationPath: target)
      #expect(throws: CohortError.self) { try ResultsStore(path: path, exclusiveWriter: "cohort simulate") }
      #expect(!FileManager.default.fileExists(atPath: target))
    }
  }
}
