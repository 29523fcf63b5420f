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
    case .every(let n): round % n == 0
    }
  }
}
