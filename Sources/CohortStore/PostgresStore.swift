public import CohortCore
public import Foundation
public import Logging
import NIOSSL
import PostgresNIO

/// The results store in PostgreSQL (`--db postgres://…`): the tables of the SQLite store
/// (`PostgresSchema`), shared by the `cohort serve` replicas of one run. See `FederationStore`
/// for the lease and the fenced commit.
///
/// Every commit is one transaction that first locks the run's row, so commits and lease changes
/// of one run are serialized across replicas; reads see committed data only. The store reads no
/// clock: every time it records is passed in.
public final class PostgresStore: FederationStore {
  /// Where the store is, for messages: the URL without its password.
  public let location: String
  /// The schema the tables live in; nil for the connection's default (`public`).
  public let schema: String?
  private let client: PostgresClient
  private let runner: Task<Void, Never>
  let logger: Logger

  /// Connects to `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=MODE]`, MODE one
  /// of libpq's disable, prefer (the default: TLS when the server offers it), require (TLS, the
  /// certificate unchecked, as libpq) and verify-full (TLS, the certificate checked against the
  /// system's CAs and the host name)) and brings the schema up to date. Connections
  /// are pooled; one is opened at once, so a server that is down or refuses the user is an error
  /// here, not a wait.
  /// - Parameter schema: keeps the tables in this schema (created if missing; lower-case letters,
  ///   digits and `_`), so several stores share one database; nil for the default.
  public init(url: String, schema: String? = nil, logger: Logger = Logger(label: "cohort.store.postgres"))
    async throws(CohortError)
  {
    let parsed = try PostgresURL(url)
    if let schema {
      guard Self.isPlainName(schema) else {
        throw CohortError(
          .invalidConfiguration,
          "'\(schema)' is not a schema name the store uses: lower-case letters, digits and '_', "
            + "starting with a letter or '_', at most 63 bytes")
      }
    }
    location = parsed.redacted
    self.schema = schema
    self.logger = logger
    var configuration = PostgresClient.Configuration(
      host: parsed.host, port: parsed.port, username: parsed.user, password: parsed.password,
      database: parsed.database, tls: .disable)
    switch parsed.tlsMode {
    case .disable: break
    case .prefer: configuration.tls = .prefer(parsed.tlsConfiguration)
    case .require, .verifyFull: configuration.tls = .require(parsed.tlsConfiguration)
    }
    if let schema {
      configuration.options.additionalStartupParameters = [("search_path", schema)]
    }
    let client = PostgresClient(configuration: configuration, backgroundLogger: logger)
    self.client = client
    // The pool lends connections only while `run` runs; it ends when `close` cancels it.
    runner = Task { await client.run() }
    // The pool retries a server it cannot reach for a minute before it fails a request; one
    // connection of its own tells at once (and meanwhile the pool's `run` has started).
    do {
      var probe = PostgresConnection.Configuration(
        host: parsed.host, port: parsed.port, username: parsed.user, password: parsed.password,
        database: parsed.database, tls: .disable)
      switch parsed.tlsMode {
      case .disable: break
      case .prefer: probe.tls = .prefer(try NIOSSLContext(configuration: parsed.tlsConfiguration))
      case .require, .verifyFull:
        probe.tls = .require(try NIOSSLContext(configuration: parsed.tlsConfiguration))
      }
      let connection = try await PostgresConnection.connect(configuration: probe, id: 0, logger: logger)
      try await connection.close()
    } catch {
      runner.cancel()
      await runner.value
      throw Self.failure(error, doing: "connecting", location: parsed.redacted)
    }
    do {
      try await migrate()
    } catch {
      await close()
      throw error
    }
  }

  /// The migrations applied to the store's schema, in the order `PostgresSchema` lists them.
  func appliedMigrations() async throws(CohortError) -> [String] {
    let applied = try await transaction("reading the applied migrations") { c in
      try await c.query(
        PostgresQuery(unsafeSQL: "SELECT identifier FROM \(PostgresSchema.migrationsTable)"),
        logger: self.logger
      ).allRows().map { try $0.makeRandomAccess()["identifier"].decode(String.self) }
    }
    let order = PostgresSchema.migrations.map(\.identifier)
    return applied.sorted { (order.firstIndex(of: $0) ?? .max, $0) < (order.firstIndex(of: $1) ?? .max, $1) }
  }

  /// Drops the store's schema and everything in it: for tests, which each take a schema of their own.
  func dropSchema() async throws(CohortError) {
    guard let schema else { return }
    try await transaction("dropping the schema \(schema)") { c in
      try await c.query(
        PostgresQuery(unsafeSQL: "DROP SCHEMA IF EXISTS \(schema) CASCADE"), logger: self.logger
      )
      .allRows()
    }
  }

  /// Closes every connection. The store cannot be used afterwards.
  public func close() async {
    runner.cancel()
    await runner.value
  }

  deinit { runner.cancel() }

  static func isPlainName(_ name: String) -> Bool {
    let bytes = Array(name.utf8)
    guard let first = bytes.first, bytes.count <= 63, first == UInt8(ascii: "_") || (97...122).contains(first)
    else { return false }
    return bytes.allSatisfy { $0 == UInt8(ascii: "_") || (97...122).contains($0) || (48...57).contains($0) }
  }

  // MARK: - Schema

  public func migrate() async throws(CohortError) {
    let known = Set(PostgresSchema.migrations.map(\.identifier))
    try await transaction("preparing the store's tables") { c in
      // One migrator at a time per schema, however many replicas start together.
      let scope = "cohort_migrations:\(self.schema ?? "")"
      try await c.query("SELECT pg_advisory_xact_lock(hashtext(\(scope)))", logger: self.logger).allRows()
      if let schema = self.schema {
        try await c.query(
          PostgresQuery(unsafeSQL: "CREATE SCHEMA IF NOT EXISTS \(schema)"), logger: self.logger
        )
        .allRows()
      }
      try await c.query(
        PostgresQuery(
          unsafeSQL: """
            CREATE TABLE IF NOT EXISTS \(PostgresSchema.migrationsTable) (
              identifier TEXT PRIMARY KEY NOT NULL,
              applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )
            """), logger: self.logger
      ).allRows()
      var applied = Set<String>()
      for row in try await c.query(
        PostgresQuery(unsafeSQL: "SELECT identifier FROM \(PostgresSchema.migrationsTable)"),
        logger: self.logger
      ).allRows() {
        applied.insert(try row.makeRandomAccess()["identifier"].decode(String.self))
      }
      guard applied.isSubset(of: known) else {
        throw CohortError(
          .storage,
          "the store \(self.location) was written by a newer version of Cohort (its schema has changes "
            + "this version does not know)",
          fix: "serve it with that newer version, or give this one another database or schema")
      }
      for migration in PostgresSchema.migrations where !applied.contains(migration.identifier) {
        for statement in migration.statements {
          try await c.query(PostgresQuery(unsafeSQL: statement), logger: self.logger).allRows()
        }
        try await c.query(
          "INSERT INTO cohort_migrations (identifier) VALUES (\(migration.identifier))", logger: self.logger
        ).allRows()
      }
    }
  }

  // MARK: - Runs

  public func createRun(name: String, scenario: Scenario, createdAt: Date, labels: RunLabels)
    async throws(CohortError) -> RunID
  {
    try await transaction("creating the run \"\(name)\"") { c in
      try await self.insertRun(c, name: name, scenario: scenario, createdAt: createdAt, labels: labels)
    }
  }

  func insertRun(
    _ c: PostgresConnection, name: String, scenario: Scenario, createdAt: Date, labels: RunLabels
  )
    async throws -> RunID
  {
    let planJSON = String(decoding: scenario.plan.canonicalJSON, as: UTF8.self)
    let planSHA = SHA256.hex(scenario.plan.canonicalJSON)
    let scenarioJSON = try StoreJSON.encode(scenario, what: "the scenario of run \"\(name)\"")
    let seed = Int64(bitPattern: scenario.seed)
    let planName = scenario.plan.name
    try await c.query(
      """
      INSERT INTO plans (sha256, name, canonical_json) VALUES (\(planSHA), \(planName), \(planJSON))
      ON CONFLICT (sha256) DO NOTHING
      """, logger: self.logger
    ).allRows()
    let rows = try await c.query(
      """
      INSERT INTO runs (
        name, created_at, scenario_json, plan_sha256, seed, status, experiment, scenario, variant)
      VALUES (\(name), \(createdAt), \(scenarioJSON), \(planSHA), \(seed), \(RunStatus.running.rawValue),
        \(labels.experiment), \(labels.scenario), \(labels.variant))
      RETURNING id
      """, logger: self.logger
    ).allRows()
    guard let row = rows.first else { throw CohortError(.storage, "the new run's id was not returned") }
    return RunID(try row.makeRandomAccess()["id"].decode(Int64.self))
  }

  public func setStatus(_ run: RunID, _ status: RunStatus, at: Date) async throws(CohortError) {
    let finishedAt: Date? = status == .running ? nil : at
    try await transaction("setting the status of run \(run)") { c in
      let rows = try await c.query(
        """
        UPDATE runs SET status = \(status.rawValue), finished_at = \(finishedAt) WHERE id = \(run.rawValue)
        RETURNING id
        """, logger: self.logger
      ).allRows()
      if rows.isEmpty { throw self.missingRun(run) }
    }
  }

  public func run(_ id: RunID) async throws(CohortError) -> RunSummary {
    try await transaction("reading run \(id)") { c in
      let rows = try await c.query(
        "\(unescaped: Self.summarySQL) WHERE runs.id = \(id.rawValue)", logger: self.logger
      ).allRows()
      guard let row = rows.first else { throw self.missingRun(id) }
      return try Self.summary(row.makeRandomAccess())
    }
  }

  /// Every run, oldest first.
  public func runs() async throws(CohortError) -> [RunSummary] {
    try await transaction("listing runs") { c in
      try await c.query("\(unescaped: Self.summarySQL) ORDER BY runs.id", logger: self.logger).allRows()
        .map { try Self.summary($0.makeRandomAccess()) }
    }
  }

  public func resumableRun(planSHA256: String) async throws(CohortError) -> RunSummary? {
    try await transaction("finding the run to resume") { c in
      try await c.query(
        """
        \(unescaped: Self.summarySQL)
        WHERE runs.plan_sha256 = \(planSHA256) AND runs.status IN ('running', 'interrupted')
        ORDER BY runs.id DESC LIMIT 1
        """, logger: self.logger
      ).allRows().first.map { try Self.summary($0.makeRandomAccess()) }
    }
  }

  public func scenario(_ run: RunID) async throws(CohortError) -> Scenario {
    let json = try await transaction("reading the scenario of run \(run)") { c in
      let rows = try await c.query(
        "SELECT scenario_json FROM runs WHERE id = \(run.rawValue)", logger: self.logger
      ).allRows()
      guard let row = rows.first else { throw self.missingRun(run) }
      return try row.makeRandomAccess()["scenario_json"].decode(String.self)
    }
    return try StoreJSON.decode(
      Scenario.self, from: Data(json.utf8), what: "the scenario of run \(run) in \(location)")
  }

  // MARK: - Rounds

  public func commitRound(
    _ run: RunID, _ record: RoundRecord, checkpoint: Weights?, devices: [DeviceParticipation],
    lateReports: [Int: Int], resumeState: Data?, secureAggregation: [SecureAggregationStepRecord],
    fencingToken: Int64?
  ) async throws(CohortError) {
    let round = record.round
    // Checks and encoding outside the transaction: pure work that can be large.
    var seen = Set<Int>()
    for d in devices where !seen.insert(d.device).inserted {
      throw CohortError(
        .storage, "device \(d.device) is listed twice for round \(round) of run \(run)",
        fix: "pass each selected device once, with reported/dropped for what it did")
    }
    if checkpoint != nil, record.outcome != .committed {
      throw CohortError(
        .storage,
        "round \(round) of run \(run) was abandoned, so it produced no model, yet a checkpoint was passed with it",
        fix: "pass checkpoint: nil for abandoned rounds; the latest checkpoint stays the run's model")
    }
    let blob = checkpoint.map { Float32LittleEndian.data($0.values) }
    let digest = blob.map { SHA256.hex($0) }
    let layoutJSON = try checkpoint.map { (w: Weights) throws(CohortError) -> String in
      try StoreJSON.encode(w.layout, what: "the checkpoint layout")
    }
    let alreadyCommitted = CohortError(
      .storage, "round \(round) of run \(run) is already committed in \(location)",
      fix: "committed rounds are never rewritten; resume after the run's last round")

    try await transaction("committing round \(round) of run \(run)") { c in
      // The run's row lock orders this commit against other commits and lease changes of the run:
      // the lease read next cannot change before this transaction ends.
      try await self.lockRun(c, run)
      let current = try await self.lease(c, run)
      try LeaseRules.checkFence(token: fencingToken, current: current, run: run, round: round)
      let existing = try await c.query(
        "SELECT 1 FROM rounds WHERE run_id = \(run.rawValue) AND round = \(round)", logger: self.logger
      ).allRows()
      if !existing.isEmpty { throw alreadyCommitted }
      let r = record
      do {
        try await c.query(
          """
          INSERT INTO rounds (
            run_id, round, started_at, ended_at, outcome, abandon_reason, selected, reported, dropped, late,
            rejected, bytes_down, bytes_up, train_loss, eval_loss, eval_accuracy, federated_eval_loss,
            federated_eval_accuracy, federated_eval_examples, epsilon, duration_seconds, real_seconds,
            mean_staleness, max_staleness, resume_state)
          VALUES (\(run.rawValue), \(r.round), \(r.startedAt), \(r.endedAt), \(r.outcome.rawValue),
            \(r.abandonReason), \(r.selected), \(r.reported), \(r.dropped), \(r.late), \(r.rejected),
            \(r.bytesDown), \(r.bytesUp), \(r.trainLoss), \(r.evalLoss), \(r.evalAccuracy),
            \(r.federatedEvalLoss), \(r.federatedEvalAccuracy), \(r.federatedEvalExamples), \(r.epsilon),
            \(r.durationSeconds), \(r.realSeconds), \(r.meanStaleness), \(r.maximumStaleness), \(resumeState))
          """, logger: self.logger
        ).allRows()
      } catch let error as PSQLError where error.serverInfo?[.sqlState] == "23505" {
        throw alreadyCommitted
      }

      if let checkpoint, let blob, let digest, let layoutJSON {
        let previous = try await c.query(
          """
          SELECT layout_json FROM checkpoints WHERE run_id = \(run.rawValue) ORDER BY round DESC LIMIT 1
          """, logger: self.logger
        ).allRows().first.map { try $0.makeRandomAccess()["layout_json"].decode(String.self) }
        // Layouts are written with sorted keys: the same text is the same layout.
        if let previous, previous != layoutJSON {
          let layout = try StoredCheckpoint.decodeLayout(
            previous, run: run, round: round, location: self.location)
          if layout != checkpoint.layout {
            throw CohortError(
              .shapeMismatch,
              "the checkpoint of round \(round) of run \(run) has the layout "
                + "\(ResultsStore.describe(checkpoint.layout)) but the run's earlier checkpoints have "
                + "\(ResultsStore.describe(layout))",
              fix: "a run keeps one model architecture; start a new run for a different model")
          }
        }
        try await c.query(
          """
          INSERT INTO checkpoints (run_id, round, sha256, layout_json, weights)
          VALUES (\(run.rawValue), \(round), \(digest), \(layoutJSON), \(blob))
          """, logger: self.logger
        ).allRows()
      }

      if !devices.isEmpty {
        // The whole cohort in one statement, from arrays: a cohort is hundreds of rows a round.
        // As in SQLite: a participation is a selection in a round, an admission in async mode.
        let ids = devices.map(\.device)
        let participations = devices.map { max(1, $0.reports + $0.dropouts) }
        let reports = devices.map(\.reports)
        let dropouts = devices.map(\.dropouts)
        try await c.query(
          """
          INSERT INTO devices (run_id, device, participations, reports, dropouts, last_round)
          SELECT \(run.rawValue), d.device, d.participations, d.reports, d.dropouts, \(round)
          FROM unnest(\(ids)::BIGINT[], \(participations)::BIGINT[], \(reports)::BIGINT[], \(dropouts)::BIGINT[])
            AS d(device, participations, reports, dropouts)
          ON CONFLICT (run_id, device) DO UPDATE SET
            participations = devices.participations + excluded.participations,
            reports = devices.reports + excluded.reports,
            dropouts = devices.dropouts + excluded.dropouts,
            last_round = GREATEST(devices.last_round, excluded.last_round)
          """, logger: self.logger
        ).allRows()
      }
      for d in devices {
        guard let e = d.evaluation else { continue }
        try await c.query(
          """
          INSERT INTO device_evaluations (run_id, round, device, accuracy, loss, examples)
          VALUES (\(run.rawValue), \(round), \(d.device), \(e.accuracy), \(e.loss), \(e.examples))
          """, logger: self.logger
        ).allRows()
      }
      for (earlier, count) in lateReports.sorted(by: { $0.key < $1.key }) where count > 0 {
        try await c.query(
          "UPDATE rounds SET late = late + \(count) WHERE run_id = \(run.rawValue) AND round = \(earlier)",
          logger: self.logger
        ).allRows()
      }
      for step in secureAggregation {
        try await c.query(
          """
          INSERT INTO secure_aggregation_steps
            (run_id, round, step, entered, dropped, bytes_up, bytes_down, server_seconds)
          VALUES (\(run.rawValue), \(round), \(step.step), \(step.entered), \(step.dropped), \(step.bytesUp),
            \(step.bytesDown), \(step.serverSeconds))
          """, logger: self.logger
        ).allRows()
      }
    }
  }

  public func rounds(_ run: RunID) async throws(CohortError) -> [RoundRecord] {
    try await transaction("reading the rounds of run \(run)") { c in
      try await self.requireRun(c, run)
      return try await c.query(
        "SELECT * FROM rounds WHERE run_id = \(run.rawValue) ORDER BY round", logger: self.logger
      ).allRows().map { try Self.roundRecord($0.makeRandomAccess()) }
    }
  }

  public func devices(_ run: RunID) async throws(CohortError) -> [DeviceRecord] {
    try await transaction("reading the devices of run \(run)") { c in
      try await self.requireRun(c, run)
      return try await c.query(
        "SELECT * FROM devices WHERE run_id = \(run.rawValue) ORDER BY device", logger: self.logger
      ).allRows().map { row in
        let r = row.makeRandomAccess()
        return DeviceRecord(
          device: try r["device"].decode(Int.self), participations: try r["participations"].decode(Int.self),
          reports: try r["reports"].decode(Int.self), dropouts: try r["dropouts"].decode(Int.self),
          lastRound: try r["last_round"].decode(Int.self))
      }
    }
  }

  public func deviceEvaluations(_ run: RunID) async throws(CohortError) -> [DeviceEvaluationRecord] {
    try await transaction("reading the device evaluations of run \(run)") { c in
      try await self.requireRun(c, run)
      return try await c.query(
        "SELECT * FROM device_evaluations WHERE run_id = \(run.rawValue) ORDER BY round, device",
        logger: self.logger
      ).allRows().map { row in
        let r = row.makeRandomAccess()
        return DeviceEvaluationRecord(
          round: try r["round"].decode(Int.self), device: try r["device"].decode(Int.self),
          accuracy: try r["accuracy"].decode(Double.self), loss: try r["loss"].decode(Double.self),
          examples: try r["examples"].decode(Int.self))
      }
    }
  }

  public func secureAggregationSteps(_ run: RunID) async throws(CohortError) -> [(
    round: Int, SecureAggregationStepRecord
  )] {
    let rows = try await transaction("reading the secure-aggregation steps of run \(run)") { c in
      try await self.requireRun(c, run)
      return try await c.query(
        """
        SELECT * FROM secure_aggregation_steps WHERE run_id = \(run.rawValue)
        ORDER BY round, CASE step WHEN 'advertise_keys' THEN 0 WHEN 'share_keys' THEN 1
          WHEN 'masked_input' THEN 2 WHEN 'consistency_check' THEN 3 ELSE 4 END
        """, logger: self.logger
      ).allRows().map { row -> StepRow in
        let r = row.makeRandomAccess()
        return StepRow(
          round: try r["round"].decode(Int.self),
          step: SecureAggregationStepRecord(
            step: try r["step"].decode(String.self), entered: try r["entered"].decode(Int.self),
            dropped: try r["dropped"].decode(Int.self), bytesUp: try r["bytes_up"].decode(Int.self),
            bytesDown: try r["bytes_down"].decode(Int.self),
            serverSeconds: try r["server_seconds"].decode(Double.self)))
      }
    }
    return rows.map { ($0.round, $0.step) }
  }

  private struct StepRow: Sendable {
    var round: Int
    var step: SecureAggregationStepRecord
  }

  public func resumeState(_ run: RunID, round: Int) async throws(CohortError) -> Data? {
    try await transaction("reading the resume state of run \(run)") { c in
      try await self.requireRun(c, run)
      return try await c.query(
        "SELECT resume_state FROM rounds WHERE run_id = \(run.rawValue) AND round = \(round)",
        logger: self.logger
      ).allRows().first.flatMap { try $0.makeRandomAccess()["resume_state"].decode(Data?.self) }
    }
  }

  public func saveAsyncBuffer(_ run: RunID, version: Int, state: Data) async throws(CohortError) {
    try await transaction("saving the asynchronous buffer of run \(run)") { c in
      try await self.requireRun(c, run)
      try await c.query(
        """
        INSERT INTO async_buffers (run_id, version, state) VALUES (\(run.rawValue), \(version), \(state))
        ON CONFLICT (run_id) DO UPDATE SET version = excluded.version, state = excluded.state
        """, logger: self.logger
      ).allRows()
    }
  }

  public func asyncBuffer(_ run: RunID) async throws(CohortError) -> (version: Int, state: Data)? {
    try await transaction("reading the asynchronous buffer of run \(run)") { c in
      try await self.requireRun(c, run)
      return try await c.query(
        "SELECT version, state FROM async_buffers WHERE run_id = \(run.rawValue)", logger: self.logger
      ).allRows().first.map { row in
        let r = row.makeRandomAccess()
        return (try r["version"].decode(Int.self), try r["state"].decode(Data.self))
      }
    }
  }

  public func recordEvaluation(_ run: RunID, round: Int, _ evaluation: Evaluation) async throws(CohortError) {
    try await transaction("recording the evaluation of round \(round) of run \(run)") { c in
      try await self.requireRun(c, run)
      try await c.query(
        """
        UPDATE rounds SET eval_loss = \(evaluation.loss), eval_accuracy = \(evaluation.accuracy)
        WHERE run_id = \(run.rawValue) AND round = \(round)
        """, logger: self.logger
      ).allRows()
    }
  }

  public func latestCheckpoint(_ run: RunID) async throws(CohortError) -> (round: Int, weights: Weights)? {
    try await checkpoint(run, through: Int.max)
  }

  /// The checkpoint of the latest round up to `round` that has one.
  public func checkpoint(_ run: RunID, through round: Int) async throws(CohortError) -> (
    round: Int, weights: Weights
  )? {
    let last = Int64(clamping: round)
    let stored = try await transaction("reading a checkpoint of run \(run)") { c in
      try await self.requireRun(c, run)
      return try await c.query(
        """
        SELECT round, sha256, layout_json, weights FROM checkpoints
        WHERE run_id = \(run.rawValue) AND round <= \(last)
        ORDER BY round DESC LIMIT 1
        """, logger: self.logger
      ).allRows().first.map { row in
        let r = row.makeRandomAccess()
        return StoredCheckpoint(
          round: try r["round"].decode(Int.self), sha256: try r["sha256"].decode(String.self),
          layoutJSON: try r["layout_json"].decode(String.self), blob: try r["weights"].decode(Data.self))
      }
    }
    guard let stored else { return nil }
    return try stored.verified(
      run: run, location: location,
      fix:
        "the table was changed outside Cohort; restore it from a backup, or use an earlier round's checkpoint"
    )
  }

  // MARK: - Leases

  public func acquireLease(run: RunID, holder: String, now: Date, duration: TimeInterval)
    async throws(CohortError) -> LeaseGrant?
  {
    try LeaseRules.validate(holder: holder, duration: duration, run: run, now: now)
    return try await transaction("acquiring the lease on run \(run)") { c in
      try await self.lockRun(c, run)
      let current = try await self.lease(c, run)
      switch LeaseRules.decide(current: current, run: run, holder: holder, now: now, duration: duration) {
      case .refuse:
        return nil
      case .grant(let grant):
        try await c.query(
          """
          INSERT INTO leases (run_id, holder, token, expires_at)
          VALUES (\(run.rawValue), \(grant.holder), \(grant.token), \(grant.expiresAt))
          ON CONFLICT (run_id) DO UPDATE SET
            holder = excluded.holder, token = excluded.token, expires_at = excluded.expires_at
          """, logger: self.logger
        ).allRows()
        return grant
      }
    }
  }

  public func releaseLease(run: RunID, holder: String, token: Int64) async throws(CohortError) {
    try await transaction("releasing the lease on run \(run)") { c in
      try await c.query(
        """
        UPDATE leases SET expires_at = \(LeaseRules.released)
        WHERE run_id = \(run.rawValue) AND holder = \(holder) AND token = \(token)
        """, logger: self.logger
      ).allRows()
    }
  }

  public func lease(_ run: RunID) async throws(CohortError) -> LeaseGrant? {
    try await transaction("reading the lease on run \(run)") { c in
      try await self.requireRun(c, run)
      return try await self.lease(c, run)
    }
  }

  private func lease(_ c: PostgresConnection, _ run: RunID) async throws -> LeaseGrant? {
    guard
      let row = try await c.query(
        "SELECT holder, token, expires_at FROM leases WHERE run_id = \(run.rawValue)", logger: logger
      ).allRows().first
    else { return nil }
    let r = row.makeRandomAccess()
    return LeaseGrant(
      run: run, holder: try r["holder"].decode(String.self), token: try r["token"].decode(Int64.self),
      expiresAt: try r["expires_at"].decode(Date.self))
  }

  // MARK: - Helpers

  /// Runs `body` in one transaction on one pooled connection: committed when it returns, rolled
  /// back when it throws. Every failure becomes a `CohortError` that names the store.
  @discardableResult
  func transaction<T: Sendable>(
    _ doing: String, _ body: (PostgresConnection) async throws -> T
  ) async throws(CohortError) -> T {
    do {
      return try await client.withConnection { c in
        // Pinned: the row locks and lease reads assume READ COMMITTED, whatever the database's
        // default is (under REPEATABLE READ a locked row that changed would fail the transaction).
        try await c.query("BEGIN ISOLATION LEVEL READ COMMITTED", logger: self.logger).allRows()
        do {
          let value = try await body(c)
          try await c.query("COMMIT", logger: self.logger).allRows()
          return value
        } catch {
          _ = try? await c.query("ROLLBACK", logger: self.logger).allRows()
          throw error
        }
      }
    } catch let error as CohortError {
      throw error
    } catch {
      throw Self.failure(error, doing: doing, location: location)
    }
  }

  private static func failure(_ error: any Error, doing: String, location: String) -> CohortError {
    let reach =
      "check that PostgreSQL runs at \(location) and accepts this user; the URL's form is "
      + "postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
    guard let error = error as? PSQLError else {
      return CohortError(.storage, "\(doing) in the store \(location) failed: \(error)", fix: reach)
    }
    if let info = error.serverInfo {
      let message = info[.message] ?? "the server refused"
      let state = info[.sqlState].map { " (SQLSTATE \($0))" } ?? ""
      let detail = info[.detail].map { ": \($0)" } ?? ""
      let failed = "\(doing) in the store \(location) failed: \(message)\(detail)\(state)"
      guard let fix = info[.sqlState].flatMap(Self.fix(sqlState:)) else {
        return CohortError(.storage, failed)
      }
      return CohortError(.storage, failed, fix: fix)
    }
    let underlying = error.underlying.map { ": \($0)" } ?? ""
    return CohortError(
      .storage, "\(doing) in the store \(location) failed: \(error.code)\(underlying)", fix: reach)
  }

  /// What to do about the server errors an operator meets first.
  static func fix(sqlState: String) -> String? {
    switch sqlState {
    case "28P01", "28000":
      "check the user and password in the URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE) and pg_hba.conf"
    case "3D000": "create the database first (createdb DATABASE), or name an existing one in the URL"
    case "42501":
      "grant the user rights on the database and schema (PostgreSQL 15 no longer lets every user create "
        + "tables in schema public: GRANT CREATE ON SCHEMA public TO USER, or make the user the database's owner)"
    case "53300": "the server has no connection slots left: raise max_connections or stop idle clients"
    case "40001", "40P01": "another server wrote the same rows at once; try again"
    default: nil
    }
  }

  private func missingRun(_ id: RunID) -> CohortError {
    CohortError(
      .notFound, "there is no run \(id) in the store \(location)",
      fix: "run `cohort runs list` to see the runs it holds")
  }

  func requireRun(_ c: PostgresConnection, _ run: RunID) async throws {
    if try await c.query("SELECT 1 FROM runs WHERE id = \(run.rawValue)", logger: logger).allRows().isEmpty {
      throw missingRun(run)
    }
  }

  /// Locks the run's row until the transaction ends; throws when there is no such run.
  func lockRun(_ c: PostgresConnection, _ run: RunID) async throws {
    // NO KEY UPDATE: it serialises commits and leases as FOR UPDATE would, without blocking the
    // key-share locks that inserts referencing the run take (replicas' places and contributions).
    if try await c.query("SELECT 1 FROM runs WHERE id = \(run.rawValue) FOR NO KEY UPDATE", logger: logger)
      .allRows()
      .isEmpty
    {
      throw missingRun(run)
    }
  }

  /// The same summary query as SQLite's: both dialects read it alike.
  private static var summarySQL: String { ResultsStore.summarySQL }

  private static func summary(_ r: PostgresRandomAccessRow) throws -> RunSummary {
    let id = RunID(try r["id"].decode(Int64.self))
    let statusText = try r["status"].decode(String.self)
    guard let status = RunStatus(rawValue: statusText) else {
      throw CohortError(
        .storage, "run \(id) has the unknown status '\(statusText)'",
        fix: "set it to one of: " + RunStatus.allCases.map(\.rawValue).joined(separator: ", "))
    }
    var summary = RunSummary(
      id: id, name: try r["name"].decode(String.self), createdAt: try r["created_at"].decode(Date.self),
      status: status, finishedAt: try r["finished_at"].decode(Date?.self),
      seed: UInt64(bitPattern: try r["seed"].decode(Int64.self)),
      planName: try r["plan_name"].decode(String.self), planSHA256: try r["plan_sha256"].decode(String.self),
      roundsCommitted: try r["rounds_committed"].decode(Int.self),
      lastAccuracy: try r["last_accuracy"].decode(Double?.self),
      bestAccuracy: try r["best_accuracy"].decode(Double?.self))
    summary.labels = RunLabels(
      experiment: try r["experiment"].decode(String?.self), scenario: try r["scenario"].decode(String?.self),
      variant: try r["variant"].decode(String?.self))
    return summary
  }

  static func roundRecord(_ r: PostgresRandomAccessRow) throws -> RoundRecord {
    let round = try r["round"].decode(Int.self)
    let outcomeText = try r["outcome"].decode(String.self)
    guard let outcome = RoundOutcome(rawValue: outcomeText) else {
      throw CohortError(.storage, "round \(round) has the unknown outcome '\(outcomeText)'")
    }
    return RoundRecord(
      round: round, startedAt: try r["started_at"].decode(Double.self),
      endedAt: try r["ended_at"].decode(Double.self), outcome: outcome,
      abandonReason: try r["abandon_reason"].decode(String?.self),
      selected: try r["selected"].decode(Int.self), reported: try r["reported"].decode(Int.self),
      dropped: try r["dropped"].decode(Int.self), late: try r["late"].decode(Int.self),
      rejected: try r["rejected"].decode(Int.self), bytesDown: try r["bytes_down"].decode(Int.self),
      bytesUp: try r["bytes_up"].decode(Int.self), trainLoss: try r["train_loss"].decode(Double?.self),
      evalLoss: try r["eval_loss"].decode(Double?.self),
      evalAccuracy: try r["eval_accuracy"].decode(Double?.self),
      federatedEvalLoss: try r["federated_eval_loss"].decode(Double?.self),
      federatedEvalAccuracy: try r["federated_eval_accuracy"].decode(Double?.self),
      federatedEvalExamples: try r["federated_eval_examples"].decode(Int?.self),
      epsilon: try r["epsilon"].decode(Double?.self),
      durationSeconds: try r["duration_seconds"].decode(Double.self),
      realSeconds: try r["real_seconds"].decode(Double?.self),
      meanStaleness: try r["mean_staleness"].decode(Double?.self),
      maximumStaleness: try r["max_staleness"].decode(Int?.self))
  }
}

extension PostgresRowSequence {
  /// Every row, after the statement has finished; statements whose rows nobody needs call it
  /// too, so that they have run before the next one starts.
  @discardableResult
  func allRows() async throws -> [PostgresRow] { try await collect() }
}

/// A `postgres://` URL, checked: every part the store does not use is refused, not ignored.
struct PostgresURL {
  /// libpq's `sslmode`, of which the store knows these.
  enum TLSMode {
    case disable
    case prefer
    case require
    case verifyFull
  }

  /// libpq's meaning: only verify-full checks the server's certificate (against the system's
  /// CAs, and its name against the host); prefer and require encrypt without checking it.
  var tlsConfiguration: TLSConfiguration {
    var tls = TLSConfiguration.makeClientConfiguration()
    if tlsMode != .verifyFull { tls.certificateVerification = .none }
    return tls
  }

  var user: String
  var password: String?
  var host: String
  var port: Int
  var database: String?
  var tlsMode: TLSMode
  /// The URL without the password, for messages and logs.
  var redacted: String

  init(_ text: String) throws(CohortError) {
    let form = "postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=disable|prefer|require|verify-full]"
    func invalid(_ why: String) -> CohortError {
      CohortError(
        .invalidConfiguration, "the PostgreSQL URL is not usable: \(why)", fix: "give it as \(form)")
    }
    guard let url = URLComponents(string: text), let scheme = url.scheme?.lowercased(),
      scheme == "postgres" || scheme == "postgresql"
    else { throw invalid("it does not start with postgres://") }
    guard let host = url.host, !host.isEmpty else { throw invalid("it names no host") }
    guard let user = url.user, !user.isEmpty else { throw invalid("it names no user") }
    let port = url.port ?? 5432
    guard (1...65535).contains(port) else { throw invalid("the port \(port) is out of range") }
    var path = url.path
    if path.hasPrefix("/") { path.removeFirst() }
    guard !path.contains("/") else { throw invalid("the database '\(path)' contains '/'") }
    var tls = TLSMode.prefer
    for item in url.queryItems ?? [] {
      guard item.name == "sslmode" else {
        throw invalid("it has the option '\(item.name)', which the store does not know")
      }
      switch item.value {
      case "disable": tls = .disable
      case "prefer": tls = .prefer
      case "require": tls = .require
      case "verify-full": tls = .verifyFull
      default:
        throw invalid("sslmode '\(item.value ?? "")' is not one of disable, prefer, require and verify-full")
      }
    }
    self.user = user
    self.password = url.password
    self.host = host
    self.port = port
    self.database = path.isEmpty ? nil : path
    self.tlsMode = tls
    var shown = url
    shown.password = nil
    redacted = shown.string ?? "postgres://\(host)"
  }
}
