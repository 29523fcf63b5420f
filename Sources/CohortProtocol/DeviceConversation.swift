public import CohortCompression
public import CohortCore
public import CohortSecAgg
import Foundation

/// How one participation ended, as the device sees it.
public enum ParticipationResult: Sendable, Hashable {
  /// The server did not need the device now: come back within this many seconds.
  case retry(earliest: Double, latest: Double)
  /// The device reported for `round`; `accepted` says whether its update counts.
  case finished(round: Int, accepted: Bool, reason: String)
  /// The participation was refused: by the server (its status), or by the device because the
  /// server's input was unusable (too large, tampered, malformed, unexpected).
  case refused(reason: String, detail: String)
  /// The device gave up before reporting (not eligible, or the stream ended).
  case abandoned(String)
  /// Admitted to a round's cohort (only for a participation that stops there).
  case admitted(round: Int)
}

/// A report and its update bytes, as sent, and as resent on a new stream after a lost
/// connection while the round's deadline allows.
public struct PendingUpload: Sendable, Hashable {
  public var header: ReportHeader
  public var payload: [UInt8]
  public var chunk: Int
  /// When the round's report would be late (seconds since 1970).
  public var deadline: Double

  public init(header: ReportHeader, payload: [UInt8], chunk: Int, deadline: Double) {
    self.header = header
    self.payload = payload
    self.chunk = max(1, chunk)
    self.deadline = deadline
  }

  /// The header, then the payload in chunks.
  public var messages: [DeviceMessage] {
    var out: [DeviceMessage] = [.report(header)]
    var start = 0
    while start < payload.count {
      let end = start + min(payload.count - start, chunk)
      out.append(.updateChunk(Array(payload[start..<end])))
      start = end
    }
    return out
  }
}

/// What the device hands to local training: everything the task and its checkpoint say.
public struct TrainingRequest: Sendable, Hashable {
  public var round: Int
  public var plan: Plan
  /// The plan as the server sent it (drivers key their trainers by it).
  public var planJSON: String
  public var checkpoint: [Float]
  /// SCAFFOLD's server control variate c (one value per parameter); nil without SCAFFOLD.
  public var serverControl: [Float]?
  public var evaluate: Bool
  /// DP-FedAvg's clip norm; nil without it.
  public var clip: Double?
  public var codecSeed: UInt64
}

/// A finished local training, in protocol terms.
public struct TrainingResult: Sendable, Hashable {
  public var update: [Float]
  /// The update as uploaded when the plan compresses (without secure aggregation); nil: Float32.
  public var encoded: EncodedUpdate?
  public var examples: Int
  public var loss: Double
  public var evaluation: Evaluation?
  public var lossAtGlobal: Double?
  /// SCAFFOLD's Δc_k.
  public var controlDelta: [Float]?
  /// DP-FedAvg: whether the update was within the clip before clipping.
  public var withinClip: Bool?

  public init(
    update: [Float], encoded: EncodedUpdate? = nil, examples: Int, loss: Double,
    evaluation: Evaluation? = nil,
    lossAtGlobal: Double? = nil, controlDelta: [Float]? = nil, withinClip: Bool? = nil
  ) {
    self.update = update
    self.encoded = encoded
    self.examples = examples
    self.loss = loss
    self.evaluation = evaluation
    self.lossAtGlobal = lossAtGlobal
    self.controlDelta = controlDelta
    self.withinClip = withinClip
  }
}

/// The device's side of one participation stream, as a pure state machine: the server's
/// messages, the end of the stream, training results, peer-certificate checks and the time go
/// in; messages to send and work to hand off come out. The Linux client runtime pumps it over a
/// ``ParticipationChannel``.
///
/// Everything from the server is hostile and checked before use: retry windows (finite, not
/// negative, earliest ≤ latest, else refused; longer than `maximumRetryWait` clamped to it),
/// the checkpoint's declared size against the device's limit before buffering, every chunk
/// against its declared size, the SHA-256, SCAFFOLD's control size (4 bytes per parameter, else
/// none), the secure-aggregation parameters against the plan, and the order of messages. A
/// refusal ends the participation with `.refused(reason:detail:)`; nothing here traps on input.
public struct DeviceConversation: Sendable {
  public struct Configuration: Sendable, Hashable {
    public var device: DeviceID
    public var population: String
    /// The root of the device's seeded streams (the secure-aggregation encoding's rounding).
    public var seed: UInt64
    /// The largest checkpoint the device accepts, in bytes.
    public var maxCheckpointBytes: Int
    /// The device's certificate (DER) for the active secure-aggregation variant; nil: it has none.
    public var certificate: [UInt8]?
    /// The longest wait a server may ask for (retry windows and reporting deadlines are
    /// clamped to it), so a server cannot send a device to sleep for ever.
    public var maximumRetryWait: Double

    public init(
      device: DeviceID, population: String, seed: UInt64, maxCheckpointBytes: Int = 1 << 30,
      certificate: [UInt8]? = nil, maximumRetryWait: Double = 86_400
    ) {
      self.device = device
      self.population = population
      self.seed = seed
      self.maxCheckpointBytes = maxCheckpointBytes
      self.certificate = certificate
      self.maximumRetryWait = maximumRetryWait
    }
  }

  /// What the device keeps from one participation to the next.
  public struct Memory: Sendable, Hashable {
    /// The last checkpoint received, so a task for the same model skips the download.
    public var checkpoint: (sha256: String, values: [Float])? {
      get { checkpointSHA256.map { ($0, checkpointValues) } }
      set {
        checkpointSHA256 = newValue?.sha256
        checkpointValues = newValue?.values ?? []
      }
    }
    private var checkpointSHA256: String?
    private var checkpointValues: [Float] = []
    /// An upload the server has not acknowledged (the stream was lost during the report).
    public var pendingUpload: PendingUpload?

    public init(checkpoint: (sha256: String, values: [Float])? = nil, pendingUpload: PendingUpload? = nil) {
      self.pendingUpload = pendingUpload
      self.checkpoint = checkpoint
    }
  }

  /// How far a participation goes.
  public enum Extent: Sendable, Hashable {
    case full
    /// End at the server's first answer.
    case checkIn
    /// Once admitted, hold the stream open and idle until it ends or the driver cancels.
    case hold
  }

  /// The task being worked on, with its plan.
  public struct Work: Sendable, Hashable {
    public var task: TaskDescription
    public var plan: Plan
    public var checkpoint: [Float]
  }

  public enum State: Sendable {
    case notStarted
    /// Check-in sent; waiting for retry, admission or the task.
    case checkingIn
    /// Admitted (`.full`): waiting for the task.
    case waitingForTask(round: Int)
    /// Admitted (`.hold`): the stream is held idle.
    case holding(round: Int)
    /// A pending upload was resent; waiting for its acknowledgement.
    case resuming(round: Int)
    /// Receiving the checkpoint's chunks.
    case downloadingCheckpoint(TaskDescription, Plan)
    /// Receiving SCAFFOLD's server control variate.
    case receivingControl(Work)
    /// Handed off to local training.
    case training(Work)
    /// Report sent; waiting for the acknowledgement (or, under secure aggregation, its begin).
    case reporting(Work, TrainingResult?)
    /// Active secure aggregation: the driver checks the peers' certificates.
    case checkingPeers(Work, SecureAggregationBegin, TrainingResult)
    /// Secure aggregation: the driver draws the device's secret seed (and signing key).
    case drawingSecrets(Work, SecAggConfiguration, SecAggIndex, TrainingResult, SecureAggregationEncoding)
    /// Secure aggregation's steps run on this stream.
    case aggregating(round: Int)
    case ended(ParticipationResult)
  }

  public enum Action: Sendable, Hashable {
    case send(DeviceMessage)
    /// Train (after checking eligibility) and call `trainingEnded(_:now:)`.
    case train(TrainingRequest)
    /// `.hold`: the server admitted the device; the stream stays open.
    case admitted(round: Int)
    /// Active secure aggregation: check these certificates and call `peersChecked(_:)`.
    case checkPeerCertificates(peers: [SecureAggregationBegin.Peer], count: Int, ownIndex: Int)
    /// Draw 32 secret random bytes (and copy the signing key, when asked) and call
    /// `secretsDrawn(seed:signingKey:)`.
    case drawSecrets(signingKey: Bool)
    /// A peer's certificate was refused (drivers count them).
    case certificateRefused(DeviceCertificateRefusal)
    /// The participation is over; close the stream (cancel it for a refusal).
    case end(ParticipationResult)
  }

  /// The driver's answer to `.train`.
  public enum TrainingAnswer: Sendable, Hashable {
    case trained(TrainingResult)
    /// The device may not work now (the reason): it leaves the round.
    case ineligible(String)
    /// The task does not fit this device's training (the model's shape): refused.
    case unusable(reason: String, detail: String)
    /// Training failed here (no examples, …).
    case failed(String)
  }

  public let configuration: Configuration
  public let extent: Extent
  public private(set) var state: State = .notStarted
  public private(set) var memory: Memory
  /// Bytes of the checkpoint or control variate received so far (kept outside `state` so that
  /// appending does not copy it).
  private var buffer: [UInt8] = []
  private var secureAggregation: SecAggDevice?
  private var secureInput: [UInt32] = []

  public init(configuration: Configuration, extent: Extent = .full, memory: Memory = Memory()) {
    self.configuration = configuration
    self.extent = extent
    self.memory = memory
  }

  /// The result, once the participation is over.
  public var result: ParticipationResult? {
    if case .ended(let r) = state { r } else { nil }
  }

  // MARK: Inputs

  /// The stream is open: check in, or resend a pending upload whose round is still open.
  public mutating func start(now: Double) -> [Action] {
    guard case .notStarted = state else { return [] }
    if extent == .full, let pending = memory.pendingUpload {
      if now < pending.deadline {
        state = .resuming(round: pending.header.round)
        return pending.messages.map { .send($0) }
      }
      memory.pendingUpload = nil
    }
    state = .checkingIn
    return [
      .send(
        .checkIn(
          CheckInRequest(
            device: configuration.device, population: configuration.population,
            runtimeVersion: "cohort-\(protocolVersion)",
            cachedCheckpointSHA256: memory.checkpoint?.sha256 ?? "",
            certificate: configuration.certificate ?? [])))
    ]
  }

  /// A message from the server.
  public mutating func received(_ message: ServerMessage, now: Double) -> [Action] {
    switch state {
    case .notStarted, .ended:
      return []
    case .checkingIn, .waitingForTask:
      return checkingIn(message, now: now)
    case .holding:
      return []
    case .resuming:
      guard case .acknowledgement(let round, let accepted, let reason) = message else {
        return unexpected(message, "while waiting for the resumed upload's acknowledgement")
      }
      memory.pendingUpload = nil
      return end(.finished(round: round, accepted: accepted, reason: reason))
    case .downloadingCheckpoint(let task, let plan):
      guard case .checkpointChunk(let chunk) = message else {
        return unexpected(message, "while receiving the checkpoint")
      }
      guard chunk.count <= task.checkpointBytes - buffer.count else {
        return refuse("too_large", "the checkpoint exceeds its declared \(task.checkpointBytes) bytes")
      }
      buffer.append(contentsOf: chunk)
      return buffer.count == task.checkpointBytes ? checkpointReceived(task, plan) : []
    case .receivingControl(let work):
      guard case .serverControlChunk(let chunk) = message else {
        return unexpected(message, "while receiving the server control variate")
      }
      guard chunk.count <= work.task.serverControlBytes - buffer.count else {
        return refuse("too_large", "the server control variate exceeds its declared size")
      }
      buffer.append(contentsOf: chunk)
      return buffer.count == work.task.serverControlBytes ? train(work) : []
    case .reporting(let work, let trained):
      switch message {
      case .acknowledgement(let round, let accepted, let reason):
        memory.pendingUpload = nil
        return end(.finished(round: round, accepted: accepted, reason: reason))
      case .secureAggregationBegin(let begin) where work.plan.secureAggregation.enabled:
        guard let trained else { return unexpected(message, "while reporting round \(work.task.round)") }
        return beginSecureAggregation(work, begin, trained)
      default:
        return unexpected(message, "while reporting round \(work.task.round)")
      }
    case .aggregating(let round):
      switch message {
      case .acknowledgement(let acked, let accepted, let reason):
        wipeSecureAggregation()
        return end(.finished(round: acked, accepted: accepted, reason: reason))
      case .secureAggregation(let bytes):
        let request: SecAggMessage
        do {
          request = try SecAggMessage(decoding: bytes)
        } catch {
          return end(.abandoned("secure aggregation: \(error)"))
        }
        do {
          let reply = try secureAggregation!.handle(request, input: secureInput)
          if case .maskedInput = reply { secureInput = [] }
          return [.send(.secureAggregation(reply.encoded))]
        } catch {
          return end(.abandoned("secure aggregation: \(error)"))
        }
      default:
        return unexpected(message, "while reporting round \(round)")
      }
    case .training, .checkingPeers, .drawingSecrets:
      // The driver answers a hand-off before it reads the next message.
      return unexpected(message, "while the device works")
    }
  }

  /// The server ended the stream.
  public mutating func streamEnded(now: Double) -> [Action] {
    switch state {
    case .notStarted, .ended: return []
    case .checkingIn, .waitingForTask:
      return end(.abandoned("the server ended the stream before a task"))
    case .holding(let round):
      return end(.admitted(round: round))
    case .resuming:
      return end(.abandoned("the server ended the stream before acknowledging the resumed upload"))
    case .downloadingCheckpoint(let task, _):
      return end(.abandoned("the checkpoint ended after \(buffer.count) of \(task.checkpointBytes) bytes"))
    case .receivingControl(let work):
      return end(
        .abandoned(
          "the server control variate ended after \(buffer.count) of \(work.task.serverControlBytes) bytes"))
    case .training(let work), .reporting(let work, _), .checkingPeers(let work, _, _),
      .drawingSecrets(let work, _, _, _, _):
      return end(.abandoned("the server ended the stream before acknowledging round \(work.task.round)"))
    case .aggregating(let round):
      return end(.abandoned("the server ended the stream before acknowledging round \(round)"))
    }
  }

  /// The stream failed: a server's refusal (its last word on any upload it was sent, so the
  /// pending upload goes), a message the device cannot read, or a lost connection.
  public mutating func failed(_ error: ParticipationChannelError) -> [Action] {
    if case .ended = state { return [] }
    switch error {
    case .refused(let reason, let detail):
      memory.pendingUpload = nil
      return end(.refused(reason: reason, detail: detail))
    case .unreadable(let reason, let detail):
      return refuse(reason, detail)
    case .connection(let detail):
      if case .holding(let round) = state { return end(.admitted(round: round)) }
      return end(.abandoned("connection: \(detail)"))
    }
  }

  /// The driver stops the participation (a held stream's task was cancelled).
  public mutating func cancelled() -> [Action] {
    switch state {
    case .ended: return []
    case .holding(let round): return end(.admitted(round: round))
    default: return end(.abandoned("cancelled"))
    }
  }

  /// Local training's answer to `.train`.
  public mutating func trainingEnded(_ answer: TrainingAnswer, now: Double) -> [Action] {
    guard case .training(let work) = state else { return [] }
    let round = work.task.round
    let result: TrainingResult
    switch answer {
    case .ineligible(let reason):
      return [.send(.abandon(round: round, reason: reason))] + end(.abandoned(reason))
    case .unusable(let reason, let detail):
      return refuse(reason, detail)
    case .failed(let why):
      return end(.abandoned(why))
    case .trained(let r):
      result = r
    }
    let secure = work.plan.secureAggregation.enabled
    // The ring encoding cannot represent a NaN or infinity (a hostile checkpoint, or training
    // that diverged): the device leaves the round instead (plain reports are refused by the server).
    if secure, !result.update.allSatisfy(\.isFinite) {
      let reason = "training gave a NaN or infinite update"
      return [.send(.abandon(round: round, reason: reason))] + end(.abandoned(reason))
    }
    // The update in the plan's encoding (the same bytes the simulator counts), then Δc_k.
    let update = secure ? [] : result.encoded?.wireForm ?? Float32LittleEndian.bytes(result.update)
    let delta = result.controlDelta.map { Float32LittleEndian.bytes($0) } ?? []
    let payload = update + delta
    let wireKind = result.encoded?.wireKind ?? .float32
    let header = ReportHeader(
      device: configuration.device, round: round, examples: result.examples, trainLoss: result.loss,
      updateBytes: update.count, controlDeltaBytes: delta.count,
      encoding: secure ? EncodedUpdate.WireKind.float32.rawValue : wireKind.rawValue,
      sha256: payload.isEmpty ? "" : SHA256.hex(payload), evaluation: result.evaluation,
      withinClip: result.withinClip ?? false, lossAtGlobal: result.lossAtGlobal)
    let upload = PendingUpload(
      header: header, payload: payload, chunk: work.task.maxChunkBytes,
      deadline: now + bounded(work.task.reportingDeadlineSeconds))
    // Kept until acknowledged, so a lost connection does not lose the round's work (secure
    // aggregation cannot resume: its protocol runs on this stream).
    if !secure { memory.pendingUpload = upload }
    state = .reporting(work, secure ? result : nil)
    return upload.messages.map { .send($0) }
  }

  /// The driver's check of the peers' certificates (`.checkPeerCertificates`).
  public mutating func peersChecked(_ checked: Result<[SecAggIndex: [UInt8]], DeviceCertificateRefusal>)
    -> [Action]
  {
    guard case .checkingPeers(let work, let begin, let trained) = state else { return [] }
    switch checked {
    case .failure(let refusal):
      // The device signs nothing for a round whose keys it cannot check: it leaves, and the
      // server sees a dropout.
      return [
        .certificateRefused(refusal), .send(.abandon(round: work.task.round, reason: refusal.description)),
      ] + end(.abandoned("secure aggregation: \(refusal)"))
    case .success(let keys):
      return prepareSecureAggregation(work, begin, trained, identityKeys: keys)
    }
  }

  /// The secrets asked for by `.drawSecrets`: 32 random bytes and, for the active variant, a copy
  /// of the signing key. Both are zeroed here once the protocol machine holds its own.
  public mutating func secretsDrawn(seed: inout [UInt8], signingKey: inout [UInt8]) -> [Action] {
    defer {
      SecAggCrypto.zero(&seed)
      SecAggCrypto.zero(&signingKey)
    }
    guard case .drawingSecrets(let work, let parameters, let index, let trained, let encoding) = state else {
      return []
    }
    guard seed.count == SecAggCrypto.keyBytes else {
      return end(.abandoned("secure aggregation: the device's seed has \(seed.count) bytes, not 32"))
    }
    var random = RandomStream(
      seed: configuration.seed, purpose: encoding.streamPurpose, round: work.task.round,
      device: configuration.device)
    secureInput = encoding.encode(trained.update, examples: trained.examples, random: &random)
    secureAggregation = SecAggDevice(
      configuration: parameters, index: index, seed: seed,
      identitySecretKey: parameters.variant == .active ? signingKey : [])
    state = .aggregating(round: work.task.round)
    do throws(SecAggError) {
      let keys = try secureAggregation!.advertiseKeys()
      return [.send(.secureAggregation(SecAggMessage.advertiseKeys(keys).encoded))]
    } catch {
      wipeSecureAggregation()
      return end(.abandoned("secure aggregation: \(error)"))
    }
  }

  // MARK: Steps

  private mutating func checkingIn(_ message: ServerMessage, now: Double) -> [Action] {
    switch message {
    case .retry(let earliest, let latest):
      guard earliest.isFinite, latest.isFinite, earliest >= 0, earliest <= latest else {
        return refuse("malformed", "the retry window [\(earliest), \(latest)] seconds is not a window")
      }
      let longest = configuration.maximumRetryWait
      return end(.retry(earliest: min(earliest, longest), latest: min(latest, longest)))
    case .admitted(let round):
      switch extent {
      case .full:
        state = .waitingForTask(round: round)
        return []
      case .checkIn:
        return end(.admitted(round: round))
      case .hold:
        state = .holding(round: round)
        return [.admitted(round: round)]
      }
    case .task(let task):
      guard extent == .full else { return end(.admitted(round: task.round)) }
      return taskReceived(task)
    default:
      return unexpected(message, "before the task")
    }
  }

  private mutating func taskReceived(_ task: TaskDescription) -> [Action] {
    let plan: Plan
    do {
      plan = try JSONDecoder().decode(Plan.self, from: Data(task.planJSON.utf8))
    } catch {
      return refuse("malformed", "the task's plan cannot be read: \(error)")
    }
    // The plan arrives as JSON, past the YAML reader's checks: the device bounds what it would
    // allocate and run before it buffers or trains anything.
    let parameters = plan.model.parameterCount
    guard parameters <= min(ModelPlan.maximumParameters, configuration.maxCheckpointBytes / 4) else {
      return refuse(
        "too_large",
        "the task's model has \(parameters == .max ? "more than 2^63" : "\(parameters)") parameters; this "
          + "device takes at most \(min(ModelPlan.maximumParameters, configuration.maxCheckpointBytes / 4))")
    }
    guard (1...10_000).contains(plan.device.epochs), (1...1_000_000).contains(plan.device.batchSize) else {
      return refuse(
        "malformed",
        "the task's plan asks for \(plan.device.epochs) epochs of batches of \(plan.device.batchSize)")
    }
    if let problem = Self.problem(of: plan) {
      return refuse("malformed", "the task's plan cannot run on this device: \(problem)")
    }
    if task.checkpointFollows {
      guard task.checkpointBytes == parameters * 4 else {
        return refuse(
          "too_large",
          "the checkpoint declares \(task.checkpointBytes) bytes for a model of \(parameters) parameters "
            + "(\(parameters * 4) bytes)")
      }
      guard task.checkpointBytes >= 0, task.checkpointBytes <= configuration.maxCheckpointBytes else {
        return refuse("too_large", "the checkpoint declares \(task.checkpointBytes) bytes")
      }
      buffer = []
      buffer.reserveCapacity(task.checkpointBytes)
      state = .downloadingCheckpoint(task, plan)
      return task.checkpointBytes == 0 ? checkpointReceived(task, plan) : []
    }
    guard let held = memory.checkpoint, held.sha256 == task.checkpointSHA256 else {
      return end(.abandoned("the server sent no checkpoint and the device does not hold it"))
    }
    return checkpointReady(Work(task: task, plan: plan, checkpoint: held.values))
  }

  /// What makes a plan from the wire unusable: the figures the device computes with (the cohort
  /// bound, the codec, secure aggregation's encoding, the distributed noise) outside the ranges
  /// the plan reader admits, where they would overflow a conversion or fail a precondition.
  static func problem(of plan: Plan) -> String? {
    let cohort = plan.server.cohort
    let compression = plan.compression
    let secure = plan.secureAggregation
    let privacy = plan.privacy
    func positiveFloat(_ x: Double) -> Bool { x > 0 && Float(x).isFinite }
    let optimizer = plan.device.optimizer
    let decay = { (x: Double?) in x.map { (0..<1).contains($0) } ?? true }
    let scheduleValid: Bool
    switch optimizer.schedule {
    case nil: scheduleValid = true
    case .step(let stepSize, let gamma)?: scheduleValid = stepSize >= 1 && gamma > 0 && gamma <= 1
    case .cosine(let rounds, let minimum)?:
      scheduleValid = rounds >= 1 && minimum >= 0 && minimum < optimizer.learningRate
    }
    let checks: [(Bool, String)] = [
      (positiveFloat(optimizer.learningRate), "learning rate \(optimizer.learningRate)"),
      (
        optimizer.weightDecay >= 0 && Float(optimizer.weightDecay).isFinite,
        "weight decay \(optimizer.weightDecay)"
      ),
      ((0..<1).contains(optimizer.momentum), "momentum \(optimizer.momentum)"),
      (decay(optimizer.beta1), "beta1 \(optimizer.beta1 ?? 0)"),
      (decay(optimizer.beta2), "beta2 \(optimizer.beta2 ?? 0)"),
      (optimizer.epsilon.map(positiveFloat) ?? true, "epsilon \(optimizer.epsilon ?? 0)"),
      (scheduleValid, "learning-rate schedule \(optimizer.schedule.map { "\($0)" } ?? "")"),
      ((1...10_000_000).contains(cohort.goal), "cohort goal \(cohort.goal)"),
      ((1...10).contains(cohort.overSelection), "over-selection \(cohort.overSelection)"),
      (
        cohort.minimumFraction > 0 && cohort.minimumFraction <= 1,
        "minimum fraction \(cohort.minimumFraction)"
      ),
      ((1...16).contains(compression.bits), "compression bits \(compression.bits)"),
      (compression.range.map(positiveFloat) ?? true, "compression range \(compression.range ?? 0)"),
      (compression.fraction > 0 && compression.fraction <= 1, "compression fraction \(compression.fraction)"),
      ((0..<0.5).contains(secure.dropoutRate), "dropout rate \(secure.dropoutRate)"),
      ((0..<0.5).contains(secure.corruptFraction), "corrupt fraction \(secure.corruptFraction)"),
      (secure.degree.map { (2...10_000_000).contains($0) } ?? true, "degree \(secure.degree ?? 0)"),
      (secure.threshold.map { (2...10_000_000).contains($0) } ?? true, "threshold \(secure.threshold ?? 0)"),
      ((20...128).contains(secure.securityBits), "security bits \(secure.securityBits)"),
      (positiveFloat(secure.clip), "secure-aggregation clip \(secure.clip)"),
      ((2...24).contains(secure.encodingBits), "encoding bits \(secure.encodingBits)"),
      ((1...1_000_000_000).contains(secure.weightCap), "weight cap \(secure.weightCap)"),
      (positiveFloat(privacy.clip), "privacy clip \(privacy.clip)"),
      (privacy.noiseMultiplier >= 0 && privacy.noiseMultiplier.isFinite, "noise \(privacy.noiseMultiplier)"),
      ((0..<1).contains(privacy.beta), "beta \(privacy.beta)"),
    ]
    let problems = checks.filter { !$0.0 }.map(\.1)
    return problems.isEmpty ? nil : problems.joined(separator: "; ")
  }

  private mutating func checkpointReceived(_ task: TaskDescription, _ plan: Plan) -> [Action] {
    let bytes = buffer
    buffer = []
    guard SHA256.hex(bytes) == task.checkpointSHA256, let values = Float32LittleEndian.values(bytes) else {
      return refuse("integrity", "the checkpoint does not match its SHA-256")
    }
    memory.checkpoint = (task.checkpointSHA256, values)
    return checkpointReady(Work(task: task, plan: plan, checkpoint: values))
  }

  private mutating func checkpointReady(_ work: Work) -> [Action] {
    // SCAFFOLD's server control variate follows the checkpoint: one Float32 per parameter.
    let scaffold = work.plan.server.strategy.kind == .scaffold
    let expected = scaffold ? work.checkpoint.count * 4 : 0
    guard work.task.serverControlBytes == expected else {
      return refuse(
        "malformed",
        "the task declares \(work.task.serverControlBytes) bytes of server control variate for a model of "
          + "\(work.checkpoint.count) values")
    }
    guard expected > 0 else { return train(work) }
    buffer = []
    buffer.reserveCapacity(expected)
    state = .receivingControl(work)
    return []
  }

  private mutating func train(_ work: Work) -> [Action] {
    var control: [Float]?
    if work.plan.server.strategy.kind == .scaffold {
      control = Float32LittleEndian.values(buffer)
    }
    buffer = []
    state = .training(work)
    let t = work.task
    return [
      .train(
        TrainingRequest(
          round: t.round, plan: work.plan, planJSON: t.planJSON, checkpoint: work.checkpoint,
          serverControl: control, evaluate: t.evaluate, clip: t.clipNorm > 0 ? t.clipNorm : nil,
          codecSeed: t.codecSeed))
    ]
  }

  private mutating func beginSecureAggregation(
    _ work: Work, _ begin: SecureAggregationBegin, _ trained: TrainingResult
  ) -> [Action] {
    let round = work.task.round
    guard begin.round == round, UInt64(exactly: round) != nil else {
      return refuse("malformed", "secure aggregation for round \(begin.round) while reporting round \(round)")
    }
    // Members never exceed the plan's selection (the ring is sized for it), and every size is
    // checked before the protocol machine allocates by it.
    let largest = work.plan.server.cohort.selectionTarget
    guard begin.count >= 2, begin.count <= largest, begin.count <= Int(UInt32.max),
      begin.index >= 1, begin.index <= begin.count, begin.degree >= 0, begin.threshold >= 1
    else {
      return refuse(
        "malformed",
        "secure aggregation with \(begin.count) members (the plan selects at most \(largest)), "
          + "index \(begin.index), degree \(begin.degree), threshold \(begin.threshold)")
    }
    if work.plan.secureAggregation.variant == .active {
      guard configuration.certificate != nil else {
        let reason = "the plan's active secure aggregation needs this device's signing key (--signing-key)"
        return [.send(.abandon(round: round, reason: reason))] + end(.abandoned(reason))
      }
      // The parameters are checked before the certificates, so the driver checks at most
      // `largest` of them.
      if case .failure(let refusal) = validated(work, begin, identityKeys: nil) {
        return refuse(refusal.reason, refusal.detail)
      }
      state = .checkingPeers(work, begin, trained)
      return [.checkPeerCertificates(peers: begin.peers, count: begin.count, ownIndex: begin.index)]
    }
    return prepareSecureAggregation(work, begin, trained, identityKeys: [:])
  }

  /// A refusal of the participation, before it is carried out.
  private struct Refusal: Error {
    var reason: String
    var detail: String
  }

  /// The round's encoding when `begin` fits the plan and can run; `identityKeys` nil: not known yet.
  private func validated(_ work: Work, _ begin: SecureAggregationBegin, identityKeys: [SecAggIndex: [UInt8]]?)
    -> Result<SecureAggregationEncoding, Refusal>
  {
    let encoding: SecureAggregationEncoding
    switch SecureAggregationEncoding.make(
      plan: work.plan, round: work.task.round, dimension: work.checkpoint.count,
      rotationSeed: begin.sharedSeed)
    {
    case .failure(let e): return .failure(Refusal(reason: "malformed", detail: e.message))
    case .success(let e): encoding = e
    }
    guard begin.vectorLength == encoding.vectorLength, begin.ringBits == encoding.ringBits else {
      return .failure(
        Refusal(reason: "malformed", detail: "the secure-aggregation parameters do not match the plan"))
    }
    let parameters = Self.parameters(work, begin, identityKeys: identityKeys ?? [:])
    // The neighbour graph's own preconditions, which `problems` does not cover.
    let graphFits =
      parameters.count <= 2 || parameters.degree >= parameters.count - 1
      || (parameters.degree >= 2 && parameters.degree % 2 == 0)
    let problems = parameters.problems.filter { identityKeys != nil || !$0.contains("identity key") }
    guard graphFits, problems.isEmpty else {
      return .failure(
        Refusal(
          reason: "malformed",
          detail: "the secure-aggregation parameters cannot run: "
            + (problems.isEmpty ? ["degree \(parameters.degree)"] : problems).joined(separator: "; ")))
    }
    return .success(encoding)
  }

  private static func parameters(
    _ work: Work, _ begin: SecureAggregationBegin, identityKeys: [SecAggIndex: [UInt8]]
  ) -> SecAggConfiguration {
    SecAggConfiguration(
      round: UInt64(work.task.round), count: begin.count, degree: begin.degree, threshold: begin.threshold,
      graphSeed: begin.graphSeed, vectorLength: begin.vectorLength, ringBits: begin.ringBits,
      variant: work.plan.secureAggregation.variant == .active ? .active : .semiHonest,
      identityKeys: identityKeys)
  }

  private mutating func prepareSecureAggregation(
    _ work: Work, _ begin: SecureAggregationBegin, _ trained: TrainingResult,
    identityKeys: [SecAggIndex: [UInt8]]
  ) -> [Action] {
    let encoding: SecureAggregationEncoding
    switch validated(work, begin, identityKeys: identityKeys) {
    case .failure(let refusal): return refuse(refusal.reason, refusal.detail)
    case .success(let e): encoding = e
    }
    let parameters = Self.parameters(work, begin, identityKeys: identityKeys)
    state = .drawingSecrets(work, parameters, SecAggIndex(begin.index), trained, encoding)
    return [.drawSecrets(signingKey: parameters.variant == .active)]
  }

  private mutating func wipeSecureAggregation() {
    secureAggregation = nil
    secureInput = []
  }

  private mutating func unexpected(_ message: ServerMessage, _ when: String) -> [Action] {
    refuse("malformed", "unexpected \(message.kindName) \(when)")
  }

  private mutating func refuse(_ reason: String, _ detail: String) -> [Action] {
    end(.refused(reason: reason, detail: detail))
  }

  private mutating func end(_ result: ParticipationResult) -> [Action] {
    buffer = []
    wipeSecureAggregation()
    state = .ended(result)
    return [.end(result)]
  }

  /// A duration from the server, made finite and at most `maximumRetryWait` (not a number: 0).
  private func bounded(_ seconds: Double) -> Double {
    guard seconds.isFinite, seconds > 0 else { return 0 }
    return min(seconds, configuration.maximumRetryWait)
  }
}

extension ServerMessage {
  /// The message's kind, for refusals.
  public var kindName: String {
    switch self {
    case .retry: "retry"
    case .admitted: "admission"
    case .task: "task"
    case .checkpointChunk: "checkpoint chunk"
    case .serverControlChunk: "server control chunk"
    case .secureAggregationBegin: "secure-aggregation begin"
    case .secureAggregation: "secure-aggregation message"
    case .acknowledgement: "acknowledgement"
    }
  }
}
