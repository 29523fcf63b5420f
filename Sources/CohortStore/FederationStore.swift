public import CohortCore
public import Foundation
import GRDB

/// What a served run needs of its store, behind one interface with two backends: the SQLite
/// results store (`ResultsStore`, the embedded default) and PostgreSQL (`PostgresStore`), through
/// which several `cohort serve` replicas share one run. Both hold the same tables.
///
/// Replicas take turns leading a run through its lease: `acquireLease` grants it to one holder
/// at a time, for a while, with a fencing token that grows at every change of holder. A leader
/// passes its token to `commitRound`, which refuses the commit (`CohortError.Code.fenced`) once
/// the run's token has moved on, checked in the commit's own transaction under a lock: a leader
/// that was deposed while it worked (paused, partitioned, slow) can never land a round.
///
/// The store reads no clock: `now` is the caller's. Replicas whose clocks disagree may both
/// believe they lead for a moment; the fencing token, not the clock, keeps their writes apart.
public protocol FederationStore: Sendable {
  /// Brings the schema up to date; idempotent, and safe when several replicas start at once.
  func migrate() async throws(CohortError)

  /// Records a new run in status `running`, and its plan under the plan's SHA-256.
  func createRun(name: String, scenario: Scenario, createdAt: Date, labels: RunLabels)
    async throws(CohortError)
    -> RunID

  /// Sets a run's status; leaving `running` records `at` as its finish time.
  func setStatus(_ run: RunID, _ status: RunStatus, at: Date) async throws(CohortError)

  /// One run's summary.
  func run(_ id: RunID) async throws(CohortError) -> RunSummary

  /// The run a server of the plan with this SHA-256 continues: the newest one `running` or
  /// `interrupted`; nil when there is none.
  func resumableRun(planSHA256: String) async throws(CohortError) -> RunSummary?

  /// The scenario a run was created with (its seed included).
  func scenario(_ run: RunID) async throws(CohortError) -> Scenario

  /// Commits one round in one transaction, as `ResultsStore.commitRound` does: its record, the
  /// checkpoint of the model it produced, the counters and evaluations of its devices, late
  /// reports of earlier rounds, its resume state and its secure-aggregation steps.
  ///
  /// `fencingToken` is the token of the caller's lease on the run. The commit is refused with
  /// `.fenced`, nothing written, when the run's lease has another token (another replica took
  /// over), or when a token is given and no lease was ever granted. Nil is a server that leads
  /// without a lease (a single server): refused once any replica has taken the run's lease.
  func commitRound(
    _ run: RunID, _ record: RoundRecord, checkpoint: Weights?, devices: [DeviceParticipation],
    lateReports: [Int: Int], resumeState: Data?, secureAggregation: [SecureAggregationStepRecord],
    fencingToken: Int64?
  ) async throws(CohortError)

  /// A run's rounds in order, committed and abandoned.
  func rounds(_ run: RunID) async throws(CohortError) -> [RoundRecord]

  /// A run's device counters, by device index.
  func devices(_ run: RunID) async throws(CohortError) -> [DeviceRecord]

  /// A run's per-device evaluations, by round and then device.
  func deviceEvaluations(_ run: RunID) async throws(CohortError) -> [DeviceEvaluationRecord]

  /// The secure-aggregation steps of every round of a run, in round and protocol order.
  func secureAggregationSteps(_ run: RunID) async throws(CohortError) -> [(
    round: Int, SecureAggregationStepRecord
  )]

  /// The resume state stored with round `round` of a run, if it has one.
  func resumeState(_ run: RunID, round: Int) async throws(CohortError) -> Data?

  /// The checkpoint of the run's latest round that has one, its SHA-256 verified; nil when none.
  func latestCheckpoint(_ run: RunID) async throws(CohortError) -> (round: Int, weights: Weights)?

  /// Stores a served asynchronous run's buffer at `version`, replacing the one stored before
  /// (see `AsyncBuffer`'s driver contract: the update it was saved for may then be acknowledged).
  func saveAsyncBuffer(_ run: RunID, version: Int, state: Data) async throws(CohortError)

  /// The buffer `saveAsyncBuffer` stored last for a run, and its version; nil when none.
  func asyncBuffer(_ run: RunID) async throws(CohortError) -> (version: Int, state: Data)?

  /// Fills in the central evaluation of a committed round, measured after its commit.
  func recordEvaluation(_ run: RunID, round: Int, _ evaluation: Evaluation) async throws(CohortError)

  /// Grants `holder` the run's lease until `now + duration`, or nil while another holder's lease
  /// has not expired at `now`. A holder that holds it already renews it with the same token; a
  /// new holder (the lease free, expired or released) gets the previous token plus one, 1 for
  /// the first. `holder` names one server process's lifetime (e.g. host, pid and a random
  /// part): a restarted server must not reuse its predecessor's name.
  func acquireLease(run: RunID, holder: String, now: Date, duration: TimeInterval) async throws(CohortError)
    -> LeaseGrant?

  /// Ends `holder`'s lease with `token` at once, so another replica may take over without
  /// waiting for it to expire; the token is kept, so the next holder's is larger. Nothing
  /// happens when the lease has moved on.
  func releaseLease(run: RunID, holder: String, token: Int64) async throws(CohortError)

  /// The run's lease as last granted (it may have expired), or nil when none ever was.
  func lease(_ run: RunID) async throws(CohortError) -> LeaseGrant?
}

/// A run's lease: who leads it, with which fencing token, until when.
public struct LeaseGrant: Sendable, Hashable {
  public var run: RunID
  public var holder: String
  /// Grows by one at every change of holder; never reused for the run.
  public var token: Int64
  public var expiresAt: Date

  public init(run: RunID, holder: String, token: Int64, expiresAt: Date) {
    self.run = run
    self.holder = holder
    self.token = token
    self.expiresAt = expiresAt
  }
}

/// The lease and fencing rules, without I/O: both backends read the run's lease row under a
/// lock, ask these, and write what they say.
enum LeaseRules {
  /// Limits on what a lease request may carry, so a bad argument is an error, not a lease that
  /// never ends or a row no tool can show.
  static let maximumHolderLength = 256

  static func validate(holder: String, duration: TimeInterval, run: RunID, now: Date) throws(CohortError) {
    // A time from a broken clock would trap when it is encoded (as whole microseconds).
    guard now.timeIntervalSince1970.isFinite, abs(now.timeIntervalSince1970) < 1e11 else {
      throw CohortError(
        .invalidConfiguration, "the time given for the lease on run \(run) is not a time: \(now)",
        fix: "pass the server clock's time")
    }
    guard !holder.isEmpty, holder.utf8.count <= maximumHolderLength else {
      throw CohortError(
        .invalidConfiguration,
        "a lease holder's name must have 1 to \(maximumHolderLength) bytes, not \(holder.utf8.count)",
        fix: "name the server process, e.g. by host, process id and a random part")
    }
    guard duration.isFinite, duration > 0, duration <= 86_400 else {
      throw CohortError(
        .invalidConfiguration,
        "the lease on run \(run) was asked for \(duration) seconds; it must be more than 0 and at most a day",
        fix: "ask for a lease of a few seconds and renew it while leading")
    }
  }

  /// What `acquireLease` does, given the run's current lease.
  enum Decision: Equatable {
    /// Write this lease (a new row, a renewal or a takeover).
    case grant(LeaseGrant)
    /// Another holder's lease is still running.
    case refuse
  }

  static func decide(current: LeaseGrant?, run: RunID, holder: String, now: Date, duration: TimeInterval)
    -> Decision
  {
    let expiresAt = now.addingTimeInterval(duration)
    guard let current else {
      return .grant(LeaseGrant(run: run, holder: holder, token: 1, expiresAt: expiresAt))
    }
    if current.holder == holder {
      // A renewal, or the same process again after its lease lapsed with nobody taking over:
      // no one else wrote with a token in between, so the token stays.
      return .grant(LeaseGrant(run: run, holder: holder, token: current.token, expiresAt: expiresAt))
    }
    guard current.expiresAt <= now else { return .refuse }
    let (next, overflow) = current.token.addingReportingOverflow(1)
    // 2^63 takeovers never happen; a corrupt row must not wrap the fence around.
    guard !overflow else { return .refuse }
    return .grant(LeaseGrant(run: run, holder: holder, token: next, expiresAt: expiresAt))
  }

  /// The time a released lease expires at: before any `now` a caller passes.
  static let released = Date(timeIntervalSince1970: 0)

  /// Throws `.fenced` unless a commit with `token` may land, given the run's lease.
  static func checkFence(token: Int64?, current: LeaseGrant?, run: RunID, round: Int) throws(CohortError) {
    switch (token, current) {
    case (nil, nil):
      return
    case (nil, let current?):
      throw CohortError(
        .fenced,
        "round \(round) of run \(run) was not committed: the run is led through its lease (now "
          + "\(current.holder)'s, token \(current.token)) and this server holds none",
        fix: "serve this run through the shared store as a replica, which takes the lease before it "
          + "leads; a server without a lease must not write a replicated run")
    case (let token?, nil):
      throw CohortError(
        .fenced,
        "round \(round) of run \(run) was not committed: it carries fencing token \(token) but no "
          + "lease on the run was ever granted",
        fix: "acquire the run's lease and commit with the token it grants")
    case (let token?, let current?):
      if token == current.token { return }
      throw CohortError(
        .fenced,
        "round \(round) of run \(run) was not committed: this server's leadership (fencing token "
          + "\(token)) has ended, and \(current.holder) now leads the run with token \(current.token)",
        fix: "this server is no longer the run's leader: drop the round in flight and follow the new "
          + "leader; acquire the lease again to lead once it is free")
    }
  }
}

// MARK: - SQLite

extension ResultsStore: FederationStore {
  /// The schema is brought up to date when the store is opened; this runs the migrator again,
  /// which does nothing when it is current.
  public func migrate() async throws(CohortError) {
    try access("preparing the results store's tables") {
      try StoreErrors.migrate(writer, with: Schema.migrator, path: path, store: "results store")
    }
  }

  public func resumableRun(planSHA256: String) async throws(CohortError) -> RunSummary? {
    try access("finding the run to resume") {
      try writer.read { db in
        try Row.fetchOne(
          db,
          sql: Self.summarySQL
            + " WHERE runs.plan_sha256 = ? AND runs.status IN ('running', 'interrupted') "
            + "ORDER BY runs.id DESC LIMIT 1",
          arguments: [planSHA256]
        ).map { try Self.summary($0) }
      }
    }
  }

  public func commitRound(
    _ run: RunID, _ record: RoundRecord, checkpoint: Weights?, devices: [DeviceParticipation],
    lateReports: [Int: Int], resumeState: Data?, secureAggregation: [SecureAggregationStepRecord],
    fencingToken: Int64?
  ) async throws(CohortError) {
    // SQLite has one writer at a time: reading the lease inside the round's write transaction
    // holds it still until the commit.
    try commitRound(
      run, record, checkpoint: checkpoint, devices: devices, lateReports: lateReports,
      resumeState: resumeState, secureAggregation: secureAggregation,
      fence: { db in
        let current = try Self.lease(db, run)
        try LeaseRules.checkFence(token: fencingToken, current: current, run: run, round: record.round)
      })
  }

  public func acquireLease(run: RunID, holder: String, now: Date, duration: TimeInterval)
    async throws(CohortError) -> LeaseGrant?
  {
    try LeaseRules.validate(holder: holder, duration: duration, run: run, now: now)
    return try access("acquiring the lease on run \(run)") {
      try writer.write { db in
        try requireRun(db, run)
        let current = try Self.lease(db, run)
        switch LeaseRules.decide(current: current, run: run, holder: holder, now: now, duration: duration) {
        case .refuse:
          return nil
        case .grant(let grant):
          try db.execute(
            sql: """
              INSERT INTO leases (run_id, holder, token, expires_at) VALUES (?, ?, ?, ?)
              ON CONFLICT (run_id) DO UPDATE SET
                holder = excluded.holder, token = excluded.token, expires_at = excluded.expires_at
              """,
            arguments: [run.rawValue, grant.holder, grant.token, Timestamp.string(grant.expiresAt)])
          return grant
        }
      }
    }
  }

  public func releaseLease(run: RunID, holder: String, token: Int64) async throws(CohortError) {
    try access("releasing the lease on run \(run)") {
      try writer.write { db in
        try db.execute(
          sql: "UPDATE leases SET expires_at = ? WHERE run_id = ? AND holder = ? AND token = ?",
          arguments: [Timestamp.string(LeaseRules.released), run.rawValue, holder, token])
      }
    }
  }

  public func lease(_ run: RunID) async throws(CohortError) -> LeaseGrant? {
    try access("reading the lease on run \(run)") {
      try writer.read { db in
        try requireRun(db, run)
        return try Self.lease(db, run)
      }
    }
  }

  private static func lease(_ db: Database, _ run: RunID) throws -> LeaseGrant? {
    guard
      let row = try Row.fetchOne(
        db, sql: "SELECT holder, token, expires_at FROM leases WHERE run_id = ?", arguments: [run.rawValue])
    else { return nil }
    return LeaseGrant(
      run: run, holder: try row.decode(forColumn: "holder"), token: try row.decode(forColumn: "token"),
      expiresAt: try Timestamp.date(try row.decode(forColumn: "expires_at"), what: "the lease on run \(run)"))
  }
}
