import CohortCompression
import CohortCore
import CohortProtocol
import Foundation
import GRPCCore
import Logging
import Metrics

/// Limits the server enforces on what devices send, before spending memory on it.
public struct TransportLimits: Sendable, Hashable {
  /// The largest gRPC message, in bytes (gRPC refuses bigger ones before reading them).
  public var maxMessageBytes: Int
  /// The largest update a device may declare, in bytes.
  public var maxUpdateBytes: Int
  /// The largest checkpoint or update chunk, in bytes.
  public var maxChunkBytes: Int

  /// Limits for a model of `parameters` values: an update of at most its Float32 size or its
  /// encoded size (`encodedUpdateBytes`, when the plan compresses), whichever is larger, plus a
  /// little; chunks of 1 MiB, messages of 4 MiB. SCAFFOLD's Δc_k, when it follows the update, has
  /// its own limit: exactly one Float32 per parameter.
  public init(
    parameters: Int, encodedUpdateBytes: Int = 0, maxChunkBytes: Int = 1 << 20, maxMessageBytes: Int = 4 << 20
  ) {
    self.maxUpdateBytes = max(parameters * MemoryLayout<Float>.size, encodedUpdateBytes) + 4096
    self.maxChunkBytes = maxChunkBytes
    self.maxMessageBytes = maxMessageBytes
  }
}

/// The metrics the transport keeps on top of the Coordinator's.
struct TransportMetrics: Sendable {
  let connected: Meter
  let streams: Counter
  let bytesReceived: Counter
  let bytesSent: Counter
  let refused: @Sendable (String) -> Void

  init(factory: any MetricsFactory) {
    connected = Meter(label: "cohort_devices_connected", factory: factory)
    streams = Counter(label: "cohort_participations_total", factory: factory)
    bytesReceived = Counter(label: "cohort_bytes_received_total", factory: factory)
    bytesSent = Counter(label: "cohort_bytes_sent_total", factory: factory)
    // Refusals the transport makes itself (before a report reaches the Coordinator) go into
    // the same family as the Coordinator's, by reason.
    refused = { reason in
      Counter(label: "cohort_reports_rejected_total", dimensions: [("reason", reason)], factory: factory)
        .increment()
    }
  }
}

/// The `cohort.v1.Federation` service: one handler per participation stream, driving the
/// device through check-in, configuration, reporting and (under secure aggregation) the
/// protocol's steps, on top of the Coordinator and Selector actors.
struct FederationService: Cohort_V1_Federation.SimpleServiceProtocol {
  /// The server behind the wire: the protocol machines, reached only through this interface.
  let handler: any FederationHandler
  let secureAggregation: NetworkSecureAggregation?
  /// Active secure aggregation: what device certificates are checked against at check-in (the
  /// mutual-TLS client CA, or only their form without one); nil for other plans.
  let certificates: DeviceCertificateVerifier?
  let plan: Plan
  let planJSON: String
  /// The plan's update codec when updates travel encoded (compression without secure aggregation).
  let codec: UpdateCodec?
  /// The run seed the rounds' shared codec seeds come from.
  let runSeed: UInt64
  let limits: TransportLimits
  let clock: any RoundClock
  let metrics: TransportMetrics
  let logger: Logger
  /// How long an admitted device waits for its round's task before it is told to come back.
  let taskWait: Double
  /// Streams in progress, ended together at shutdown.
  let open = OpenParticipations()

  func participate(
    request: RPCAsyncSequence<Cohort_V1_DeviceMessage, any Error>,
    response: RPCWriter<Cohort_V1_ServerMessage>, context: ServerContext
  ) async throws {
    metrics.streams.increment()
    metrics.connected.increment()
    defer { metrics.connected.decrement() }
    var session = Participation(service: self, response: response)
    open.add(session.mailbox)
    defer { open.remove(session.mailbox) }
    do {
      try await session.run(request)
    } catch let refusal as ParticipationRefusal {
      // The Coordinator counts the reports it refuses itself; count only the transport's own.
      if !session.refusalCounted { metrics.refused(refusal.reason) }
      logger.debug(
        "participation refused",
        metadata: ["device": "\(session.device.map(String.init) ?? "?")", "reason": "\(refusal)"])
      await session.finish()
      throw refusal.rpcError
    } catch {
      await session.finish()
      throw error
    }
    await session.finish()
  }
}

/// One participation stream's state, from check-in to acknowledgement.
private struct Participation {
  let service: FederationService
  let response: RPCWriter<Cohort_V1_ServerMessage>
  let mailbox = DeviceMailbox()
  /// The one reader of the mailbox, kept for the whole participation.
  var events: AsyncStream<SessionEvent>.AsyncIterator
  var device: DeviceID?
  /// The round the device trains for, once it has its task.
  var round: Int?
  /// The round whose cohort the device was admitted to, while it waits for the task.
  var admittedRound: Int?
  var reported = false
  /// Whether the refusal ending this stream was already counted (by the Coordinator).
  var refusalCounted = false
  var connected = false
  var enrolledInSecureAggregation = false
  /// The certificate the device presented at check-in, once verified (active secure aggregation).
  var certificate: VerifiedDeviceCertificate?

  init(service: FederationService, response: RPCWriter<Cohort_V1_ServerMessage>) {
    self.service = service
    self.response = response
    events = mailbox.events.makeAsyncIterator()
  }

  func send(_ kind: Cohort_V1_ServerMessage.OneOf_Kind) async throws {
    var message = Cohort_V1_ServerMessage()
    message.protocolVersion = UInt32(protocolVersion)
    message.kind = kind
    service.metrics.bytesSent.increment(by: message.payloadBytes)
    try await response.write(message)
  }

  func refuse(_ rejection: Rejection, _ detail: String) -> ParticipationRefusal {
    ParticipationRefusal(rejection.rawValue, detail, code: rejection.statusCode)
  }

  /// A certificate that cannot vouch for the device's signing key: the device is not
  /// authenticated for this plan.
  func refuse(_ refusal: DeviceCertificateRefusal) -> ParticipationRefusal {
    ParticipationRefusal(refusal.reason.rawValue, refusal.detail, code: .unauthenticated)
  }

  /// Reads the next device message, checking its version; nil when the device closed the stream.
  func next(_ messages: inout RPCAsyncSequence<Cohort_V1_DeviceMessage, any Error>.AsyncIterator)
    async throws -> Cohort_V1_DeviceMessage?
  {
    guard let message = try await messages.next() else { return nil }
    service.metrics.bytesReceived.increment(by: message.payloadBytes)
    guard message.protocolVersion == UInt32(protocolVersion) else {
      throw refuse(
        .protocolVersion,
        "the device speaks protocol version \(message.protocolVersion), this server version \(protocolVersion); "
          + "run a device runtime of the same release as the server")
    }
    return message
  }

  mutating func run(_ request: RPCAsyncSequence<Cohort_V1_DeviceMessage, any Error>) async throws {
    var messages = request.makeAsyncIterator()
    guard let first = try await next(&messages) else { return }
    switch first.kind {
    case .checkIn(let checkIn):
      try await checkInAndConfigure(checkIn)
      guard let round else { return }
      guard let header = try await nextReportHeader(&messages, round: round) else { return }
      try await report(header, &messages)
    case .report(let header):
      // A device that trained but lost its connection uploads on a new stream. (Device 0 is
      // a valid number; a report that names no device is refused as not selected unless 0 was.)
      device = Int(header.device)
      try await report(header, &messages)
    default:
      throw refuse(.malformed, "a participation starts with a check-in or a report")
    }
  }

  mutating func checkInAndConfigure(_ checkIn: Cohort_V1_CheckIn) async throws {
    let id = Int(checkIn.device)
    device = id
    if let verifier = service.certificates {
      // Before the device takes a place in a cohort: the round's members must all hold keys
      // their peers can check.
      guard !checkIn.certificate.isEmpty else {
        throw refuse(
          DeviceCertificateRefusal(
            .missing, "the plan's active secure aggregation needs the device's certificate in the check-in"))
      }
      switch await verifier.verify(der: [UInt8](checkIn.certificate), device: id) {
      case .success(let verified): certificate = verified
      case .failure(let refusal): throw refuse(refusal)
      }
    }
    await service.handler.connect(id, link: mailbox)
    connected = true
    let reply = await service.handler.checkIn(
      CheckIn(device: id, population: checkIn.population, protocolVersion: protocolVersion))
    switch reply {
    case .retry(let window):
      try await sendRetry(window)
      return
    case .rejected(let reason):
      throw refuse(reason, "check-in for population \"\(checkIn.population)\" refused")
    case .waitForTask(let round):
      admittedRound = round
      try await send(.admitted(.with { $0.round = Int64(round) }))
    default:
      break
    }
    // The task comes through the Selector when the round starts (it may already be here).
    let timer = mailbox.startTimer(seconds: service.taskWait)
    var assignment: TaskAssignment?
    wait: while let event = await events.next() {
      switch event {
      case .task(let a):
        assignment = a
        break wait
      case .released(let window):
        mailbox.cancelTimer(timer)
        try await sendRetry(window)
        return
      case .timeout: break wait
      default: continue
      }
    }
    mailbox.cancelTimer(timer)
    guard let assignment else {
      // Not selected in time (the selection closed without it, or the round was abandoned).
      let wait = service.plan.server.windows.selection
      try await send(
        .retry(
          .with {
            $0.earliestSeconds = 0
            $0.latestSeconds = wait
          }))
      return
    }
    round = assignment.task.round
    let now = service.clock.now
    let checkpoint = assignment.checkpoint.values
    let control = assignment.serverControl?.values ?? []
    let follows = checkIn.cachedCheckpointSha256 != assignment.task.checkpointSHA256
    try await send(
      .task(
        .with {
          $0.round = Int64(assignment.task.round)
          $0.checkpointSha256 = assignment.task.checkpointSHA256
          $0.checkpointBytes = Int64(checkpoint.count * 4)
          $0.checkpointFollows = follows
          $0.reportingDeadlineSeconds = max(0, assignment.task.reportingDeadline - now)
          $0.evaluate = assignment.evaluate
          $0.clipNorm = assignment.clipNorm ?? 0
          $0.planJson = service.planJSON
          $0.maxUpdateBytes = Int64(service.limits.maxUpdateBytes)
          $0.maxChunkBytes = Int64(service.limits.maxChunkBytes)
          $0.codecSeed = UpdateCodec.sharedSeed(runSeed: service.runSeed, round: assignment.task.round)
          $0.serverControlBytes = Int64(control.count * 4)
        }))
    if follows {
      for chunk in chunks(Float32LittleEndian.bytes(checkpoint)) {
        try await send(.checkpointChunk(.with { $0.data = chunk }))
      }
    }
    // SCAFFOLD's c changes every round, so it always follows (a device cannot hold it already).
    for chunk in chunks(Float32LittleEndian.bytes(control)) {
      try await send(.serverControlChunk(.with { $0.data = chunk }))
    }
  }

  /// `bytes` cut into chunks of at most the server's chunk size.
  func chunks(_ bytes: [UInt8]) -> [Data] {
    stride(from: 0, to: bytes.count, by: service.limits.maxChunkBytes).map {
      Data(bytes[$0..<min(bytes.count, $0 + service.limits.maxChunkBytes)])
    }
  }

  /// Tells the device to come back within `window` (server time), as seconds from now.
  func sendRetry(_ window: ClosedRange<Double>) async throws {
    let now = service.clock.now
    try await send(
      .retry(
        .with {
          $0.earliestSeconds = max(0, window.lowerBound - now)
          $0.latestSeconds = max(0, window.upperBound - now)
        }))
  }

  /// Waits for the device's report; nil (and the device counted as dropped) if it gives up.
  mutating func nextReportHeader(
    _ messages: inout RPCAsyncSequence<Cohort_V1_DeviceMessage, any Error>.AsyncIterator, round: Int
  ) async throws -> Cohort_V1_ReportHeader? {
    guard let message = try await next(&messages) else { return nil }
    switch message.kind {
    case .report(let header): return header
    case .abandon(let abandon):
      service.logger.debug(
        "device abandoned its participation",
        metadata: ["device": "\(device ?? -1)", "round": "\(round)", "reason": "\(abandon.reason)"])
      return nil
    default:
      throw refuse(.malformed, "expected the report of round \(round), got another message")
    }
  }

  mutating func report(
    _ header: Cohort_V1_ReportHeader,
    _ messages: inout RPCAsyncSequence<Cohort_V1_DeviceMessage, any Error>.AsyncIterator
  ) async throws {
    guard let device else { return }
    let round = Int(header.round)
    let limits = service.limits
    let secure = service.secureAggregation != nil
    let layout = await service.handler.modelLayout
    let scaffold = service.plan.server.strategy.kind == .scaffold
    // Limits first: nothing is buffered for an upload the server would refuse anyway.
    guard header.updateBytes >= 0, header.updateBytes <= limits.maxUpdateBytes else {
      throw refuse(
        .tooLarge, "the update declares \(header.updateBytes) bytes; the limit is \(limits.maxUpdateBytes)")
    }
    // Δc_k is one Float32 per parameter, and only SCAFFOLD's reports carry it.
    let controlLimit = scaffold ? layout.count * 4 : 0
    guard header.controlDeltaBytes >= 0, header.controlDeltaBytes <= controlLimit else {
      throw refuse(
        .tooLarge, "Δc_k declares \(header.controlDeltaBytes) bytes; the limit is \(controlLimit)")
    }
    if scaffold, !secure, header.controlDeltaBytes == 0 {
      throw refuse(.malformed, "a SCAFFOLD report carries Δc_k after its update")
    }
    let declared = Int(header.updateBytes) + Int(header.controlDeltaBytes)
    var bytes: [UInt8] = []
    bytes.reserveCapacity(declared)
    while bytes.count < declared {
      guard let message = try await next(&messages) else { return }
      guard case .updateChunk(let chunk) = message.kind else {
        throw refuse(.integrity, "the update ended after \(bytes.count) of \(declared) bytes")
      }
      guard chunk.data.count <= limits.maxChunkBytes else {
        throw refuse(.tooLarge, "a chunk of \(chunk.data.count) bytes; the limit is \(limits.maxChunkBytes)")
      }
      guard bytes.count + chunk.data.count <= declared else {
        throw refuse(.tooLarge, "the chunks exceed the declared \(declared) bytes")
      }
      bytes.append(contentsOf: chunk.data)
    }
    if declared > 0 || !header.updateSha256.isEmpty {
      guard SHA256.hex(bytes) == header.updateSha256 else {
        throw refuse(.integrity, "the update's SHA-256 does not match the declared \(header.updateSha256)")
      }
    }
    let updateBytes = Array(bytes[..<Int(header.updateBytes)])
    let (values, encoded) = try readUpdate(
      updateBytes, encoding: header.encoding, round: round, device: device)
    guard let controlValues = Float32LittleEndian.values(Array(bytes[Int(header.updateBytes)...])) else {
      throw refuse(
        .malformed, "Δc_k has \(header.controlDeltaBytes) bytes, not a whole number of Float32 values")
    }
    // A wrong length keeps its own layout, so the Coordinator refuses it as malformed.
    func weights(_ values: [Float], _ name: String) -> Weights {
      Weights(
        layout: values.count == layout.count ? layout : WeightsLayout([.init(name, [values.count])]),
        values: values)
    }
    let update =
      secure && values.isEmpty ? Weights(layout: WeightsLayout([]), values: []) : weights(values, "update")
    let evaluation =
      header.evaluated
      ? Evaluation(
        loss: header.evaluationLoss, accuracy: header.evaluationAccuracy,
        examples: Int(header.evaluationExamples))
      : nil
    let report = UpdateReport(
      device: device, round: round, update: update, examples: Int(header.examples),
      trainLoss: header.trainLoss,
      bytes: bytes.count, evaluation: evaluation,
      lossAtGlobal: header.reportsLossAtGlobal ? header.lossAtGlobal : nil,
      controlDelta: header.controlDeltaBytes > 0 ? weights(controlValues, "control_delta") : nil,
      withinClip: service.plan.privacy.adaptiveClipping != nil ? header.withinClip : nil, encoded: encoded)
    if secure, service.certificates != nil, certificate == nil {
      // A report on a stream without a check-in brings no certificate; the protocol cannot
      // resume on a new stream anyway.
      throw refuse(
        DeviceCertificateRefusal(
          .missing,
          "active secure aggregation runs on the stream of the check-in that carried the certificate"))
    }
    if secure {
      // Enrol before the report counts: the report that meets the goal closes the round, and
      // the protocol then starts at once with every enrolled device.
      await service.secureAggregation?.enrol(
        round: round, device: device, examples: report.examples, mailbox: mailbox, certificate: certificate)
      enrolledInSecureAggregation = true
    }
    reported = true
    if secure {
      // The report that meets the goal closes the round inside the Coordinator, which then
      // runs the protocol: this stream must keep relaying meanwhile, so the answer comes back
      // through the mailbox.
      let handler = service.handler
      let mailbox = self.mailbox
      Task { mailbox.post(.reportAnswered(await handler.report(report))) }
      try await secureAggregation(round: round, &messages, report: report, layoutCount: layout.count)
      return
    }
    let reply = await service.handler.report(report)
    switch reply {
    case .accepted:
      try await send(
        .acknowledgement(
          .with {
            $0.round = Int64(round)
            $0.accepted = true
          }))
    case .rejected(let reason):
      if secure { await service.secureAggregation?.leave(round: round, device: device) }
      enrolledInSecureAggregation = false
      // The report does not count: a selected device whose stream ends now is dropped, so
      // the round does not wait for its deadline (the device may still report on a new stream).
      reported = false
      refusalCounted = true
      throw refuse(
        reason,
        detail(
          reason, round: round, values: values.count, controls: report.controlDelta?.count,
          expected: layout.count))
    default:
      break
    }
  }

  /// The update from its bytes: Float32 values, or the plan's encoding read (not decoded: the
  /// server decodes it) with the seed the server derives itself. Anything that does not fit the
  /// plan is malformed.
  func readUpdate(_ bytes: [UInt8], encoding: Cohort_V1_UpdateEncoding, round: Int, device: DeviceID) throws
    -> (values: [Float], encoded: EncodedUpdate?)
  {
    guard let codec = service.codec else {
      guard encoding == .float32 else {
        throw refuse(
          .malformed, "the update is encoded as \(encoding); this plan's updates travel as float32")
      }
      guard let values = Float32LittleEndian.values(bytes) else {
        throw refuse(.malformed, "the update has \(bytes.count) bytes, not a whole number of Float32 values")
      }
      return (values, nil)
    }
    guard let kind = EncodedUpdate.WireKind(rawValue: encoding.rawValue) else {
      throw refuse(.malformed, "the update's encoding \(encoding.rawValue) is unknown")
    }
    let seed = UpdateCodec.deviceSeed(
      shared: UpdateCodec.sharedSeed(runSeed: service.runSeed, round: round), round: round, device: device)
    do {
      return ([], try codec.update(fromWire: bytes, kind: kind, seed: seed))
    } catch {
      throw refuse(.malformed, error.message)
    }
  }

  func detail(_ reason: Rejection, round: Int, values: Int, controls: Int? = nil, expected: Int) -> String {
    switch reason {
    case .malformed where controls.map { $0 != expected } ?? false:
      "Δc_k has \(controls ?? 0) values, the model \(expected)"
    case .malformed:
      values != expected && !(service.secureAggregation != nil && values == 0)
        ? "the update has \(values) values, the model \(expected)"
        : "the update has a NaN or infinite value, no examples or a non-finite loss"
    case .late: "round \(round) closed before the report arrived"
    case .duplicate: "this device already reported in round \(round)"
    case .notSelected: "this device was not selected for round \(round)"
    case .unknownRound: "round \(round) is not running"
    default: "the report for round \(round) was refused"
    }
  }

  /// Relays the secure-aggregation protocol between the driver and the device.
  mutating func secureAggregation(
    round: Int, _ messages: inout RPCAsyncSequence<Cohort_V1_DeviceMessage, any Error>.AsyncIterator,
    report: UpdateReport, layoutCount: Int
  ) async throws {
    guard let driver = service.secureAggregation, let device else { return }
    while let event = await events.next() {
      switch event {
      case .reportAnswered(.rejected(let reason)):
        await driver.leave(round: round, device: device)
        enrolledInSecureAggregation = false
        reported = false
        refusalCounted = true
        throw refuse(reason, detail(reason, round: round, values: report.update.count, expected: layoutCount))
      case .reportAnswered:
        continue
      case .secAggBegin(let begin):
        try await response.write(ServerMessage.secureAggregationBegin(begin).wire)
      case .secAggRequest(let bytes):
        try await send(.secagg(.with { $0.message = Data(bytes) }))
      case .secAggFinished(let accepted, let reason):
        enrolledInSecureAggregation = false
        try await send(
          .acknowledgement(
            .with {
              $0.round = Int64(round)
              $0.accepted = accepted
              $0.reason = reason
            }))
        return
      case .task, .timeout, .released:
        continue
      }
      // Every server step expects one answer from the device.
      guard let message = try await next(&messages) else {
        await driver.leave(round: round, device: device)
        enrolledInSecureAggregation = false
        return
      }
      guard case .secagg(let answer) = message.kind else {
        await driver.leave(round: round, device: device)
        enrolledInSecureAggregation = false
        if case .abandon = message.kind { return }
        throw refuse(.malformed, "expected a secure-aggregation answer")
      }
      await driver.receive(round: round, device: device, bytes: [UInt8](answer.message))
    }
  }

  /// Disconnects the device; one that had its task and never reported counts as dropped.
  func finish() async {
    mailbox.close()
    guard let device else { return }
    if connected { await service.handler.disconnect(device) }
    if let round, !reported { await service.handler.dropped(device: device, round: round) }
    // A device that waited for a task and left takes no place in the cohort being gathered.
    if round == nil, let admittedRound {
      await service.handler.dropped(device: device, round: admittedRound)
    }
    if enrolledInSecureAggregation, let round {
      await service.secureAggregation?.leave(round: round, device: device)
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
