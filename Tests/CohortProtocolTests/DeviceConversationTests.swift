import CohortCompression
import CohortCore
import CohortProtocol
import CohortSecAgg
import Foundation
import Testing

/// The device's side of one participation stream, driven by hand: every server message is
/// hostile, and each refusal has its test.
@Suite struct DeviceConversationTests {
  typealias Action = DeviceConversation.Action

  static let values: [Float] = [0.5, -1, 2, 0.25]
  static var checkpointBytes: [UInt8] { Float32LittleEndian.bytes(values) }
  static var checkpointSHA: String { SHA256.hex(checkpointBytes) }

  static func plan(_ change: (inout Plan) -> Void = { _ in }) -> Plan {
    var plan = Plan(
      name: "toy", model: ModelPlan(kind: .logisticRegression, inputShape: [3], classes: 1),
      server: ServerPlan(cohort: CohortPlan(goal: 3, overSelection: 1)))
    change(&plan)
    return plan
  }

  static func json(_ plan: Plan) -> String {
    String(decoding: try! JSONEncoder().encode(plan), as: UTF8.self)
  }

  static func task(
    plan: Plan = DeviceConversationTests.plan(), follows: Bool = true, bytes: Int? = nil, sha: String? = nil,
    control: Int = 0,
    round: Int = 3
  ) -> TaskDescription {
    TaskDescription(
      round: round, checkpointSHA256: sha ?? checkpointSHA, checkpointBytes: bytes ?? checkpointBytes.count,
      checkpointFollows: follows, reportingDeadlineSeconds: 60, evaluate: true, clipNorm: 0,
      planJSON: json(plan), maxUpdateBytes: 1 << 20, maxChunkBytes: 10, codecSeed: 99,
      serverControlBytes: control)
  }

  static func machine(
    extent: DeviceConversation.Extent = .full, memory: DeviceConversation.Memory = .init(),
    certificate: [UInt8]? = nil
  ) -> DeviceConversation {
    DeviceConversation(
      configuration: .init(
        device: 7, population: "p", seed: 5, maxCheckpointBytes: 1000, certificate: certificate,
        maximumRetryWait: 3600),
      extent: extent, memory: memory)
  }

  static let trained = TrainingResult(
    update: [0.1, 0.2, -0.3, 0.4], examples: 12, loss: 0.7,
    evaluation: Evaluation(loss: 0.5, accuracy: 0.9, examples: 4),
    lossAtGlobal: nil, controlDelta: nil, withinClip: nil)

  /// The machine's `.train` request, after feeding it the task and checkpoint.
  static func downloaded(_ m: inout DeviceConversation, task: TaskDescription) -> [Action] {
    _ = m.start(now: 0)
    var actions = m.received(.task(task), now: 1)
    for chunk in stride(from: 0, to: checkpointBytes.count, by: 6) {
      #expect(actions.isEmpty)
      actions = m.received(
        .checkpointChunk(Array(checkpointBytes[chunk..<min(chunk + 6, checkpointBytes.count)])), now: 2)
    }
    return actions
  }

  static func sent(_ actions: [Action]) -> [DeviceMessage] {
    actions.compactMap { if case .send(let m) = $0 { m } else { nil } }
  }

  static func refusal(_ actions: [Action]) -> (reason: String, detail: String)? {
    guard case .end(.refused(let reason, let detail)) = actions.last else { return nil }
    return (reason, detail)
  }

  // MARK: Whole participations

  @Test func aPlainParticipationFromCheckInToAcknowledgement() throws {
    var m = Self.machine()
    let checkIn = m.start(now: 0)
    #expect(
      checkIn == [
        .send(
          .checkIn(
            CheckInRequest(
              device: 7, population: "p", runtimeVersion: "cohort-\(protocolVersion)",
              cachedCheckpointSHA256: "",
              certificate: [])))
      ])
    #expect(m.received(.admitted(round: 3), now: 1).isEmpty)
    let actions = Self.downloaded(&m, task: Self.task())
    guard case .train(let request) = actions.first, actions.count == 1 else {
      Issue.record("expected training, got \(actions)")
      return
    }
    #expect(request.checkpoint == Self.values)
    #expect(request.serverControl == nil)
    #expect(request.evaluate && request.codecSeed == 99 && request.clip == nil && request.round == 3)
    #expect(m.memory.checkpoint?.sha256 == Self.checkpointSHA)

    let report = m.trainingEnded(.trained(Self.trained), now: 100)
    let messages = Self.sent(report)
    let payload = Float32LittleEndian.bytes(Self.trained.update)
    guard case .report(let header) = messages.first else {
      Issue.record("no report header")
      return
    }
    #expect(header.round == 3 && header.device == 7 && header.examples == 12 && header.updateBytes == 16)
    #expect(header.sha256 == SHA256.hex(payload))
    #expect(header.encoding == EncodedUpdate.WireKind.float32.rawValue)
    #expect(header.evaluation == Self.trained.evaluation)
    // 16 bytes in chunks of at most 10.
    #expect(
      messages.dropFirst() == [.updateChunk(Array(payload[0..<10])), .updateChunk(Array(payload[10...]))])
    #expect(m.memory.pendingUpload?.deadline == 160)

    let end = m.received(.acknowledgement(round: 3, accepted: true, reason: ""), now: 101)
    #expect(end == [.end(.finished(round: 3, accepted: true, reason: ""))])
    #expect(m.memory.pendingUpload == nil)
    #expect(m.result == .finished(round: 3, accepted: true, reason: ""))
  }

  @Test func aCachedCheckpointIsUsedWithoutADownload() {
    var m = Self.machine(memory: .init(checkpoint: (Self.checkpointSHA, Self.values)))
    guard case .send(.checkIn(let request)) = m.start(now: 0).first else {
      Issue.record("no check-in")
      return
    }
    #expect(request.cachedCheckpointSHA256 == Self.checkpointSHA)
    let actions = m.received(.task(Self.task(follows: false)), now: 1)
    guard case .train(let training) = actions.first else {
      Issue.record("expected training, got \(actions)")
      return
    }
    #expect(training.checkpoint == Self.values)
  }

  @Test func aTaskForACheckpointTheDeviceDoesNotHoldIsAbandoned() {
    var m = Self.machine(memory: .init(checkpoint: ("other", [1])))
    _ = m.start(now: 0)
    #expect(
      m.received(.task(Self.task(follows: false)), now: 1) == [
        .end(.abandoned("the server sent no checkpoint and the device does not hold it"))
      ])
  }

  @Test func scaffoldsServerControlFollowsTheCheckpoint() {
    let plan = Self.plan { $0.server.strategy = StrategyPlan(kind: .scaffold) }
    var m = Self.machine()
    #expect(Self.downloaded(&m, task: Self.task(plan: plan, control: 16)).isEmpty)
    let control: [Float] = [1, 2, 3, 4]
    let bytes = Float32LittleEndian.bytes(control)
    #expect(m.received(.serverControlChunk(Array(bytes[..<7])), now: 3).isEmpty)
    let actions = m.received(.serverControlChunk(Array(bytes[7...])), now: 3)
    guard case .train(let request) = actions.first else {
      Issue.record("expected training, got \(actions)")
      return
    }
    #expect(request.serverControl == control)
    // Δc_k follows the update, counted apart.
    var result = Self.trained
    result.controlDelta = [0, 0, 1, 0]
    let messages = Self.sent(m.trainingEnded(.trained(result), now: 4))
    guard case .report(let header) = messages.first else { return }
    #expect(header.updateBytes == 16 && header.controlDeltaBytes == 16)
    #expect(
      header.sha256
        == SHA256.hex(Float32LittleEndian.bytes(result.update) + Float32LittleEndian.bytes([0, 0, 1, 0])))
  }

  @Test func anEncodedUpdateTravelsInItsWireForm() throws {
    let compression = CompressionPlan(kind: .quantization, bits: 4)
    let codec = try UpdateCodec(plan: compression, dimension: 4)
    var stream = RandomStream(seed: 1)
    let encoded = codec.encode(Self.trained.update, seed: 2, stream: &stream)
    var m = Self.machine()
    _ = Self.downloaded(&m, task: Self.task(plan: Self.plan { $0.compression = compression }))
    var result = Self.trained
    result.encoded = encoded
    let messages = Self.sent(m.trainingEnded(.trained(result), now: 4))
    guard case .report(let header) = messages.first else { return }
    #expect(header.encoding == encoded.wireKind.rawValue)
    #expect(header.updateBytes == encoded.wireForm.count)
    let chunks = messages.dropFirst().flatMap { m -> [UInt8] in
      if case .updateChunk(let b) = m { b } else { [] }
    }
    #expect(chunks == encoded.wireForm)
  }

  @Test func aLostUploadIsResentOnTheNextStreamUntilItsDeadline() {
    var m = Self.machine()
    _ = Self.downloaded(&m, task: Self.task())
    let first = Self.sent(m.trainingEnded(.trained(Self.trained), now: 100))
    #expect(
      m.streamEnded(now: 101) == [
        .end(.abandoned("the server ended the stream before acknowledging round 3"))
      ])
    let kept = m.memory
    #expect(kept.pendingUpload != nil)

    // Before the deadline: the same header and bytes, no check-in.
    var resumed = Self.machine(memory: kept)
    #expect(Self.sent(resumed.start(now: 150)) == first)
    #expect(
      resumed.received(.acknowledgement(round: 3, accepted: true, reason: ""), now: 151) == [
        .end(.finished(round: 3, accepted: true, reason: ""))
      ])
    #expect(resumed.memory.pendingUpload == nil)

    // After it: dropped, and an ordinary check-in.
    var late = Self.machine(memory: kept)
    guard case .send(.checkIn) = late.start(now: 161).first else {
      Issue.record("expected a check-in")
      return
    }
    #expect(late.memory.pendingUpload == nil)

    // A server's refusal is its last word on the upload.
    var refused = Self.machine(memory: kept)
    _ = refused.start(now: 150)
    #expect(
      refused.failed(.refused(reason: "late", detail: "x")) == [.end(.refused(reason: "late", detail: "x"))])
    #expect(refused.memory.pendingUpload == nil)
  }

  @Test func checkInOnlyAndHeldSessionsStopAtAdmission() {
    var once = Self.machine(extent: .checkIn)
    _ = once.start(now: 0)
    #expect(once.received(.admitted(round: 2), now: 1) == [.end(.admitted(round: 2))])

    var held = Self.machine(extent: .hold)
    _ = held.start(now: 0)
    #expect(held.received(.admitted(round: 2), now: 1) == [.admitted(round: 2)])
    #expect(held.received(.task(Self.task()), now: 2).isEmpty)
    #expect(held.cancelled() == [.end(.admitted(round: 2))])
  }

  @Test func anIneligibleDeviceLeavesTheRound() {
    var m = Self.machine()
    _ = Self.downloaded(&m, task: Self.task())
    #expect(
      m.trainingEnded(.ineligible("charging"), now: 5) == [
        .send(.abandon(round: 3, reason: "charging")), .end(.abandoned("charging")),
      ])
  }

  @Test func aRetryWindowIsKeptOrClampedToTheLongestWait() {
    var m = Self.machine()
    _ = m.start(now: 0)
    #expect(
      m.received(.retry(earliestSeconds: 10, latestSeconds: 20), now: 1) == [
        .end(.retry(earliest: 10, latest: 20))
      ])
    var far = Self.machine()
    _ = far.start(now: 0)
    #expect(
      far.received(.retry(earliestSeconds: 1e300, latestSeconds: 1e300), now: 1) == [
        .end(.retry(earliest: 3600, latest: 3600))
      ])
  }

  // MARK: Hostile input

  @Test(arguments: [
    (Double.nan, 10.0), (0, .nan), (0, .infinity), (-.infinity, 1), (20, 10), (-5, 10),
  ])
  func aRetryWindowThatIsNotAWindowIsRefused(earliest: Double, latest: Double) {
    var m = Self.machine()
    _ = m.start(now: 0)
    #expect(
      Self.refusal(m.received(.retry(earliestSeconds: earliest, latestSeconds: latest), now: 1))?.reason
        == "malformed")
  }

  @Test func aCheckpointLargerThanTheDevicesLimitIsRefusedBeforeBuffering() {
    for bytes in [1001, Int.max, -1] {
      var m = Self.machine()
      _ = m.start(now: 0)
      #expect(Self.refusal(m.received(.task(Self.task(bytes: bytes)), now: 1))?.reason == "too_large")
    }
  }

  @Test func aTaskWhosePlanWouldNotFitTheDeviceIsRefusedBeforeAnythingIsBuffered() {
    let cases: [(String, TaskDescription, String)] = [
      (
        "2·10^10 parameters",
        Self.task(
          plan: Self.plan {
            $0.model = ModelPlan(kind: .mlp, inputShape: [10_000_000], hidden: [2000], classes: 10)
          }), "too_large"
      ),
      (
        "more parameters than this device's limit",
        Self.task(
          plan: Self.plan { $0.model = ModelPlan(kind: .logisticRegression, inputShape: [300], classes: 1) }),
        "too_large"
      ),
      (
        "a checkpoint larger than the plan's model (1 GiB for 16 bytes)", Self.task(bytes: 1 << 30),
        "too_large"
      ),
      ("a checkpoint smaller than the plan's model", Self.task(bytes: 8), "too_large"),
      ("10^9 epochs", Self.task(plan: Self.plan { $0.device.epochs = 1_000_000_000 }), "malformed"),
      ("a batch of 0", Self.task(plan: Self.plan { $0.device.batchSize = 0 }), "malformed"),
    ]
    for (name, task, reason) in cases {
      var m = Self.machine()
      _ = m.start(now: 0)
      #expect(Self.refusal(m.received(.task(task), now: 1))?.reason == reason, "\(name)")
    }
  }

  @Test func aChunkBeyondTheDeclaredSizeIsRefused() {
    var m = Self.machine()
    _ = m.start(now: 0)
    _ = m.received(.task(Self.task()), now: 1)
    #expect(m.received(.checkpointChunk(Array(Self.checkpointBytes[..<10])), now: 2).isEmpty)
    #expect(
      Self.refusal(m.received(.checkpointChunk([UInt8](repeating: 0, count: 7)), now: 2))?.reason
        == "too_large")
  }

  @Test func aCheckpointThatDoesNotMatchItsSHA256IsRefused() {
    var m = Self.machine()
    #expect(
      Self.refusal(Self.downloaded(&m, task: Self.task(sha: String(repeating: "0", count: 64))))?.reason
        == "integrity")
    #expect(m.memory.checkpoint == nil)
  }

  @Test func aServerControlOfTheWrongSizeIsRefused() {
    // SCAFFOLD: exactly 4 bytes per parameter.
    let scaffold = Self.plan { $0.server.strategy = StrategyPlan(kind: .scaffold) }
    for declared in [0, 12, 20] {
      var m = Self.machine()
      #expect(
        Self.refusal(Self.downloaded(&m, task: Self.task(plan: scaffold, control: declared)))?.reason
          == "malformed")
    }
    // Anything else: none.
    var m = Self.machine()
    #expect(Self.refusal(Self.downloaded(&m, task: Self.task(control: 16)))?.reason == "malformed")
    // And chunks never exceed what was declared.
    var over = Self.machine()
    _ = Self.downloaded(&over, task: Self.task(plan: scaffold, control: 16))
    #expect(
      Self.refusal(over.received(.serverControlChunk([UInt8](repeating: 0, count: 17)), now: 3))?.reason
        == "too_large")
  }

  @Test func aPlanThatCannotBeReadIsRefused() {
    var m = Self.machine()
    _ = m.start(now: 0)
    var task = Self.task()
    task.planJSON = "{"
    #expect(Self.refusal(m.received(.task(task), now: 1))?.reason == "malformed")
  }

  @Test func unexpectedMessagesAreRefusedAtEveryStage() {
    let stray = ServerMessage.serverControlChunk([1])
    var checkingIn = Self.machine()
    _ = checkingIn.start(now: 0)
    #expect(Self.refusal(checkingIn.received(stray, now: 1))?.reason == "malformed")

    var downloading = Self.machine()
    _ = downloading.start(now: 0)
    _ = downloading.received(.task(Self.task()), now: 1)
    #expect(Self.refusal(downloading.received(.admitted(round: 1), now: 1))?.reason == "malformed")

    var reporting = Self.machine()
    _ = Self.downloaded(&reporting, task: Self.task())
    _ = reporting.trainingEnded(.trained(Self.trained), now: 3)
    // Secure aggregation is not in this plan.
    let begin = SecureAggregationBegin(
      round: 3, index: 1, count: 3, degree: 2, threshold: 2, graphSeed: [UInt8](repeating: 1, count: 32),
      vectorLength: 4, ringBits: 18, sharedSeed: 1)
    #expect(Self.refusal(reporting.received(.secureAggregationBegin(begin), now: 4))?.reason == "malformed")
    #expect(reporting.memory.pendingUpload != nil)

    var resuming = Self.machine(
      memory: .init(
        pendingUpload: PendingUpload(
          header: ReportHeader(device: 7, round: 3, examples: 1, trainLoss: 0), payload: [], chunk: 1,
          deadline: 100)))
    _ = resuming.start(now: 0)
    #expect(Self.refusal(resuming.received(.task(Self.task()), now: 1))?.reason == "malformed")
  }

  @Test func theStreamsEndAtEachStageAbandonsTheParticipation() {
    var checkingIn = Self.machine()
    _ = checkingIn.start(now: 0)
    #expect(checkingIn.streamEnded(now: 1) == [.end(.abandoned("the server ended the stream before a task"))])

    var downloading = Self.machine()
    _ = downloading.start(now: 0)
    _ = downloading.received(.task(Self.task()), now: 1)
    _ = downloading.received(.checkpointChunk(Array(Self.checkpointBytes[..<4])), now: 1)
    #expect(downloading.streamEnded(now: 1) == [.end(.abandoned("the checkpoint ended after 4 of 16 bytes"))])

    var control = Self.machine()
    _ = Self.downloaded(
      &control,
      task: Self.task(plan: Self.plan { $0.server.strategy = StrategyPlan(kind: .scaffold) }, control: 16))
    #expect(
      control.streamEnded(now: 1) == [
        .end(.abandoned("the server control variate ended after 0 of 16 bytes"))
      ])

    var training = Self.machine()
    _ = Self.downloaded(&training, task: Self.task())
    #expect(
      training.streamEnded(now: 1) == [
        .end(.abandoned("the server ended the stream before acknowledging round 3"))
      ])

    var resuming = Self.machine(
      memory: .init(
        pendingUpload: PendingUpload(
          header: ReportHeader(device: 7, round: 3, examples: 1, trainLoss: 0), payload: [], chunk: 1,
          deadline: 100)))
    _ = resuming.start(now: 0)
    #expect(
      resuming.streamEnded(now: 1) == [
        .end(.abandoned("the server ended the stream before acknowledging the resumed upload"))
      ])

    var held = Self.machine(extent: .hold)
    _ = held.start(now: 0)
    _ = held.received(.admitted(round: 4), now: 0)
    #expect(held.streamEnded(now: 1) == [.end(.admitted(round: 4))])
  }

  @Test func unreadableMessagesAndLostConnectionsEndTheParticipation() {
    var m = Self.machine()
    _ = m.start(now: 0)
    #expect(
      m.failed(.unreadable(reason: "protocol_version", detail: "2")) == [
        .end(.refused(reason: "protocol_version", detail: "2"))
      ])
    var lost = Self.machine()
    _ = lost.start(now: 0)
    #expect(lost.failed(.connection("reset")) == [.end(.abandoned("connection: reset"))])
  }

  // MARK: Secure aggregation

  static let securePlan = DeviceConversationTests.plan {
    $0.secureAggregation = SecureAggregationPlan(enabled: true)
  }

  /// The begin message a server would send device `index` of a 3-device round.
  static func begin(
    index: Int, plan: Plan = DeviceConversationTests.securePlan,
    change: (inout SecureAggregationBegin) -> Void = { _ in }
  )
    -> SecureAggregationBegin
  {
    let encoding = try! SecureAggregationEncoding.make(plan: plan, round: 3, dimension: 4, rotationSeed: 11)
      .get()
    let parameters = try! SecAggParameters.resolve(plan.secureAggregation, count: 3).get()
    var b = SecureAggregationBegin(
      round: 3, index: index, count: 3, degree: parameters.degree, threshold: parameters.threshold,
      graphSeed: [UInt8](repeating: 9, count: 32), vectorLength: encoding.vectorLength,
      ringBits: encoding.ringBits,
      sharedSeed: 11)
    change(&b)
    return b
  }

  /// A device that has reported its header under secure aggregation.
  static func secureDevice(
    update: [Float] = DeviceConversationTests.trained.update, plan: Plan = DeviceConversationTests.securePlan,
    certificate: [UInt8]? = nil
  )
    -> DeviceConversation
  {
    var m = machine(certificate: certificate)
    _ = downloaded(&m, task: task(plan: plan))
    var result = trained
    result.update = update
    let header = sent(m.trainingEnded(.trained(result), now: 3))
    #expect(header.count == 1)
    #expect(m.memory.pendingUpload == nil)
    return m
  }

  @Test func aThreeDeviceSecureAggregationRoundAgainstTheRealServer() throws {
    let updates: [[Float]] = [[0.1, 0.2, -0.3, 0.4], [0.5, -0.5, 0, 0.25], [-0.2, 0.1, 0.3, -0.4]]
    var devices = updates.map { Self.secureDevice(update: $0) }
    let first = Self.begin(index: 1)
    var server = SecAggServer(
      configuration: SecAggConfiguration(
        round: 3, count: 3, degree: first.degree, threshold: first.threshold, graphSeed: first.graphSeed,
        vectorLength: first.vectorLength, ringBits: first.ringBits))
    /// Feeds a device's answers to the server.
    func deliver(_ actions: [Action], from index: Int) {
      for case .send(.secureAggregation(let bytes)) in actions {
        #expect(server.receive(bytes: bytes, from: SecAggIndex(index)) == nil)
      }
    }
    for i in 0..<3 {
      #expect(
        devices[i].received(.secureAggregationBegin(Self.begin(index: i + 1)), now: 4) == [
          .drawSecrets(signingKey: false)
        ])
      var seed = [UInt8](repeating: UInt8(i + 1), count: 32)
      var key: [UInt8] = []
      deliver(devices[i].secretsDrawn(seed: &seed, signingKey: &key), from: i + 1)
      #expect(seed.allSatisfy { $0 == 0 }, "the machine zeroes the seed it was given")
    }
    while case .running = server.state {
      let outgoing = server.closeStep()
      for (index, message) in outgoing.sorted(by: { $0.key < $1.key }) {
        deliver(
          devices[Int(index) - 1].received(.secureAggregation(message.encoded), now: 5), from: Int(index))
      }
    }
    let sum = try #require(server.sum)
    let encoding = try SecureAggregationEncoding.make(
      plan: Self.securePlan, round: 3, dimension: 4, rotationSeed: 11
    ).get()
    let decoded = encoding.decodeSum(sum, devices: 3)
    let weight = encoding.weight(examples: Self.trained.examples)
    for j in 0..<4 {
      let expected = updates.map { Double($0[j]) * Double(weight) }.reduce(0, +)
      #expect(abs(decoded.weightedSum[j] - expected) < 1e-3, "coordinate \(j)")
    }
    for i in 0..<3 {
      #expect(
        devices[i].received(.acknowledgement(round: 3, accepted: true, reason: ""), now: 6) == [
          .end(.finished(round: 3, accepted: true, reason: ""))
        ])
    }
  }

  @Test func secureAggregationParametersThatDoNotMatchThePlanAreRefused() {
    let bad: [(String, (inout SecureAggregationBegin) -> Void)] = [
      ("vector length", { $0.vectorLength += 1 }),
      ("ring bits", { $0.ringBits = 32 }),
      ("round", { $0.round = 4 }),
      ("count beyond the plan's selection", { $0.count = 4 }),
      ("count zero", { $0.count = 0 }),
      ("index zero", { $0.index = 0 }),
      ("index beyond count", { $0.index = 4 }),
      ("graph seed", { $0.graphSeed = [1] }),
      ("negative degree", { $0.degree = -2 }),
      ("threshold", { $0.threshold = 0 }),
    ]
    for (name, change) in bad {
      var m = Self.secureDevice()
      let actions = m.received(.secureAggregationBegin(Self.begin(index: 1, change: change)), now: 4)
      #expect(Self.refusal(actions)?.reason == "malformed", "\(name): \(actions)")
    }
  }

  @Test func aDegreeTheNeighbourGraphCannotBuildIsRefusedNotTrapped() {
    // Six members of a plan that selects ten: degree 0 or 3 would trap the graph's preconditions.
    let plan = Self.plan {
      $0.secureAggregation = SecureAggregationPlan(enabled: true)
      $0.server.cohort = CohortPlan(goal: 10, overSelection: 1)
    }
    for degree in [0, 3] {
      var m = Self.secureDevice(plan: plan)
      let begin = Self.begin(index: 1, plan: plan) {
        $0.count = 6
        $0.degree = degree
        $0.threshold = 1
      }
      #expect(Self.refusal(m.received(.secureAggregationBegin(begin), now: 4))?.reason == "malformed")
    }
  }

  @Test func theActiveVariantAsksTheDriverToCheckThePeersCertificates() {
    let plan = Self.plan { $0.secureAggregation = SecureAggregationPlan(enabled: true, variant: .active) }
    let peers = (1...3).map { SecureAggregationBegin.Peer(index: $0, certificate: [UInt8($0)]) }
    let begin = Self.begin(index: 2, plan: plan) { $0.peers = peers }

    // Without an identity the device cannot sign: it leaves.
    var anonymous = Self.secureDevice(plan: plan)
    let left = anonymous.received(.secureAggregationBegin(begin), now: 4)
    guard case .end(.abandoned) = left.last, case .send(.abandon(round: 3, _)) = left.first else {
      Issue.record("expected an abandon, got \(left)")
      return
    }

    var m = Self.secureDevice(plan: plan, certificate: [2])
    #expect(
      m.received(.secureAggregationBegin(begin), now: 4) == [
        .checkPeerCertificates(peers: peers, count: 3, ownIndex: 2)
      ])
    // A refused certificate: counted, the round left, nothing signed.
    var refused = m
    let refusal = DeviceCertificateRefusal(.untrusted, "member 3: another CA")
    #expect(
      refused.peersChecked(.failure(refusal)) == [
        .certificateRefused(refusal), .send(.abandon(round: 3, reason: refusal.description)),
        .end(.abandoned("secure aggregation: \(refusal)")),
      ])
    // Keys for every member: the driver draws the secrets, signing key included.
    let keys = Dictionary(
      uniqueKeysWithValues: (1...3).map {
        (SecAggIndex($0), SecAggCrypto.signingPair(seed: [UInt8](repeating: UInt8($0), count: 32)).publicKey)
      })
    #expect(m.peersChecked(.success(keys)) == [.drawSecrets(signingKey: true)])
    var seed = [UInt8](repeating: 4, count: 32)
    var secret = SecAggCrypto.signingPair(seed: [UInt8](repeating: 2, count: 32)).secretKey
    let advertised = m.secretsDrawn(seed: &seed, signingKey: &secret)
    guard case .send(.secureAggregation(let bytes)) = advertised.first,
      case .advertiseKeys(let k) = try? SecAggMessage(decoding: bytes)
    else {
      Issue.record("expected advertised keys, got \(advertised)")
      return
    }
    #expect(k.signature.count == SecAggCrypto.signatureBytes)
    #expect(secret.allSatisfy { $0 == 0 } && seed.allSatisfy { $0 == 0 })

    // Keys missing for a member: refused.
    var partial = Self.secureDevice(plan: plan, certificate: [2])
    _ = partial.received(.secureAggregationBegin(begin), now: 4)
    #expect(Self.refusal(partial.peersChecked(.success([1: keys[1]!])))?.reason == "malformed")
  }

  @Test func aSecureAggregationMessageTheDeviceCannotReadEndsItsPart() {
    var m = Self.secureDevice()
    _ = m.received(.secureAggregationBegin(Self.begin(index: 1)), now: 4)
    var seed = [UInt8](repeating: 1, count: 32)
    var key: [UInt8] = []
    _ = m.secretsDrawn(seed: &seed, signingKey: &key)
    guard case .end(.abandoned) = m.received(.secureAggregation([0xff, 0, 1]), now: 5).last else {
      Issue.record("expected the device to leave")
      return
    }
  }

  // MARK: Found by fuzzing (FuzzTests)

  @Test func aModelWhoseSizeOverflowsOrIsNegativeIsRefusedNotATrap() {
    for shape in [[Int.max, 2], [-(1 << 62), 1], [0]] {
      var m = Self.machine()
      _ = m.start(now: 0)
      let plan = Self.plan { $0.model.inputShape = shape }
      #expect(
        Self.refusal(m.received(.task(Self.task(plan: plan)), now: 1))?.reason == "too_large", "\(shape)")
    }
  }

  @Test func planFiguresThatWouldTrapTheDeviceAreRefused() {
    let hostile: [(inout Plan) -> Void] = [
      { $0.server.cohort.goal = .max },  // the cohort bound overflowed Int
      { $0.server.cohort.overSelection = 1e300 },
      { $0.compression = CompressionPlan(kind: .quantization, bits: 99) },  // the ring's try! threw
      { $0.compression = CompressionPlan(kind: .quantization, range: 1e300) },  // a Float range of ∞
      { $0.secureAggregation.encodingBits = 64 },
      { $0.secureAggregation.dropoutRate = 2 },  // a precondition of the parameter search
      { $0.privacy.clip = -1 },
    ]
    for change in hostile {
      var m = Self.machine()
      _ = m.start(now: 0)
      var plan = Self.securePlan
      change(&plan)
      let refusal = Self.refusal(m.received(.task(Self.task(plan: plan)), now: 1))
      #expect(refusal?.reason == "malformed" && refusal?.detail.contains("cannot run") == true, "\(plan)")
    }
  }

  @Test func aNonFiniteUpdateLeavesSecureAggregationInsteadOfTrapping() {
    var m = Self.machine()
    _ = Self.downloaded(&m, task: Self.task(plan: Self.securePlan))
    var result = Self.trained
    result.update = [.nan, 1, .infinity, 0]
    let actions = m.trainingEnded(.trained(result), now: 3)
    #expect(
      actions == [
        .send(.abandon(round: 3, reason: "training gave a NaN or infinite update")),
        .end(.abandoned("training gave a NaN or infinite update")),
      ])
  }

  @Test func aNegativeExampleCountWeighsNothingInTheRing() throws {
    // A negative weight trapped the ring encoding's conversion to an unsigned count.
    let encoding = try SecureAggregationEncoding.make(
      plan: Self.securePlan, round: 3, dimension: 4, rotationSeed: 1
    ).get()
    #expect(encoding.weight(examples: -5) == 0 && encoding.weight(examples: .min) == 0)
  }
}
