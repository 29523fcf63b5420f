import CohortCompression
import CohortCore
import Testing

@testable import CohortProtocol

/// The server's side of one participation, driven directly: events in, actions out, no I/O.
@Suite struct ServerParticipationTests {
  typealias Machine = ServerParticipation
  static let layout = WeightsLayout([.init("w", [4])])
  static let device = 7
  static let sha = "checkpoint-sha"

  static func configuration(
    secure: Bool = false, certificate: Bool = false, scaffold: Bool = false, codec: UpdateCodec? = nil
  ) -> Machine.Configuration {
    .init(
      secureAggregation: secure, requiresCertificate: certificate, scaffold: scaffold,
      adaptiveClipping: false,
      codec: codec, runSeed: 42, layout: layout, limits: .init(maxUpdateBytes: 64, maxChunkBytes: 8),
      taskWait: 30, selectionWindow: 60, planJSON: "{}")
  }

  static let checkIn = CheckInRequest(device: device, population: "p")

  static func assignment(control: [Float]? = nil) -> TaskAssignment {
    TaskAssignment(
      task: RoundTask(round: 3, checkpointSHA256: sha, reportingDeadline: 400),
      checkpoint: Weights(layout: layout, values: [1, 2, 3, 4]), evaluate: false,
      serverControl: control.map { Weights(layout: layout, values: $0) })
  }

  /// A report of `values` (and Δc_k `controls`) with its bytes and their SHA-256.
  static func report(
    _ values: [Float] = [0.5, -0.5, 0.25, 0], controls: [Float] = [], round: Int = 3, device: Int = device
  ) -> (ReportHeader, [UInt8]) {
    let update = Float32LittleEndian.bytes(values)
    let bytes = update + Float32LittleEndian.bytes(controls)
    return (
      ReportHeader(
        device: device, round: round, examples: 10, trainLoss: 0.5, updateBytes: update.count,
        controlDeltaBytes: bytes.count - update.count, sha256: bytes.isEmpty ? "" : SHA256.hex(bytes)),
      bytes
    )
  }

  /// A compact, comparable form of actions.
  static func summary(_ actions: [Machine.Action]) -> [String] {
    actions.map { action in
      switch action {
      case .send(let message):
        switch message {
        case .retry(let earliest, let latest): "retry \(earliest)...\(latest)"
        case .admitted(let round): "admitted \(round)"
        case .task(let t): "task \(t.round) follows=\(t.checkpointFollows) in=\(t.reportingDeadlineSeconds)"
        case .checkpointChunk(let bytes): "checkpoint \(bytes.count)"
        case .serverControlChunk(let bytes): "control \(bytes.count)"
        case .secureAggregationBegin(let begin): "begin \(begin.round)"
        case .secureAggregation(let bytes): "secagg \(bytes)"
        case .acknowledgement(let round, let accepted, let reason): "ack \(round) \(accepted) \(reason)"
        }
      case .verifyCertificate(let der, let device): "verify \(der) \(device)"
      case .connect(let device): "connect \(device)"
      case .checkIn(let c): "checkIn \(c.device) \(c.population)"
      case .startTaskWaitTimer(let seconds): "timer \(seconds)"
      case .cancelTaskWaitTimer: "cancel timer"
      case .submit(let r): "submit \(r.device)@\(r.round)"
      case .submitWhileRelaying(let r): "submit relaying \(r.device)@\(r.round)"
      case .enrol(let round, let device, let examples): "enrol \(device)@\(round) \(examples)"
      case .relay(let round, let device, let message): "relay \(device)@\(round) \(message)"
      case .leave(let round, let device): "leave \(device)@\(round)"
      case .disconnect(let device): "disconnect \(device)"
      case .dropped(let device, let round, _): "dropped \(device)@\(round)"
      case .end(nil): "end"
      case .end(let refusal?): "end \(refusal.name)\(refusal.counted ? " counted" : "")"
      }
    }
  }

  static func refusal(_ actions: [Machine.Action]) -> Machine.Refusal? {
    guard case .end(let refusal)? = actions.last else { return nil }
    return refusal
  }

  static func submitted(_ actions: [Machine.Action]) -> UpdateReport? {
    for case .submit(let report) in actions { return report }
    for case .submitWhileRelaying(let report) in actions { return report }
    return nil
  }

  /// A machine whose device checked in, was admitted to round 3 and holds its task.
  static func selected(_ configuration: Machine.Configuration = configuration(), control: [Float]? = nil)
    -> Machine
  {
    var m = Machine(configuration: configuration)
    _ = m.handle(.received(.checkIn(checkIn), version: protocolVersion), now: 0)
    if configuration.requiresCertificate { _ = m.handle(.certificateAccepted, now: 0) }
    _ = m.handle(.checkInAnswered(.waitForTask(round: 3)), now: 0)
    _ = m.handle(.task(assignment(control: control)), now: 100)
    return m
  }

  /// Sends the report and its bytes in chunks of 8; the actions of the last message.
  static func upload(_ m: inout Machine, _ report: (ReportHeader, [UInt8])) -> [Machine.Action] {
    var actions = m.handle(.received(.report(report.0), version: protocolVersion), now: 200)
    for start in stride(from: 0, to: report.1.count, by: 8) {
      actions = m.handle(
        .received(
          .updateChunk(Array(report.1[start..<min(report.1.count, start + 8)])), version: protocolVersion),
        now: 200)
    }
    return actions
  }

  static func receive(_ m: inout Machine, _ message: DeviceMessage?, now: Double = 200) -> [Machine.Action] {
    m.handle(.received(message, version: protocolVersion), now: now)
  }

  // MARK: Participations

  @Test func aPlainParticipationRunsFromCheckInToAcknowledgement() {
    var m = Machine(configuration: Self.configuration())
    #expect(m.awaiting == .deviceMessage)
    #expect(Self.summary(Self.receive(&m, .checkIn(Self.checkIn), now: 0)) == ["connect 7", "checkIn 7 p"])
    #expect(m.awaiting == .answer)
    #expect(
      Self.summary(m.handle(.checkInAnswered(.waitForTask(round: 3)), now: 0)) == [
        "admitted 3", "timer 30.0",
      ])
    #expect(m.awaiting == .serverEvent)
    let task = m.handle(.task(Self.assignment()), now: 100)
    #expect(
      Self.summary(task) == ["cancel timer", "task 3 follows=true in=300.0", "checkpoint 8", "checkpoint 8"])
    guard case .send(.task(let description)) = task[1] else {
      Issue.record("no task")
      return
    }
    #expect(description.checkpointBytes == 16)
    #expect(description.maxUpdateBytes == 64 && description.maxChunkBytes == 8)
    #expect(description.codecSeed == UpdateCodec.sharedSeed(runSeed: 42, round: 3))
    #expect(description.planJSON == "{}" && description.serverControlBytes == 0)
    #expect(m.awaiting == .deviceMessage)
    let report = Self.report()
    let actions = Self.upload(&m, report)
    #expect(Self.summary(actions) == ["submit 7@3"])
    let submitted = Self.submitted(actions)
    #expect(submitted?.update == Weights(layout: Self.layout, values: [0.5, -0.5, 0.25, 0]))
    #expect(submitted?.examples == 10 && submitted?.bytes == 16 && submitted?.encoded == nil)
    #expect(submitted?.controlDelta == nil && submitted?.withinClip == nil)
    #expect(m.awaiting == .answer)
    #expect(
      Self.summary(m.handle(.reportAnswered(.accepted(round: 3)), now: 210)) == [
        "ack 3 true ", "disconnect 7", "end",
      ])
    #expect(m.awaiting == .nothing)
    #expect(m.handle(.streamEnded, now: 220).isEmpty)
  }

  @Test func aDeviceHoldingTheCheckpointGetsOnlyTheTaskAndScaffoldsControl() {
    var m = Machine(configuration: Self.configuration(scaffold: true))
    var cached = Self.checkIn
    cached.cachedCheckpointSHA256 = Self.sha
    _ = Self.receive(&m, .checkIn(cached), now: 0)
    _ = m.handle(
      .checkInAnswered(.task(RoundTask(round: 3, checkpointSHA256: Self.sha, reportingDeadline: 0))), now: 0)
    let task = m.handle(.task(Self.assignment(control: [9, 9, 9, 9])), now: 500)
    // A deadline already past is sent as 0 seconds, never negative.
    #expect(Self.summary(task) == ["cancel timer", "task 3 follows=false in=0.0", "control 8", "control 8"])
  }

  @Test func aRetryWindowIsSentAsSecondsFromNow() {
    var m = Machine(configuration: Self.configuration())
    _ = Self.receive(&m, .checkIn(Self.checkIn), now: 0)
    #expect(
      Self.summary(m.handle(.checkInAnswered(.retry(window: 110...150)), now: 100))
        == ["retry 10.0...50.0", "disconnect 7", "end"])
    var past = Machine(configuration: Self.configuration())
    _ = Self.receive(&past, .checkIn(Self.checkIn), now: 0)
    #expect(
      Self.summary(past.handle(.checkInAnswered(.retry(window: 10...50)), now: 100))
        == ["retry 0.0...0.0", "disconnect 7", "end"])
  }

  @Test func aReleasedDeviceIsToldToComeBackAndLeavesTheCohort() {
    var m = Machine(configuration: Self.configuration())
    _ = Self.receive(&m, .checkIn(Self.checkIn), now: 0)
    _ = m.handle(.checkInAnswered(.waitForTask(round: 3)), now: 0)
    // Events the wait does not expect change nothing.
    #expect(m.handle(.secureAggregationRequest([1]), now: 1).isEmpty)
    #expect(
      Self.summary(m.handle(.released(window: 120...180), now: 100))
        == ["cancel timer", "retry 20.0...80.0", "disconnect 7", "dropped 7@3", "end"])
  }

  @Test(arguments: [true, false]) func aDeviceNotSelectedInTimeComesBackWithinTheSelectionWindow(
    shutdown: Bool
  ) {
    var m = Machine(configuration: Self.configuration())
    _ = Self.receive(&m, .checkIn(Self.checkIn), now: 0)
    _ = m.handle(.checkInAnswered(.waitForTask(round: 3)), now: 0)
    #expect(
      Self.summary(m.handle(shutdown ? .shutdown : .taskWaitExpired, now: 30))
        == ["cancel timer", "retry 0.0...60.0", "disconnect 7", "dropped 7@3", "end"])
  }

  @Test func aDeviceResumesItsUploadOnANewStream() {
    var m = Machine(configuration: Self.configuration())
    let actions = Self.upload(&m, Self.report(device: 9))
    #expect(Self.summary(actions) == ["submit 9@3"])
    #expect(m.device == 9)
    // Not connected on this stream and never given a task here: nothing to disconnect or drop.
    #expect(Self.summary(m.handle(.reportAnswered(.accepted(round: 3)), now: 0)) == ["ack 3 true ", "end"])
  }

  @Test func anUpdateInThePlansEncodingIsHandedOnEncoded() throws {
    var plan = CompressionPlan()
    plan.kind = .quantization
    plan.bits = 8
    let codec = try UpdateCodec(plan: plan, dimension: 4)
    let seed = UpdateCodec.deviceSeed(
      shared: UpdateCodec.sharedSeed(runSeed: 42, round: 3), round: 3, device: Self.device)
    var stream = RandomStream(seed: 1, purpose: "test")
    let encoded = codec.encode([0.5, -0.5, 0.25, 0], seed: seed, stream: &stream)
    let bytes = encoded.wireForm
    var m = Self.selected(Self.configuration(codec: codec))
    let header = ReportHeader(
      device: Self.device, round: 3, examples: 10, trainLoss: 0.5, updateBytes: bytes.count,
      encoding: encoded.wireKind.rawValue, sha256: SHA256.hex(bytes))
    let actions = Self.upload(&m, (header, bytes))
    #expect(Self.summary(actions) == ["submit 7@3"])
    let report = Self.submitted(actions)
    #expect(report?.encoded == encoded)
    #expect(report?.update.count == 0)
    // The plan's codec reads only its own encoding.
    var plain = Self.selected(Self.configuration(codec: codec))
    let refused = Self.upload(&plain, Self.report())
    #expect(Self.refusal(refused)?.name == "malformed")
    #expect(Self.refusal(refused)?.detail.contains("encoded as") == true)
  }

  @Test func secureAggregationIsRelayedUntilTheDriverFinishes() {
    var m = Self.selected(Self.configuration(secure: true))
    let (header, _) = Self.report([])
    #expect(Self.summary(Self.receive(&m, .report(header))) == ["enrol 7@3 10", "submit relaying 7@3"])
    #expect(m.enrolledRound == 3 && m.awaiting == .serverEvent)
    let begin = SecureAggregationBegin(
      round: 3, index: 1, count: 2, degree: 1, threshold: 2, graphSeed: [], vectorLength: 4, ringBits: 16,
      sharedSeed: 0)
    #expect(Self.summary(m.handle(.secureAggregationBegin(begin), now: 0)) == ["begin 3"])
    #expect(m.awaiting == .deviceMessage)
    #expect(Self.summary(Self.receive(&m, .secureAggregation([1, 2]))) == ["relay 7@3 [1, 2]"])
    #expect(m.handle(.reportAnswered(.accepted(round: 3)), now: 0).isEmpty)
    #expect(Self.summary(m.handle(.secureAggregationRequest([3]), now: 0)) == ["secagg [3]"])
    #expect(Self.summary(Self.receive(&m, .secureAggregation([4]))) == ["relay 7@3 [4]"])
    #expect(
      Self.summary(m.handle(.secureAggregationFinished(accepted: true, reason: ""), now: 0))
        == ["ack 3 true ", "disconnect 7", "end"])
  }

  @Test func aSecureReportTheCoordinatorRefusesLeavesTheProtocol() {
    var m = Self.selected(Self.configuration(secure: true))
    _ = Self.receive(&m, .report(Self.report([]).0))
    let actions = m.handle(.reportAnswered(.rejected(.late)), now: 0)
    #expect(Self.summary(actions) == ["leave 7@3", "disconnect 7", "dropped 7@3", "end late counted"])
    #expect(Self.refusal(actions)?.detail == "round 3 closed before the report arrived")
  }

  @Test func aSecureAggregationAnswerOfAnotherKindIsMalformed() {
    var m = Self.selected(Self.configuration(secure: true))
    _ = Self.receive(&m, .report(Self.report([]).0))
    _ = m.handle(.secureAggregationRequest([3]), now: 0)
    #expect(
      Self.summary(Self.receive(&m, .updateChunk([1]))) == ["leave 7@3", "disconnect 7", "end malformed"])
    var abandoning = Self.selected(Self.configuration(secure: true))
    _ = Self.receive(&abandoning, .report(Self.report([]).0))
    _ = abandoning.handle(.secureAggregationRequest([3]), now: 0)
    #expect(
      Self.summary(Self.receive(&abandoning, .abandon(round: 3, reason: "keys")))
        == ["leave 7@3", "disconnect 7", "end"])
  }

  // MARK: Refusals

  /// The refusal the actions end with, checking it is the transport's own (not counted yet).
  static func refused(_ actions: [Machine.Action], _ reason: String, _ detail: String) {
    let refusal = refusal(actions)
    #expect(refusal?.name == reason, "\(summary(actions))")
    #expect(refusal?.detail.contains(detail) == true, "\(String(describing: refusal))")
    #expect(refusal?.counted == false)
  }

  @Test func aMessageOfAnotherProtocolVersionIsRefused() {
    var m = Machine(configuration: Self.configuration())
    let actions = m.handle(.received(.checkIn(Self.checkIn), version: 99), now: 0)
    Self.refused(actions, "protocol_version", "version 99")
    #expect(Self.summary(actions) == ["end protocol_version"])
    // Mid-upload too: the device that had its task is dropped.
    var selected = Self.selected()
    let midway = selected.handle(.received(.report(Self.report().0), version: 2), now: 0)
    #expect(Self.summary(midway) == ["disconnect 7", "dropped 7@3", "end protocol_version"])
  }

  @Test func underMutualTLSAStreamSpeaksOnlyForItsCertificatesDevice() {
    var configuration = Self.configuration()
    configuration.certifiedDevice = Self.device + 1
    var impostor = Machine(configuration: configuration)
    let actions = Self.receive(&impostor, .checkIn(Self.checkIn))
    Self.refused(actions, "identity", "certificate names device \(Self.device + 1)")
    #expect(Self.summary(actions) == ["end identity"], "refused before it takes a place in a cohort")
    var resumed = Machine(configuration: configuration)
    Self.refused(
      Self.receive(&resumed, .report(Self.report().0)), "identity", "speaks for device \(Self.device)")
    configuration.certifiedDevice = Self.device
    var honest = Machine(configuration: configuration)
    #expect(Self.refusal(Self.receive(&honest, .checkIn(Self.checkIn))) == nil)
  }

  @Test(arguments: [
    DeviceMessage.updateChunk([1]), .secureAggregation([1]), .abandon(round: 1, reason: ""), nil,
  ])
  func aParticipationStartsWithACheckInOrAReport(first: DeviceMessage?) {
    var m = Machine(configuration: Self.configuration())
    let actions = Self.receive(&m, first)
    Self.refused(actions, "malformed", "starts with a check-in or a report")
    #expect(Self.summary(actions) == ["end malformed"])
  }

  @Test func anotherMessageInsteadOfTheReportIsMalformed() {
    var m = Self.selected()
    Self.refused(Self.receive(&m, .checkIn(Self.checkIn)), "malformed", "expected the report of round 3")
  }

  @Test(arguments: [65, -1]) func anUpdateDeclaredOutsideTheLimitIsTooLarge(bytes: Int) {
    var m = Self.selected()
    var (header, _) = Self.report()
    header.updateBytes = bytes
    let actions = Self.receive(&m, .report(header))
    Self.refused(actions, "too_large", "the update declares \(bytes) bytes; the limit is 64")
    #expect(Self.summary(actions) == ["disconnect 7", "dropped 7@3", "end too_large"])
  }

  @Test func aChunkAboveTheLimitIsTooLarge() {
    var m = Self.selected()
    _ = Self.receive(&m, .report(Self.report().0))
    Self.refused(
      Self.receive(&m, .updateChunk([UInt8](repeating: 0, count: 9))), "too_large", "a chunk of 9 bytes")
  }

  @Test func chunksBeyondTheDeclaredSizeAreTooLarge() {
    var m = Self.selected()
    var (header, _) = Self.report()
    header.updateBytes = 12
    _ = Self.receive(&m, .report(header))
    #expect(Self.receive(&m, .updateChunk([UInt8](repeating: 0, count: 8))).isEmpty)
    Self.refused(
      Self.receive(&m, .updateChunk([UInt8](repeating: 0, count: 8))), "too_large",
      "exceed the declared 12 bytes")
  }

  @Test func anUpdateWhoseSHA256DiffersIsRefused() {
    var m = Self.selected()
    var (header, bytes) = Self.report()
    header.sha256 = String(repeating: "0", count: 64)
    Self.refused(Self.upload(&m, (header, bytes)), "integrity", "SHA-256 does not match")
  }

  @Test func anotherMessageInTheMiddleOfAnUploadIsAnIntegrityFailure() {
    var m = Self.selected()
    _ = Self.receive(&m, .report(Self.report().0))
    _ = Self.receive(&m, .updateChunk([UInt8](repeating: 0, count: 8)))
    let actions = Self.receive(&m, .secureAggregation([1]))
    Self.refused(actions, "integrity", "the update ended after 8 of 16 bytes")
    #expect(Self.summary(actions) == ["disconnect 7", "dropped 7@3", "end integrity"])
  }

  @Test(arguments: [EncodedUpdate.WireKind.quantized.rawValue, 77])
  func anEncodingThePlanDoesNotUseIsMalformed(encoding: Int) {
    var m = Self.selected()
    var (header, bytes) = Self.report()
    header.encoding = encoding
    Self.refused(Self.upload(&m, (header, bytes)), "malformed", "this plan's updates travel as float32")
  }

  @Test func anUnknownEncodingUnderACodecIsMalformed() throws {
    var plan = CompressionPlan()
    plan.kind = .quantization
    var m = Self.selected(Self.configuration(codec: try UpdateCodec(plan: plan, dimension: 4)))
    var (header, bytes) = Self.report()
    header.encoding = 77
    Self.refused(Self.upload(&m, (header, bytes)), "malformed", "encoding 77 is unknown")
  }

  @Test func aFloat32UpdateOfAPartialValueIsMalformed() {
    var m = Self.selected()
    let bytes: [UInt8] = [0, 0, 0, 0, 0, 0]
    let header = ReportHeader(
      device: Self.device, round: 3, examples: 1, trainLoss: 0, updateBytes: 6, sha256: SHA256.hex(bytes))
    Self.refused(
      Self.upload(&m, (header, bytes)), "malformed", "6 bytes, not a whole number of Float32 values")
  }

  @Test func aScaffoldReportWithoutControlDeltaIsMalformed() {
    var m = Self.selected(Self.configuration(scaffold: true), control: [0, 0, 0, 0])
    Self.refused(Self.receive(&m, .report(Self.report().0)), "malformed", "a SCAFFOLD report carries Δc_k")
  }

  @Test func aScaffoldReportCarriesItsControlDelta() {
    var m = Self.selected(Self.configuration(scaffold: true), control: [0, 0, 0, 0])
    let report = Self.submitted(Self.upload(&m, Self.report(controls: [1, 2, 3, 4])))
    #expect(report?.controlDelta == Weights(layout: Self.layout, values: [1, 2, 3, 4]))
    #expect(report?.bytes == 32)
  }

  @Test func aControlDeltaAboveTheModelsSizeIsTooLarge() {
    var scaffold = Self.selected(Self.configuration(scaffold: true))
    Self.refused(
      Self.receive(&scaffold, .report(Self.report(controls: [0, 0, 0, 0, 0]).0)), "too_large",
      "Δc_k declares 20 bytes; the limit is 16")
    var fedavg = Self.selected()
    Self.refused(Self.receive(&fedavg, .report(Self.report(controls: [0]).0)), "too_large", "the limit is 0")
  }

  @Test func aControlDeltaOfAPartialValueIsMalformed() {
    var m = Self.selected(Self.configuration(scaffold: true))
    let update = Float32LittleEndian.bytes([0, 0, 0, 0])
    let bytes = update + [1, 2]
    let header = ReportHeader(
      device: Self.device, round: 3, examples: 1, trainLoss: 0, updateBytes: 16, controlDeltaBytes: 2,
      sha256: SHA256.hex(bytes))
    Self.refused(Self.upload(&m, (header, bytes)), "malformed", "Δc_k has 2 bytes")
  }

  @Test func theActiveVariantNeedsACertificate() {
    let active = Self.configuration(secure: true, certificate: true)
    var missing = Machine(configuration: active)
    let actions = Self.receive(&missing, .checkIn(Self.checkIn), now: 0)
    Self.refused(actions, "certificate_missing", "needs the device's certificate")
    // Refused before the device takes a place: nothing to disconnect.
    #expect(Self.summary(actions) == ["end certificate_missing"])

    var presented = Machine(configuration: active)
    var withCertificate = Self.checkIn
    withCertificate.certificate = [1, 2, 3]
    #expect(
      Self.summary(Self.receive(&presented, .checkIn(withCertificate), now: 0)) == ["verify [1, 2, 3] 7"])
    #expect(presented.awaiting == .answer)
    let untrusted = presented.handle(
      .certificateRefused(reason: "certificate_untrusted", detail: "another CA"), now: 0)
    #expect(Self.summary(untrusted) == ["end certificate_untrusted"])
    #expect(Self.refusal(untrusted)?.reason == .unauthenticated("certificate_untrusted"))

    var verified = Machine(configuration: active)
    _ = Self.receive(&verified, .checkIn(withCertificate), now: 0)
    #expect(Self.summary(verified.handle(.certificateAccepted, now: 0)) == ["connect 7", "checkIn 7 p"])

    // A report on a new stream brings no certificate.
    var resumed = Machine(configuration: active)
    Self.refused(
      Self.receive(&resumed, .report(Self.report([]).0)), "certificate_missing", "stream of the check-in")
  }

  @Test func aCheckInTheHandlerRefusesEndsTheStream() {
    var m = Machine(configuration: Self.configuration())
    _ = Self.receive(&m, .checkIn(Self.checkIn), now: 0)
    let actions = m.handle(.checkInAnswered(.rejected(.wrongPopulation)), now: 0)
    Self.refused(actions, "wrong_population", "check-in for population \"p\" refused")
    #expect(Self.summary(actions) == ["disconnect 7", "end wrong_population"])
  }

  @Test(arguments: [
    (Rejection.late, "round 3 closed before the report arrived"),
    (.duplicate, "this device already reported in round 3"),
    (.notSelected, "this device was not selected for round 3"),
    (.unknownRound, "round 3 is not running"),
    (.malformed, "the update has a NaN or infinite value, no examples or a non-finite loss"),
  ])
  func aReportTheHandlerRefusesIsCountedByTheHandler(reason: Rejection, detail: String) {
    var m = Self.selected()
    _ = Self.upload(&m, Self.report())
    let actions = m.handle(.reportAnswered(.rejected(reason)), now: 0)
    #expect(Self.refusal(actions) == .init(.rejected(reason), detail, counted: true))
    // The report does not stand: the device is dropped from the round.
    #expect(Self.summary(actions) == ["disconnect 7", "dropped 7@3", "end \(reason.rawValue) counted"])
  }

  @Test func aMalformedRefusalNamesTheWrongShape() {
    var m = Self.selected()
    _ = Self.upload(&m, Self.report([1, 2]))
    #expect(
      Self.refusal(m.handle(.reportAnswered(.rejected(.malformed)), now: 0))?.detail
        == "the update has 2 values, the model 4")
    var scaffold = Self.selected(Self.configuration(scaffold: true))
    _ = Self.upload(&scaffold, Self.report(controls: [1, 2, 3]))
    #expect(
      Self.refusal(scaffold.handle(.reportAnswered(.rejected(.malformed)), now: 0))?.detail
        == "Δc_k has 3 values, the model 4")
  }

  // MARK: The stream ends

  @Test func aStreamEndingAtEachStageLeavesTheRightBookkeeping() {
    var fresh = Machine(configuration: Self.configuration())
    #expect(Self.summary(fresh.handle(.streamEnded, now: 0)) == ["end"])

    var waiting = Machine(configuration: Self.configuration())
    _ = Self.receive(&waiting, .checkIn(Self.checkIn), now: 0)
    _ = waiting.handle(.checkInAnswered(.waitForTask(round: 3)), now: 0)
    #expect(
      Self.summary(waiting.handle(.streamEnded, now: 0)) == [
        "cancel timer", "disconnect 7", "dropped 7@3", "end",
      ])

    var selected = Self.selected()
    #expect(Self.summary(selected.handle(.streamEnded, now: 0)) == ["disconnect 7", "dropped 7@3", "end"])

    var abandoning = Self.selected()
    #expect(
      Self.summary(Self.receive(&abandoning, .abandon(round: 3, reason: "not eligible")))
        == ["disconnect 7", "dropped 7@3", "end"])

    var uploading = Self.selected()
    _ = Self.receive(&uploading, .report(Self.report().0))
    _ = Self.receive(&uploading, .updateChunk([0, 0, 0, 0]))
    // A device that half-closes mid-upload is told why its report does not count.
    let cut = uploading.handle(.streamEnded, now: 0)
    #expect(Self.summary(cut) == ["disconnect 7", "dropped 7@3", "end integrity"])
    #expect(Self.refusal(cut)?.detail.contains("the upload ended after 4 of 16 bytes") == true)

    var resuming = Machine(configuration: Self.configuration())
    _ = Self.receive(&resuming, .report(Self.report().0))
    #expect(Self.summary(resuming.handle(.streamEnded, now: 0)) == ["end integrity"])

    var empty = Self.selected()
    _ = Self.receive(&empty, .report(Self.report().0))
    Self.refused(Self.receive(&empty, .updateChunk([])), "integrity", "an empty update chunk")

    // Under secure aggregation the report stands; the device only leaves the protocol.
    var relaying = Self.selected(Self.configuration(secure: true))
    _ = Self.receive(&relaying, .report(Self.report([]).0))
    _ = relaying.handle(.secureAggregationRequest([1]), now: 0)
    #expect(Self.summary(relaying.handle(.streamEnded, now: 0)) == ["leave 7@3", "disconnect 7", "end"])

    var shutDown = Self.selected(Self.configuration(secure: true))
    _ = Self.receive(&shutDown, .report(Self.report([]).0))
    #expect(Self.summary(shutDown.handle(.shutdown, now: 0)) == ["leave 7@3", "disconnect 7", "end"])
  }
}
