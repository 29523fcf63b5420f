public import CohortCore
import Foundation

/// What a virtual device can do: how fast it trains and transfers, and how likely it is to
/// abandon a round. Drawn on demand from the device's own stream, never stored per device.
public struct DeviceProfile: Sendable, Hashable {
  /// Training speed: examples processed per second (one example through one epoch).
  public var examplesPerSecond: Double
  public var downloadBytesPerSecond: Double
  public var uploadBytesPerSecond: Double
  /// Chance that the device drops out of a round it was selected for.
  public var dropout: Double

  public init(
    examplesPerSecond: Double, downloadBytesPerSecond: Double, uploadBytesPerSecond: Double, dropout: Double
  ) {
    self.examplesPerSecond = examplesPerSecond
    self.downloadBytesPerSecond = downloadBytesPerSecond
    self.uploadBytesPerSecond = uploadBytesPerSecond
    self.dropout = dropout
  }
}

/// How long each phase of a round takes a device, in seconds of virtual time.
public struct RoundTiming: Sendable, Hashable {
  /// Fetching the global checkpoint (zero when the device already has it).
  public var download: Double
  /// Local training.
  public var train: Double
  /// Sending the update.
  public var upload: Double

  public init(download: Double, train: Double, upload: Double) {
    self.download = download
    self.train = train
    self.upload = upload
  }

  /// From the task's arrival to the report's arrival.
  public var total: Double { download + train + upload }
}

extension DeviceProfile {
  /// The phases of one round for this device: bytes over bandwidth, examples × epochs over speed.
  public func roundTiming(examples: Int, epochs: Int, downloadBytes: Int, uploadBytes: Int) -> RoundTiming {
    precondition(examples >= 0 && epochs >= 0, "examples and epochs must not be negative")
    precondition(downloadBytes >= 0 && uploadBytes >= 0, "byte counts must not be negative")
    return RoundTiming(
      download: Double(downloadBytes) / downloadBytesPerSecond,
      train: Double(examples) * Double(epochs) / examplesPerSecond,
      upload: Double(uploadBytes) / uploadBytesPerSecond)
  }
}

extension ProfileDistribution {
  /// One draw: `constant` consumes nothing from the stream, `lognormal` one normal, `uniform`
  /// one uniform. Scenario validation keeps every parameter positive, so every draw is too.
  public func sample(_ rng: inout RandomStream) -> Double {
    switch self {
    case .constant(let value):
      return value
    case .lognormal(let median, let sigma):
      // median · e^(σz) is exp(N(log median, σ²)), and exactly the median when σ = 0.
      return median * exp(sigma * rng.normal())
    case .uniform(let low, let high):
      return low + (high - low) * rng.uniform()
    }
  }

  /// The distribution's median, for summaries and for sizing deadlines.
  public var median: Double {
    switch self {
    case .constant(let value): return value
    case .lognormal(let median, _): return median
    case .uniform(let low, let high): return (low + high) / 2
    }
  }
}
