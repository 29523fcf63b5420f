public import CohortCompression
public import CohortCore

/// Limits the server enforces on what devices upload, before spending memory on it.
public struct ParticipationLimits: Sendable, Hashable {
  /// The largest update a device may declare, in bytes.
  public var maxUpdateBytes: Int
  /// The largest checkpoint or update chunk, in bytes.
  public var maxChunkBytes: Int

  public init(maxUpdateBytes: Int, maxChunkBytes: Int) {
    self.maxUpdateBytes = maxUpdateBytes
    self.maxChunkBytes = maxChunkBytes
  }

  /// Limits for a model of `parameters` values: an update of at most its Float32 size or its
  /// encoded size (`encodedUpdateBytes`, when the plan compresses), whichever is larger, plus a
  /// little; chunks of 1 MiB. SCAFFOLD's Δc_k, when it follows the update, has its own limit:
  /// exactly one Float32 per parameter.
  public init(parameters: Int, encodedUpdateBytes: Int = 0, maxChunkBytes: Int = 1 << 20) {
    self.maxUpdateBytes = max(parameters * MemoryLayout<Float>.size, encodedUpdateBytes) + 4096
    self.maxChunkBytes = maxChunkBytes
  }
}

/// The server's side of one participation stream, as a pure state machine: device messages,
/// the handler's answers and the server's events (task, release, timer, secure aggregation) go
/// in with the time; what to send, ask, record and when to end come out. The network service is
/// a pump around it.
///
/// A participation starts with a check-in (certificate check under active secure aggregation,
/// then the handler's answer: retry, refusal, or wait for the task, which is sent with the
/// checkpoint and SCAFFOLD's c), or with a report (a device resuming an upload on a new stream).
/// The report's upload is checked against the limits, its size and SHA-256, read (Float32 or the
/// plan's encoding) and handed to the handler; under secure aggregation the stream then relays
/// the protocol until the driver says whether the device's input is in the sum.
public struct ServerParticipation: Sendable {
  public struct Configuration: Sendable {
    /// Whether secure aggregation carries the updates (reports then carry none).
    public var secureAggregation: Bool
    /// The active variant: a device must present a certificate at check-in.
    public var requiresCertificate: Bool
    /// SCAFFOLD: every plain report carries Δc_k after its update.
    public var scaffold: Bool
    /// Adaptive clipping: reports say whether their update was within the clip.
    public var adaptiveClipping: Bool
    /// The plan's update codec when updates travel encoded; nil when they travel as Float32.
    public var codec: UpdateCodec?
    /// The run seed the rounds' shared codec seeds come from.
    public var runSeed: UInt64
    /// The model's layout, which every plain update (and Δc_k) must match.
    public var layout: WeightsLayout
    public var limits: ParticipationLimits
    /// How long an admitted device waits for its round's task before it is told to come back.
    public var taskWait: Double
    /// The selection window: a device not selected in time comes back within it.
    public var selectionWindow: Double
    /// The plan as JSON, sent with the task.
    public var planJSON: String
    /// Under mutual TLS, the device number the connection's certificate names: the stream may
    /// speak for that device only. Nil without a client certificate (identity is then the
    /// number the device claims; see the README).
    public var certifiedDevice: DeviceID?

    public init(
      secureAggregation: Bool = false, requiresCertificate: Bool = false, scaffold: Bool = false,
      adaptiveClipping: Bool = false, codec: UpdateCodec? = nil, runSeed: UInt64 = 0,
      layout: WeightsLayout, limits: ParticipationLimits, taskWait: Double, selectionWindow: Double,
      planJSON: String
    ) {
      self.secureAggregation = secureAggregation
      self.requiresCertificate = requiresCertificate
      self.scaffold = scaffold
      self.adaptiveClipping = adaptiveClipping
      self.codec = codec
      self.runSeed = runSeed
      self.layout = layout
      self.limits = limits
      self.taskWait = taskWait
      self.selectionWindow = selectionWindow
      self.planJSON = planJSON
    }
  }

  /// Why the server ends a participation.
  public struct Refusal: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Reason: Sendable, Hashable {
      case rejected(Rejection)
      /// The device's certificate cannot vouch for its signing key (active secure aggregation),
      /// under the certificate refusal's reason, e.g. `certificate_missing`.
      case unauthenticated(String)
    }

    public var reason: Reason
    /// What went wrong and, where it helps, what to do.
    public var detail: String
    /// The Coordinator refused (and counted) it itself; the driver counts the others.
    public var counted: Bool

    public init(_ reason: Reason, _ detail: String, counted: Bool = false) {
      self.reason = reason
      self.detail = detail
      self.counted = counted
    }

    /// The reason as counted and sent (`late`, `too_large`, `certificate_missing`, …).
    public var name: String {
      switch reason {
      case .rejected(let rejection): rejection.rawValue
      case .unauthenticated(let reason): reason
      }
    }

    public var description: String { "\(name): \(detail)" }
  }

  /// The certificate refusal reason for a check-in or report without a certificate (the
  /// transport's `DeviceCertificateRefusal.Reason.missing`).
  public static let certificateMissing = "certificate_missing"

  /// An upload being received.
  public struct Upload: Sendable, Hashable {
    public var device: DeviceID
    public var header: ReportHeader
    public var bytes: [UInt8]

    /// The update's and Δc_k's bytes together.
    var declared: Int { header.updateBytes + header.controlDeltaBytes }
  }

  /// A report handed to the handler, with what a refusal's detail needs.
  public struct Submitted: Sendable, Hashable {
    public var device: DeviceID
    public var round: Int
    /// Values of the update and of Δc_k (nil without it).
    public var values: Int
    public var controls: Int?
  }

  public enum State: Sendable, Hashable {
    /// Nothing received yet.
    case started
    /// A check-in whose certificate is being verified (active secure aggregation).
    case verifyingCertificate(CheckInRequest)
    /// A check-in the handler is answering.
    case checkingIn(CheckInRequest)
    /// Waiting for the round's task (admitted, or told nothing yet), until the timer runs out.
    case waitingForTask(CheckInRequest)
    /// The task was sent; the report comes next.
    case awaitingReport(device: DeviceID, round: Int)
    /// Receiving a report's update.
    case uploading(Upload)
    /// The report is with the handler.
    case reporting(Submitted)
    /// Secure aggregation: relaying between the driver and the device; `awaitingAnswer` while
    /// the device owes an answer to the last message sent.
    case relaying(Submitted, awaitingAnswer: Bool)
    /// The stream ends, refused or not.
    case ended(Refusal?)
  }

  /// What the driver feeds the machine next.
  public enum Awaiting: Sendable, Hashable {
    /// The device's next message (or the stream's end).
    case deviceMessage
    /// The server's next event (task, release, timer, secure aggregation, report answer).
    case serverEvent
    /// The answer to an action just emitted (certificate, check-in, report).
    case answer
    /// Nothing: the participation is over.
    case nothing
  }

  public enum Event: Sendable {
    /// A device message in `version` of the protocol; nil when it carries no message.
    case received(DeviceMessage?, version: Int)
    /// The device closed the stream, or it broke.
    case streamEnded
    case certificateAccepted
    case certificateRefused(reason: String, detail: String)
    case checkInAnswered(ServerReply)
    case task(TaskAssignment)
    /// No task will come: come back within `window` (server time).
    case released(window: ClosedRange<Double>)
    case taskWaitExpired
    /// The server is shutting down (or the stream's task was cancelled).
    case shutdown
    case reportAnswered(ServerReply)
    case secureAggregationBegin(SecureAggregationBegin)
    case secureAggregationRequest([UInt8])
    /// Secure aggregation is over for this device; `accepted` says whether its input is in the sum.
    case secureAggregationFinished(accepted: Bool, reason: String)
  }

  public enum Action: Sendable {
    case send(ServerMessage)
    /// Verify the certificate (DER) for `device`; answer `certificateAccepted` or `certificateRefused`.
    case verifyCertificate(der: [UInt8], device: DeviceID)
    /// The device's stream is open: the server's messages for it go down this stream.
    case connect(DeviceID)
    /// Ask the handler; answer `checkInAnswered`.
    case checkIn(CheckIn)
    case startTaskWaitTimer(seconds: Double)
    case cancelTaskWaitTimer
    /// Hand the report to the handler and answer `reportAnswered`.
    case submit(UpdateReport)
    /// Hand the report to the handler without waiting: the report that meets the goal closes
    /// the round and starts secure aggregation, which this stream must relay meanwhile; the
    /// answer comes back as a server event (`reportAnswered`).
    case submitWhileRelaying(UpdateReport)
    /// Secure aggregation: the device takes part in `round` with this weight.
    case enrol(round: Int, device: DeviceID, examples: Int)
    /// Secure aggregation: the device's answer to the driver.
    case relay(round: Int, device: DeviceID, message: [UInt8])
    /// Secure aggregation: the device is out.
    case leave(round: Int, device: DeviceID)
    case disconnect(DeviceID)
    /// A device of `round` left before it reported. `hadTask`: it left with its task; otherwise
    /// it left the cohort being gathered, which a newer stream of the same device (it
    /// reconnected) still stands for, so the driver drops it only if this stream was its last.
    case dropped(device: DeviceID, round: Int, hadTask: Bool)
    /// End the stream: cleanly (nil) or refused.
    case end(Refusal?)
  }

  public let configuration: Configuration
  public private(set) var state: State = .started
  /// The device the stream speaks for, once known.
  public private(set) var device: DeviceID?
  /// Whether the handler was told the device connected (it must hear of the disconnect).
  public private(set) var connected = false
  /// Whether the check-in's certificate was verified.
  public private(set) var certified = false
  /// The round whose cohort the device was admitted to, while it waits for the task.
  public private(set) var admittedRound: Int?
  /// The round of the task sent on this stream.
  public private(set) var taskRound: Int?
  /// Whether a report of this stream stands (a device that had its task and did not report is dropped).
  public private(set) var reported = false
  /// The round the device is enrolled in for secure aggregation.
  public private(set) var enrolledRound: Int?

  public init(configuration: Configuration) { self.configuration = configuration }

  public var awaiting: Awaiting {
    switch state {
    case .started, .awaitingReport, .uploading: .deviceMessage
    case .relaying(_, let awaitingAnswer): awaitingAnswer ? .deviceMessage : .serverEvent
    case .waitingForTask: .serverEvent
    case .verifyingCertificate, .checkingIn, .reporting: .answer
    case .ended: .nothing
    }
  }

  /// Feeds one event at server time `now`; events the state does not expect are ignored.
  public mutating func handle(_ event: Event, now: Double) -> [Action] {
    if case .received(_, let version) = event, awaiting == .deviceMessage, version != protocolVersion {
      return refuse(
        .rejected(.protocolVersion),
        "the device speaks protocol version \(version), this server version \(protocolVersion); "
          + "run a device runtime of the same release as the server")
    }
    switch state {
    case .started:
      switch event {
      case .received(let message, _): return first(message)
      case .streamEnded, .shutdown: return end(nil)
      default: return []
      }
    case .verifyingCertificate(let request):
      switch event {
      case .certificateAccepted:
        certified = true
        return checkIn(request)
      case .certificateRefused(let reason, let detail): return refuse(.unauthenticated(reason), detail)
      case .streamEnded: return end(nil)
      default: return []
      }
    case .checkingIn(let request):
      switch event {
      case .checkInAnswered(let reply): return answered(reply, to: request, now: now)
      case .streamEnded: return end(nil)
      default: return []
      }
    case .waitingForTask(let request):
      switch event {
      case .task(let assignment): return [.cancelTaskWaitTimer] + assigned(assignment, request, now: now)
      case .released(let window): return [.cancelTaskWaitTimer, .send(retry(window, now: now))] + end(nil)
      case .taskWaitExpired, .shutdown:
        // Not selected in time (the selection closed without it, or the round was abandoned).
        return [
          .cancelTaskWaitTimer,
          .send(.retry(earliestSeconds: 0, latestSeconds: max(0, configuration.selectionWindow))),
        ] + end(nil)
      case .streamEnded: return [.cancelTaskWaitTimer] + end(nil)
      default: return []
      }
    case .awaitingReport(let device, let round):
      switch event {
      case .received(.report(let header)?, _): return report(header, device: device)
      case .received(.abandon?, _): return end(nil)
      case .received:
        return refuse(.rejected(.malformed), "expected the report of round \(round), got another message")
      case .streamEnded, .shutdown: return end(nil)
      default: return []
      }
    case .uploading(var upload):
      switch event {
      case .received(let message, _):
        guard case .updateChunk(let chunk)? = message else {
          return refuse(
            .rejected(.integrity), "the update ended after \(upload.bytes.count) of \(upload.declared) bytes")
        }
        guard chunk.count <= configuration.limits.maxChunkBytes else {
          return refuse(
            .rejected(.tooLarge),
            "a chunk of \(chunk.count) bytes; the limit is \(configuration.limits.maxChunkBytes)")
        }
        guard chunk.count <= upload.declared - upload.bytes.count else {
          return refuse(.rejected(.tooLarge), "the chunks exceed the declared \(upload.declared) bytes")
        }
        // Empty chunks would keep a stream busy for ever without bringing the upload closer.
        guard !chunk.isEmpty else { return refuse(.rejected(.integrity), "an empty update chunk") }
        // The state lets go of the buffer while it grows, so appending does not copy it.
        state = .started
        upload.bytes.append(contentsOf: chunk)
        state = .uploading(upload)
        return upload.bytes.count == upload.declared ? uploaded(upload) : []
      case .streamEnded:
        // A device that half-closes mid-upload learns why its report does not count.
        return refuse(
          .rejected(.integrity), "the upload ended after \(upload.bytes.count) of \(upload.declared) bytes")
      case .shutdown: return end(nil)
      default: return []
      }
    case .reporting(let submitted):
      switch event {
      case .reportAnswered(.accepted):
        return [.send(.acknowledgement(round: submitted.round, accepted: true, reason: ""))] + end(nil)
      case .reportAnswered(.rejected(let reason)):
        // The report does not count: a selected device whose stream ends now is dropped, so the
        // round does not wait for its deadline (the device may still report on a new stream).
        reported = false
        return refuse(.rejected(reason), detail(reason, submitted), counted: true)
      case .reportAnswered, .streamEnded: return end(nil)
      default: return []
      }
    case .relaying(let submitted, let awaitingAnswer):
      return relaying(event, submitted, awaitingAnswer: awaitingAnswer)
    case .ended:
      return []
    }
  }

  // MARK: Check-in and task

  private mutating func first(_ message: DeviceMessage?) -> [Action] {
    let claimed: DeviceID? =
      switch message {
      case .checkIn(let request)?: request.device
      case .report(let header)?: header.device
      default: nil
      }
    if let certified = configuration.certifiedDevice, let claimed, claimed != certified {
      return refuse(
        .rejected(.identity),
        "the message speaks for device \(claimed), but the connection's certificate names device \(certified); "
          + "a device takes part under the number of its own certificate")
    }
    switch message {
    case .checkIn(let request)?:
      device = request.device
      guard configuration.requiresCertificate else { return checkIn(request) }
      // Before the device takes a place in a cohort: the round's members must all hold keys
      // their peers can check.
      guard !request.certificate.isEmpty else {
        return refuse(
          .unauthenticated(Self.certificateMissing),
          "the plan's active secure aggregation needs the device's certificate in the check-in")
      }
      state = .verifyingCertificate(request)
      return [.verifyCertificate(der: request.certificate, device: request.device)]
    case .report(let header)?:
      // A device that trained but lost its connection uploads on a new stream.
      device = header.device
      return report(header, device: header.device)
    default:
      return refuse(.rejected(.malformed), "a participation starts with a check-in or a report")
    }
  }

  private mutating func checkIn(_ request: CheckInRequest) -> [Action] {
    connected = true
    state = .checkingIn(request)
    return [.connect(request.device), .checkIn(request.checkIn)]
  }

  private mutating func answered(_ reply: ServerReply, to request: CheckInRequest, now: Double) -> [Action] {
    let wait: [Action] = [.startTaskWaitTimer(seconds: configuration.taskWait)]
    switch reply {
    case .retry(let window):
      return [.send(retry(window, now: now))] + end(nil)
    case .rejected(let reason):
      return refuse(.rejected(reason), "check-in for population \"\(request.population)\" refused")
    case .waitForTask(let round):
      admittedRound = round
      state = .waitingForTask(request)
      return [.send(.admitted(round: round))] + wait
    case .task, .accepted:
      // The task comes through the Selector when the round starts (it may already be on its way).
      state = .waitingForTask(request)
      return wait
    }
  }

  /// Come back within `window` (server time), as seconds from now.
  private func retry(_ window: ClosedRange<Double>, now: Double) -> ServerMessage {
    .retry(earliestSeconds: max(0, window.lowerBound - now), latestSeconds: max(0, window.upperBound - now))
  }

  private mutating func assigned(_ assignment: TaskAssignment, _ request: CheckInRequest, now: Double)
    -> [Action]
  {
    let task = assignment.task
    taskRound = task.round
    state = .awaitingReport(device: request.device, round: task.round)
    let checkpoint = Float32LittleEndian.bytes(assignment.checkpoint.values)
    let control = Float32LittleEndian.bytes(assignment.serverControl?.values ?? [])
    let follows = request.cachedCheckpointSHA256 != task.checkpointSHA256
    let description = TaskDescription(
      round: task.round, checkpointSHA256: task.checkpointSHA256, checkpointBytes: checkpoint.count,
      checkpointFollows: follows, reportingDeadlineSeconds: max(0, task.reportingDeadline - now),
      evaluate: assignment.evaluate, clipNorm: assignment.clipNorm ?? 0, planJSON: configuration.planJSON,
      maxUpdateBytes: configuration.limits.maxUpdateBytes, maxChunkBytes: configuration.limits.maxChunkBytes,
      codecSeed: UpdateCodec.sharedSeed(runSeed: configuration.runSeed, round: task.round),
      serverControlBytes: control.count)
    var actions: [Action] = [.send(.task(description))]
    if follows { actions += chunks(checkpoint).map { .send(.checkpointChunk($0)) } }
    // SCAFFOLD's c changes every round, so it always follows (a device cannot hold it already).
    actions += chunks(control).map { .send(.serverControlChunk($0)) }
    return actions
  }

  /// `bytes` cut into chunks of at most the server's chunk size.
  private func chunks(_ bytes: [UInt8]) -> [[UInt8]] {
    let size = max(1, configuration.limits.maxChunkBytes)
    return stride(from: 0, to: bytes.count, by: size).map { Array(bytes[$0..<min(bytes.count, $0 + size)]) }
  }

  // MARK: Report

  private mutating func report(_ header: ReportHeader, device: DeviceID) -> [Action] {
    let limits = configuration.limits
    // Limits first: nothing is buffered for an upload the server would refuse anyway.
    guard header.updateBytes >= 0, header.updateBytes <= limits.maxUpdateBytes else {
      return refuse(
        .rejected(.tooLarge),
        "the update declares \(header.updateBytes) bytes; the limit is \(limits.maxUpdateBytes)")
    }
    // Δc_k is one Float32 per parameter, and only SCAFFOLD's reports carry it.
    let controlLimit = configuration.scaffold ? configuration.layout.count * MemoryLayout<Float>.size : 0
    guard header.controlDeltaBytes >= 0, header.controlDeltaBytes <= controlLimit else {
      return refuse(
        .rejected(.tooLarge), "Δc_k declares \(header.controlDeltaBytes) bytes; the limit is \(controlLimit)")
    }
    if configuration.scaffold, !configuration.secureAggregation, header.controlDeltaBytes == 0 {
      return refuse(.rejected(.malformed), "a SCAFFOLD report carries Δc_k after its update")
    }
    var upload = Upload(device: device, header: header, bytes: [])
    upload.bytes.reserveCapacity(upload.declared)
    state = .uploading(upload)
    return upload.declared == 0 ? uploaded(upload) : []
  }

  /// The whole upload is in: checks and reads it, and hands the report on.
  private mutating func uploaded(_ upload: Upload) -> [Action] {
    let header = upload.header
    if upload.declared > 0 || !header.sha256.isEmpty {
      guard SHA256.hex(upload.bytes) == header.sha256 else {
        return refuse(
          .rejected(.integrity), "the update's SHA-256 does not match the declared \(header.sha256)")
      }
    }
    let values: [Float]
    let encoded: EncodedUpdate?
    switch readUpdate(Array(upload.bytes[..<header.updateBytes]), header: header, device: upload.device) {
    case .success(let read): (values, encoded) = read
    case .failure(let refusal): return refuse(refusal.reason, refusal.detail)
    }
    guard let controls = Float32LittleEndian.values(Array(upload.bytes[header.updateBytes...])) else {
      return refuse(
        .rejected(.malformed),
        "Δc_k has \(header.controlDeltaBytes) bytes, not a whole number of Float32 values")
    }
    let layout = configuration.layout
    // A wrong length keeps its own layout, so the Coordinator refuses it as malformed.
    func weights(_ values: [Float], _ name: String) -> Weights {
      Weights(
        layout: values.count == layout.count ? layout : WeightsLayout([.init(name, [values.count])]),
        values: values)
    }
    let secure = configuration.secureAggregation
    let report = UpdateReport(
      device: upload.device, round: header.round,
      update: secure && values.isEmpty
        ? Weights(layout: WeightsLayout([]), values: []) : weights(values, "update"),
      examples: header.examples, trainLoss: header.trainLoss, bytes: upload.bytes.count,
      evaluation: header.evaluation, lossAtGlobal: header.lossAtGlobal,
      controlDelta: header.controlDeltaBytes > 0 ? weights(controls, "control_delta") : nil,
      withinClip: configuration.adaptiveClipping ? header.withinClip : nil, encoded: encoded)
    if secure, configuration.requiresCertificate, !certified {
      // A report on a stream without a check-in brings no certificate; the protocol cannot
      // resume on a new stream anyway.
      return refuse(
        .unauthenticated(Self.certificateMissing),
        "active secure aggregation runs on the stream of the check-in that carried the certificate")
    }
    let submitted = Submitted(
      device: upload.device, round: header.round, values: values.count, controls: report.controlDelta?.count)
    reported = true
    guard secure else {
      state = .reporting(submitted)
      return [.submit(report)]
    }
    // Enrol before the report counts: the report that meets the goal closes the round, and the
    // protocol then starts at once with every enrolled device.
    enrolledRound = header.round
    state = .relaying(submitted, awaitingAnswer: false)
    return [
      .enrol(round: header.round, device: upload.device, examples: report.examples),
      .submitWhileRelaying(report),
    ]
  }

  /// The update from its bytes: Float32 values, or the plan's encoding read (not decoded: the
  /// server decodes it) with the seed the server derives itself. Anything that does not fit the
  /// plan is malformed.
  private func readUpdate(_ bytes: [UInt8], header: ReportHeader, device: DeviceID)
    -> Result<(values: [Float], encoded: EncodedUpdate?), Refusal>
  {
    let kind = EncodedUpdate.WireKind(rawValue: header.encoding)
    guard let codec = configuration.codec else {
      guard kind == .float32 else {
        let name = kind.map { "\($0)" } ?? "\(header.encoding)"
        return .failure(
          Refusal(
            .rejected(.malformed), "the update is encoded as \(name); this plan's updates travel as float32"))
      }
      guard let values = Float32LittleEndian.values(bytes) else {
        return .failure(
          Refusal(
            .rejected(.malformed), "the update has \(bytes.count) bytes, not a whole number of Float32 values"
          ))
      }
      return .success((values, nil))
    }
    guard let kind else {
      return .failure(Refusal(.rejected(.malformed), "the update's encoding \(header.encoding) is unknown"))
    }
    let shared = UpdateCodec.sharedSeed(runSeed: configuration.runSeed, round: header.round)
    let seed = UpdateCodec.deviceSeed(shared: shared, round: header.round, device: device)
    do throws(CohortError) {
      return .success(([], try codec.update(fromWire: bytes, kind: kind, seed: seed)))
    } catch {
      return .failure(Refusal(.rejected(.malformed), error.message))
    }
  }

  private func detail(_ reason: Rejection, _ submitted: Submitted) -> String {
    let round = submitted.round
    let expected = configuration.layout.count
    switch reason {
    case .malformed where submitted.controls.map { $0 != expected } ?? false:
      return "Δc_k has \(submitted.controls ?? 0) values, the model \(expected)"
    case .malformed:
      return submitted.values != expected && !(configuration.secureAggregation && submitted.values == 0)
        ? "the update has \(submitted.values) values, the model \(expected)"
        : "the update has a NaN or infinite value, no examples or a non-finite loss"
    case .late: return "round \(round) closed before the report arrived"
    case .duplicate: return "this device already reported in round \(round)"
    case .notSelected: return "this device was not selected for round \(round)"
    case .unknownRound: return "round \(round) is not running"
    default: return "the report for round \(round) was refused"
    }
  }

  // MARK: Secure aggregation

  private mutating func relaying(_ event: Event, _ submitted: Submitted, awaitingAnswer: Bool) -> [Action] {
    let (round, device) = (submitted.round, submitted.device)
    if awaitingAnswer {
      // Every server step expects one answer from the device.
      switch event {
      case .received(.secureAggregation(let message)?, _):
        state = .relaying(submitted, awaitingAnswer: false)
        return [.relay(round: round, device: device, message: message)]
      case .received(.abandon?, _): return leave() + end(nil)
      case .received:
        return leave() + refuse(.rejected(.malformed), "expected a secure-aggregation answer")
      case .streamEnded, .shutdown: return leave() + end(nil)
      default: return []
      }
    }
    switch event {
    case .reportAnswered(.rejected(let reason)):
      reported = false
      return leave() + refuse(.rejected(reason), detail(reason, submitted), counted: true)
    case .secureAggregationBegin(let begin):
      state = .relaying(submitted, awaitingAnswer: true)
      return [.send(.secureAggregationBegin(begin))]
    case .secureAggregationRequest(let message):
      state = .relaying(submitted, awaitingAnswer: true)
      return [.send(.secureAggregation(message))]
    case .secureAggregationFinished(let accepted, let reason):
      enrolledRound = nil
      return [.send(.acknowledgement(round: round, accepted: accepted, reason: reason))] + end(nil)
    case .streamEnded, .shutdown:
      return leave() + end(nil)
    default:
      return []
    }
  }

  /// The device leaves secure aggregation, if it is in.
  private mutating func leave() -> [Action] {
    guard let round = enrolledRound, let device else { return [] }
    enrolledRound = nil
    return [.leave(round: round, device: device)]
  }

  // MARK: End

  private mutating func refuse(_ reason: Refusal.Reason, _ detail: String, counted: Bool = false) -> [Action]
  {
    end(Refusal(reason, detail, counted: counted))
  }

  /// Ends the stream: the device disconnects, and one that had its task (or a place in a cohort
  /// being gathered) and left without a standing report counts as dropped.
  private mutating func end(_ refusal: Refusal?) -> [Action] {
    state = .ended(refusal)
    var actions: [Action] = []
    if let device {
      if connected { actions.append(.disconnect(device)) }
      if let taskRound {
        if !reported { actions.append(.dropped(device: device, round: taskRound, hadTask: true)) }
      } else if let admittedRound {
        actions.append(.dropped(device: device, round: admittedRound, hadTask: false))
      }
    }
    return actions + leave() + [.end(refusal)]
  }
}
