public import CohortCore
public import CohortML
public import CohortStore
import Foundation

// The device's use of its examples store (CohortStore's `ExampleStore`): CSV files in, a
// `Dataset` out.
extension ExampleStore {
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

    let added = try add(
      NewExamples(
        source: csvPath, featureNames: table.featureNames, labels: table.rows.map(\.label),
        features: table.features, expiries: table.rows.map(\.expiresAt), classes: table.classes),
      defaultExpiry: now + expiresIn, now: now)
    return ImportSummary(
      path: csvPath, device: device, rows: table.rowsRead, imported: added.count,
      otherDevices: table.rowsRead - table.rows.count, alreadyExpired: added.alreadyExpired,
      featureCount: table.featureCount, classes: added.classes, total: try count(now: now),
      earliestExpiry: added.earliestExpiry, latestExpiry: added.latestExpiry)
  }

  /// The examples that have not expired at `now`, in the order they were added. Their shape is
  /// `[featureCount]` and their class count the store's; a store nothing was imported into yet
  /// gives an empty dataset of shape `[0]` and 0 classes.
  public func examples(now: Double) throws(CohortError) -> Dataset {
    let stored = try unexpiredExamples(now: now)
    return Dataset(
      features: stored.features, labels: stored.labels, featureShape: [stored.featureCount],
      classes: stored.classes)
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
      while try scanner.nextRow(into: &fields, columns: names.count, headerLine: headerLine) {
        let line = scanner.recordLine
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
