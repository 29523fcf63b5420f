import ArgumentParser
import CohortCore
import CohortDevice
import CohortStore
import Foundation

/// `cohort device import`: adds a CSV file's examples to a device's examples store.
struct DeviceImportCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "import",
    abstract: "Add a CSV file's labelled examples to a device's examples store.",
    discussion: """
      The file's header names a 'label' column (class numbers 0, 1, …), optionally \
      a 'device' column and an 'expires_at' column (seconds since 1970; an empty \
      field means --expires-in from now), and numeric feature columns (f0, f1, … \
      or any other names), as `cohort data export` writes them. Examples keep the \
      file's order. A malformed row is reported with its line and column, and \
      then nothing is imported.

      With --device N, only the rows whose 'device' column is N are imported, so \
      one exported file can be split among devices:

        cohort data export --out data
        cohort device import data/train.csv --examples device-3.sqlite --device 3

      The examples store is created if missing, with the device's identity. All \
      imports into one store must have the same number of feature columns. \
      Expired examples are never trained on.
      """)

  @Argument(help: ArgumentHelp("The CSV file of examples to import.", valueName: "DATA.csv"))
  var data: String

  @Option(help: ArgumentHelp("The device's examples store (SQLite; created if missing).", valueName: "DB"))
  var examples: String

  @Option(
    help: ArgumentHelp(
      "Import only the rows whose 'device' column is N (it selects rows; it does not set the device's own number).",
      valueName: "N"))
  var device: Int?

  @Option(
    help: ArgumentHelp(
      "How long the examples are kept: 30d, 12h, 90m, 3600s, or plain seconds. A row's 'expires_at' column overrides it.",
      valueName: "duration"))
  var expiresIn: String = "30d"

  func validate() throws {
    _ = try Self.seconds(expiresIn)
  }

  func run() throws {
    let lifetime = try Self.seconds(expiresIn)
    let now = Date().timeIntervalSince1970
    let dir = (examples as NSString).deletingLastPathComponent
    if !dir.isEmpty {
      try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    let summary: ImportSummary
    let shape: (featureCount: Int, classes: Int)?
    do throws(CohortError) {
      let store = try ExampleStore(path: examples)
      summary = try store.importCSV(path: data, device: device, expiresIn: lifetime, now: now)
      shape = try store.shape()
    } catch {
      throw error.exit()
    }

    let of = device.map { " of device \($0)" } ?? ""
    print(
      "imported \(Format.count(summary.imported)) example\(summary.imported == 1 ? "" : "s")\(of) from \(data) "
        + "into \(examples)")
    var skipped: [String] = []
    if summary.otherDevices > 0 { skipped.append("\(Format.count(summary.otherDevices)) of other devices") }
    if summary.alreadyExpired > 0 {
      skipped.append("\(Format.count(summary.alreadyExpired)) already expired")
    }
    if !skipped.isEmpty {
      print("skipped rows: \(skipped.joined(separator: ", ")) (of \(Format.count(summary.rows)) in the file)")
    }
    if let earliest = summary.earliestExpiry, let latest = summary.latestExpiry {
      print(
        earliest == latest
          ? "they expire \(Self.time(earliest))"
          : "they expire between \(Self.time(earliest)) and \(Self.time(latest))")
    }
    let features = shape?.featureCount ?? summary.featureCount
    let classes = shape?.classes ?? summary.classes
    print(
      "the store holds \(Format.count(summary.total)) unexpired example\(summary.total == 1 ? "" : "s"), "
        + "\(features) feature\(features == 1 ? "" : "s"), \(classes) class\(classes == 1 ? "" : "es")")
  }

  /// A duration in seconds: a number with a unit (`ms`, `s`, `m`, `h`, `d`), or a bare number
  /// of seconds; more than 0. The same units as durations in plans and scenarios.
  static func seconds(_ text: String) throws -> Double {
    let trimmed = text.trimmingCharacters(in: .whitespaces)
    let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]
    var value = Double(trimmed)
    if value == nil {
      for (suffix, factor) in units where trimmed.hasSuffix(suffix) {
        if let v = Double(trimmed.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)) {
          value = v * factor
          break
        }
      }
    }
    guard let value, value.isFinite, value > 0 else {
      throw ValidationError(
        "--expires-in is '\(text)'; expected a positive duration such as 30d, 12h, 90m, 3600s or plain seconds"
      )
    }
    return value
  }

  /// A time in seconds since 1970 as ISO-8601 text in UTC.
  static func time(_ seconds: Double) -> String {
    ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: seconds))
  }
}
