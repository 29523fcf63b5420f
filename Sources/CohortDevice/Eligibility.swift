public import CohortCore
public import Foundation

/// A range of local hours in which the device may train: `start-end` in hour numbers 0–24,
/// from the start of hour `start` up to (not including) the start of hour `end`. `22-6` wraps
/// past midnight (22:00 to 06:00), `0-24` is the whole day.
public struct HourWindow: Sendable, Hashable, Codable, CustomStringConvertible {
  public var start: Int
  public var end: Int

  /// A window from `start` to `end`; both in 0…24 and different.
  public init(start: Int, end: Int) throws(CohortError) {
    try self.init(start: start, end: end, flag: "hours")
  }

  /// Reads `start-end` (e.g. `22-6`) as given on the command line; errors name `flag`.
  public init(parsing text: String, flag: String = "--hours") throws(CohortError) {
    let parts = text.split(separator: "-", omittingEmptySubsequences: false).map {
      $0.trimmingCharacters(in: .whitespaces)
    }
    guard parts.count == 2, let start = Int(parts[0]), let end = Int(parts[1]) else {
      throw CohortError(
        .invalidConfiguration,
        "\(flag) is '\(text)'; expected start-end in local hours 0–24, such as 9-17, or 22-6 across midnight",
        fix: "give \(flag) as two hour numbers joined by '-'")
    }
    try self.init(start: start, end: end, flag: flag)
  }

  private init(start: Int, end: Int, flag: String) throws(CohortError) {
    for (name, hour) in [("start", start), ("end", end)] where !(0...24).contains(hour) {
      throw CohortError(
        .invalidConfiguration,
        "\(flag) \(start)-\(end): the \(name) hour \(hour) is outside 0–24",
        fix: "give \(flag) as hour numbers from 0 to 24, such as 22-6")
    }
    guard start != end else {
      throw CohortError(
        .invalidConfiguration, "\(flag) \(start)-\(end) is an empty window",
        fix: "give \(flag) 0-24 for the whole day, or leave it out")
    }
    self.start = start
    self.end = end
  }

  /// Whether the hour `hour` (0–23; other values are taken modulo 24) lies in the window.
  public func contains(hour: Int) -> Bool {
    let h = ((hour % 24) + 24) % 24
    let s = start % 24
    let e = end % 24
    if s == e { return true }  // 0-24 or 24-0: the whole day
    return s < e ? (s <= h && h < e) : (h >= s || h < e)
  }

  public var description: String { "\(start)-\(end)" }

  /// Encoded as its text, `"22-6"`.
  public init(from decoder: any Decoder) throws {
    let container = try decoder.singleValueContainer()
    let text = try container.decode(String.self)
    do {
      try self.init(parsing: text, flag: "hours")
    } catch {
      throw DecodingError.dataCorruptedError(in: container, debugDescription: error.message)
    }
  }

  public func encode(to encoder: any Encoder) throws {
    var container = encoder.singleValueContainer()
    try container.encode(description)
  }
}

/// When a device may take part in training: the pure rule. `SystemConditions` reads the inputs.
public struct EligibilityPolicy: Sendable, Hashable, Codable {
  /// Local hours in which the device may train; nil for any time.
  public var hours: HourWindow?
  /// The highest 1-minute load average at which the device may train; nil for no bound.
  public var maximumLoadAverage: Double?
  /// The fewest unexpired examples the device needs to train.
  public var minimumExamples: Int

  public init(hours: HourWindow? = nil, maximumLoadAverage: Double? = nil, minimumExamples: Int = 1) {
    self.hours = hours
    self.maximumLoadAverage = maximumLoadAverage
    self.minimumExamples = minimumExamples
  }

  /// A policy from command-line values, each checked; errors name the flag.
  ///
  /// - Parameters:
  ///   - hours: `start-end` local hours (`--hours`), e.g. `22-6`.
  ///   - maximumLoad: the highest 1-minute load average (`--max-load`), e.g. `2.5`.
  ///   - minimumExamples: the fewest unexpired examples (`--min-examples`).
  public init(hours: String?, maximumLoad: String?, minimumExamples: Int = 1) throws(CohortError) {
    let window = try hours.map { (text) throws(CohortError) in try HourWindow(parsing: text, flag: "--hours")
    }
    var load: Double?
    if let maximumLoad {
      guard let value = Double(maximumLoad.trimmingCharacters(in: .whitespaces)) else {
        throw CohortError(
          .invalidConfiguration, "--max-load is '\(maximumLoad)'; expected a number such as 2.5",
          fix: "give --max-load as the highest 1-minute load average at which to train")
      }
      load = value
    }
    self.init(hours: window, maximumLoadAverage: load, minimumExamples: minimumExamples)
    try validate()
  }

  /// Checks the bounds; errors name the command-line flag of the field.
  public func validate() throws(CohortError) {
    if let maximumLoadAverage, !(maximumLoadAverage.isFinite && maximumLoadAverage > 0) {
      throw CohortError(
        .invalidConfiguration, "--max-load is \(maximumLoadAverage); expected a positive number such as 2.5",
        fix: "give --max-load as the highest 1-minute load average at which to train, or leave it out")
    }
    guard minimumExamples >= 0 else {
      throw CohortError(
        .invalidConfiguration, "--min-examples is \(minimumExamples); expected 0 or more",
        fix: "give --min-examples as the fewest unexpired examples needed to train")
    }
  }

  /// Decides from the local hour (0–23), the 1-minute load average (nil when it could not be
  /// read: the load bound is then not applied) and the number of unexpired examples. Every
  /// failed condition is given as a reason.
  public func decide(hour: Int, loadAverage: Double?, examples: Int) -> EligibilityDecision {
    var reasons: [String] = []
    if let hours, !hours.contains(hour: hour) {
      reasons.append("outside the allowed hours \(hours) (now \(hour))")
    }
    if let maximumLoadAverage, let loadAverage, loadAverage > maximumLoadAverage {
      reasons.append(
        "the 1-minute load average \(Self.format(loadAverage)) is above the maximum "
          + "\(Self.format(maximumLoadAverage))")
    }
    if examples < minimumExamples {
      reasons.append(
        "\(examples) unexpired example\(examples == 1 ? "" : "s"), fewer than the \(minimumExamples) needed")
    }
    return EligibilityDecision(reasons: reasons)
  }

  /// `decide` with the hour and load average of `conditions`.
  public func decide(_ conditions: SystemConditions, examples: Int) -> EligibilityDecision {
    decide(hour: conditions.hour, loadAverage: conditions.loadAverage, examples: examples)
  }

  /// A number with at most 2 decimals and no trailing zeros: 3.2, 2, 0.75.
  private static func format(_ x: Double) -> String {
    var text = String(format: "%.2f", x)
    while text.hasSuffix("0") { text.removeLast() }
    if text.hasSuffix(".") { text.removeLast() }
    return text
  }
}

/// Whether the device may train now, and if not, why.
public struct EligibilityDecision: Sendable, Hashable, CustomStringConvertible {
  /// The conditions that failed, for people; empty when the device is eligible.
  public var reasons: [String]

  public init(reasons: [String]) { self.reasons = reasons }

  public static let eligible = EligibilityDecision(reasons: [])

  public var isEligible: Bool { reasons.isEmpty }

  public var description: String {
    isEligible ? "eligible" : "not eligible: " + reasons.joined(separator: "; ")
  }
}

/// The conditions of the machine the device runs on, as eligibility needs them. Reading them
/// is the only I/O of eligibility.
public struct SystemConditions: Sendable, Hashable {
  /// The local hour, 0–23.
  public var hour: Int
  /// The 1-minute load average, or nil when it could not be read.
  public var loadAverage: Double?

  public init(hour: Int, loadAverage: Double?) {
    self.hour = hour
    self.loadAverage = loadAverage
  }

  /// The conditions at `date`: its hour in `calendar`'s time zone and the current load average.
  public static func read(
    at date: Date = Date(), calendar: Calendar = .current, loadAveragePath: String = "/proc/loadavg"
  ) -> SystemConditions {
    SystemConditions(
      hour: localHour(at: date, calendar: calendar), loadAverage: loadAverage(path: loadAveragePath))
  }

  /// The hour of `date` in `calendar`'s time zone, 0–23.
  public static func localHour(at date: Date, calendar: Calendar = .current) -> Int {
    calendar.component(.hour, from: date)
  }

  /// The 1-minute load average from `path` (Linux's /proc/loadavg), or nil when it cannot be read.
  public static func loadAverage(path: String = "/proc/loadavg") -> Double? {
    guard let data = FileManager.default.contents(atPath: path) else { return nil }
    return parseLoadAverage(String(decoding: data, as: UTF8.self))
  }

  /// The first field of /proc/loadavg text (`0.52 0.58 0.59 1/467 12345`), or nil.
  public static func parseLoadAverage(_ text: String) -> Double? {
    guard let first = text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).first,
      let value = Double(first), value.isFinite, value >= 0
    else { return nil }
    return value
  }
}
