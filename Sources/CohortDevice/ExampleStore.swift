public import CohortCore
public import CohortML
import CohortStore
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

  /// Imports the examples of a CSV file, in file order, all or none of them.
  ///
  /// The first non-blank row is a header. It must name a `label` column (non-negative integers;
  /// `3.0` is read as 3) and may name a `device` column (integers) and an `expires_at` column
  /// (seconds since 1970; an empty field means `now + expiresIn`). Every other column is a
  /// numeric feature, in file order: the `f0, f1, …` of `cohort data export`, or any names.
  /// Fields may be quoted as in RFC 4180; LF and CRLF line ends, a UTF-8 byte-order mark and
  /// blank lines are accepted.
  ///
  /// With `device`, only the rows whose `device` column equals it are imported, so one file
  /// from `cohort data export` can be split among devices. Every row is checked all the same,
  /// and the class count comes from the highest label of the whole file.
  ///
  /// Rows whose `expires_at` is not after `now` are skipped (and counted). Malformed rows are
  /// reported with the file, line and column, and nothing is imported.
  ///
  /// - Parameters:
  ///   - expiresIn: seconds from `now` until the imported examples expire; more than 0.
  ///   - now: the caller's clock, in seconds since 1970.
  @discardableResult
  public func importCSV(
    path csvPath: String, device: Int? = nil, expiresIn: Double, now: Double
  ) throws(CohortError) -> ImportSummary {
    guard expiresIn.isFinite && expiresIn > 0 else {
      throw CohortError(
        .invalidConfiguration, "expiresIn is \(expiresIn); examples must expire a positive time from now",
        fix: "give a positive, finite duration such as 30d")
    }
    guard now.isFinite else {
      throw CohortError(.invalidConfiguration, "now is \(now); expected a finite time in seconds since 1970")
    }
    let table = try ExampleCSV.read(path: csvPath, device: device)
    let defaultExpiry = now + expiresIn

    var imported = 0
    var alreadyExpired = 0
    var earliest: Double?
    var latest: Double?
    let classes = try access("importing \(csvPath)") {
      try queue.write { db -> Int in
        let stored = try Self.metadata(db)
        if let featureCount = stored.featureCount, featureCount != table.featureCount {
          throw CohortError(
            .shapeMismatch,
            "\(csvPath) has \(table.featureCount) feature column\(table.featureCount == 1 ? "" : "s") "
              + "(\(table.describedFeatures)) but the examples in \(path) have \(featureCount) features",
            fix: "import files with the same feature columns into one store, or give this data its own "
              + "examples file")
        }
        let classes = max(stored.classes ?? 0, table.classes)
        try db.execute(
          sql: "UPDATE store SET feature_count = ?, classes = ? WHERE id = 1",
          arguments: [table.featureCount, classes])
        let insert = try db.cachedStatement(
          sql: "INSERT INTO examples (label, features, added_at, expires_at) VALUES (?, ?, ?, ?)")
        let d = table.featureCount
        for (r, row) in table.rows.enumerated() {
          let expiresAt = row.expiresAt ?? defaultExpiry
          if !(expiresAt > now) {
            alreadyExpired += 1
            continue
          }
          let blob = Float32LittleEndian.data(Array(table.features[(r * d)..<((r + 1) * d)]))
          try insert.execute(arguments: [Int(row.label), blob, now, expiresAt])
          imported += 1
          earliest = min(earliest ?? expiresAt, expiresAt)
          latest = max(latest ?? expiresAt, expiresAt)
        }
        return classes
      }
    }
    return ImportSummary(
      path: csvPath, device: device, rows: table.rowsRead, imported: imported,
      otherDevices: table.rowsRead - table.rows.count, alreadyExpired: alreadyExpired,
      featureCount: table.featureCount, classes: classes, total: try count(now: now),
      earliestExpiry: earliest, latestExpiry: latest)
  }

  /// The examples that have not expired at `now`, in the order they were added. Their shape is
  /// `[featureCount]` and their class count the store's; a store nothing was imported into yet
  /// gives an empty dataset of shape `[0]` and 0 classes.
  public func examples(now: Double) throws(CohortError) -> Dataset {
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
    return Dataset(features: features, labels: labels, featureShape: [d], classes: metadata.classes ?? 0)
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

/// What one import did.
public struct ImportSummary: Sendable, Hashable {
  /// The CSV file imported.
  public var path: String
  /// The device whose rows were imported, or nil for all rows.
  public var device: Int?
  /// Data rows in the file.
  public var rows: Int
  /// Examples added to the store.
  public var imported: Int
  /// Rows skipped because their `device` column names another device.
  public var otherDevices: Int
  /// Rows skipped because their `expires_at` was not after the import's time.
  public var alreadyExpired: Int
  public var featureCount: Int
  /// The store's class count after the import.
  public var classes: Int
  /// Unexpired examples in the store after the import.
  public var total: Int
  /// The earliest and latest expiry among the imported examples; nil when none was imported.
  public var earliestExpiry: Double?
  public var latestExpiry: Double?

  public init(
    path: String, device: Int?, rows: Int, imported: Int, otherDevices: Int, alreadyExpired: Int,
    featureCount: Int, classes: Int, total: Int, earliestExpiry: Double?, latestExpiry: Double?
  ) {
    self.path = path
    self.device = device
    self.rows = rows
    self.imported = imported
    self.otherDevices = otherDevices
    self.alreadyExpired = alreadyExpired
    self.featureCount = featureCount
    self.classes = classes
    self.total = total
    self.earliestExpiry = earliestExpiry
    self.latestExpiry = latestExpiry
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

// MARK: - Reading CSV files

/// A CSV file of examples, read and checked whole (see `ExampleStore.importCSV`).
///
/// CohortML's CSV loader keeps its scanner and number parsing to itself, and treats every
/// column but the label and client as a feature; this reader knows the `device` and
/// `expires_at` columns, and keeps `expires_at` as a Double (a Float would round it to minutes).
struct ExampleCSV {
  struct Row {
    var label: Int32
    var expiresAt: Double?
  }

  var featureNames: [String]
  /// The kept rows, in file order; `features` holds `featureCount` values per row.
  var rows: [Row] = []
  var features: [Float] = []
  /// Data rows in the file, kept or not.
  var rowsRead = 0
  /// The highest label in the whole file, plus one.
  var classes = 0

  var featureCount: Int { featureNames.count }

  var describedFeatures: String { Self.list(featureNames) }

  /// Labels at or above this are refused: a stray `1e9` would otherwise ask for a billion classes.
  static let maximumClasses = 1 << 20

  static func read(path: String, device: Int?) throws(CohortError) -> ExampleCSV {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
      throw CohortError(.notFound, "there is no file \(path)", fix: "check the path of the CSV file")
    }
    guard !isDirectory.boolValue else {
      throw CohortError(.io, "cannot read \(path): it is a directory, expected a CSV file")
    }
    let data: Data
    do {
      data = try Data(contentsOf: URL(fileURLWithPath: path))
    } catch {
      throw CohortError(.io, "cannot read \(path): \(error.localizedDescription)")
    }
    return try parse([UInt8](data), path: path, device: device)
  }

  static func parse(_ bytes: [UInt8], path: String, device: Int?) throws(CohortError) -> ExampleCSV {
    try bytes.withUnsafeBufferPointer { (buffer) throws(CohortError) -> ExampleCSV in
      var scanner = CSVScanner(bytes: buffer, path: path)
      let (names, headerLine) = try scanner.header(naming: "label")
      var fields: [CSVField] = []

      func column(_ name: String, required: Bool) throws(CohortError) -> Int? {
        let matches = names.indices.filter { names[$0] == name }
        if matches.count > 1 {
          throw CohortError(
            .invalidData,
            "\(path):\(headerLine): the header names the column '\(name)' \(matches.count) times; "
              + "expected it once")
        }
        if required && matches.isEmpty {
          throw CohortError(
            .invalidData,
            "\(path):\(headerLine): the header has no '\(name)' column; columns present: \(list(names))",
            fix: "name the label column 'label'")
        }
        return matches.first
      }
      let labelIndex = try column("label", required: true)!
      let deviceIndex = try column("device", required: false)
      let expiryIndex = try column("expires_at", required: false)
      if let device, deviceIndex == nil {
        throw CohortError(
          .invalidData,
          "\(path):\(headerLine): only the rows of device \(device) were asked for, but the header has "
            + "no 'device' column; columns present: \(list(names))",
          fix: "leave out the device to import every row, or add a 'device' column")
      }
      let special = Set([labelIndex, deviceIndex, expiryIndex].compactMap { $0 })
      let featureIndices = names.indices.filter { !special.contains($0) }
      guard !featureIndices.isEmpty else {
        throw CohortError(
          .invalidData,
          "\(path):\(headerLine): the header has no feature columns (columns: \(list(names))); "
            + "expected numeric columns such as f0, f1, … besides label, device and expires_at")
      }

      var table = ExampleCSV(featureNames: featureIndices.map { names[$0] })
      var maxLabel: Int32 = -1
      var devicesSeen = Set<Int>()
      var row: [Float] = []
      while try scanner.next(into: &fields) {
        if scanner.isBlank(fields) { continue }
        let line = scanner.recordLine
        guard fields.count == names.count else {
          throw CohortError(
            .invalidData,
            "\(path):\(line): expected \(names.count) fields as in the header on line \(headerLine), "
              + "found \(fields.count)")
        }
        table.rowsRead += 1
        func bad(_ k: Int, _ expected: String) -> CohortError {
          CohortError(
            .invalidData,
            "\(path):\(line): column '\(names[k])' (field \(k + 1)): expected \(expected), found "
              + scanner.excerpt(fields[k]))
        }

        guard let value = Double(scanner.text(fields[labelIndex])),
          value >= 0 && value < Double(maximumClasses) && value.rounded(.towardZero) == value
        else { throw bad(labelIndex, "a non-negative integer class label below \(maximumClasses)") }
        let label = Int32(value)
        maxLabel = max(maxLabel, label)

        var keep = true
        if let device, let deviceIndex {
          guard let owner = Self.integer(scanner.text(fields[deviceIndex])) else {
            throw bad(deviceIndex, "an integer device number")
          }
          devicesSeen.insert(owner)
          keep = owner == device
        }

        var expiresAt: Double?
        if let expiryIndex {
          let text = scanner.text(fields[expiryIndex])
          if !text.isEmpty {
            guard let t = Double(text), t.isFinite else {
              throw bad(expiryIndex, "a time in seconds since 1970, or an empty field for the default expiry")
            }
            expiresAt = t
          }
        }

        row.removeAll(keepingCapacity: true)
        for k in featureIndices {
          guard let f = Float(scanner.text(fields[k])), f.isFinite else {
            throw bad(k, "a finite number within the range of Float")
          }
          row.append(f)
        }
        if keep {
          table.rows.append(Row(label: label, expiresAt: expiresAt))
          table.features.append(contentsOf: row)
        }
      }

      guard table.rowsRead > 0 else {
        throw CohortError(
          .invalidData, "\(path): no data rows after the header on line \(headerLine); expected at least one")
      }
      if let device, table.rows.isEmpty {
        throw CohortError(
          .notFound, "\(path) has no rows for device \(device)",
          fix: "give one of the devices in the file (\(Self.describe(devicesSeen)))")
      }
      table.classes = Int(maxLabel) + 1
      return table
    }
  }

  /// An integer written as `7` or `7.0`.
  private static func integer(_ text: String) -> Int? {
    if let n = Int(text) { return n }
    guard let x = Double(text), x.rounded(.towardZero) == x, abs(x) < 9.0e15 else { return nil }
    return Int(x)
  }

  /// A set of device numbers, briefly: `0…99` when they run without gaps.
  private static func describe(_ devices: Set<Int>) -> String {
    let sorted = devices.sorted()
    guard let first = sorted.first, let last = sorted.last else { return "none" }
    if last - first + 1 == sorted.count && sorted.count > 2 { return "\(first)…\(last)" }
    let shown = sorted.prefix(10).map(String.init).joined(separator: ", ")
    return sorted.count > 10 ? "\(shown), … (\(sorted.count) in all)" : shown
  }

  /// `names` as a short comma-separated list.
  static func list(_ names: [String], limit: Int = 20) -> String {
    let shown = names.prefix(limit).map { "'\($0)'" }.joined(separator: ", ")
    return names.count > limit ? "\(shown), … (\(names.count) in all)" : shown
  }
}
