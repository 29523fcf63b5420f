public import CohortCompression
public import CohortCore

// The messages of one participation stream in protocol terms. The transport maps the wire
// (gRPC/protobuf) form to these and back and decides nothing else; the participation machines
// (`ServerParticipation`, `DeviceSession`) and their drivers speak only these.

/// What a device sends on its participation stream.
public enum DeviceMessage: Sendable, Hashable {
  /// The device is available; the first message of a participation.
  case checkIn(CheckInRequest)
  /// The report of a round: its figures and the size of the update that follows in chunks (or
  /// nothing under secure aggregation). The first message when a device resumes an upload.
  case report(ReportHeader)
  case updateChunk([UInt8])
  /// A secure-aggregation answer (the protocol's own encoding).
  case secureAggregation([UInt8])
  /// The device gives up its participation (not eligible any more, or it cannot check the keys).
  case abandon(round: Int, reason: String)
}

/// What the server sends on a participation stream.
public enum ServerMessage: Sendable, Hashable {
  /// Not needed now: come back within this many seconds from now.
  case retry(earliestSeconds: Double, latestSeconds: Double)
  /// Admitted to a round's cohort; the task follows when the round starts.
  case admitted(round: Int)
  case task(TaskDescription)
  case checkpointChunk([UInt8])
  /// SCAFFOLD's server control variate c, after the checkpoint.
  case serverControlChunk([UInt8])
  case secureAggregationBegin(SecureAggregationBegin)
  /// A secure-aggregation request the device must answer (the protocol's own encoding).
  case secureAggregation([UInt8])
  /// The participation's last word: whether the update counts, and why not.
  case acknowledgement(round: Int, accepted: Bool, reason: String)
}

/// A device's check-in.
public struct CheckInRequest: Sendable, Hashable {
  public var device: DeviceID
  public var population: String
  public var runtimeVersion: String
  /// The checkpoint the device already holds, so the server skips sending it again.
  public var cachedCheckpointSHA256: String
  /// The device's certificate (DER), for the active secure-aggregation variant; empty otherwise.
  public var certificate: [UInt8]

  public init(
    device: DeviceID, population: String, runtimeVersion: String = "", cachedCheckpointSHA256: String = "",
    certificate: [UInt8] = []
  ) {
    self.device = device
    self.population = population
    self.runtimeVersion = runtimeVersion
    self.cachedCheckpointSHA256 = cachedCheckpointSHA256
    self.certificate = certificate
  }

  public var checkIn: CheckIn { CheckIn(device: device, population: population) }
}

/// A round's task as it travels: what to train on and the limits of the answer.
public struct TaskDescription: Sendable, Hashable {
  public var round: Int
  public var checkpointSHA256: String
  public var checkpointBytes: Int
  /// Whether checkpoint chunks follow (false when the device holds the checkpoint already).
  public var checkpointFollows: Bool
  /// Seconds from now until a report is late.
  public var reportingDeadlineSeconds: Double
  public var evaluate: Bool
  /// DP-FedAvg's clip norm C; 0 without central differential privacy.
  public var clipNorm: Double
  /// The plan, as JSON: it parameterizes the device's built-in training.
  public var planJSON: String
  public var maxUpdateBytes: Int
  public var maxChunkBytes: Int
  /// The round's shared codec seed (rotation signs, random masks).
  public var codecSeed: UInt64
  /// Bytes of SCAFFOLD's server control variate that follow the checkpoint (0 otherwise).
  public var serverControlBytes: Int

  public init(
    round: Int, checkpointSHA256: String, checkpointBytes: Int, checkpointFollows: Bool,
    reportingDeadlineSeconds: Double, evaluate: Bool, clipNorm: Double, planJSON: String,
    maxUpdateBytes: Int, maxChunkBytes: Int, codecSeed: UInt64, serverControlBytes: Int
  ) {
    self.round = round
    self.checkpointSHA256 = checkpointSHA256
    self.checkpointBytes = checkpointBytes
    self.checkpointFollows = checkpointFollows
    self.reportingDeadlineSeconds = reportingDeadlineSeconds
    self.evaluate = evaluate
    self.clipNorm = clipNorm
    self.planJSON = planJSON
    self.maxUpdateBytes = maxUpdateBytes
    self.maxChunkBytes = maxChunkBytes
    self.codecSeed = codecSeed
    self.serverControlBytes = serverControlBytes
  }
}

/// A report's figures and the size of what follows it.
public struct ReportHeader: Sendable, Hashable {
  public var device: DeviceID
  public var round: Int
  public var examples: Int
  public var trainLoss: Double
  /// Bytes of the update that follow (0 under secure aggregation).
  public var updateBytes: Int
  /// Bytes of SCAFFOLD's Δc_k that follow the update.
  public var controlDeltaBytes: Int
  /// The update's wire layout (raw value of `EncodedUpdate.WireKind`; unknown values are refused).
  public var encoding: Int
  /// SHA-256 (hex) of the update and Δc_k bytes together; empty when nothing follows.
  public var sha256: String
  public var evaluation: Evaluation?
  public var withinClip: Bool
  public var lossAtGlobal: Double?

  public init(
    device: DeviceID, round: Int, examples: Int, trainLoss: Double, updateBytes: Int = 0,
    controlDeltaBytes: Int = 0, encoding: Int = EncodedUpdate.WireKind.float32.rawValue, sha256: String = "",
    evaluation: Evaluation? = nil, withinClip: Bool = false, lossAtGlobal: Double? = nil
  ) {
    self.device = device
    self.round = round
    self.examples = examples
    self.trainLoss = trainLoss
    self.updateBytes = updateBytes
    self.controlDeltaBytes = controlDeltaBytes
    self.encoding = encoding
    self.sha256 = sha256
    self.evaluation = evaluation
    self.withinClip = withinClip
    self.lossAtGlobal = lossAtGlobal
  }
}

/// Secure aggregation: the round's parameters and the device's place in it.
public struct SecureAggregationBegin: Sendable, Hashable {
  /// A member of the round and its certificate (DER), for the active variant.
  public struct Peer: Sendable, Hashable {
    public var index: Int
    public var certificate: [UInt8]

    public init(index: Int, certificate: [UInt8]) {
      self.index = index
      self.certificate = certificate
    }
  }

  public var round: Int
  /// The device's index in the protocol (1-based).
  public var index: Int
  public var count: Int
  public var degree: Int
  public var threshold: Int
  public var graphSeed: [UInt8]
  public var vectorLength: Int
  public var ringBits: Int
  /// The public seed of the round's rotation signs.
  public var sharedSeed: UInt64
  /// Every member's certificate (active variant), so each device checks the keys itself.
  public var peers: [Peer]

  public init(
    round: Int, index: Int, count: Int, degree: Int, threshold: Int, graphSeed: [UInt8], vectorLength: Int,
    ringBits: Int, sharedSeed: UInt64, peers: [Peer] = []
  ) {
    self.round = round
    self.index = index
    self.count = count
    self.degree = degree
    self.threshold = threshold
    self.graphSeed = graphSeed
    self.vectorLength = vectorLength
    self.ringBits = ringBits
    self.sharedSeed = sharedSeed
    self.peers = peers
  }
}
