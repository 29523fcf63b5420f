public import CohortCore
import Foundation
import GRDB

/// The Linux device's own SQLite file: its training examples, its identity and its history of
/// participations.
///
/// - Examples are a label and Float32 little-endian features, each with the time it was added
///   and the time it expires (seconds since 1970, on the caller's clock). Expired examples are
///   never trained on, and `purgeExpired` deletes them. The store remembers the feature count and
///   class count of its data: the first import sets them, a later import with another feature
///   count is refused.
/// - The identity is a device number (≥ 1), given with `setIdentity` or drawn at random when the
///   file is created, and a 32-byte secret seed drawn once from the system's generator, for the
///   randomness the device must keep (it never leaves the file, and is not printed).
/// - Participations record each round the device took part in: when, with what outcome, and
///   how many bytes it sent and received.
///
/// The store never reads a clock: every time is passed in. The file is opened in WAL mode, so
/// `cohort device import` may add examples while the device runtime reads them.
public final class ExampleStore: Sendable {
  /// The file the store lives in.
  public let path: String
  private let queue: DatabaseQueue

  /// Opens the store at `path`, creating the file (and the device's identity) if needed, and
  /// brings its schema up to date.
  public init(path: String) throws(CohortError) {
    self.path = path
    var config = Configuration()
    config.journalMode = .wal
    config.label = "CohortDevice.ExampleStore"
    // The device runtime and `cohort device import` may write at the same moment.
    config.busyMode = .timeout(10)
    do {
      queue = try DatabaseQueue(path: path, configuration: config)
    } catch {
      throw StoreErrors.failure(
        error, path: path, doing: "opening the examples store", store: "examples store")
    }
    let drawn = DeviceIdentity.draw()
    try access("preparing the examples store's tables") {
      try StoreErrors.migrate(queue, with: Self.migrator, path: path, store: "examples store")
      try queue.write { db in
        try db.execute(
          sql: """
            INSERT INTO store (id, device, device_given, seed) VALUES (1, ?, 0, ?)
            ON CONFLICT (id) DO NOTHING
            """,
          arguments: [drawn.device, Data(drawn.seed)])
      }
    }
  }

  // MARK: - Identity

  /// The device's number and secret seed, as kept in the file.
  public func identity() throws(CohortError) -> DeviceIdentity {
    try access("reading the device identity") {
      try queue.read { db in try Self.identity(db, path: path) }
    }
  }

  /// Gives the device its number, replacing the one drawn when the file was created. The seed
  /// is kept. A number once given is kept too: giving the same number again does nothing, giving
  /// another one is refused (a device that changed its number would look like a new device).
  public func setIdentity(device: Int64) throws(CohortError) {
    guard device >= 1 else {
      throw CohortError(
        .invalidConfiguration, "device is \(device); a device number must be at least 1",
        fix: "give a device number of 1 or more")
    }
    try access("setting the device number") {
      try queue.write { db in
        let current = try Self.identity(db, path: path)
        if current.device == device {
          try db.execute(sql: "UPDATE store SET device_given = 1 WHERE id = 1")
          return
        }
        if current.isGiven {
          throw CohortError(
            .invalidConfiguration,
            "the examples store \(path) belongs to device \(current.device); it cannot become device \(device)",
            fix:
              "use device \(current.device) with this file, or give device \(device) its own --examples file")
        }
        try db.execute(
          sql: "UPDATE store SET device = ?, device_given = 1 WHERE id = 1", arguments: [device])
      }
    }
  }

  // MARK: - Examples

  /// Adds `new` in one transaction, all or none of them, at `now`: the rows whose expiry (theirs,
  /// or `defaultExpiry` when they have none) is after `now`, in order. The first addition sets
  /// the store's feature count; an addition with another feature count is refused and nothing is
  /// added. The store's class count becomes the larger of its own and `new.classes`.
  @discardableResult
  public func add(_ new: NewExamples, defaultExpiry: Double, now: Double) throws(CohortError) -> AddedExamples
  {
    var added = AddedExamples()
    added.classes = try access("importing \(new.source)") {
      try queue.write { db -> Int in
        let stored = try Self.metadata(db)
        if let featureCount = stored.featureCount, featureCount != new.featureCount {
          throw CohortError(
            .shapeMismatch,
            "\(new.source) has \(new.featureCount) feature column\(new.featureCount == 1 ? "" : "s") "
              + "(\(new.describedFeatures)) but the examples in \(path) have \(featureCount) features",
            fix: "import files with the same feature columns into one store, or give this data its own "
              + "examples file")
        }
        let classes = max(stored.classes ?? 0, new.classes)
        try db.execute(
          sql: "UPDATE store SET feature_count = ?, classes = ? WHERE id = 1",
          arguments: [new.featureCount, classes])
        let insert = try db.cachedStatement(
          sql: "INSERT INTO examples (label, features, added_at, expires_at) VALUES (?, ?, ?, ?)")
        let d = new.featureCount
        for (r, label) in new.labels.enumerated() {
          let expiresAt = new.expiries[r] ?? defaultExpiry
          if !(expiresAt > now) {
            added.alreadyExpired += 1
            continue
          }
          let blob = Float32LittleEndian.data(Array(new.features[(r * d)..<((r + 1) * d)]))
          try insert.execute(arguments: [Int(label), blob, now, expiresAt])
          added.count += 1
          added.earliestExpiry = min(added.earliestExpiry ?? expiresAt, expiresAt)
          added.latestExpiry = max(added.latestExpiry ?? expiresAt, expiresAt)
        }
        return classes
      }
    }
    return added
  }

  /// The examples that have not expired at `now`, in the order they were added, with the store's
  /// feature count and class count (0 and 0 before anything was added).
  public func unexpiredExamples(now: Double) throws(CohortError) -> StoredExamples {
    let (labels, blobs, metadata) = try access("reading the examples") {
      try queue.read { db -> ([Int32], [(id: Int64, blob: Data)], Metadata) in
        let metadata = try Self.metadata(db)
        var labels: [Int32] = []
        var blobs: [(id: Int64, blob: Data)] = []
        let rows = try Row.fetchCursor(
          db, sql: "SELECT id, label, features FROM examples WHERE expires_at > ? ORDER BY id",
          arguments: [now])
        while let row = try rows.next() {
          labels.append(Int32(truncatingIfNeeded: row["label"] as Int))
          blobs.append((row["id"], row["features"]))
        }
        return (labels, blobs, metadata)
      }
    }
    let d = metadata.featureCount ?? 0
    var features: [Float] = []
    features.reserveCapacity(labels.count * d)
    for (id, blob) in blobs {
      guard blob.count == 4 * d else {
        throw CohortError(
          .storage,
          "example \(id) in \(path) holds \(blob.count) bytes of features; the store's \(d) features "
            + "need \(4 * d)",
          fix: "the file was changed outside Cohort or damaged; purge it and import the data again")
      }
      features.append(contentsOf: Float32LittleEndian.values(blob) ?? [])
    }
    return StoredExamples(features: features, labels: labels, featureCount: d, classes: metadata.classes ?? 0)
  }

  /// How many examples have not expired at `now`.
  public func count(now: Double) throws(CohortError) -> Int {
    try access("counting the examples") {
      try queue.read { db in
        try Int.fetchOne(db, sql: "SELECT count(*) FROM examples WHERE expires_at > ?", arguments: [now]) ?? 0
      }
    }
  }

  /// Deletes the examples that have expired at `now` (their `expires_at` is not after it) and
  /// returns how many there were. The store's feature and class counts stay.
  @discardableResult
  public func purgeExpired(now: Double) throws(CohortError) -> Int {
    try access("deleting expired examples") {
      try queue.write { db in
        try db.execute(sql: "DELETE FROM examples WHERE expires_at <= ?", arguments: [now])
        return db.changesCount
      }
    }
  }

  /// The feature count and class count the imports so far have set; nil before the first.
  public func shape() throws(CohortError) -> (featureCount: Int, classes: Int)? {
    let stored = try access("reading the store's metadata") { try queue.read { try Self.metadata($0) } }
    guard let featureCount = stored.featureCount, let classes = stored.classes else { return nil }
    return (featureCount, classes)
  }

  // MARK: - Participations

  /// Appends one participation to the device's history.
  public func recordParticipation(_ record: ParticipationRecord) throws(CohortError) {
    try record.validate()
    try access("recording the participation in round \(record.round)") {
      try queue.write { db in
        try db.execute(
          sql: """
            INSERT INTO participations (round, population, started_at, ended_at, outcome, bytes_up, bytes_down)
            VALUES (?, ?, ?, ?, ?, ?, ?)
            """,
          arguments: [
            record.round, record.population, record.startedAt, record.endedAt, record.outcome.rawValue,
            record.bytesUp, record.bytesDown,
          ])
      }
    }
  }

  /// The device's participations, newest first: the latest `limit` of them, or all when
  /// `limit` is nil.
  public func participations(limit: Int? = nil) throws(CohortError) -> [ParticipationRecord] {
    if let limit, limit < 0 {
      throw CohortError(
        .invalidConfiguration, "limit is \(limit); expected 0 or more", fix: "give a limit of 0 or more")
    }
    return try access("reading the participations") {
      try queue.read { db in
        try Row.fetchAll(
          db,
          sql: """
            SELECT round, population, started_at, ended_at, outcome, bytes_up, bytes_down
            FROM participations ORDER BY id DESC LIMIT ?
            """,
          arguments: [limit ?? -1]
        ).map { row in
          ParticipationRecord(
            round: row["round"], population: row["population"], startedAt: row["started_at"],
            endedAt: row["ended_at"], outcome: ParticipationOutcome(rawValue: row["outcome"]),
            bytesUp: row["bytes_up"], bytesDown: row["bytes_down"])
        }
      }
    }
  }

  // MARK: - Schema and helpers

  /// One migration per released change; migrations are only ever appended.
  ///
  /// `store` has exactly one row (id 1): the identity and the data's shape. `examples.features`
  /// are IEEE-754 Float32 little-endian; times are seconds since 1970 as REAL.
  private static var migrator: DatabaseMigrator {
    var migrator = DatabaseMigrator()
    migrator.registerMigration("v1: store, examples, participations") { db in
      try db.execute(
        sql: """
          CREATE TABLE store (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            device INTEGER NOT NULL CHECK (device >= 1),
            device_given INTEGER NOT NULL CHECK (device_given IN (0, 1)),
            seed BLOB NOT NULL CHECK (length(seed) = 32),
            feature_count INTEGER CHECK (feature_count >= 1),
            classes INTEGER CHECK (classes >= 1)
          );

          CREATE TABLE examples (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            label INTEGER NOT NULL CHECK (label >= 0),
            features BLOB NOT NULL,
            added_at REAL NOT NULL,
            expires_at REAL NOT NULL
          );
          CREATE INDEX examples_by_expiry ON examples (expires_at);

          CREATE TABLE participations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            round INTEGER NOT NULL,
            population TEXT NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL NOT NULL,
            outcome TEXT NOT NULL,
            bytes_up INTEGER NOT NULL CHECK (bytes_up >= 0),
            bytes_down INTEGER NOT NULL CHECK (bytes_down >= 0)
          );
          """)
    }
    return migrator
  }

  private struct Metadata {
    var featureCount: Int?
    var classes: Int?
  }

  private static func metadata(_ db: Database) throws -> Metadata {
    let row = try Row.fetchOne(db, sql: "SELECT feature_count, classes FROM store WHERE id = 1")
    return Metadata(featureCount: row?["feature_count"], classes: row?["classes"])
  }

  private static func identity(_ db: Database, path: String) throws -> DeviceIdentity {
    guard let row = try Row.fetchOne(db, sql: "SELECT device, device_given, seed FROM store WHERE id = 1")
    else {
      throw CohortError(
        .storage, "the examples store \(path) has no device identity",
        fix: "the file was changed outside Cohort; restore it from a backup or start a new one")
    }
    let seed: Data = row["seed"]
    return DeviceIdentity(device: row["device"], seed: [UInt8](seed), isGiven: row["device_given"])
  }

  /// Runs a database access, turning every failure into a `CohortError` that names the file.
  private func access<T>(_ doing: String, _ body: () throws -> T) throws(CohortError) -> T {
    do {
      return try body()
    } catch let error as CohortError {
      throw error
    } catch {
      throw StoreErrors.failure(error, path: path, doing: doing, store: "examples store")
    }
  }
}

/// Who the device is: its number within its population and its secret seed.
public struct DeviceIdentity: Sendable, Hashable, CustomStringConvertible {
  /// The device number, at least 1.
  public var device: Int64
  /// 32 bytes from the system's generator, drawn when the store was created. Secret: the
  /// description leaves it out.
  public var seed: [UInt8]
  /// Whether the number was given (`setIdentity`) rather than drawn.
  public var isGiven: Bool

  public init(device: Int64, seed: [UInt8], isGiven: Bool) {
    self.device = device
    self.seed = seed
    self.isGiven = isGiven
  }

  public var description: String { "device \(device) (\(isGiven ? "given" : "drawn at random"))" }

  /// Drawn device numbers stay below 2^53, so they survive JSON readers that keep numbers as
  /// doubles.
  static let largestDrawnDevice: Int64 = (1 << 53) - 1

  /// A fresh identity from the system's generator.
  static func draw() -> DeviceIdentity {
    var generator = SystemRandomNumberGenerator()
    var seed: [UInt8] = []
    seed.reserveCapacity(32)
    for _ in 0..<4 {
      let word = generator.next()
      for k in 0..<8 { seed.append(UInt8(truncatingIfNeeded: word >> (8 * k))) }
    }
    let device = Int64.random(in: 1...largestDrawnDevice, using: &generator)
    return DeviceIdentity(device: device, seed: seed, isGiven: false)
  }
}

/// Examples to add to a store in one transaction (see `ExampleStore.add`).
public struct NewExamples: Sendable {
  /// Where the examples come from (a file's path), named in errors.
  public var source: String
  /// The feature columns' names, in order.
  public var featureNames: [String]
  /// One label per example, non-negative.
  public var labels: [Int32]
  /// `featureCount` values per example, in example order.
  public var features: [Float]
  /// Each example's expiry in seconds since 1970, or nil for the addition's default.
  public var expiries: [Double?]
  /// The class count the examples need (their highest label plus one, or more).
  public var classes: Int

  public init(
    source: String, featureNames: [String], labels: [Int32], features: [Float], expiries: [Double?],
    classes: Int
  ) {
    precondition(expiries.count == labels.count, "one expiry per example")
    precondition(features.count == labels.count * featureNames.count, "featureCount values per example")
    self.source = source
    self.featureNames = featureNames
    self.labels = labels
    self.features = features
    self.expiries = expiries
    self.classes = classes
  }

  public var featureCount: Int { featureNames.count }

  /// The feature names as a short list for messages.
  public var describedFeatures: String {
    let limit = 20
    let shown = featureNames.prefix(limit).map { "'\($0)'" }.joined(separator: ", ")
    return featureNames.count > limit ? "\(shown), … (\(featureNames.count) in all)" : shown
  }
}

/// What one `ExampleStore.add` did.
public struct AddedExamples: Sendable, Hashable {
  /// Examples added.
  public var count = 0
  /// Examples skipped because their expiry was not after the addition's time.
  public var alreadyExpired = 0
  /// The store's class count after the addition.
  public var classes = 0
  /// The earliest and latest expiry among the added examples; nil when none was added.
  public var earliestExpiry: Double?
  public var latestExpiry: Double?

  public init() {}
}

/// The unexpired examples of a store: `featureCount` Float32 features per label.
public struct StoredExamples: Sendable, Hashable {
  public var features: [Float]
  public var labels: [Int32]
  public var featureCount: Int
  public var classes: Int

  public init(features: [Float], labels: [Int32], featureCount: Int, classes: Int) {
    self.features = features
    self.labels = labels
    self.featureCount = featureCount
    self.classes = classes
  }
}

/// How a participation ended, as text: `accepted`, `rejected:<reason>`, `dropped`, or another
/// word the runtime chooses.
public struct ParticipationOutcome: Sendable, Hashable, Codable, RawRepresentable, CustomStringConvertible {
  public var rawValue: String

  public init(rawValue: String) { self.rawValue = rawValue }

  /// The server accepted the update.
  public static let accepted = ParticipationOutcome(rawValue: "accepted")
  /// The device left the round before reporting (lost connection, gave up, stopped).
  public static let dropped = ParticipationOutcome(rawValue: "dropped")
  /// The server refused the device or its update, for `reason`.
  public static func rejected(_ reason: String) -> ParticipationOutcome {
    ParticipationOutcome(rawValue: "rejected:\(reason)")
  }

  public var description: String { rawValue }
}

/// One round the device took part in.
public struct ParticipationRecord: Sendable, Hashable, Codable {
  public var round: Int
  /// The population the round belonged to.
  public var population: String
  /// Seconds since 1970, on the caller's clock.
  public var startedAt: Double
  public var endedAt: Double
  public var outcome: ParticipationOutcome
  /// Bytes the device sent and received in this participation.
  public var bytesUp: Int
  public var bytesDown: Int

  public init(
    round: Int, population: String, startedAt: Double, endedAt: Double, outcome: ParticipationOutcome,
    bytesUp: Int = 0, bytesDown: Int = 0
  ) {
    self.round = round
    self.population = population
    self.startedAt = startedAt
    self.endedAt = endedAt
    self.outcome = outcome
    self.bytesUp = bytesUp
    self.bytesDown = bytesDown
  }

  func validate() throws(CohortError) {
    func fail(_ field: String, _ problem: String) -> CohortError {
      CohortError(
        .invalidConfiguration, "the participation in round \(round): \(field) \(problem)",
        fix: "record the participation with a valid \(field)")
    }
    guard round >= 0 else { throw fail("round", "is \(round); expected 0 or more") }
    guard startedAt.isFinite else { throw fail("startedAt", "is \(startedAt); expected a finite time") }
    guard endedAt.isFinite && endedAt >= startedAt else {
      throw fail("endedAt", "is \(endedAt); expected a finite time not before startedAt (\(startedAt))")
    }
    guard !outcome.rawValue.isEmpty else { throw fail("outcome", "is empty") }
    guard bytesUp >= 0 else { throw fail("bytesUp", "is \(bytesUp); expected 0 or more") }
    guard bytesDown >= 0 else { throw fail("bytesDown", "is \(bytesDown); expected 0 or more") }
  }
}
