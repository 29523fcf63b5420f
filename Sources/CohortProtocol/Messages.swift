public import CohortCompression
public import CohortCore

/// A device's identity within a population: its index for simulated devices, its registered
/// number for real ones.
public typealias DeviceID = Int

/// The version of the device–server protocol these types describe. Both sides send it; a
/// mismatch is refused with a clear reason rather than misread.
public let protocolVersion = 1

/// A device announcing it is available to work.
public struct CheckIn: Sendable, Hashable {
  public var device: DeviceID
  public var population: String
  public var protocolVersion: Int

  public init(device: DeviceID, population: String, protocolVersion: Int = CohortProtocol.protocolVersion) {
    self.device = device
    self.population = population
    self.protocolVersion = protocolVersion
  }
}

/// What a selected device is asked to do in a round.
public struct RoundTask: Sendable, Hashable {
  public var round: Int
  /// SHA-256 of the global checkpoint to start from; a device that has it skips the download.
  public var checkpointSHA256: String
  /// Server time after which a report is late.
  public var reportingDeadline: Double

  public init(round: Int, checkpointSHA256: String, reportingDeadline: Double) {
    self.round = round
    self.checkpointSHA256 = checkpointSHA256
    self.reportingDeadline = reportingDeadline
  }
}

/// A round's task together with what the device needs to carry it out.
public struct TaskAssignment: Sendable {
  public var task: RoundTask
  /// The global model to start from (a device that already holds `task.checkpointSHA256` need
  /// not download it).
  public var checkpoint: Weights
  /// Also evaluate the received model on local test data and include it in the report
  /// (federated evaluation).
  public var evaluate: Bool
  /// SCAFFOLD's server control variate c, when the strategy is SCAFFOLD.
  public var serverControl: Weights?
  /// DP-FedAvg: the L2 norm C the device clips its update to (it changes from round to round
  /// under adaptive clipping); nil without central differential privacy.
  public var clipNorm: Double?

  public init(
    task: RoundTask, checkpoint: Weights, evaluate: Bool, serverControl: Weights? = nil,
    clipNorm: Double? = nil
  ) {
    self.task = task
    self.checkpoint = checkpoint
    self.evaluate = evaluate
    self.serverControl = serverControl
    self.clipNorm = clipNorm
  }
}

/// A device's trained update for a round: `local − global`, with what the server needs to weigh it.
public struct UpdateReport: Sendable {
  public var device: DeviceID
  public var round: Int
  public var update: Weights
  /// The update as the device encoded it (the plan compresses); `update` is then empty and the
  /// server decodes this with its own codec and seed (`decoded(by:layout:)`).
  public var encoded: EncodedUpdate?
  public var examples: Int
  public var trainLoss: Double
  /// Bytes the upload took on the wire.
  public var bytes: Int
  /// Federated evaluation of the received model, when the task asked for it.
  public var evaluation: Evaluation?
  /// F_k(wᵗ): the loss of the received model on the device's training examples (q-FedAvg).
  public var lossAtGlobal: Double?
  /// SCAFFOLD's change of the device's control variate, Δc_k.
  public var controlDelta: Weights?
  /// Adaptive clipping: bᵢ = 1{‖Δ‖ ≤ C}, whether the update was within the clip before clipping.
  public var withinClip: Bool?

  public init(
    device: DeviceID, round: Int, update: Weights, examples: Int, trainLoss: Double, bytes: Int,
    evaluation: Evaluation? = nil, lossAtGlobal: Double? = nil, controlDelta: Weights? = nil,
    withinClip: Bool? = nil, encoded: EncodedUpdate? = nil
  ) {
    self.encoded = encoded
    self.withinClip = withinClip
    self.lossAtGlobal = lossAtGlobal
    self.controlDelta = controlDelta
    self.device = device
    self.round = round
    self.update = update
    self.examples = examples
    self.trainLoss = trainLoss
    self.bytes = bytes
    self.evaluation = evaluation
  }

  /// Whether the update can be folded into a model with `layout`: same shape, finite values,
  /// at least one example.
  public func isWellFormed(for layout: WeightsLayout) -> Bool {
    guard update.layout == layout, examples > 0, trainLoss.isFinite, lossAtGlobal?.isFinite ?? true
    else { return false }
    if let c = controlDelta, c.layout != layout || !c.values.allSatisfy({ $0.isFinite }) { return false }
    return update.values.allSatisfy { $0.isFinite }
  }

  /// The report with its encoded update decoded by the server's `codec` into `layout`. An
  /// encoded update the codec cannot decode (no codec, another dimension) keeps an empty update
  /// of another layout, so `isWellFormed(for:)` refuses it as malformed; nothing traps.
  public func decoded(by codec: UpdateCodec?, layout: WeightsLayout) -> UpdateReport {
    guard let encoded else { return self }
    var report = self
    report.encoded = nil
    guard let codec, encoded.dimension == codec.dimension, codec.dimension == layout.count else {
      report.update = Weights(layout: WeightsLayout([.init("undecodable", [0])]), values: [])
      return report
    }
    report.update = Weights(layout: layout, values: codec.decode(encoded))
    return report
  }

  /// Under secure aggregation a report only says training is done: its update must be empty,
  /// since the update travels masked inside the protocol.
  public var isWellFormedWithoutUpdate: Bool {
    update.count == 0 && encoded == nil && examples > 0 && trainLoss.isFinite
      && (lossAtGlobal?.isFinite ?? true)
      && controlDelta == nil
  }
}

/// Why the server refused a check-in or a report. Every refusal is counted by reason.
public enum Rejection: String, Error, Sendable, Hashable, CaseIterable, CustomStringConvertible {
  /// The report came after its round closed (deadline passed or the goal was met).
  case late
  /// The device already reported in this round.
  case duplicate
  /// The device was not selected for the round it reports for.
  case notSelected = "not_selected"
  /// The report names a round the server never ran or has not started.
  case unknownRound = "unknown_round"
  /// The update's shape or values cannot be folded in (wrong layout, NaN, infinity, no examples).
  case malformed
  /// The device speaks another protocol version.
  case protocolVersion = "protocol_version"
  /// The device belongs to another population.
  case wrongPopulation = "wrong_population"
  /// An upload or one of its chunks is larger than the server's limit, or than it declared.
  case tooLarge = "too_large"
  /// An upload does not match its declared size or SHA-256, or arrived out of sequence.
  case integrity
  /// A figure beyond the plan's bounds (`server.reports`): too many examples, a negative loss,
  /// an accuracy outside [0, 1], an update norm above the bound.
  case outOfRange = "out_of_range"
  /// Under mutual TLS the message names another device than the connection's certificate does.
  case identity

  public var description: String { rawValue }
}

/// The server's answer to a device.
public enum ServerReply: Sendable, Hashable {
  /// Not needed now: come back at a time drawn from this window (pace steering).
  case retry(window: ClosedRange<Double>)
  /// Admitted to the waiting pool of the round being selected; the task follows when the round starts.
  case waitForTask(round: Int)
  case task(RoundTask)
  case accepted(round: Int)
  case rejected(Rejection)
}
