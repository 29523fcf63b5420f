import CohortCore
import Foundation
import GRDB
import Synchronization
import Testing

@testable import CohortStore

/// The PostgreSQL server the PostgreSQL backend's tests use: `COHORT_TEST_POSTGRES_URL`, which
/// scripts/test sets from a throwaway cluster (scripts/postgres-test-cluster).
enum TestPostgres {
  static var url: String? {
    ProcessInfo.processInfo.environment["COHORT_TEST_POSTGRES_URL"].flatMap { $0.isEmpty ? nil : $0 }
  }
  /// Without a URL the tests are skipped, except in CI, where they run and fail.
  static var shouldRun: Bool { url != nil || ProcessInfo.processInfo.environment["CI"] == "true" }
  static let skipReason: Comment = """
    COHORT_TEST_POSTGRES_URL is not set, so the PostgreSQL backend is not tested; scripts/test starts a \
    throwaway cluster (scripts/postgres-test-cluster start DIR prints its URL)
    """
}

/// Opens store clients on one fresh location of a backend: `open()` may be called several times
/// for several clients of the same store, as replicas would be.
protocol StoreLocation: Sendable {
  func open() async throws -> any FederationStore
  func close() async
}

/// An SQLite file in a fresh directory; each `open` is another `ResultsStore` on it.
final class SQLiteLocation: StoreLocation {
  let directory: URL
  let path: String

  init() throws {
    directory = FileManager.default.temporaryDirectory.appendingPathComponent(
      "cohort-federation-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    path = directory.appendingPathComponent("results.sqlite").path
  }

  func open() async throws -> any FederationStore { try ResultsStore(path: path) }

  func close() async { try? FileManager.default.removeItem(at: directory) }
}

/// A fresh schema in the test server's database; each `open` is another `PostgresStore`, with its
/// own connection pool. `close` closes them and drops the schema.
final class PostgresLocation: StoreLocation {
  let url: String
  let schema = "t_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
  private let opened = Mutex<[PostgresStore]>([])

  init() throws {
    guard let url = TestPostgres.url else {
      throw CohortError(
        .invalidConfiguration, "COHORT_TEST_POSTGRES_URL is not set, and CI must test the PostgreSQL backend",
        fix: "run scripts/test, which starts a throwaway cluster, or set the URL of one")
    }
    self.url = url
  }

  func open() async throws -> any FederationStore { try await openPostgres() }

  func openPostgres() async throws -> PostgresStore {
    let store = try await PostgresStore(url: url, schema: schema)
    opened.withLock { $0.append(store) }
    return store
  }

  func close() async {
    let stores = opened.withLock { $0 }
    if let first = stores.first { try? await first.dropSchema() }
    for store in stores { await store.close() }
  }
}

/// Runs `body` with a fresh location of `backend`, removed afterwards.
func withLocation(
  _ backend: Backend, _ body: (any StoreLocation) async throws -> Void
) async throws {
  let location: any StoreLocation =
    switch backend {
    case .sqlite: try SQLiteLocation()
    case .postgres: try PostgresLocation()
    }
  do {
    try await body(location)
  } catch {
    await location.close()
    throw error
  }
  await location.close()
}

enum Backend: String, Sendable, CaseIterable, CustomTestStringConvertible {
  case sqlite
  case postgres
  var testDescription: String { rawValue }
}

/// The CohortError `body` throws, failing the test when it throws none or another error.
func asyncStoreError<T>(
  _ body: () async throws -> T, sourceLocation: SourceLocation = #_sourceLocation
) async -> CohortError? {
  do {
    _ = try await body()
    Issue.record("expected a CohortError, but nothing was thrown", sourceLocation: sourceLocation)
  } catch let error as CohortError {
    return error
  } catch {
    Issue.record("expected a CohortError, got \(error)", sourceLocation: sourceLocation)
  }
  return nil
}

/// t seconds after a fixed instant: leases run on injected time, never the clock.
func at(_ seconds: Double) -> Date { fixedDate(seconds) }

/// The behaviour every backend of `FederationStore` must have, checked on each.
enum FederationStoreChecks {
  static func migrationsAreIdempotent(_ location: any StoreLocation) async throws {
    let store = try await location.open()
    let run = try await store.createRun(
      name: "idempotent", scenario: makeScenario(), createdAt: fixedDate(), labels: RunLabels())
    try await store.migrate()
    try await store.migrate()
    // A second client migrates the same tables again on opening.
    let again = try await location.open()
    try await again.migrate()
    #expect(try await again.run(run).name == "idempotent")
    try await again.commitRound(
      run, record(1), checkpoint: nil, devices: [], lateReports: [:], resumeState: nil, secureAggregation: [],
      fencingToken: nil)
    #expect(try await store.rounds(run).map(\.round) == [1])
  }

  static func committedRoundReadsBackEqual(_ location: any StoreLocation) async throws {
    let store = try await location.open()
    let scenario = makeScenario(seed: UInt64.max - 6)
    let labels = RunLabels(experiment: "exp", scenario: "scn", variant: "var")
    let run = try await store.createRun(
      name: "served", scenario: scenario, createdAt: fixedDate(), labels: labels)
    #expect(try await store.resumableRun(planSHA256: scenario.plan.sha256)?.id == run)
    #expect(try await store.scenario(run) == scenario)

    let first = makeWeights(0.5)
    let devices1 = [
      DeviceParticipation(
        device: 3, reported: true, dropped: false, evaluation: .init(loss: 0.4, accuracy: 0.75, examples: 12)),
      DeviceParticipation(device: 9, reported: false, dropped: true),
      DeviceParticipation(device: 1, reported: true, dropped: false),
    ]
    let steps = [
      SecureAggregationStepRecord(
        step: "advertise_keys", entered: 3, dropped: 0, bytesUp: 300, bytesDown: 900, serverSeconds: 0.125),
      SecureAggregationStepRecord(
        step: "unmasking", entered: 2, dropped: 1, bytesUp: 64, bytesDown: 0, serverSeconds: 0.5),
    ]
    var r1 = record(1, accuracy: 0.5)
    r1.meanStaleness = 1.5
    r1.maximumStaleness = 3
    try await store.commitRound(
      run, r1, checkpoint: first, devices: devices1, lateReports: [:], resumeState: Data([1, 2, 3]),
      secureAggregation: steps, fencingToken: nil)
    let second = makeWeights(-2)
    let devices2 = [
      DeviceParticipation(device: 3, reported: false, dropped: true),
      DeviceParticipation(device: 4, reported: true, dropped: false),
    ]
    let r2 = record(2, accuracy: 0.625)
    try await store.commitRound(
      run, r2, checkpoint: second, devices: devices2, lateReports: [1: 2], resumeState: nil,
      secureAggregation: [],
      fencingToken: nil)
    let r3 = record(3, outcome: .abandoned, reason: "too few devices")
    try await store.commitRound(
      run, r3, checkpoint: nil, devices: [], lateReports: [:], resumeState: nil, secureAggregation: [],
      fencingToken: nil)

    // Read through another client: what landed is in the store, not in a cache.
    let reader = try await location.open()
    var late1 = r1
    late1.late += 2
    #expect(try await reader.rounds(run) == [late1, r2, r3])
    let latest = try #require(try await reader.latestCheckpoint(run))
    #expect(latest.round == 2)
    #expect(latest.weights.layout == second.layout)
    #expect(bits(latest.weights) == bits(second))
    #expect(
      try await reader.devices(run) == [
        DeviceRecord(device: 1, participations: 1, reports: 1, dropouts: 0, lastRound: 1),
        DeviceRecord(device: 3, participations: 2, reports: 1, dropouts: 1, lastRound: 2),
        DeviceRecord(device: 4, participations: 1, reports: 1, dropouts: 0, lastRound: 2),
        DeviceRecord(device: 9, participations: 1, reports: 0, dropouts: 1, lastRound: 1),
      ])
    #expect(
      try await reader.deviceEvaluations(run) == [
        DeviceEvaluationRecord(round: 1, device: 3, accuracy: 0.75, loss: 0.4, examples: 12)
      ])
    let readSteps = try await reader.secureAggregationSteps(run)
    #expect(readSteps.map(\.round) == [1, 1])
    #expect(readSteps.map(\.1) == steps)
    #expect(try await reader.resumeState(run, round: 1) == Data([1, 2, 3]))
    #expect(try await reader.resumeState(run, round: 2) == nil)

    let summary = try await reader.run(run)
    #expect(summary.name == "served")
    #expect(summary.seed == UInt64.max - 6)
    #expect(summary.createdAt == fixedDate())
    #expect(summary.roundsCommitted == 2)
    #expect(summary.lastAccuracy == 0.625)
    #expect(summary.bestAccuracy == 0.625)
    #expect(summary.labels == labels)
    #expect(summary.status == .running)

    // A round is never written twice, and a refused commit leaves nothing behind.
    let twice = await asyncStoreError {
      try await store.commitRound(
        run, record(2), checkpoint: nil,
        devices: [DeviceParticipation(device: 77, reported: true, dropped: false)],
        lateReports: [:], resumeState: nil, secureAggregation: [], fencingToken: nil)
    }
    #expect(twice?.code == .storage)
    #expect(twice?.message.contains("already committed") == true)
    #expect(try await reader.devices(run).map(\.device) == [1, 3, 4, 9])

    try await store.setStatus(run, .finished, at: fixedDate(60))
    #expect(try await reader.run(run).finishedAt == fixedDate(60))
    #expect(try await reader.resumableRun(planSHA256: scenario.plan.sha256) == nil)
    try await store.setStatus(run, .interrupted, at: fixedDate(61))
    #expect(try await reader.resumableRun(planSHA256: scenario.plan.sha256)?.id == run)
    let missing = await asyncStoreError { try await reader.rounds(RunID(run.rawValue + 1000)) }
    #expect(missing?.code == .notFound)
  }

  /// A served asynchronous run's stored buffer is replaced, not added to, and read back whole;
  /// a version's evaluation is filled in after its commit.
  static func asyncBufferIsReplacedAndEvaluationsFilledIn(_ location: any StoreLocation) async throws {
    let store = try await location.open()
    let run = try await store.createRun(
      name: "async", scenario: makeScenario(), createdAt: fixedDate(), labels: RunLabels())
    #expect(try await store.asyncBuffer(run) == nil)
    try await store.saveAsyncBuffer(run, version: 0, state: Data([1, 2, 3]))
    try await store.saveAsyncBuffer(run, version: 1, state: Data(repeating: 0xAB, count: 70_000))
    let saved = try #require(try await store.asyncBuffer(run))
    #expect(saved.version == 1 && saved.state == Data(repeating: 0xAB, count: 70_000))
    try await store.commitRound(
      run, record(1), checkpoint: nil, devices: [], lateReports: [:], resumeState: nil, secureAggregation: [],
      fencingToken: nil)
    try await store.recordEvaluation(run, round: 1, Evaluation(loss: 0.25, accuracy: 0.875, examples: 10))
    let row = try #require(try await store.rounds(run).first)
    #expect(row.evalLoss == 0.25 && row.evalAccuracy == 0.875)
    let missing = await asyncStoreError {
      try await store.saveAsyncBuffer(RunID(987_654), version: 0, state: Data())
    }
    #expect(missing != nil)
  }

  static func leaseIsExclusive(_ location: any StoreLocation) async throws {
    let a = try await location.open()
    let b = try await location.open()
    let run = try await a.createRun(
      name: "leased", scenario: makeScenario(), createdAt: fixedDate(), labels: RunLabels())
    #expect(try await b.lease(run) == nil)

    let granted = try #require(try await a.acquireLease(run: run, holder: "a", now: at(0), duration: 10))
    #expect(granted == LeaseGrant(run: run, holder: "a", token: 1, expiresAt: at(10)))
    #expect(try await b.acquireLease(run: run, holder: "b", now: at(5), duration: 10) == nil)
    // A renewal keeps the token and moves the expiry.
    let renewed = try #require(try await a.acquireLease(run: run, holder: "a", now: at(8), duration: 10))
    #expect(renewed == LeaseGrant(run: run, holder: "a", token: 1, expiresAt: at(18)))
    #expect(try await b.acquireLease(run: run, holder: "b", now: at(15), duration: 10) == nil)
    #expect(try await b.lease(run) == renewed)

    // Expired at 18: the takeover has a larger token, and the former holder is refused.
    let takeover = try #require(try await b.acquireLease(run: run, holder: "b", now: at(18), duration: 10))
    #expect(takeover == LeaseGrant(run: run, holder: "b", token: 2, expiresAt: at(28)))
    #expect(try await a.acquireLease(run: run, holder: "a", now: at(19), duration: 10) == nil)

    // A release frees it at once, and the next holder's token is larger still.
    try await a.releaseLease(run: run, holder: "a", token: 1)  // not a's any more: nothing happens
    #expect(try await a.acquireLease(run: run, holder: "a", now: at(20), duration: 10) == nil)
    try await b.releaseLease(run: run, holder: "b", token: 2)
    let third = try #require(try await a.acquireLease(run: run, holder: "a", now: at(20), duration: 10))
    #expect(third.token == 3)
    #expect(try await b.lease(run)?.holder == "a")

    #expect(
      await asyncStoreError { try await a.acquireLease(run: run, holder: "", now: at(0), duration: 1) }?.code
        == .invalidConfiguration)
    #expect(
      await asyncStoreError { try await a.acquireLease(run: run, holder: "a", now: at(0), duration: 0) }?.code
        == .invalidConfiguration)
    #expect(
      await asyncStoreError { try await a.acquireLease(run: run, holder: "a", now: at(0), duration: .nan) }?
        .code
        == .invalidConfiguration)
    let missing = await asyncStoreError {
      try await a.acquireLease(run: RunID(run.rawValue + 1000), holder: "a", now: at(0), duration: 1)
    }
    #expect(missing?.code == .notFound)
  }

  static func deposedLeaderCannotCommit(_ location: any StoreLocation) async throws {
    let a = try await location.open()
    let b = try await location.open()
    let run = try await a.createRun(
      name: "fenced", scenario: makeScenario(), createdAt: fixedDate(), labels: RunLabels())

    // A token on a run nobody leads is refused.
    let unleased = await asyncStoreError {
      try await a.commitRound(
        run, record(1), checkpoint: nil, devices: [], lateReports: [:], resumeState: nil,
        secureAggregation: [],
        fencingToken: 1)
    }
    #expect(unleased?.code == .fenced)

    let old = try #require(try await a.acquireLease(run: run, holder: "a", now: at(0), duration: 10))
    // a pauses past its lease; b takes over.
    let new = try #require(try await b.acquireLease(run: run, holder: "b", now: at(11), duration: 10))
    #expect(new.token > old.token)

    let late = await asyncStoreError {
      try await a.commitRound(
        run, record(1), checkpoint: makeWeights(1),
        devices: [DeviceParticipation(device: 5, reported: true, dropped: false)], lateReports: [:],
        resumeState: Data([9]), secureAggregation: [], fencingToken: old.token)
    }
    #expect(late?.code == .fenced)
    #expect(late?.message.contains("b now leads") == true)
    #expect(late?.fix.isEmpty == false)
    #expect(try await b.rounds(run).isEmpty)
    #expect(try await b.devices(run).isEmpty)
    #expect(try await b.latestCheckpoint(run) == nil)

    // A server without a lease cannot write a run replicas lead either.
    let unfenced = await asyncStoreError {
      try await a.commitRound(
        run, record(1), checkpoint: nil, devices: [], lateReports: [:], resumeState: nil,
        secureAggregation: [],
        fencingToken: nil)
    }
    #expect(unfenced?.code == .fenced)

    // The new leader commits the same round.
    try await b.commitRound(
      run, record(1), checkpoint: makeWeights(2),
      devices: [DeviceParticipation(device: 6, reported: true, dropped: false)],
      lateReports: [:], resumeState: nil, secureAggregation: [], fencingToken: new.token)
    #expect(try await a.rounds(run).map(\.round) == [1])
    #expect(try await a.devices(run).map(\.device) == [6])
    #expect(try bits(#require(try await a.latestCheckpoint(run)).weights) == bits(makeWeights(2)))
  }

  /// Two leaders race to commit the same rounds (`racers` are two clients, or one client twice
  /// where the backend has a single writer): exactly one commit of each round lands.
  static func racingCommitsLandOnce(_ location: any StoreLocation, twoClients: Bool) async throws {
    let a = try await location.open()
    let b = twoClients ? try await location.open() : a
    let run = try await a.createRun(
      name: "race", scenario: makeScenario(), createdAt: fixedDate(), labels: RunLabels())
    var now = 0.0
    var leaseA = try #require(try await a.acquireLease(run: run, holder: "a", now: at(now), duration: 1))
    for round in 1...6 {
      // Deposed against new: b takes over from a; both commit round `round` at once.
      now += 2
      let leaseB = try #require(try await b.acquireLease(run: run, holder: "b", now: at(now), duration: 1))
      let outcomes = try await race(
        a, record(round, reporting: 100 + round), token: leaseA.token,
        b, record(round, reporting: 200 + round), token: leaseB.token, run: run)
      #expect(outcomes.landed == 1, "round \(round): \(outcomes.errors)")
      #expect(outcomes.errors.map(\.code) == [.fenced])
      let stored = try await a.rounds(run).filter { $0.round == round }
      #expect(stored.map(\.reported) == [200 + round], "the new leader's round landed")

      // The same leader retrying on two connections (token equal): one lands, one is a duplicate.
      now += 2
      leaseA = try #require(try await a.acquireLease(run: run, holder: "a", now: at(now), duration: 1))
      let retry = try await race(
        a, record(round + 100, reporting: 1), token: leaseA.token,
        b, record(round + 100, reporting: 2), token: leaseA.token, run: run)
      #expect(retry.landed == 1, "round \(round + 100): \(retry.errors)")
      #expect(retry.errors.map(\.code) == [.storage])
    }
    #expect(try await b.rounds(run).count == 12)
  }

  private static func race(
    _ a: any FederationStore, _ ra: RoundRecord, token ta: Int64,
    _ b: any FederationStore, _ rb: RoundRecord, token tb: Int64, run: RunID
  ) async throws -> (landed: Int, errors: [CohortError]) {
    async let first = attempt(a, ra, ta, run)
    async let second = attempt(b, rb, tb, run)
    let results = await [first, second]
    var landed = 0
    var errors: [CohortError] = []
    for result in results {
      switch result {
      case .success: landed += 1
      case .failure(let error): errors.append(error)
      }
    }
    return (landed, errors)
  }

  private static func attempt(_ store: any FederationStore, _ r: RoundRecord, _ token: Int64, _ run: RunID)
    async
    -> Result<Void, CohortError>
  {
    do {
      try await store.commitRound(
        run, r, checkpoint: makeWeights(Float(r.reported)),
        devices: [DeviceParticipation(device: r.reported, reported: true, dropped: false)], lateReports: [:],
        resumeState: nil, secureAggregation: [], fencingToken: token)
      return .success(())
    } catch {
      return .failure(error)
    }
  }
}

func record(_ round: Int, reporting: Int) -> RoundRecord {
  var r = record(round)
  r.reported = reporting
  return r
}

@Suite struct SQLiteFederationStoreTests {
  @Test func migrationsAreIdempotent() async throws {
    try await withLocation(.sqlite) { try await FederationStoreChecks.migrationsAreIdempotent($0) }
  }

  @Test func aCommittedRoundReadsBackEqual() async throws {
    try await withLocation(.sqlite) { try await FederationStoreChecks.committedRoundReadsBackEqual($0) }
  }

  @Test func theLeaseIsExclusiveAndATakeoverHasALargerToken() async throws {
    try await withLocation(.sqlite) { try await FederationStoreChecks.leaseIsExclusive($0) }
  }

  @Test func anAsyncBufferIsReplacedAndEvaluationsFilledIn() async throws {
    try await withLocation(.sqlite) {
      try await FederationStoreChecks.asyncBufferIsReplacedAndEvaluationsFilledIn($0)
    }
  }

  @Test func aDeposedLeadersLateCommitIsRefused() async throws {
    try await withLocation(.sqlite) { try await FederationStoreChecks.deposedLeaderCannotCommit($0) }
  }

  /// SQLite has one writer: the race is between two tasks of one server's store.
  @Test func racingCommitsLandOnce() async throws {
    try await withLocation(.sqlite) {
      try await FederationStoreChecks.racingCommitsLandOnce($0, twoClients: false)
    }
  }

  @Test func aFileWrittenBeforeLeasesMigrates() throws {
    try withTemporaryDirectory { dir in
      let path = dir.appendingPathComponent("old.sqlite").path
      // A file as the version before leases left it: every migration but the last.
      let queue = try DatabaseQueue(path: path)
      try Schema.migrator.migrate(queue, upTo: "v8: asynchronous buffer state")
      try queue.close()
      let store = try ResultsStore(path: path)
      let run = try store.createRun(name: "old", scenario: makeScenario(), createdAt: fixedDate())
      try store.commitRound(run, record(1), checkpoint: nil, devices: [])
      #expect(try store.rounds(run).count == 1)
    }
  }
}

@Suite(.enabled(if: TestPostgres.shouldRun, TestPostgres.skipReason))
struct PostgresFederationStoreTests {
  @Test func migrationsAreIdempotent() async throws {
    try await withLocation(.postgres) { location in
      try await FederationStoreChecks.migrationsAreIdempotent(location)
      let store = try await (location as! PostgresLocation).openPostgres()
      // The same migrations, by name, as the SQLite store's.
      #expect(try await store.appliedMigrations() == Schema.migrator.migrations)
    }
  }

  @Test func aCommittedRoundReadsBackEqual() async throws {
    try await withLocation(.postgres) { try await FederationStoreChecks.committedRoundReadsBackEqual($0) }
  }

  @Test func theLeaseIsExclusiveBetweenTwoClients() async throws {
    try await withLocation(.postgres) { try await FederationStoreChecks.leaseIsExclusive($0) }
  }

  @Test func anAsyncBufferIsReplacedAndEvaluationsFilledIn() async throws {
    try await withLocation(.postgres) {
      try await FederationStoreChecks.asyncBufferIsReplacedAndEvaluationsFilledIn($0)
    }
  }

  @Test func aDeposedLeadersLateCommitIsRefused() async throws {
    try await withLocation(.postgres) { try await FederationStoreChecks.deposedLeaderCannotCommit($0) }
  }

  @Test func twoLeadersRacingToCommitTheSameRoundLandOnce() async throws {
    try await withLocation(.postgres) {
      try await FederationStoreChecks.racingCommitsLandOnce($0, twoClients: true)
    }
  }
}

/// What needs no server: URLs are checked, and a server that is not there is a clear error.
@Suite struct PostgresStoreConfigurationTests {
  @Test func urlsAreCheckedBeforeConnecting() async throws {
    for url in [
      "mysql://u@h/db", "postgres://h/db", "postgres://u@/db", "postgres://u@h:0/db", "postgres://u@h/a/b",
      "postgres://u@h/db?sslmode=sometimes", "postgres://u@h/db?application_name=x",
    ] {
      let error = await asyncStoreError { try await PostgresStore(url: url) }
      #expect(error?.code == .invalidConfiguration, "\(url)")
    }
    let schema = await asyncStoreError {
      try await PostgresStore(url: "postgres://u@h/db", schema: "A; DROP")
    }
    #expect(schema?.code == .invalidConfiguration)
    let parsed = try PostgresURL("postgres://user:secret@127.0.0.1:6543/cohort?sslmode=disable")
    #expect(parsed.redacted == "postgres://user@127.0.0.1:6543/cohort?sslmode=disable")
    #expect(parsed.password == "secret")
  }

  @Test func aServerThatIsNotThereIsAnErrorThatSaysSo() async throws {
    // Port 1 on loopback: nothing listens there.
    let error = await asyncStoreError {
      try await PostgresStore(url: "postgres://cohort@127.0.0.1:1/cohort_test?sslmode=disable")
    }
    #expect(error?.code == .storage)
    #expect(error?.fix.contains("check that PostgreSQL runs") == true)
  }
}

/// The lease and fencing rules alone, without a database.
@Suite struct LeaseRulesTests {
  let run = RunID(7)

  @Test func aLeaseIsGrantedRenewedRefusedAndTakenOver() {
    let first = LeaseRules.decide(current: nil, run: run, holder: "a", now: at(0), duration: 5)
    #expect(first == .grant(LeaseGrant(run: run, holder: "a", token: 1, expiresAt: at(5))))
    let held = LeaseGrant(run: run, holder: "a", token: 4, expiresAt: at(5))
    #expect(
      LeaseRules.decide(current: held, run: run, holder: "a", now: at(9), duration: 5)
        == .grant(LeaseGrant(run: run, holder: "a", token: 4, expiresAt: at(14))))
    #expect(LeaseRules.decide(current: held, run: run, holder: "b", now: at(4.999), duration: 5) == .refuse)
    #expect(
      LeaseRules.decide(current: held, run: run, holder: "b", now: at(5), duration: 5)
        == .grant(LeaseGrant(run: run, holder: "b", token: 5, expiresAt: at(10))))
    // A token that cannot grow is never wrapped around.
    let last = LeaseGrant(run: run, holder: "a", token: .max, expiresAt: at(0))
    #expect(LeaseRules.decide(current: last, run: run, holder: "b", now: at(1), duration: 5) == .refuse)
  }

  @Test func onlyTheCurrentTokenMayCommit() throws {
    let current = LeaseGrant(run: run, holder: "b", token: 3, expiresAt: at(10))
    try LeaseRules.checkFence(token: nil, current: nil, run: run, round: 1)
    try LeaseRules.checkFence(token: 3, current: current, run: run, round: 1)
    for (token, lease) in [(Int64?.none, Optional(current)), (2, current), (4, current), (1, nil)] {
      let error = storeError { try LeaseRules.checkFence(token: token, current: lease, run: run, round: 1) }
      #expect(error?.code == .fenced)
      #expect(error?.message.contains("was not committed") == true)
    }
  }
}
