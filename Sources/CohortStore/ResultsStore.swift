public import CohortCore
public import Foundation
public import GRDB

/// The results store and model registry: one SQLite file holding runs, the plans they ran
/// (by SHA-256), their rounds, the checkpoint of every committed round, and per-device
/// counters.
///
/// Every round is written in one transaction with its checkpoint and device counters, so a
/// crash loses at most the round in flight, and a restart resumes from `latestCheckpoint`.
/// The store never reads a clock: every time it records is passed in by the caller.
///
/// Files are opened in WAL mode with foreign keys on; readers (`cohort runs list`, reports) may
/// read while a run writes. How durable a commit is, is the caller's choice (`Durability`).
public final class ResultsStore: Sendable {
  /// What a committed round must survive.
  public enum Durability: Sendable {
    /// Power loss and operating-system crashes too (`synchronous = FULL`: a sync to disk per
    /// commit). For servers, whose rounds cannot be replayed.
    case powerLoss
    /// The process being killed (`synchronous = NORMAL` in WAL mode): a power loss may roll back
    /// the last commits, never corrupt the file. For simulations, which a resume replays
    /// exactly from their seed.
    case processCrash
  }

  /// The file the store lives in, or `:memory:`.
  public let path: String
  let writer: any DatabaseWriter
  /// Held while this store is the database's one writer (`exclusiveWriter`).
  private let writerLock: DatabaseWriterLock?

  /// Opens the store at `path`, creating the file if needed, and brings its schema up to date.
  /// - Parameter holder: when given, this store is the database's only writer until it is
  ///   released: another process that asks the same refuses at start, told who holds it
  ///   (`holder`, e.g. the command line). Readers pass nil.
  public convenience init(
    path: String, durability: Durability = .powerLoss, exclusiveWriter holder: String? = nil
  ) throws(CohortError) {
    let lock = try holder.flatMap { holder throws(CohortError) in
      try DatabaseWriterLock.acquire(database: path, holder: holder)
    }
    let pool: DatabasePool
    do {
      pool = try DatabasePool(path: path, configuration: Self.configuration())
      // DatabasePool turns WAL on and with it synchronous = NORMAL.
      if durability == .powerLoss {
        try pool.writeWithoutTransaction { try $0.execute(sql: "PRAGMA synchronous = FULL") }
      }
    } catch {
      throw StoreErrors.failure(error, path: path, doing: "opening the results store")
    }
    try self.init(path: path, writer: pool, writerLock: lock)
  }

  /// A store that lives in memory and vanishes with this object; for tests and dry runs.
  public static func inMemory() throws(CohortError) -> ResultsStore {
    let queue: DatabaseQueue
    do {
      queue = try DatabaseQueue(configuration: configuration())
    } catch {
      throw StoreErrors.failure(error, path: ":memory:", doing: "creating an in-memory results store")
    }
    return try ResultsStore(path: ":memory:", writer: queue)
  }

  private init(path: String, writer: any DatabaseWriter, writerLock: DatabaseWriterLock? = nil)
    throws(CohortError)
  {
    self.path = path
    self.writer = writer
    self.writerLock = writerLock
    try access("preparing the results store's tables") {
      try StoreErrors.migrate(writer, with: Schema.migrator, path: path, store: "results store")
    }
  }

  /// Folds the write-ahead log into the database file (a TRUNCATE checkpoint) and closes every
  /// connection, so the file stands alone: no `-wal` or `-shm` beside it, ready to copy, mail or
  /// open in pandas. Call it when the run is over; the store cannot be used afterwards.
  public func close() throws(CohortError) {
    try access("closing the results store") {
      guard let pool = writer as? DatabasePool else { return }
      try pool.writeWithoutTransaction { _ = try $0.checkpoint(.truncate) }
      try pool.close()
      // The pool's last connections to close are its readers, which may not remove the -wal and
      // -shm files; one writable connection, the only one left, does when it closes.
      let last = try DatabaseQueue(path: path, configuration: Self.configuration())
      try last.writeWithoutTransaction { _ = try $0.checkpoint(.truncate) }
      try last.close()
    }
  }

  private static func configuration() -> Configuration {
    var config = Configuration()
    config.foreignKeysEnabled = true
    config.label = "CohortStore"
    return config
  }

  // MARK: - Runs

  /// Records a new run in status `running`, and its plan under the plan's SHA-256 (stored once
  /// however many runs use it). `createdAt` is the caller's clock.
  public func createRun(
    name: String, scenario: Scenario, createdAt: Date, labels: RunLabels = RunLabels()
  ) throws(CohortError) -> RunID {
    let planJSON = scenario.plan.canonicalJSON
    let planSHA = SHA256.hex(planJSON)
    let scenarioJSON = try StoreJSON.encode(scenario, what: "the scenario of run \"\(name)\"")
    return try access("creating the run \"\(name)\"") {
      try writer.write { db in
        try db.execute(
          sql: """
            INSERT INTO plans (sha256, name, canonical_json) VALUES (?, ?, ?)
            ON CONFLICT (sha256) DO NOTHING
            """,
          arguments: [planSHA, scenario.plan.name, String(decoding: planJSON, as: UTF8.self)])
        try db.execute(
          sql: """
            INSERT INTO runs (
              name, created_at, scenario_json, plan_sha256, seed, status, experiment, scenario, variant)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
          arguments: [
            name, Timestamp.string(createdAt), scenarioJSON, planSHA, Int64(bitPattern: scenario.seed),
            RunStatus.running.rawValue, labels.experiment, labels.scenario, labels.variant,
          ])
        return RunID(db.lastInsertedRowID)
      }
    }
  }

  /// Sets a run's status. Leaving `running` records `at` as its finish time; going back to
  /// `running` (a resumed run) clears it.
  public func setStatus(_ run: RunID, _ status: RunStatus, at: Date) throws(CohortError) {
    let finishedAt: String? = status == .running ? nil : Timestamp.string(at)
    try access("setting the status of run \(run)") {
      try writer.write { db in
        try db.execute(
          sql: "UPDATE runs SET status = ?, finished_at = ? WHERE id = ?",
          arguments: [status.rawValue, finishedAt, run.rawValue])
        if db.changesCount == 0 { throw missingRun(run) }
      }
    }
  }

  /// Every run, oldest first.
  public func runs() throws(CohortError) -> [RunSummary] {
    try access("listing runs") {
      try writer.read { db in
        try Row.fetchAll(db, sql: Self.summarySQL + " ORDER BY runs.id").map { try Self.summary($0) }
      }
    }
  }

  /// Deletes runs and every row that belongs to them, in every table that has a `run_id`
  /// column, and plans no run uses any more, in one transaction: all of them go or none does.
  /// Refused, with nothing deleted, when any of the runs does not exist.
  public func deleteRuns(_ ids: [RunID]) throws(CohortError) {
    try access("deleting runs") {
      try writer.write { db in
        for id in ids { try requireRun(db, id) }
        // Found from the schema, so tables added later are covered too; rounds go after the
        // tables that refer to them, runs last.
        let tables = try String.fetchAll(
          db, sql: "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        var owned: [String] = []
        for table in tables where table != "runs" {
          let columns = try Row.fetchAll(db, sql: "SELECT name FROM pragma_table_info(?)", arguments: [table])
            .map { $0["name"] as String }
          if columns.contains("run_id") { owned.append(table) }
        }
        owned.sort { ($0 == "rounds" ? 1 : 0, $0) < ($1 == "rounds" ? 1 : 0, $1) }
        for id in ids {
          for table in owned {
            try db.execute(sql: "DELETE FROM \"\(table)\" WHERE run_id = ?", arguments: [id.rawValue])
          }
          try db.execute(sql: "DELETE FROM runs WHERE id = ?", arguments: [id.rawValue])
        }
        try db.execute(sql: "DELETE FROM plans WHERE sha256 NOT IN (SELECT plan_sha256 FROM runs)")
      }
    }
  }

  /// One run's summary.
  public func run(_ id: RunID) throws(CohortError) -> RunSummary {
    try access("reading run \(id)") {
      try writer.read { db in
        guard
          let row = try Row.fetchOne(
            db, sql: Self.summarySQL + " WHERE runs.id = ?", arguments: [id.rawValue])
        else { throw missingRun(id) }
        return try Self.summary(row)
      }
    }
  }

  /// The scenario a run was created with, exactly as it was given.
  public func scenario(_ run: RunID) throws(CohortError) -> Scenario {
    let json = try access("reading the scenario of run \(run)") {
      try writer.read { db in
        guard
          let json = try String.fetchOne(
            db, sql: "SELECT scenario_json FROM runs WHERE id = ?", arguments: [run.rawValue])
        else { throw missingRun(run) }
        return json
      }
    }
    return try StoreJSON.decode(
      Scenario.self, from: Data(json.utf8), what: "the scenario of run \(run) in \(path)")
  }

  /// A fingerprint of the run's configuration without its seed: the SHA-256 of its scenario
  /// (plan included) with the seed set to 0. Runs that differ only in their seed share it.
  public func configurationFingerprint(_ run: RunID) throws(CohortError) -> String {
    var s = try scenario(run)
    s.seed = 0
    return SHA256.hex(Data(try StoreJSON.encode(s, what: "the scenario of run \(run)").utf8))
  }

  // MARK: - Rounds

  /// Commits one round in one transaction: its row, the checkpoint of the model it produced
  /// (if any) and the counters of the devices selected for it. Either all of it is stored or,
  /// when anything fails, none of it.
  ///
  /// Refused, with nothing written: a run that does not exist; a round already stored; a
  /// checkpoint for an abandoned round (it produced no model); a checkpoint whose layout
  /// differs from the run's earlier checkpoints; a device listed twice.
  ///
  /// `lateReports` adds reports that arrived after earlier rounds had closed to those rounds'
  /// `late` counts, in the same transaction. `resumeState` is opaque state a simulation needs to
  /// continue exactly from this round (see `latestResumeState`).
  public func commitRound(
    _ run: RunID, _ record: RoundRecord, checkpoint: Weights?, devices: [DeviceParticipation],
    lateReports: [Int: Int] = [:], resumeState: Data? = nil,
    secureAggregation: [SecureAggregationStepRecord] = []
  ) throws(CohortError) {
    try commitRound(
      run, record, checkpoint: checkpoint, devices: devices, lateReports: lateReports,
      resumeState: resumeState,
      secureAggregation: secureAggregation, fence: nil)
  }

  /// `commitRound`, with `fence` run first inside the round's transaction: it throws to refuse
  /// the commit (a deposed leader's, see `FederationStore`).
  func commitRound(
    _ run: RunID, _ record: RoundRecord, checkpoint: Weights?, devices: [DeviceParticipation],
    lateReports: [Int: Int], resumeState: Data?, secureAggregation: [SecureAggregationStepRecord],
    fence: ((Database) throws -> Void)?
  ) throws(CohortError) {
    // Encode outside the transaction: pure work that can be large.
    let blob = checkpoint.map { Float32LittleEndian.data($0.values) }
    let digest = blob.map { SHA256.hex($0) }
    let layoutJSON = try checkpoint.map { (w: Weights) throws(CohortError) -> String in
      try StoreJSON.encode(w.layout, what: "the checkpoint layout")
    }
    let round = record.round
    try access("committing round \(round) of run \(run)") {
      try writer.write { db in
        try requireRun(db, run)
        try fence?(db)
        if let latest = try Int.fetchOne(
          db.cachedStatement(sql: "SELECT max(round) FROM rounds WHERE run_id = ?"), arguments: [run.rawValue]
        ),
          latest >= round
        {
          let exists = try Bool.fetchOne(
            db, sql: "SELECT EXISTS (SELECT 1 FROM rounds WHERE run_id = ? AND round = ?)",
            arguments: [run.rawValue, round])!
          if exists {
            throw CohortError(
              .storage, "round \(round) of run \(run) is already committed in \(path)",
              fix: "committed rounds are never rewritten; resume from round \(latest + 1)")
          }
        }
        try Self.insert(record, run: run, db)

        if let checkpoint, let blob, let digest, let layoutJSON {
          guard record.outcome == .committed else {
            throw CohortError(
              .storage,
              "round \(round) of run \(run) was abandoned, so it produced no model, yet a checkpoint "
                + "was passed with it",
              fix: "pass checkpoint: nil for abandoned rounds; the latest checkpoint stays the run's model")
          }
          if let previous = try String.fetchOne(
            db.cachedStatement(
              sql: "SELECT layout_json FROM checkpoints WHERE run_id = ? ORDER BY round DESC LIMIT 1"),
            arguments: [run.rawValue]),
            // Layouts are written with sorted keys: the same text is the same layout.
            previous != layoutJSON
          {
            let layout = try StoredCheckpoint.decodeLayout(previous, run: run, round: round, location: path)
            if layout != checkpoint.layout {
              throw CohortError(
                .shapeMismatch,
                "the checkpoint of round \(round) of run \(run) has the layout "
                  + "\(Self.describe(checkpoint.layout)) but the run's earlier checkpoints have "
                  + "\(Self.describe(layout))",
                fix: "a run keeps one model architecture; start a new run for a different model")
            }
          }
          try db.cachedStatement(
            sql:
              "INSERT INTO checkpoints (run_id, round, sha256, layout_json, weights) VALUES (?, ?, ?, ?, ?)"
          ).execute(arguments: [run.rawValue, round, digest, layoutJSON, blob])
        }

        var seen = Set<Int>()
        for d in devices where !seen.insert(d.device).inserted {
          throw CohortError(
            .storage, "device \(d.device) is listed twice for round \(round) of run \(run)",
            fix: "pass each selected device once, with reported/dropped for what it did")
        }
        // The whole cohort in one statement, from a JSON array of [device, participations,
        // reports, dropouts]: a cohort is hundreds of rows every round. A participation is a
        // selection in a round, an admission in async mode (each report or dropout ends one).
        let rows =
          "["
          + devices.map { "[\($0.device),\(max(1, $0.reports + $0.dropouts)),\($0.reports),\($0.dropouts)]" }
          .joined(separator: ",")
          + "]"
        try db.cachedStatement(
          sql: """
            INSERT INTO devices (run_id, device, participations, reports, dropouts, last_round)
            SELECT ?, value ->> 0, value ->> 1, value ->> 2, value ->> 3, ? FROM json_each(?) WHERE true
            ON CONFLICT (run_id, device) DO UPDATE SET
              participations = participations + excluded.participations,
              reports = reports + excluded.reports,
              dropouts = dropouts + excluded.dropouts,
              last_round = max(last_round, excluded.last_round)
            """
        ).execute(arguments: [run.rawValue, round, rows])
        // Devices' evaluations, one bound row each (exact Doubles; a cohort's reports are few
        // beside its selection).
        for d in devices {
          guard let e = d.evaluation else { continue }
          try db.cachedStatement(
            sql: """
              INSERT INTO device_evaluations (run_id, round, device, accuracy, loss, examples)
              VALUES (?, ?, ?, ?, ?, ?)
              """
          ).execute(arguments: [run.rawValue, round, d.device, e.accuracy, e.loss, e.examples])
        }
        for (earlier, count) in lateReports where count > 0 {
          try db.cachedStatement(sql: "UPDATE rounds SET late = late + ? WHERE run_id = ? AND round = ?")
            .execute(arguments: [count, run.rawValue, earlier])
        }
        for step in secureAggregation {
          try db.cachedStatement(
            sql: """
              INSERT INTO secure_aggregation_steps
                (run_id, round, step, entered, dropped, bytes_up, bytes_down, server_seconds)
              VALUES (?, ?, ?, ?, ?, ?, ?, ?)
              """
          ).execute(arguments: [
            run.rawValue, round, step.step, step.entered, step.dropped, step.bytesUp, step.bytesDown,
            step.serverSeconds,
          ])
        }
        if let resumeState {
          try db.cachedStatement(sql: "UPDATE rounds SET resume_state = ? WHERE run_id = ? AND round = ?")
            .execute(arguments: [resumeState, run.rawValue, round])
        }
      }
    }
  }

  /// Replaces a stored round with the same round simulated again (a run extended to more rounds
  /// replays its last rounds from an earlier saved state). The replay must agree with what is
  /// stored: the same outcome and, for a committed round, the same checkpoint (by SHA-256);
  /// otherwise nothing is changed and the error says so. What may differ, and is replaced, is
  /// what depended on the round being the run's last: its evaluation and its saved state. The
  /// device counters, device evaluations, secure-aggregation steps and late count stay as they
  /// are (they are the same rounds' counts).
  public func replayRound(
    _ run: RunID, _ record: RoundRecord, checkpoint: Weights?, resumeState: Data?
  ) throws(CohortError) {
    let digest = checkpoint.map { SHA256.hex(Float32LittleEndian.data($0.values)) }
    let round = record.round
    try access("replaying round \(round) of run \(run)") {
      try writer.write { db in
        try requireRun(db, run)
        guard
          let stored = try Row.fetchOne(
            db, sql: "SELECT outcome FROM rounds WHERE run_id = ? AND round = ?",
            arguments: [run.rawValue, round])
        else {
          throw CohortError(.storage, "round \(round) of run \(run) is not stored, so it cannot be replayed")
        }
        let storedSHA = try String.fetchOne(
          db, sql: "SELECT sha256 FROM checkpoints WHERE run_id = ? AND round = ?",
          arguments: [run.rawValue, round])
        guard stored["outcome"] as String == record.outcome.rawValue, storedSHA == digest else {
          throw CohortError(
            .storage,
            "simulating round \(round) of run \(run) again gave a different result (\(record.outcome.rawValue), "
              + "model \(digest?.prefix(16) ?? "none")) than the one stored (\(stored["outcome"] as String), model "
              + "\(storedSHA?.prefix(16) ?? "none")); the run cannot be extended exactly",
            fix: "run the scenario anew with the larger server.rounds (cohort simulate SCENARIO --rounds N)")
        }
        try db.execute(
          sql: """
            UPDATE rounds SET started_at = ?, ended_at = ?, abandon_reason = ?, selected = ?, reported = ?,
              dropped = ?, rejected = ?, bytes_down = ?, bytes_up = ?, train_loss = ?, eval_loss = ?,
              eval_accuracy = ?, federated_eval_loss = ?, federated_eval_accuracy = ?,
              federated_eval_examples = ?, epsilon = ?, duration_seconds = ?, real_seconds = ?,
              resume_state = ?
            WHERE run_id = ? AND round = ?
            """,
          arguments: [
            record.startedAt, record.endedAt, record.abandonReason, record.selected, record.reported,
            record.dropped, record.rejected, record.bytesDown, record.bytesUp, record.trainLoss,
            record.evalLoss,
            record.evalAccuracy, record.federatedEvalLoss, record.federatedEvalAccuracy,
            record.federatedEvalExamples, record.epsilon, record.durationSeconds, record.realSeconds,
            resumeState,
            run.rawValue, round,
          ])
      }
    }
  }

  /// The latest round of a run that has a resume state, and the state; nil when none has.
  public func latestSavedState(_ run: RunID) throws(CohortError) -> (round: Int, state: Data)? {
    try access("reading the resume state of run \(run)") {
      try writer.read { db in
        try requireRun(db, run)
        guard
          let row = try Row.fetchOne(
            db,
            sql: """
              SELECT round, resume_state FROM rounds WHERE run_id = ? AND resume_state IS NOT NULL
              ORDER BY round DESC LIMIT 1
              """, arguments: [run.rawValue]),
          let state: Data = row["resume_state"]
        else { return nil }
        return (row["round"], state)
      }
    }
  }

  /// Forgets the resume states of a run's rounds after `round`: they are to be simulated again,
  /// and until each is, resuming must not start from it.
  public func clearResumeStates(_ run: RunID, after round: Int) throws(CohortError) {
    try access("clearing the resume states of run \(run)") {
      try writer.write { db in
        try requireRun(db, run)
        try db.execute(
          sql: "UPDATE rounds SET resume_state = NULL WHERE run_id = ? AND round > ?",
          arguments: [run.rawValue, round])
      }
    }
  }

  /// The resume state stored with round `round` of a run, if it has one.
  public func resumeState(_ run: RunID, round: Int) throws(CohortError) -> Data? {
    try access("reading the resume state of run \(run)") {
      try writer.read { db in
        try requireRun(db, run)
        return try Data.fetchOne(
          db, sql: "SELECT resume_state FROM rounds WHERE run_id = ? AND round = ?",
          arguments: [run.rawValue, round])
      }
    }
  }

  /// Replaces the scenario a run was created with (its plan stored by SHA-256 as in `createRun`):
  /// for a run extended to more rounds. The seed must stay the same.
  public func setScenario(_ run: RunID, _ scenario: Scenario) throws(CohortError) {
    let planJSON = scenario.plan.canonicalJSON
    let planSHA = SHA256.hex(planJSON)
    let scenarioJSON = try StoreJSON.encode(scenario, what: "the scenario of run \(run)")
    try access("updating the scenario of run \(run)") {
      try writer.write { db in
        try requireRun(db, run)
        try db.execute(
          sql:
            "INSERT INTO plans (sha256, name, canonical_json) VALUES (?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
          arguments: [planSHA, scenario.plan.name, String(decoding: planJSON, as: UTF8.self)])
        try db.execute(
          sql: "UPDATE runs SET scenario_json = ?, plan_sha256 = ? WHERE id = ? AND seed = ?",
          arguments: [scenarioJSON, planSHA, run.rawValue, Int64(bitPattern: scenario.seed)])
        if db.changesCount == 0 {
          throw CohortError(.storage, "run \(run) was created with another seed than \(scenario.seed)")
        }
        try db.execute(sql: "DELETE FROM plans WHERE sha256 NOT IN (SELECT plan_sha256 FROM runs)")
      }
    }
  }

  /// The secure-aggregation steps of every round of a run, in round and protocol order.
  public func secureAggregationSteps(_ run: RunID) throws(CohortError) -> [(
    round: Int, SecureAggregationStepRecord
  )] {
    try access("reading the secure-aggregation steps of run \(run)") {
      try writer.read { db in
        try requireRun(db, run)
        return try Row.fetchAll(
          db,
          sql: """
            SELECT * FROM secure_aggregation_steps WHERE run_id = ?
            ORDER BY round, CASE step WHEN 'advertise_keys' THEN 0 WHEN 'share_keys' THEN 1
              WHEN 'masked_input' THEN 2 WHEN 'consistency_check' THEN 3 ELSE 4 END
            """, arguments: [run.rawValue]
        ).map { row in
          (
            row["round"],
            SecureAggregationStepRecord(
              step: row["step"], entered: row["entered"], dropped: row["dropped"], bytesUp: row["bytes_up"],
              bytesDown: row["bytes_down"], serverSeconds: row["server_seconds"])
          )
        }
      }
    }
  }

  /// The resume state stored with the run's latest round, if that round has one.
  public func latestResumeState(_ run: RunID) throws(CohortError) -> (round: Int, state: Data)? {
    try access("reading the resume state of run \(run)") {
      try writer.read { db in
        try requireRun(db, run)
        guard
          let row = try Row.fetchOne(
            db, sql: "SELECT round, resume_state FROM rounds WHERE run_id = ? ORDER BY round DESC LIMIT 1",
            arguments: [run.rawValue]),
          let state: Data = row["resume_state"]
        else { return nil }
        return (row["round"], state)
      }
    }
  }

  /// Stores the state of a served asynchronous run's buffer at `version`, replacing the one
  /// stored before: the update it was saved for may then be acknowledged (see `AsyncBuffer`).
  public func saveAsyncBuffer(_ run: RunID, version: Int, state: Data) throws(CohortError) {
    try access("saving the asynchronous buffer of run \(run)") {
      try writer.write { db in
        try requireRun(db, run)
        try db.execute(
          sql: "INSERT OR REPLACE INTO async_buffers (run_id, version, state) VALUES (?, ?, ?)",
          arguments: [run.rawValue, version, state])
      }
    }
  }

  /// The latest buffer state `saveAsyncBuffer` stored for a run, and its version; nil when none.
  public func asyncBuffer(_ run: RunID) throws(CohortError) -> (version: Int, state: Data)? {
    try access("reading the asynchronous buffer of run \(run)") {
      try writer.read { db in
        try requireRun(db, run)
        guard
          let row = try Row.fetchOne(
            db, sql: "SELECT version, state FROM async_buffers WHERE run_id = ?", arguments: [run.rawValue])
        else { return nil }
        // Decoded, not subscripted: a damaged row is an error, not a trap.
        return (try row.decode(forColumn: "version"), try row.decode(forColumn: "state"))
      }
    }
  }

  /// Fills in the central evaluation of a committed round, measured after its commit (a served
  /// asynchronous run commits a version before evaluating it, so reports go on meanwhile).
  public func recordEvaluation(_ run: RunID, round: Int, _ evaluation: Evaluation) throws(CohortError) {
    try access("recording the evaluation of round \(round) of run \(run)") {
      try writer.write { db in
        try requireRun(db, run)
        try db.execute(
          sql: "UPDATE rounds SET eval_loss = ?, eval_accuracy = ? WHERE run_id = ? AND round = ?",
          arguments: [evaluation.loss, evaluation.accuracy, run.rawValue, round])
      }
    }
  }

  /// A run's rounds in order, committed and abandoned.
  public func rounds(_ run: RunID) throws(CohortError) -> [RoundRecord] {
    try access("reading the rounds of run \(run)") {
      try writer.read { db in
        try requireRun(db, run)
        return try Row.fetchAll(
          db, sql: "SELECT * FROM rounds WHERE run_id = ? ORDER BY round", arguments: [run.rawValue]
        ).map { try Self.roundRecord($0) }
      }
    }
  }

  /// A run's device counters, by device index.
  public func devices(_ run: RunID) throws(CohortError) -> [DeviceRecord] {
    try access("reading the devices of run \(run)") {
      try writer.read { db in
        try requireRun(db, run)
        return try Row.fetchAll(
          db, sql: "SELECT * FROM devices WHERE run_id = ? ORDER BY device", arguments: [run.rawValue]
        ).map { row in
          DeviceRecord(
            device: try row.decode(forColumn: "device"),
            participations: try row.decode(forColumn: "participations"),
            reports: try row.decode(forColumn: "reports"), dropouts: try row.decode(forColumn: "dropouts"),
            lastRound: try row.decode(forColumn: "last_round"))
        }
      }
    }
  }

  /// A run's per-device evaluations, by round and then device; empty for runs whose devices did
  /// not evaluate, and for rounds written before they were recorded.
  public func deviceEvaluations(_ run: RunID) throws(CohortError) -> [DeviceEvaluationRecord] {
    try access("reading the device evaluations of run \(run)") {
      try writer.read { db in
        try requireRun(db, run)
        return try Row.fetchAll(
          db, sql: "SELECT * FROM device_evaluations WHERE run_id = ? ORDER BY round, device",
          arguments: [run.rawValue]
        ).map { row in
          DeviceEvaluationRecord(
            round: try row.decode(forColumn: "round"), device: try row.decode(forColumn: "device"),
            accuracy: try row.decode(forColumn: "accuracy"), loss: try row.decode(forColumn: "loss"),
            examples: try row.decode(forColumn: "examples"))
        }
      }
    }
  }

  // MARK: - Checkpoints (the model registry)

  /// The rounds of a run that have a checkpoint, in order.
  public func checkpointRounds(_ run: RunID) throws(CohortError) -> [Int] {
    try access("listing the checkpoints of run \(run)") {
      try writer.read { db in
        try requireRun(db, run)
        return try Int.fetchAll(
          db, sql: "SELECT round FROM checkpoints WHERE run_id = ? ORDER BY round", arguments: [run.rawValue])
      }
    }
  }

  /// Deletes the run's checkpoints that `retention` does not keep, of rounds before `before`
  /// only (a simulation still needs the models its devices in flight train from), never the
  /// latest. Returns how many were deleted.
  @discardableResult
  public func pruneCheckpoints(_ run: RunID, keeping retention: CheckpointRetention, before: Int = .max)
    throws(CohortError) -> Int
  {
    guard retention != .all else { return 0 }
    return try access("deleting checkpoints of run \(run)") {
      try writer.write { db in
        let latest =
          try Int.fetchOne(
            db, sql: "SELECT max(round) FROM checkpoints WHERE run_id = ?", arguments: [run.rawValue]) ?? 0
        let doomed = try Int.fetchAll(
          db, sql: "SELECT round FROM checkpoints WHERE run_id = ? AND round < ? AND round < ?",
          arguments: [run.rawValue, latest, before]
        ).filter { !retention.keeps(round: $0) }
        for round in doomed {
          try db.execute(
            sql: "DELETE FROM checkpoints WHERE run_id = ? AND round = ?", arguments: [run.rawValue, round])
        }
        return doomed.count
      }
    }
  }

  /// The checkpoint of the run's latest round that has one, or nil when it has none yet (a
  /// new run starts from its initial model). Its SHA-256 is verified.
  public func latestCheckpoint(_ run: RunID) throws(CohortError) -> (round: Int, weights: Weights)? {
    guard let stored = try storedCheckpoint(run, round: nil) else { return nil }
    return try verify(stored, run: run)
  }

  /// The checkpoint of the run's latest round up to `round` that has one, verified; nil when none.
  public func latestCheckpoint(_ run: RunID, through round: Int) throws(CohortError) -> (
    round: Int, weights: Weights
  )? {
    guard let stored = try storedCheckpoint(run, round: nil, through: round) else { return nil }
    return try verify(stored, run: run)
  }

  /// The checkpoint of `round`, or of the latest round that has one when `round` is nil. Its
  /// SHA-256 is verified: a blob changed on disk is an error, never a silently wrong model.
  public func checkpoint(_ run: RunID, round: Int?) throws(CohortError) -> (round: Int, weights: Weights) {
    if let stored = try storedCheckpoint(run, round: round) {
      return try verify(stored, run: run)
    }
    let rounds = try access("listing the checkpoints of run \(run)") {
      try writer.read { db in
        try Int.fetchAll(
          db, sql: "SELECT round FROM checkpoints WHERE run_id = ? ORDER BY round", arguments: [run.rawValue])
      }
    }
    guard let first = rounds.first, let last = rounds.last else {
      throw CohortError(
        .notFound, "run \(run) has no checkpoint yet: no round of it has committed a model",
        fix: "wait for its first committed round, or check `cohort runs show \(run)`")
    }
    let available =
      rounds.count == 1
      ? "only round \(first) has one" : "\(rounds.count) rounds have one, from \(first) to \(last)"
    throw CohortError(
      .notFound, "run \(run) has no checkpoint for round \(round ?? 0); \(available)",
      fix: "ask for one of those rounds, or leave out the round for the latest (\(last))")
  }

  private func storedCheckpoint(_ run: RunID, round: Int?, through: Int = Int.max) throws(CohortError)
    -> StoredCheckpoint?
  {
    try access("reading a checkpoint of run \(run)") {
      try writer.read { db in
        try requireRun(db, run)
        let columns = "SELECT round, sha256, layout_json, weights FROM checkpoints WHERE run_id = ?"
        let row: Row?
        if let round {
          row = try Row.fetchOne(db, sql: columns + " AND round = ?", arguments: [run.rawValue, round])
        } else {
          row = try Row.fetchOne(
            db, sql: columns + " AND round <= ? ORDER BY round DESC LIMIT 1",
            arguments: [run.rawValue, through])
        }
        return try row.map { row in
          StoredCheckpoint(
            round: try row.decode(forColumn: "round"), sha256: try row.decode(forColumn: "sha256"),
            layoutJSON: try row.decode(forColumn: "layout_json"), blob: try row.decode(forColumn: "weights"))
        }
      }
    }
  }

  private func verify(_ stored: StoredCheckpoint, run: RunID) throws(CohortError) -> (
    round: Int, weights: Weights
  ) {
    try stored.verified(
      run: run, location: path,
      fix: "the file was changed outside Cohort or damaged; restore it from a backup, or use an earlier "
        + "round's checkpoint")
  }

  // MARK: - Helpers

  /// Runs a database access, turning every failure into a `CohortError` that names the file.
  func access<T>(_ doing: String, _ body: () throws -> T) throws(CohortError) -> T {
    do {
      return try body()
    } catch let error as CohortError {
      throw error
    } catch {
      throw StoreErrors.failure(error, path: path, doing: doing)
    }
  }

  func missingRun(_ id: RunID) -> CohortError {
    CohortError(
      .notFound, "there is no run \(id) in the results store \(path)",
      fix: "run `cohort runs list` to see the runs it holds")
  }

  func requireRun(_ db: Database, _ run: RunID) throws {
    let exists = try Bool.fetchOne(
      db.cachedStatement(sql: "SELECT EXISTS (SELECT 1 FROM runs WHERE id = ?)"), arguments: [run.rawValue])
    if exists != true { throw missingRun(run) }
  }

  static func describe(_ layout: WeightsLayout) -> String {
    if layout.tensors.isEmpty { return "(no tensors)" }
    return layout.tensors.map { "\($0.name)\($0.shape)" }.joined(separator: ", ")
  }

  static let summarySQL = """
    SELECT runs.id, runs.name, runs.created_at, runs.status, runs.finished_at, runs.seed,
      runs.plan_sha256, plans.name AS plan_name, runs.experiment, runs.scenario, runs.variant,
      (SELECT count(*) FROM rounds WHERE rounds.run_id = runs.id AND outcome = 'committed')
        AS rounds_committed,
      (SELECT eval_accuracy FROM rounds WHERE rounds.run_id = runs.id AND eval_accuracy IS NOT NULL
        ORDER BY round DESC LIMIT 1) AS last_accuracy,
      (SELECT max(eval_accuracy) FROM rounds WHERE rounds.run_id = runs.id) AS best_accuracy
    FROM runs JOIN plans ON plans.sha256 = runs.plan_sha256
    """

  static func summary(_ row: Row) throws -> RunSummary {
    let id = RunID(try row.decode(Int64.self, forColumn: "id"))
    let statusText: String = try row.decode(forColumn: "status")
    guard let status = RunStatus(rawValue: statusText) else {
      throw CohortError(
        .storage, "run \(id) has the unknown status '\(statusText)'",
        fix: "set it to one of: " + RunStatus.allCases.map(\.rawValue).joined(separator: ", "))
    }
    let finished: String? = try row.decode(forColumn: "finished_at")
    let seedBits: Int64 = try row.decode(forColumn: "seed")
    var summary = RunSummary(
      id: id, name: try row.decode(forColumn: "name"),
      createdAt: try Timestamp.date(try row.decode(forColumn: "created_at"), what: "created_at of run \(id)"),
      status: status,
      finishedAt: try finished.map { s throws(CohortError) in
        try Timestamp.date(s, what: "finished_at of run \(id)")
      },
      seed: UInt64(bitPattern: seedBits),
      planName: try row.decode(forColumn: "plan_name"), planSHA256: try row.decode(forColumn: "plan_sha256"),
      roundsCommitted: try row.decode(forColumn: "rounds_committed"),
      lastAccuracy: try row.decode(forColumn: "last_accuracy"),
      bestAccuracy: try row.decode(forColumn: "best_accuracy"))
    summary.labels = RunLabels(
      experiment: try row.decode(forColumn: "experiment"), scenario: try row.decode(forColumn: "scenario"),
      variant: try row.decode(forColumn: "variant"))
    return summary
  }

  private static func insert(_ r: RoundRecord, run: RunID, _ db: Database) throws {
    try db.cachedStatement(
      sql: """
        INSERT INTO rounds (
          run_id, round, started_at, ended_at, outcome, abandon_reason, selected, reported, dropped, late,
          rejected, bytes_down, bytes_up, train_loss, eval_loss, eval_accuracy, federated_eval_loss,
          federated_eval_accuracy, federated_eval_examples, epsilon, duration_seconds, real_seconds,
          mean_staleness, max_staleness)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        """
    ).execute(
      arguments: [
        run.rawValue, r.round, r.startedAt, r.endedAt, r.outcome.rawValue, r.abandonReason, r.selected,
        r.reported, r.dropped, r.late, r.rejected, r.bytesDown, r.bytesUp, r.trainLoss, r.evalLoss,
        r.evalAccuracy, r.federatedEvalLoss, r.federatedEvalAccuracy, r.federatedEvalExamples, r.epsilon,
        r.durationSeconds, r.realSeconds, r.meanStaleness, r.maximumStaleness,
      ])
  }

  private static func roundRecord(_ row: Row) throws -> RoundRecord {
    let round: Int = try row.decode(forColumn: "round")
    let outcomeText: String = try row.decode(forColumn: "outcome")
    guard let outcome = RoundOutcome(rawValue: outcomeText) else {
      throw CohortError(.storage, "round \(round) has the unknown outcome '\(outcomeText)'")
    }
    return RoundRecord(
      round: round, startedAt: try row.decode(forColumn: "started_at"),
      endedAt: try row.decode(forColumn: "ended_at"), outcome: outcome,
      abandonReason: try row.decode(forColumn: "abandon_reason"),
      selected: try row.decode(forColumn: "selected"),
      reported: try row.decode(forColumn: "reported"), dropped: try row.decode(forColumn: "dropped"),
      late: try row.decode(forColumn: "late"), rejected: try row.decode(forColumn: "rejected"),
      bytesDown: try row.decode(forColumn: "bytes_down"), bytesUp: try row.decode(forColumn: "bytes_up"),
      trainLoss: try row.decode(forColumn: "train_loss"), evalLoss: try row.decode(forColumn: "eval_loss"),
      evalAccuracy: try row.decode(forColumn: "eval_accuracy"),
      federatedEvalLoss: try row.decode(forColumn: "federated_eval_loss"),
      federatedEvalAccuracy: try row.decode(forColumn: "federated_eval_accuracy"),
      federatedEvalExamples: try row.decode(forColumn: "federated_eval_examples"),
      epsilon: try row.decode(forColumn: "epsilon"),
      durationSeconds: try row.decode(forColumn: "duration_seconds"),
      realSeconds: try row.decode(forColumn: "real_seconds"),
      meanStaleness: try row.decode(forColumn: "mean_staleness"),
      maximumStaleness: try row.decode(forColumn: "max_staleness"))
  }
}

/// Turns SQLite and GRDB failures into errors a user can act on; shared by every SQLite file
/// Cohort keeps (the results store, a device's examples store).
public enum StoreErrors {
  /// Brings the file's schema up to date, refusing a file a newer Cohort wrote.
  public static func migrate(
    _ writer: any DatabaseWriter, with migrator: DatabaseMigrator, path: String, store: String
  ) throws {
    if try writer.read({ try migrator.hasBeenSuperseded($0) }) {
      throw CohortError(
        .storage,
        "the \(store) \(path) was written by a newer version of Cohort (its schema has changes this "
          + "version does not know)",
        fix: "open it with that newer version, or give this one another file")
    }
    try migrator.migrate(writer)
  }

  /// - Parameter store: what the file is, for the message ("results store", "examples store").
  public static func failure(_ error: any Error, path: String, doing: String, store: String = "results store")
    -> CohortError
  {
    guard let db = error as? DatabaseError else {
      return CohortError(.storage, "\(doing) in the \(store) \(path) failed: \(error)")
    }
    let detail = db.message ?? "\(db.resultCode)"
    let fix: String
    switch db.resultCode.primaryResultCode {
    case .SQLITE_NOTADB:
      fix = "\(path) is not a Cohort \(store) (not an SQLite file); give another path"
    case .SQLITE_CANTOPEN:
      fix = "check that the directory of \(path) exists and that you may write to it"
    case .SQLITE_READONLY, .SQLITE_PERM, .SQLITE_AUTH:
      fix = "check that you may write to \(path) and to its directory (SQLite adds -wal and -shm files)"
    case .SQLITE_BUSY, .SQLITE_LOCKED:
      fix = "another process is writing to \(path); wait for it, or give this work its own file"
    case .SQLITE_FULL:
      fix = "the disk is full; free some space and try again"
    case .SQLITE_CORRUPT:
      fix = "the file is damaged; restore it from a backup, or start a new one"
    case .SQLITE_IOERR:
      fix = "the disk or file system failed; check it and try again"
    default:
      fix = ""
    }
    return CohortError(.storage, "\(doing) in the \(store) \(path) failed: \(detail)", fix: fix)
  }
}

/// ISO-8601 text in UTC with milliseconds: sorts as text, reads in any tool.
enum Timestamp {
  private static let withFraction = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
  private static let withoutFraction = Date.ISO8601FormatStyle()

  static func string(_ date: Date) -> String { withFraction.format(date) }

  static func date(_ text: String, what: String) throws(CohortError) -> Date {
    if let d = try? withFraction.parse(text) { return d }
    if let d = try? withoutFraction.parse(text) { return d }
    throw CohortError(.storage, "\(what) is '\(text)', which is not an ISO-8601 time")
  }
}

/// JSON as the store writes it: sorted keys, slashes unescaped (paths and tensor names read
/// as written), non-finite numbers as strings.
enum StoreJSON {
  static func encode(_ value: some Encodable, what: String) throws(CohortError) -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    encoder.nonConformingFloatEncodingStrategy = .convertToString(
      positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    do {
      return String(decoding: try encoder.encode(value), as: UTF8.self)
    } catch {
      throw CohortError(.storage, "\(what) cannot be written as JSON: \(error)")
    }
  }

  static func decode<T: Decodable>(_ type: T.Type, from data: Data, what: String) throws(CohortError) -> T {
    let decoder = JSONDecoder()
    decoder.nonConformingFloatDecodingStrategy = .convertFromString(
      positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    do {
      return try decoder.decode(type, from: data)
    } catch {
      throw CohortError(
        .storage, "\(what) cannot be read: \(error)",
        fix: "the file may have been written by another version of Cohort, or edited by hand")
    }
  }
}
