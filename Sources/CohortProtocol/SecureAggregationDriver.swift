public import CohortCore

/// Runs secure aggregation among the devices that reported for a round and hands the
/// Coordinator only the decoded sum. The simulator drives the protocol between in-memory
/// devices; a network service drives the same state machines over device streams.
public protocol SecureAggregationDriver: Sendable {
  func secureSum(round: Int, devices: [DeviceID]) async -> SecureSum

  /// Decodes a sum in the ring of `round` over `devices` inputs (replicas' ring sums added), as
  /// the protocol decodes its own; nil when this driver cannot.
  func decode(ringSum: [UInt32], devices: Int, round: Int) async -> (
    weightedSum: [Double], totalWeight: Double
  )?
}

extension SecureAggregationDriver {
  public func decode(ringSum: [UInt32], devices: Int, round: Int) async -> (
    weightedSum: [Double], totalWeight: Double
  )? { nil }
}

/// What secure aggregation gave the server for one round.
public struct SecureSum: Sendable {
  /// Σ wᵢΔᵢ over the survivors, decoded from the ring; nil when the protocol failed.
  public var weightedSum: [Double]?
  /// Σ wᵢ over the survivors (their count when every weight is 1).
  public var totalWeight: Double
  /// Devices whose input is in the sum.
  public var survivors: [DeviceID]
  /// Σ examples over the survivors, as they reported them.
  public var examples: Int
  /// Why the protocol gave no sum.
  public var failure: String?
  /// Per step: devices entering, dropouts, bytes, server time.
  public var steps: [SecureAggregationStepRecord]
  /// Protocol messages the server refused (malformed, replayed, …).
  public var rejectedMessages: Int
  /// The sum in the ring before decoding, and the ring's width: replicas add their sums here,
  /// exactly, and the leader decodes the total once.
  public var ringSum: [UInt32]?
  public var ringBits: Int?

  public init(
    weightedSum: [Double]?, totalWeight: Double, survivors: [DeviceID], examples: Int, failure: String?,
    steps: [SecureAggregationStepRecord], rejectedMessages: Int
  ) {
    self.weightedSum = weightedSum
    self.totalWeight = totalWeight
    self.survivors = survivors
    self.examples = examples
    self.failure = failure
    self.steps = steps
    self.rejectedMessages = rejectedMessages
  }
}
