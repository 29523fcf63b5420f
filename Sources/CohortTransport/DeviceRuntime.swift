import CohortCompression
import CohortCore
import CohortDevice
public import CohortML
public import CohortProtocol
import CohortSecAgg
import Foundation
import GRPCCore
public import Logging

/// The examples a device trains and evaluates on.
public struct LocalExamples: Sendable {
  public var train: Dataset
  /// Only these examples of `train` (the simulator's devices share one dataset); nil for all.
  public var indices: [Int]?
  public var test: Dataset?

  public init(train: Dataset, indices: [Int]? = nil, test: Dataset? = nil) {
    self.train = train
    self.indices = indices
    self.test = test
  }
}

/// Settings of a device runtime. The device's own configuration, never the server's plan,
/// decides what runs here: the plan only parameterizes the built-in training.
public struct DeviceRuntimeConfiguration: Sendable {
  public var device: DeviceID
  public var population: String
  /// The root of the device's random streams (training order, encodings). A real device
  /// draws it once and keeps it; tests pass the simulator's seed to reproduce a simulation.
  public var seed: UInt64
  /// Back-off after failures: doubles from `initialBackoff` up to `maximumBackoff`, full jitter.
  public var initialBackoff: Double
  public var maximumBackoff: Double
  /// The largest checkpoint the device accepts, in bytes.
  public var maxCheckpointBytes: Int
  /// The device's certificate, signing key and CA for the active secure-aggregation variant
  /// (`--signing-key`); nil: the device cannot take part in that variant.
  public var identity: DeviceSigningIdentity?

  public init(
    device: DeviceID, population: String = "default", seed: UInt64, initialBackoff: Double = 1,
    maximumBackoff: Double = 300, maxCheckpointBytes: Int = 1 << 30, identity: DeviceSigningIdentity? = nil
  ) {
    self.identity = identity
    self.device = device
    self.population = population
    self.seed = seed
    self.initialBackoff = initialBackoff
    self.maximumBackoff = maximumBackoff
    self.maxCheckpointBytes = maxCheckpointBytes
  }
}

/// How one participation ended.
public enum ParticipationResult: Sendable, Equatable {
  /// The server did not need the device now: come back within this many seconds.
  case retry(earliest: Double, latest: Double)
  /// The device reported for `round`; `accepted` says whether its update counts.
  case finished(round: Int, accepted: Bool, reason: String)
  /// The server refused the participation (a gRPC status with a reason).
  case refused(reason: String, detail: String)
  /// The device gave up before reporting (not eligible, or the stream ended).
  case abandoned(String)
  /// Admitted to a round's cohort (only from `checkInOnly()`, which stops there).
  case admitted(round: Int)
}

/// The Linux client runtime: checks in, downloads the task and checkpoint, trains on local
/// examples with the same `LocalTraining` as the simulator, uploads the update (or takes part
/// in secure aggregation), and comes back when the server's pace steering says, backing off
/// with jitter after failures.
public actor DeviceRuntime {
  public let configuration: DeviceRuntimeConfiguration
  let connection: FederationConnection
  let examples: @Sendable () throws -> LocalExamples
  /// Nil when the device may work now; otherwise why not.
  let ineligibility: @Sendable () -> String?
  /// Called after every participation with its result and start and end times (seconds since 1970).
  let observe: @Sendable (ParticipationResult, Double, Double) -> Void
  let logger: Logger
  /// The last checkpoint received, so a task for the same model skips the download.
  private var cached: (sha256: String, values: [Float])?
  private var trainers: [String: LocalTraining] = [:]
  /// SCAFFOLD: this device's control variate c_k, kept from one participation to the next (nil
  /// until it first trains: then zeros).
  private var control: [Float]?
  private var session: DeviceSession
  private var random: RandomStream
  /// An upload the server has not acknowledged (the connection was lost during the report);
  /// the next participation sends it on a new stream while the round's deadline allows.
  private(set) var pendingUpload: PendingUpload?
  /// Completed participations by outcome, for callers' summaries.
  public private(set) var history: [ParticipationResult] = []
  /// Peers' certificates this device refused in secure-aggregation rounds, by reason.
  public private(set) var refusedCertificates: [DeviceCertificateRefusal.Reason: Int] = [:]

  public init(
    configuration: DeviceRuntimeConfiguration, connection: FederationConnection,
    examples: @escaping @Sendable () throws -> LocalExamples,
    ineligibility: @escaping @Sendable () -> String? = { nil },
    observe: @escaping @Sendable (ParticipationResult, Double, Double) -> Void = { _, _, _ in },
    logger: Logger
  ) {
    self.observe = observe
    self.configuration = configuration
    self.connection = connection
    self.examples = examples
    self.ineligibility = ineligibility
    self.logger = logger
    session = DeviceSession(
      configuration: .init(
        device: configuration.device, population: configuration.population,
        initialBackoff: configuration.initialBackoff, maximumBackoff: configuration.maximumBackoff))
    random = RandomStream(seed: configuration.seed, purpose: "device-runtime", device: configuration.device)
  }

  /// Participates until `participations` reports have been acknowledged (nil: forever) or the
  /// task is cancelled, sleeping between attempts as the server and the back-off say.
  public func run(participations: Int? = nil) async {
    var reported = 0
    while !Task.isCancelled {
      if let participations, reported >= participations { return }
      let now = Date().timeIntervalSince1970
      if let reason = ineligibility() {
        logger.info("not eligible", metadata: ["reason": "\(reason)"])
        await sleep(window: session.connectionLost(now: now).sleepWindow ?? now...(now + 60))
        continue
      }
      _ = session.wake(now: now)
      let outcome = await participate()
      history.append(outcome)
      let after = Date().timeIntervalSince1970
      observe(outcome, now, after)
      switch outcome {
      case .retry(let earliest, let latest):
        let actions = session.received(.retry(window: (after + earliest)...(after + latest)), now: after)
        await sleep(window: actions.sleepWindow ?? after...after)
      case .finished(let round, let accepted, let reason):
        reported += 1
        logger.info(
          "participation finished",
          metadata: ["round": "\(round)", "accepted": "\(accepted)", "reason": "\(reason)"])
        // Back to idle; the next check-in learns from pace steering when to come back.
        _ = session.connectionLost(now: after)
        session = DeviceSession(configuration: session.configuration)
      case .refused(let reason, let detail):
        logger.notice("participation refused", metadata: ["reason": "\(reason)", "detail": "\(detail)"])
        await sleep(window: session.connectionLost(now: after).sleepWindow ?? after...(after + 1))
      case .admitted:
        continue
      case .abandoned(let why):
        logger.info("participation abandoned", metadata: ["reason": "\(why)"])
        await sleep(window: session.connectionLost(now: after).sleepWindow ?? after...(after + 1))
      }
    }
  }

  private func sleep(window: ClosedRange<Double>) async {
    let now = Date().timeIntervalSince1970
    let at = window.lowerBound + random.uniform() * (window.upperBound - window.lowerBound)
    if at > now { try? await Task.sleep(for: .seconds(at - now)) }
  }

  /// How far a participation goes.
  enum Extent: Sendable {
    case full
    /// End the stream at the server's first answer.
    case checkIn
    /// After being admitted, keep the stream open (idle) until the task is cancelled.
    case hold(@Sendable () -> Void)
  }

  /// Checks in and ends the stream at the server's first answer (connectivity checks, `cohort load`).
  public func checkInOnly() async -> ParticipationResult {
    await participate(extent: .checkIn)
  }

  /// Checks in and, once admitted, holds the stream open and idle until the calling task is
  /// cancelled; `onAdmitted` is called when the server admits the device (`cohort load`).
  public func holdSession(onAdmitted: @escaping @Sendable () -> Void) async -> ParticipationResult {
    await participate(extent: .hold(onAdmitted))
  }

  /// One participation over one stream, from check-in to acknowledgement.
  public func participate() async -> ParticipationResult {
    await participate(extent: .full)
  }

  func participate(extent: Extent) async -> ParticipationResult {
    var resume: PendingUpload?
    if case .full = extent, let pending = pendingUpload {
      if Date().timeIntervalSince1970 < pending.deadline { resume = pending } else { pendingUpload = nil }
    }
    do {
      let checkIn = Cohort_V1_CheckIn.with {
        $0.device = Int64(configuration.device)
        $0.population = configuration.population
        $0.runtimeVersion = "cohort-\(protocolVersion)"
        $0.cachedCheckpointSha256 = cached?.sha256 ?? ""
        if let identity = configuration.identity { $0.certificate = Data(identity.certificate.der) }
      }
      let work = Conversation(runtime: self, extent: extent)
      return try await work.run(checkIn: checkIn, resume: resume)
    } catch let error as RPCError {
      if let refusal = ParticipationRefusal(error) {
        // A refusal is the server's last word on any upload it was sent.
        pendingUpload = nil
        return .refused(reason: refusal.reason, detail: refusal.detail)
      }
      return .abandoned("connection: \(error.code): \(error.message)")
    } catch let error as ParticipationRefusal {
      return .refused(reason: error.reason, detail: error.detail)
    } catch {
      return .abandoned("\(error)")
    }
  }

  func remember(checkpoint sha256: String, values: [Float]) { cached = (sha256, values) }
  func refused(_ certificate: DeviceCertificateRefusal) {
    refusedCertificates[certificate.reason, default: 0] += 1
  }
  /// c_k for a model of `count` values (zeros before the first SCAFFOLD training).
  func control(count: Int) -> [Float] {
    control.flatMap { $0.count == count ? $0 : nil } ?? [Float](repeating: 0, count: count)
  }
  func keepControl(_ values: [Float]) { control = values }
  func setPendingUpload(_ upload: PendingUpload?) { pendingUpload = upload }
  func cachedCheckpoint(_ sha256: String) -> [Float]? { cached?.sha256 == sha256 ? cached?.values : nil }

  func trainer(planJSON: String) throws -> LocalTraining {
    if let t = trainers[planJSON] { return t }
    let plan: Plan
    do {
      plan = try JSONDecoder().decode(Plan.self, from: Data(planJSON.utf8))
    } catch {
      throw ParticipationRefusal("malformed", "the task's plan cannot be read: \(error)")
    }
    let t = try LocalTraining(plan: plan)
    trainers = [planJSON: t]
    return t
  }
}

extension [DeviceSession.Action] {
  var sleepWindow: ClosedRange<Double>? {
    for action in self { if case .sleep(let window) = action { return window } }
    return nil
  }
}

/// The device's half of one participation stream.
private struct Conversation: Sendable {
  let runtime: DeviceRuntime
  let extent: DeviceRuntime.Extent

  func run(checkIn: Cohort_V1_CheckIn, resume: PendingUpload?) async throws -> ParticipationResult {
    let (outgoing, sink) = AsyncStream.makeStream(of: Cohort_V1_DeviceMessage.self)
    @Sendable func send(_ kind: Cohort_V1_DeviceMessage.OneOf_Kind) {
      var m = Cohort_V1_DeviceMessage()
      m.protocolVersion = UInt32(protocolVersion)
      m.kind = kind
      sink.yield(m)
    }
    let runtime = self.runtime
    let extent = self.extent
    // Fail fast when the server cannot be reached (or refuses the handshake): the runtime backs
    // off and tries again instead of the call waiting for a connection forever.
    var options = CallOptions.defaults
    options.waitForReady = false
    return try await runtime.connection.federation.participate(
      options: options,
      requestProducer: { writer in
        for await message in outgoing { try await writer.write(message) }
      },
      onResponse: { response in
        defer { sink.finish() }
        var messages = response.messages.makeAsyncIterator()
        if let resume {
          // Resume a report whose stream was lost: the same header and bytes on a new stream.
          resume.send(through: send)
          guard case .acknowledgement(let ack) = try await messages.next()?.kind else {
            return .abandoned("the server ended the stream before acknowledging the resumed upload")
          }
          await runtime.setPendingUpload(nil)
          return .finished(round: Int(ack.round), accepted: ack.accepted, reason: ack.reason)
        }
        send(.checkIn(checkIn))
        return try await Self.converse(
          runtime: runtime, messages: &messages, extent: extent, send: send)
      })
  }

  static func converse(
    runtime: DeviceRuntime,
    messages: inout RPCAsyncSequence<Cohort_V1_ServerMessage, any Error>.AsyncIterator,
    extent: DeviceRuntime.Extent, send: (Cohort_V1_DeviceMessage.OneOf_Kind) -> Void
  ) async throws -> ParticipationResult {
    let configuration = runtime.configuration
    func next() async throws -> Cohort_V1_ServerMessage.OneOf_Kind? {
      guard let m = try await messages.next() else { return nil }
      guard m.protocolVersion == UInt32(protocolVersion) else {
        throw ParticipationRefusal(
          "protocol_version",
          "the server speaks protocol version \(m.protocolVersion), this device \(protocolVersion)")
      }
      return m.kind
    }
    // Check-in: come back later, wait for the round, or the task at once.
    var task: Cohort_V1_Task?
    while task == nil {
      switch try await next() {
      case .retry(let r): return .retry(earliest: r.earliestSeconds, latest: r.latestSeconds)
      case .admitted(let a):
        switch extent {
        case .full: continue
        case .checkIn: return .admitted(round: Int(a.round))
        case .hold(let onAdmitted):
          onAdmitted()
          // Idle until cancelled (or until the server sends the task or ends the stream).
          while (try? await messages.next()) != nil, !Task.isCancelled {}
          return .admitted(round: Int(a.round))
        }
      case .task(let t):
        if case .full = extent { task = t } else { return .admitted(round: Int(t.round)) }
      case nil: return .abandoned("the server ended the stream before a task")
      default: throw ParticipationRefusal("malformed", "unexpected message before the task")
      }
    }
    let t = task!
    let round = Int(t.round)
    // The checkpoint: from chunks, or the copy the device holds.
    var values: [Float]
    if t.checkpointFollows {
      guard t.checkpointBytes >= 0, t.checkpointBytes <= configuration.maxCheckpointBytes else {
        throw ParticipationRefusal("too_large", "the checkpoint declares \(t.checkpointBytes) bytes")
      }
      var bytes: [UInt8] = []
      bytes.reserveCapacity(Int(t.checkpointBytes))
      while bytes.count < Int(t.checkpointBytes) {
        guard case .checkpointChunk(let c) = try await next() else {
          return .abandoned("the checkpoint ended after \(bytes.count) of \(t.checkpointBytes) bytes")
        }
        bytes.append(contentsOf: c.data)
      }
      guard SHA256.hex(bytes) == t.checkpointSha256, let decoded = Float32LittleEndian.values(bytes) else {
        throw ParticipationRefusal("integrity", "the checkpoint does not match its SHA-256")
      }
      values = decoded
      await runtime.remember(checkpoint: t.checkpointSha256, values: values)
    } else {
      guard let held = await runtime.cachedCheckpoint(t.checkpointSha256) else {
        return .abandoned("the server sent no checkpoint and the device does not hold it")
      }
      values = held
    }
    let training = try await runtime.trainer(planJSON: t.planJson)
    let layout = training.layout
    guard layout.count == values.count else {
      throw ParticipationRefusal(
        "malformed", "the checkpoint has \(values.count) values, the plan's model \(layout.count)")
    }
    // SCAFFOLD's server control variate follows the checkpoint: one Float32 per parameter.
    let scaffold = training.plan.server.strategy.kind == .scaffold
    guard t.serverControlBytes == (scaffold ? Int64(layout.count * 4) : 0) else {
      throw ParticipationRefusal(
        "malformed",
        "the task declares \(t.serverControlBytes) bytes of server control variate for a model of "
          + "\(layout.count) values")
    }
    var controlBytes: [UInt8] = []
    controlBytes.reserveCapacity(Int(t.serverControlBytes))
    while controlBytes.count < Int(t.serverControlBytes) {
      guard case .serverControlChunk(let c) = try await next() else {
        return .abandoned(
          "the server control variate ended after \(controlBytes.count) of \(t.serverControlBytes) bytes")
      }
      guard controlBytes.count + c.data.count <= Int(t.serverControlBytes) else {
        throw ParticipationRefusal("too_large", "the server control variate exceeds its declared size")
      }
      controlBytes.append(contentsOf: c.data)
    }
    var controls: ControlVariates?
    if scaffold, let server = Float32LittleEndian.values(controlBytes) {
      controls = ControlVariates(
        server: Weights(layout: layout, values: server),
        device: Weights(layout: layout, values: await runtime.control(count: layout.count)))
    }
    if let reason = runtime.ineligibility() {
      send(
        .abandon(
          .with {
            $0.round = Int64(round)
            $0.reason = reason
          }))
      return .abandoned(reason)
    }
    let local = try runtime.examples()
    let outcome = training.run(
      .init(
        device: configuration.device, round: round, start: Weights(layout: layout, values: values),
        evaluate: t.evaluate, controls: controls, clip: t.clipNorm > 0 ? t.clipNorm : nil,
        codecSeed: t.codecSeed),
      train: local.train, indices: local.indices, test: local.test, seed: configuration.seed)
    // SCAFFOLD: the device keeps c_k⁺ once it has trained, as the simulator's devices do.
    if let c = outcome.control { await runtime.keepControl(c.values) }
    let secure = training.plan.secureAggregation.enabled
    // The update in the plan's encoding (the same bytes the simulator counts), then Δc_k.
    let update = secure ? [] : outcome.encoded?.wireForm ?? Float32LittleEndian.bytes(outcome.update.values)
    let delta = outcome.controlDelta.map { Float32LittleEndian.bytes($0.values) } ?? []
    let payload = update + delta
    let header = Cohort_V1_ReportHeader.with {
      $0.device = Int64(configuration.device)
      $0.round = Int64(round)
      $0.examples = Int64(outcome.examples)
      $0.trainLoss = outcome.loss
      $0.updateBytes = Int64(update.count)
      $0.controlDeltaBytes = Int64(delta.count)
      if !secure, let kind = outcome.encoded?.wireKind {
        $0.encoding = Cohort_V1_UpdateEncoding(rawValue: kind.rawValue) ?? .float32
      }
      $0.updateSha256 = payload.isEmpty ? "" : SHA256.hex(payload)
      if let e = outcome.evaluation {
        $0.evaluated = true
        $0.evaluationLoss = e.loss
        $0.evaluationAccuracy = e.accuracy
        $0.evaluationExamples = Int64(e.examples)
      }
      $0.withinClip = outcome.withinClip ?? false
      if let l = outcome.lossAtGlobal {
        $0.reportsLossAtGlobal = true
        $0.lossAtGlobal = l
      }
    }
    let upload = PendingUpload(
      header: header, payload: payload, chunk: max(1, Int(t.maxChunkBytes)),
      deadline: Date().timeIntervalSince1970 + t.reportingDeadlineSeconds)
    // Kept until acknowledged, so a lost connection does not lose the round's work (secure
    // aggregation cannot resume: its protocol runs on this stream).
    if !secure { await runtime.setPendingUpload(upload) }
    upload.send(through: send)
    var protocolDevice: SecAggDevice?
    var input: [UInt32] = []
    while true {
      switch try await next() {
      case .acknowledgement(let ack):
        await runtime.setPendingUpload(nil)
        return .finished(round: Int(ack.round), accepted: ack.accepted, reason: ack.reason)
      case .secaggBegin(let b) where secure:
        let encoding: SecureAggregationEncoding
        switch SecureAggregationEncoding.make(
          plan: training.plan, round: round, dimension: values.count, rotationSeed: b.sharedSeed)
        {
        case .success(let e): encoding = e
        case .failure(let e): throw ParticipationRefusal("malformed", e.message)
        }
        // Active variant: the members' signing keys come from the certificates the server relays,
        // each checked against this device's own CA, never from the server's word.
        let active = training.plan.secureAggregation.variant == .active
        var identityKeys: [SecAggIndex: [UInt8]] = [:]
        if active {
          guard let identity = configuration.identity else {
            let reason =
              "the plan's active secure aggregation needs this device's signing key (--signing-key)"
            send(
              .abandon(
                .with {
                  $0.round = Int64(round)
                  $0.reason = reason
                }))
            return .abandoned(reason)
          }
          let peers = b.peers.map { (index: Int($0.index), der: [UInt8]($0.certificate)) }
          switch await identity.identityKeys(peers: peers, count: Int(b.count), ownIndex: Int(b.index)) {
          case .success(let keys): identityKeys = keys
          case .failure(let refusal):
            // The device signs nothing for a round whose keys it cannot check: it leaves, and
            // the server sees a dropout.
            await runtime.refused(refusal)
            send(
              .abandon(
                .with {
                  $0.round = Int64(round)
                  $0.reason = refusal.description
                }))
            return .abandoned("secure aggregation: \(refusal)")
          }
        }
        let parameters = SecAggConfiguration(
          round: UInt64(b.round), count: Int(b.count), degree: Int(b.degree), threshold: Int(b.threshold),
          graphSeed: [UInt8](b.graphSeed), vectorLength: Int(b.vectorLength), ringBits: Int(b.ringBits),
          variant: active ? .active : .semiHonest, identityKeys: identityKeys)
        guard parameters.vectorLength == encoding.vectorLength, parameters.ringBits == encoding.ringBits
        else {
          throw ParticipationRefusal("malformed", "the secure-aggregation parameters do not match the plan")
        }
        var random = RandomStream(
          seed: configuration.seed, purpose: encoding.streamPurpose, round: round,
          device: configuration.device)
        input = encoding.encode(outcome.update.values, examples: outcome.examples, random: &random)
        var secret = SecAggCrypto.randomSeed()
        // The device's copy of the signing key; the protocol machine wipes its own when done.
        var signingKey = active ? configuration.identity?.secretKey() ?? [] : []
        var device = SecAggDevice(
          configuration: parameters, index: SecAggIndex(b.index), seed: secret, identitySecretKey: signingKey)
        SecAggCrypto.zero(&secret)
        SecAggCrypto.zero(&signingKey)
        let keys = try device.advertiseKeys()
        protocolDevice = device
        send(.secagg(.with { $0.message = Data(SecAggMessage.advertiseKeys(keys).encoded) }))
      case .secagg(let request) where protocolDevice != nil:
        let message = try SecAggMessage(decoding: [UInt8](request.message))
        let reply = try protocolDevice!.handle(message, input: input)
        if case .maskedInput = reply { input = [] }
        send(.secagg(.with { $0.message = Data(reply.encoded) }))
      case nil:
        return .abandoned("the server ended the stream before acknowledging round \(round)")
      default:
        throw ParticipationRefusal("malformed", "unexpected message while reporting round \(round)")
      }
    }
  }
}

/// A report and its update bytes, as sent (and as resent after a lost connection).
struct PendingUpload: Sendable {
  var header: Cohort_V1_ReportHeader
  var payload: [UInt8]
  var chunk: Int
  /// When the round's report would be late (seconds since 1970).
  var deadline: Double

  func send(through send: (Cohort_V1_DeviceMessage.OneOf_Kind) -> Void) {
    send(.report(header))
    var start = 0
    while start < payload.count {
      let end = min(payload.count, start + chunk)
      send(.updateChunk(.with { $0.data = Data(payload[start..<end]) }))
      start = end
    }
  }
}
