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
