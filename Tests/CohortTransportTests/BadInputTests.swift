import CohortCompression
import CohortCore
import CohortProtocol
import CohortServer
import CohortServing
import CohortSimulator
import CohortStore
import Foundation
import GRPCCore
import Logging
import Prometheus
import Testing

@testable import CohortDevice
@testable import CohortTransport

/// One `Participate` stream driven by hand: the test sends messages when it wants and reads the
/// server's answers one at a time, up to the status the server ends the stream with.
struct RawParticipation {
  private let outgoing: AsyncStream<Cohort_V1_DeviceMessage>.Continuation
  private var answers: AsyncThrowingStream<Cohort_V1_ServerMessage, any Error>.AsyncIterator
  private let call: Task<Void, Never>

  init(_ connection: FederationConnection) {
    let (requests, outgoing) = AsyncStream.makeStream(of: Cohort_V1_DeviceMessage.self)
    let (answers, sink) = AsyncThrowingStream.makeStream(of: Cohort_V1_ServerMessage.self)
    self.outgoing = outgoing
    self.answers = answers.makeAsyncIterator()
    let federation = connection.federation
    call = Task {
      var options = CallOptions.defaults
      options.waitForReady = false
      do {
        try await federation.participate(
          options: options,
          requestProducer: { writer in
            for await message in requests { try await writer.write(message) }
          },
          onResponse: { response in
            // Once the server ends the stream there is nothing more to send.
            defer { outgoing.finish() }
            for try await message in response.messages { sink.yield(message) }
          })
        sink.finish()
      } catch {
        sink.finish(throwing: error)
      }
    }
  }

  /// A check-in of `device` to the default population, with `certificate` (DER) when given.
  func sendCheckIn(device: Int, certificate: [UInt8] = []) {
    send(
      .checkIn(
        .with {
          $0.device = Int64(device)
          $0.population = "default"
          $0.certificate = Data(certificate)
        }))
  }

  func send(_ kind: Cohort_V1_DeviceMessage.OneOf_Kind, version: UInt32 = UInt32(protocolVersion)) {
    var message = Cohort_V1_DeviceMessage()
    message.protocolVersion = version
    message.kind = kind
    outgoing.yield(message)
  }

  /// The server's next message; nil when it ended the stream with OK.
  mutating func next() async throws -> Cohort_V1_ServerMessage.OneOf_Kind? {
    try await answers.next()?.kind
  }

  /// Reads to the end of the stream; the error the server ended it with (nil for OK).
  mutating func status() async -> RPCError? {
    do {
      while try await answers.next() != nil {}
      return nil
    } catch let error as RPCError {
      return error
    } catch {
      Issue.record("the stream failed without a gRPC status: \(error)")
      return nil
    }
  }

  /// Sends the report header and the update in chunks of at most `chunk` bytes.
  func report(_ header: Cohort_V1_ReportHeader, bytes: [UInt8], chunk: Int) {
    send(.report(header))
    var start = 0
    while start < bytes.count {
      let end = min(bytes.count, start + chunk)
      send(.updateChunk(.with { $0.data = Data(bytes[start..<end]) }))
      start = end
    }
  }

  func close() { outgoing.finish() }

  /// Resets the stream, as a device that goes away does.
  func cancel() { call.cancel() }
}

/// What a selected raw device holds: its stream (still open, after the task and checkpoint),
/// its task and the checkpoint's number of values.
struct SelectedDevice {
  var device: Int
  var stream: RawParticipation
  var task: Cohort_V1_Task
  var parameters: Int

  /// A well-formed report of an all-zero update for the task's round (or `round`): Float32
  /// values, or `encoded` in the plan's encoding, then under SCAFFOLD a zero Δc_k (or `controls`).
  func header(
    round: Int? = nil, values: [Float]? = nil, encoded: (EncodedUpdate.WireKind, [UInt8])? = nil,
    controls: [Float]? = nil
  ) -> (Cohort_V1_ReportHeader, [UInt8]) {
    let update = encoded?.1 ?? Float32LittleEndian.bytes(values ?? [Float](repeating: 0, count: parameters))
    let delta =
      task.serverControlBytes > 0 || controls != nil
      ? Float32LittleEndian.bytes(controls ?? [Float](repeating: 0, count: parameters)) : []
    let bytes = update + delta
    let header = Cohort_V1_ReportHeader.with {
      $0.round = round.map(Int64.init) ?? task.round
      $0.examples = 10
      $0.trainLoss = 1
      $0.updateBytes = Int64(update.count)
      $0.controlDeltaBytes = Int64(delta.count)
      $0.encoding = Cohort_V1_UpdateEncoding(rawValue: encoded?.0.rawValue ?? 0) ?? .float32
      $0.updateSha256 = SHA256.hex(bytes)
      $0.device = Int64(device)
    }
    return (header, bytes)
  }

  /// The plan the task carries.
  var plan: Plan {
    get throws { try JSONDecoder().decode(Plan.self, from: Data(task.planJson.utf8)) }
  }

  /// An all-zero update in the plan's encoding, as an honest device of a compressing plan sends it.
  func encodedZeros() throws -> (EncodedUpdate.WireKind, [UInt8]) {
    let codec = try UpdateCodec(plan: try plan.compression, dimension: parameters)
    var stream = RandomStream(seed: 1)
    let e = codec.encode([Float](repeating: 0, count: parameters), seed: task.codecSeed, stream: &stream)
    return (e.wireKind, e.wireForm)
  }

  var maxChunkBytes: Int { Int(task.maxChunkBytes) }

  /// Reports a well-formed update on the device's own stream and expects it accepted.
  mutating func reportHonestly() async throws {
    let compressed = try plan.compression.kind != .none
    let (header, bytes) = header(encoded: compressed ? try encodedZeros() : nil)
    stream.report(header, bytes: bytes, chunk: maxChunkBytes)
    guard case .acknowledgement(let ack) = try await stream.next() else {
      Issue.record("device \(device): no acknowledgement for a well-formed report")
      return
    }
    #expect(ack.accepted, "device \(device): \(ack.reason)")
    #expect(await stream.status() == nil)
  }
}

/// A refusal as a client sees it: the gRPC code and the `cohort-reason` trailer.
struct Refusal: Equatable, CustomStringConvertible {
  var code: RPCError.Code
  var reason: String?
  var message: String

  init?(_ error: RPCError?) {
    guard let error else { return nil }
    code = error.code
    reason = error.metadata[stringValues: ParticipationRefusal.reasonKey].first(where: { _ in true })
    message = error.message
  }

  var description: String { "\(code) \(reason ?? "no cohort-reason"): \(message)" }
}

/// Each bad input a device may send, against a real server over loopback: the stream ends with
/// the refusal's gRPC code and `cohort-reason`, the refusal is counted once by reason, and the
/// round still commits with the honest devices.
///
/// Every test's cohort is the honest device runtimes plus two raw clients: the misbehaving
/// device and a holder. Both raw clients check in (and are admitted) before the runtimes start,
/// so the selection is open when the runtimes first check in. The goal is the whole cohort, so
/// round 1 keeps reporting until the raw devices have reported or dropped: the misbehaviour
/// comes after the runtimes' accepted reports, and every answer is deterministic. The minimum
/// is one short of the goal, so the round commits whether the misbehaving device ends up
/// dropped or reported.
///
/// A device refused on its own stream is dropped when the stream ends, and that drop must be
/// the round's last event: a report that comes after a drop does not close the round before
/// its deadline (the state machine only checks "all reported or dropped" on drops), so the
/// holder reports first in those tests.
@Suite(.serialized) struct BadInputTests {
  static let honest = 2
  static let bad = 100
  static let holder = 101
  static let stranger = 1000

  /// What one test observes.
  struct Outcome {
    var rounds: [RoundRecord]
    var metrics: String

    /// The value of `cohort_reports_rejected_total{reason=…}` in the Prometheus text.
    func rejected(_ reason: Rejection) -> Double? {
      let prefix = "cohort_reports_rejected_total{reason=\"\(reason.rawValue)\"} "
      guard let line = metrics.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) else {
        return nil
      }
      return Double(line.dropFirst(prefix.count))
    }
  }

  /// Runs round 1 with the honest runtimes, the holder and the misbehaving device: once both
  /// raw devices have their tasks and the runtimes have reported, the holder reports (first, or
  /// after the misbehaviour when `holderFirst` is false) and `misbehave` runs.
  func round(
    _ name: String, holderFirst: Bool = true, strategy: String = "{kind: fedavg}", planKeys: [String] = [],
    reports: ReportsPlan? = nil,
    misbehave: @escaping @Sendable (FederationConnection, inout SelectedDevice) async throws -> Void
  ) async throws -> Outcome {
    var planned = try networkScenario(devices: Self.honest, rounds: 1, strategy: strategy, planKeys: planKeys)
    planned.plan.server.reports = reports
    let cohort = Self.honest + 2
    planned.plan.server.cohort = CohortPlan(
      goal: cohort, overSelection: 1, minimumFraction: Double(cohort - 1) / Double(cohort))
    let scenario = planned
    #expect(scenario.plan.server.cohort.minimumReports == cohort - 1)
    let directory = try temporaryDirectory("bad-input-\(name)")
    let store = try ResultsStore(path: directory + "/server.sqlite")
    let registry = PrometheusCollectorRegistry()
    let server = try FederationServer(
      configuration: .init(
        plan: scenario.plan, security: .insecureLoopback, seed: scenario.seed, populationSize: cohort),
      store: store,
      logger: Logger(label: "test-server"), metrics: PrometheusMetricsFactory(registry: registry))
    let data = try DeviceDataProvider(scenario: scenario)
    try await withServer(server, limit: 60) { port in
      let connection = try FederationConnection(host: "127.0.0.1", port: port, security: .insecure)
      defer { connection.close() }
      var bad = try await Self.admit(Self.bad, connection)
      var holder = try await Self.admit(Self.holder, connection)
      try await withThrowingTaskGroup(of: Void.self) { group in
        for device in 0..<Self.honest {
          let local = data.data(device: device)
          let runtime = DeviceRuntime(
            configuration: .init(
              device: device, seed: scenario.seed, initialBackoff: 0.05, maximumBackoff: 0.5),
            connection: connection,
            examples: { LocalExamples(train: local.train, indices: local.trainIndices, test: local.test) },
            logger: Logger(label: "test-device-\(device)"))
          group.addTask { await runtime.run(participations: 1) }
        }
        var badDevice = try await Self.task(for: Self.bad, &bad)
        var holderDevice = try await Self.task(for: Self.holder, &holder)
        // The runtimes end once their reports are accepted; round 1 still waits for the raw two.
        try await group.waitForAll()
        if holderFirst { try await holderDevice.reportHonestly() }
        try await misbehave(connection, &badDevice)
        if !holderFirst { try await holderDevice.reportHonestly() }
      }
    }
    return Outcome(rounds: try store.rounds(server.run!), metrics: registry.emitToString())
  }

  /// Checks `device` in until it is admitted to the cohort being selected.
  static func admit(_ device: Int, _ connection: FederationConnection) async throws -> RawParticipation {
    while true {
      var stream = RawParticipation(connection)
      stream.sendCheckIn(device: device)
      switch try await stream.next() {
      case .admitted: return stream
      case .retry:
        // Only before the server opened the first selection, a moment after it listens.
        await Task.yield()
      case let other:
        throw CohortError(.io, "device \(device): expected admission, got \(String(describing: other))")
      }
    }
  }

  /// Reads the task and the checkpoint's chunks that follow it.
  static func task(for device: Int, _ stream: inout RawParticipation) async throws -> SelectedDevice {
    guard case .task(let task) = try await stream.next() else {
      throw CohortError(.io, "device \(device): expected the task")
    }
    var received = 0
    while received < task.checkpointBytes {
      guard case .checkpointChunk(let chunk) = try await stream.next() else {
        throw CohortError(.io, "device \(device): the checkpoint ended after \(received) bytes")
      }
      received += chunk.data.count
    }
    var control = 0
    while control < task.serverControlBytes {
      guard case .serverControlChunk(let chunk) = try await stream.next() else {
        throw CohortError(.io, "device \(device): the server control variate ended after \(control) bytes")
      }
      control += chunk.data.count
    }
    return SelectedDevice(device: device, stream: stream, task: task, parameters: received / 4)
  }

  /// The round committed, and the refusal was counted exactly once by its reason.
  func expectRecovered(_ outcome: Outcome, counted reason: Rejection) {
    #expect(outcome.rounds.map(\.round) == [1])
    #expect(outcome.rounds.first?.outcome == .committed, "\(outcome.rounds)")
    #expect(outcome.rounds.first?.reported ?? 0 >= Self.honest + 1, "\(outcome.rounds)")
    #expect(outcome.rejected(reason) == 1, "\(outcome.metrics)")
  }

  // MARK: Bad updates on the device's own stream

  @Test func anUpdateOfTheWrongShapeIsMalformed() async throws {
    let outcome = try await round("shape") { _, bad in
      let (header, bytes) = bad.header(values: [Float](repeating: 0.5, count: bad.parameters - 3))
      bad.stream.report(header, bytes: bytes, chunk: bad.maxChunkBytes)
      let refusal = Refusal(await bad.stream.status())
      #expect(refusal?.code == .invalidArgument, "\(String(describing: refusal))")
      #expect(refusal?.reason == "malformed", "\(String(describing: refusal))")
      #expect(refusal?.message.hasPrefix("malformed: ") == true, "\(String(describing: refusal))")
    }
    expectRecovered(outcome, counted: .malformed)
  }

  @Test(arguments: [Float.nan, .infinity, -.infinity])
  func anUpdateWithANonFiniteValueIsMalformed(value: Float) async throws {
    let outcome = try await round("nonfinite") { _, bad in
      var values = [Float](repeating: 0, count: bad.parameters)
      values[values.count / 2] = value
      let (header, bytes) = bad.header(values: values)
      bad.stream.report(header, bytes: bytes, chunk: bad.maxChunkBytes)
      let refusal = Refusal(await bad.stream.status())
      #expect(refusal?.code == .invalidArgument, "\(String(describing: refusal))")
      #expect(refusal?.reason == "malformed", "\(String(describing: refusal))")
    }
    expectRecovered(outcome, counted: .malformed)
  }

  // MARK: Figures beyond the plan ([Hardening], first and third rows of its table)

  /// Sends `header` (altered by `lie`) with an all-zero update and expects `out_of_range`.
  static func expectOutOfRange(
    _ bad: inout SelectedDevice, values: [Float]? = nil, _ lie: (inout Cohort_V1_ReportHeader) -> Void
  ) async {
    var (header, bytes) = bad.header(values: values)
    lie(&header)
    await expectRefused(&bad, (header, bytes), .outOfRange, "out_of_range")
  }

  @Test func anExampleCountOfTwoToThe63IsOutOfRange() async throws {
    // It once crashed the server on integer overflow at the next honest report.
    let outcome = try await round("examples-overflow") { _, bad in
      await Self.expectOutOfRange(&bad) { $0.examples = .max }
    }
    expectRecovered(outcome, counted: .outOfRange)
  }

  @Test func anEvaluationExampleCountOfTwoToThe63IsOutOfRange() async throws {
    let outcome = try await round("evaluation-overflow") { _, bad in
      await Self.expectOutOfRange(&bad) {
        $0.evaluated = true
        $0.evaluationExamples = .max
        $0.evaluationLoss = 1
        $0.evaluationAccuracy = 0.5
      }
    }
    expectRecovered(outcome, counted: .outOfRange)
  }

  @Test func anInfiniteEvaluationLossOrANegativeAccuracyIsOutOfRange() async throws {
    let outcome = try await round("evaluation-lies") { _, bad in
      await Self.expectOutOfRange(&bad) {
        $0.evaluated = true
        $0.evaluationExamples = 5
        $0.evaluationLoss = .infinity
        $0.evaluationAccuracy = -3
      }
    }
    expectRecovered(outcome, counted: .outOfRange)
    #expect(outcome.rounds.first?.federatedEvalLoss?.isFinite != false, "\(outcome.rounds)")
  }

  @Test func anUpdateAboveThePlansNormBoundIsOutOfRange() async throws {
    // Finite, 3e38 per value: once accepted, it destroyed the model.
    let outcome = try await round("norm", reports: ReportsPlan(maximumUpdateNorm: 10, overNorm: .reject)) {
      _, bad in
      await Self.expectOutOfRange(&bad, values: [Float](repeating: 3e38, count: bad.parameters)) { _ in }
    }
    expectRecovered(outcome, counted: .outOfRange)
  }

  @Test func aChunkAboveTheTasksLimitIsTooLarge() async throws {
    let outcome = try await round("chunk") { _, bad in
      let (header, _) = bad.header()
      bad.stream.send(.report(header))
      bad.stream.send(.updateChunk(.with { $0.data = Data(count: bad.maxChunkBytes + 1) }))
      let refusal = Refusal(await bad.stream.status())
      #expect(refusal?.code == .invalidArgument, "\(String(describing: refusal))")
      #expect(refusal?.reason == "too_large", "\(String(describing: refusal))")
    }
    expectRecovered(outcome, counted: .tooLarge)
  }

  @Test func anUpdateDeclaredAboveTheTasksLimitIsTooLarge() async throws {
    let outcome = try await round("declared") { _, bad in
      var (header, _) = bad.header()
      header.updateBytes = bad.task.maxUpdateBytes + 1
      bad.stream.send(.report(header))
      let refusal = Refusal(await bad.stream.status())
      #expect(refusal?.code == .invalidArgument, "\(String(describing: refusal))")
      #expect(refusal?.reason == "too_large", "\(String(describing: refusal))")
    }
    expectRecovered(outcome, counted: .tooLarge)
  }

  // MARK: Reports on new streams

  @Test func aReportForARoundThatIsNotRunningIsAnUnknownRound() async throws {
    let outcome = try await round("round") { connection, bad in
      var stream = RawParticipation(connection)
      let (header, bytes) = bad.header(round: 99)
      stream.report(header, bytes: bytes, chunk: bad.maxChunkBytes)
      let refusal = Refusal(await stream.status())
      #expect(refusal?.code == .failedPrecondition, "\(String(describing: refusal))")
      #expect(refusal?.reason == "unknown_round", "\(String(describing: refusal))")
      // The refusal does not cost the device its place in round 1.
      try await bad.reportHonestly()
    }
    expectRecovered(outcome, counted: .unknownRound)
    #expect(outcome.rounds.first?.reported == Self.honest + 2)
  }

  @Test func aReportFromADeviceThatWasNotSelectedIsRefused() async throws {
    let outcome = try await round("unselected") { connection, bad in
      var stream = RawParticipation(connection)
      var (header, bytes) = bad.header()
      header.device = Int64(Self.stranger)
      stream.report(header, bytes: bytes, chunk: bad.maxChunkBytes)
      let refusal = Refusal(await stream.status())
      #expect(refusal?.code == .failedPrecondition, "\(String(describing: refusal))")
      #expect(refusal?.reason == "not_selected", "\(String(describing: refusal))")
      try await bad.reportHonestly()
    }
    expectRecovered(outcome, counted: .notSelected)
  }

  /// The holder reports last, so round 1 is still open when the copy arrives: the answer is
  /// `duplicate`, never `late`.
  @Test func aReplayedUploadIsADuplicate() async throws {
    let outcome = try await round("replay", holderFirst: false) { connection, bad in
      try await bad.reportHonestly()
      var replay = RawParticipation(connection)
      let (header, bytes) = bad.header()
      replay.report(header, bytes: bytes, chunk: bad.maxChunkBytes)
      let refusal = Refusal(await replay.status())
      #expect(refusal?.code == .failedPrecondition, "\(String(describing: refusal))")
      #expect(refusal?.reason == "duplicate", "\(String(describing: refusal))")
    }
    expectRecovered(outcome, counted: .duplicate)
    #expect(outcome.rounds.first?.reported == Self.honest + 2)
  }

  /// A device whose stream is lost after training keeps its upload and sends it on a new
  /// stream: the server accepts it and the round commits with every device.
  @Test func aDeviceThatLostItsStreamUploadsOnANewOne() async throws {
    let outcome = try await round("resume", holderFirst: false) { connection, device in
      let (header, bytes) = device.header()
      // The connection is lost before the upload; the server counts the device as dropped.
      device.stream.close()
      _ = await device.stream.status()
      let runtime = DeviceRuntime(
        configuration: .init(device: device.device, seed: 1), connection: connection,
        examples: { throw CohortError(.invalidData, "this device already trained") },
        logger: Logger(label: "test-resume"))
      await runtime.setPendingUpload(
        PendingUpload(
          header: ReportHeader(wire: header), payload: bytes, chunk: device.maxChunkBytes, deadline: .infinity
        ))
      let result = await runtime.participate()
      #expect(result == .finished(round: Int(device.task.round), accepted: true, reason: ""))
      #expect(await runtime.pendingUpload == nil)
    }
    #expect(outcome.rounds.first?.outcome == .committed)
    #expect(outcome.rounds.first?.reported == Self.honest + 2)
  }

  @Test func aCheckInOfAnotherProtocolVersionIsRefused() async throws {
    let outcome = try await round("version") { connection, bad in
      var stream = RawParticipation(connection)
      stream.send(
        .checkIn(
          .with {
            $0.device = Int64(Self.stranger)
            $0.population = "default"
          }), version: 99)
      let refusal = Refusal(await stream.status())
      #expect(refusal?.code == .failedPrecondition, "\(String(describing: refusal))")
      #expect(refusal?.reason == "protocol_version", "\(String(describing: refusal))")
      try await bad.reportHonestly()
    }
    expectRecovered(outcome, counted: .protocolVersion)
  }

  // MARK: Bad encodings and control variates

  /// Sends `header` and `bytes` on the misbehaving device's stream and expects the refusal
  /// `reason` with a message that contains `detail`.
  static func expectRefused(
    _ bad: inout SelectedDevice, _ report: (Cohort_V1_ReportHeader, [UInt8]), _ reason: Rejection,
    _ detail: String
  ) async {
    bad.stream.report(report.0, bytes: report.1, chunk: bad.maxChunkBytes)
    let refusal = Refusal(await bad.stream.status())
    #expect(refusal?.code == .invalidArgument, "\(String(describing: refusal))")
    #expect(refusal?.reason == reason.rawValue, "\(String(describing: refusal))")
    #expect(refusal?.message.contains(detail) == true, "\(String(describing: refusal))")
  }

  static let quantized = ["compression: {kind: quantization, bits: 8}"]

  @Test func anEncodedUpdateOfTheWrongLengthIsMalformed() async throws {
    let outcome = try await round("encoded-length", planKeys: Self.quantized) { _, bad in
      let (kind, bytes) = try bad.encodedZeros()
      await Self.expectRefused(
        &bad, bad.header(encoded: (kind, Array(bytes.dropLast()))), .malformed, "bytes")
    }
    expectRecovered(outcome, counted: .malformed)
  }

  @Test func anUpdateInAnotherEncodingThanThePlansIsMalformed() async throws {
    let outcome = try await round("encoding", planKeys: Self.quantized) { _, bad in
      await Self.expectRefused(&bad, bad.header(), .malformed, "encoded as")
    }
    expectRecovered(outcome, counted: .malformed)
  }

  @Test func aBitWidthOtherThanThePlansIsMalformed() async throws {
    let outcome = try await round("bit-width", planKeys: Self.quantized) { _, bad in
      var (kind, bytes) = try bad.encodedZeros()
      bytes[0] = 9
      await Self.expectRefused(&bad, bad.header(encoded: (kind, bytes)), .malformed, "bit width is 9")
    }
    expectRecovered(outcome, counted: .malformed)
  }

  @Test func aSparseIndexOutOfRangeIsMalformed() async throws {
    let outcome = try await round("index", planKeys: ["compression: {kind: top_k, fraction: 0.1}"]) {
      _, bad in
      var (kind, bytes) = try bad.encodedZeros()
      // The count, then the kept indices: the last index is set to the parameter count.
      let kept = Int(bytes[0]) | Int(bytes[1]) << 8
      withUnsafeBytes(of: UInt32(bad.parameters).littleEndian) {
        bytes.replaceSubrange((4 * kept)..<(4 * kept + 4), with: $0)
      }
      await Self.expectRefused(
        &bad, bad.header(encoded: (kind, bytes)), .malformed, "index \(bad.parameters) is out of range")
    }
    expectRecovered(outcome, counted: .malformed)
  }

  @Test func aControlDeltaOfTheWrongShapeIsMalformed() async throws {
    let outcome = try await round("control-shape", strategy: "{kind: scaffold}") { _, bad in
      let controls = [Float](repeating: 0.5, count: bad.parameters - 3)
      await Self.expectRefused(
        &bad, bad.header(controls: controls), .malformed,
        "Δc_k has \(bad.parameters - 3) values, the model \(bad.parameters)")
    }
    expectRecovered(outcome, counted: .malformed)
  }

  @Test func aControlDeltaAboveTheModelsSizeIsTooLarge() async throws {
    let outcome = try await round("control-size", strategy: "{kind: scaffold}") { _, bad in
      let controls = [Float](repeating: 0, count: bad.parameters + 1)
      await Self.expectRefused(&bad, bad.header(controls: controls), .tooLarge, "Δc_k declares")
    }
    expectRecovered(outcome, counted: .tooLarge)
  }

  @Test func aControlDeltaWithoutScaffoldIsTooLarge() async throws {
    let outcome = try await round("control-fedavg") { _, bad in
      await Self.expectRefused(&bad, bad.header(controls: [0, 0]), .tooLarge, "the limit is 0")
    }
    expectRecovered(outcome, counted: .tooLarge)
  }

  @Test func aScaffoldReportWithoutControlDeltaIsMalformed() async throws {
    let outcome = try await round("control-missing", strategy: "{kind: scaffold}") { _, bad in
      var (header, bytes) = bad.header()
      bytes = Array(bytes.prefix(Int(header.updateBytes)))
      header.controlDeltaBytes = 0
      header.updateSha256 = SHA256.hex(bytes)
      await Self.expectRefused(&bad, (header, bytes), .malformed, "Δc_k")
    }
    expectRecovered(outcome, counted: .malformed)
  }
}
