public import Foundation

/// The id of a run in a results store: the `runs.id` column.
public struct RunID: Hashable, Sendable, Codable, Comparable, CustomStringConvertible,
  LosslessStringConvertible
{
  public let rawValue: Int64

  public init(_ rawValue: Int64) { self.rawValue = rawValue }

  /// Parses a run id as typed on the command line, e.g. `"12"`.
  public init?(_ description: String) {
    guard let value = Int64(description) else { return nil }
    self.rawValue = value
  }

  public init(from decoder: any Decoder) throws {
    rawValue = try decoder.singleValueContainer().decode(Int64.self)
  }

  public func encode(to encoder: any Encoder) throws {
    var container = encoder.singleValueContainer()
    try container.encode(rawValue)
  }

  public var description: String { String(rawValue) }

  public static func < (a: RunID, b: RunID) -> Bool { a.rawValue < b.rawValue }

  /// The most ids one list may name, so `1-9999999999` cannot allocate without bound.
  public static let listLimit = 100_000

  /// Run ids as typed on the command line: single ids and ranges, separated by commas, e.g.
  /// `3`, `3-8`, `1,3-5`. Ids keep their first-given order and appear once. Nil when the text is
  /// not such a list, a range runs backwards, or it names more than `listLimit` ids.
  public static func list(_ text: String) -> [RunID]? {
    var ids: [RunID] = []
    var seen = Set<Int64>()
    for part in text.split(separator: ",", omittingEmptySubsequences: false) {
      let bounds = part.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
      guard let low = bounds.first.flatMap({ Int64($0.trimmingCharacters(in: .whitespaces)) }), low >= 0
      else { return nil }
      let high: Int64
      if bounds.count == 2 {
        guard let h = Int64(bounds[1].trimmingCharacters(in: .whitespaces)), h >= low else { return nil }
        high = h
      } else {
        high = low
      }
      // Checked before the loop: the range's size alone must fit the limit.
      guard high - low < Int64(listLimit) else { return nil }
      for id in low...high where seen.insert(id).inserted {
        ids.append(RunID(id))
        if ids.count > listLimit { return nil }
      }
    }
    return ids.isEmpty ? nil : ids
  }

  /// Ids written back compactly, consecutive ones as ranges: `[1, 3, 4, 5]` → `1,3-5`.
  public static func compact(_ ids: [RunID]) -> String {
    var ranges: [(low: Int64, high: Int64)] = []
    for id in Set(ids.map(\.rawValue)).sorted() {
      if let last = ranges.last, last.high != Int64.max, id == last.high + 1 {
        ranges[ranges.count - 1].high = id
      } else {
        ranges.append((id, id))
      }
    }
    return ranges.map { $0.low == $0.high ? "\($0.low)" : "\($0.low)-\($0.high)" }.joined(separator: ",")
  }
}

/// Where a run belongs in a comparison: the experiment that made it, the scenario it ran and the
/// variant (a label for a set of plan overrides). `cohort compare` sets them; other runs have none.
public struct RunLabels: Sendable, Hashable, Codable {
  public var experiment: String?
  public var scenario: String?
  public var variant: String?

  public init(experiment: String? = nil, scenario: String? = nil, variant: String? = nil) {
    self.experiment = experiment
    self.scenario = scenario
    self.variant = variant
  }
}

/// Where a run stands. `interrupted` is a run a restart found `running` with no live server
/// behind it; it resumes from its last committed round.
public enum RunStatus: String, Sendable, Hashable, Codable, CaseIterable {
  case running
  case finished
  case failed
  case interrupted
}

/// A run at a glance, as `cohort runs list` shows it.
public struct RunSummary: Sendable, Hashable {
  public var id: RunID
  public var name: String
  public var createdAt: Date
  public var status: RunStatus
  /// When the status last left `running`; nil while running.
  public var finishedAt: Date?
  public var seed: UInt64
  public var planName: String
  public var planSHA256: String
  /// Rounds whose outcome is `committed`.
  public var roundsCommitted: Int
  /// Central-test accuracy of the most recent round that was evaluated.
  public var lastAccuracy: Double?
  /// Highest central-test accuracy of any round.
  public var bestAccuracy: Double?
  /// Its experiment, scenario and variant, when `cohort compare` ran it.
  public var labels = RunLabels()

  public init(
    id: RunID, name: String, createdAt: Date, status: RunStatus, finishedAt: Date?, seed: UInt64,
    planName: String, planSHA256: String, roundsCommitted: Int, lastAccuracy: Double?, bestAccuracy: Double?
  ) {
    self.id = id
    self.name = name
    self.createdAt = createdAt
    self.status = status
    self.finishedAt = finishedAt
    self.seed = seed
    self.planName = planName
    self.planSHA256 = planSHA256
    self.roundsCommitted = roundsCommitted
    self.lastAccuracy = lastAccuracy
    self.bestAccuracy = bestAccuracy
  }
}

/// One row of the `devices` table: a device's counters over a run.
public struct DeviceRecord: Sendable, Hashable {
  public var device: Int
  /// Rounds it was selected for.
  public var participations: Int
  public var reports: Int
  public var dropouts: Int
  /// The last round it was selected for.
  public var lastRound: Int

  public init(device: Int, participations: Int, reports: Int, dropouts: Int, lastRound: Int) {
    self.device = device
    self.participations = participations
    self.reports = reports
    self.dropouts = dropouts
    self.lastRound = lastRound
  }
}

/// One row of the `device_evaluations` table: a device's evaluation, in one round, of the model
/// it received, on its own held-out examples.
public struct DeviceEvaluationRecord: Sendable, Hashable {
  public var round: Int
  public var device: Int
  public var accuracy: Double
  public var loss: Double
  public var examples: Int

  public init(round: Int, device: Int, accuracy: Double, loss: Double, examples: Int) {
    self.round = round
    self.device = device
    self.accuracy = accuracy
    self.loss = loss
    self.examples = examples
  }
}

/// Which of a run's checkpoints the results store keeps (`--keep-checkpoints`). The latest
/// checkpoint is always kept: it is the run's model, and what a resume starts from.
public enum CheckpointRetention: Sendable, Hashable, CustomStringConvertible {
  /// Every committed round's checkpoint (the default).
  case all
  /// Only the latest.
  case last
  /// Those of rounds that are multiples of N, and the latest.
  case every(Int)

  /// Parses `all`, `last` or `every:N` (N ≥ 1); nil for anything else.
  public init?(_ text: String) {
    switch text {
    case "all": self = .all
    case "last": self = .last
    default:
      guard text.hasPrefix("every:"), let n = Int(text.dropFirst("every:".count)), n >= 1 else { return nil }
      self = .every(n)
    }
  }

  public var description: String {
    switch self {
    case .all: "all"
    case .last: "last"
    case .every(let n): "every:\(n)"
    }
  }

  /// Whether the checkpoint of `round` is kept when it is not the latest.
  public func keeps(round: Int) -> Bool {
    switch self {
    case .all: true
    case .last: false
    case .every(let n): round % max(1, n) == 0
    }
  }
}
