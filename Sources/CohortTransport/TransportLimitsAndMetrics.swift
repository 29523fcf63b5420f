import CohortProtocol
import Metrics

/// Limits the server enforces on what devices send, before spending memory on it.
public struct TransportLimits: Sendable, Hashable {
  /// The largest gRPC message, in bytes (gRPC refuses bigger ones before reading them).
  public var maxMessageBytes: Int
  /// The largest update a device may declare, in bytes.
  public var maxUpdateBytes: Int
  /// The largest checkpoint or update chunk, in bytes.
  public var maxChunkBytes: Int

  /// Limits for a model of `parameters` values (see `ParticipationLimits`); messages of 4 MiB.
  public init(
    parameters: Int, encodedUpdateBytes: Int = 0, maxChunkBytes: Int = 1 << 20, maxMessageBytes: Int = 4 << 20
  ) {
    let limits = ParticipationLimits(
      parameters: parameters, encodedUpdateBytes: encodedUpdateBytes, maxChunkBytes: maxChunkBytes)
    self.maxUpdateBytes = limits.maxUpdateBytes
    self.maxChunkBytes = limits.maxChunkBytes
    self.maxMessageBytes = maxMessageBytes
  }

  /// What a participation enforces.
  var participation: ParticipationLimits {
    ParticipationLimits(maxUpdateBytes: maxUpdateBytes, maxChunkBytes: maxChunkBytes)
  }
}

/// The metrics the transport keeps on top of the Coordinator's.
struct TransportMetrics: Sendable {
  let connected: Meter
  let streams: Counter
  let bytesReceived: Counter
  let bytesSent: Counter
  let refused: @Sendable (String) -> Void
  /// Streams ended because the device made no progress in time.
  let inactive: Counter

  init(factory: any MetricsFactory) {
    connected = Meter(label: "cohort_devices_connected", factory: factory)
    streams = Counter(label: "cohort_participations_total", factory: factory)
    bytesReceived = Counter(label: "cohort_bytes_received_total", factory: factory)
    bytesSent = Counter(label: "cohort_bytes_sent_total", factory: factory)
    inactive = Counter(label: "cohort_streams_inactive_total", factory: factory)
    // Refusals the transport makes itself (before a report reaches the Coordinator) go into
    // the same family as the Coordinator's, by reason.
    refused = { reason in
      Counter(label: "cohort_reports_rejected_total", dimensions: [("reason", reason)], factory: factory)
        .increment()
    }
  }
}

extension Cohort_V1_ServerMessage {
  /// The bulk bytes a message carries (checkpoint chunks, secure-aggregation messages), for metrics.
  var payloadBytes: Int {
    switch kind {
    case .checkpointChunk(let c): c.data.count
    case .serverControlChunk(let c): c.data.count
    case .secagg(let m): m.message.count
    default: 0
    }
  }
}

extension Cohort_V1_DeviceMessage {
  var payloadBytes: Int {
    switch kind {
    case .updateChunk(let c): c.data.count
    case .secagg(let m): m.message.count
    default: 0
    }
  }
}
