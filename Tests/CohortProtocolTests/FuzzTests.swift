import CohortCompression
import CohortCore
import CohortSecAgg
import Foundation
import Testing

@testable import CohortProtocol

/// Seeded hostile values: the extremes every field must survive, and random values between.
/// Every fuzz test names its seed in its failure messages; `COHORT_FUZZ_SEED=<n>` replays one
/// (a trap ends the run, so the seed of the test that trapped is its default or that variable).
struct Hostile {
  let seed: UInt64
  var random: RandomStream

  init(_ fallback: UInt64) {
    seed = ProcessInfo.processInfo.environment["COHORT_FUZZ_SEED"].flatMap { UInt64($0) } ?? fallback
    random = RandomStream(seed: seed, purpose: "fuzz")
  }

  mutating func chance(_ p: Double) -> Bool { random.uniform() < p }
  mutating func below(_ n: Int) -> Int { random.int(below: n) }
  mutating func pick<T>(_ values: [T]) -> T { values[below(values.count)] }
  mutating func bool() -> Bool { chance(0.5) }

  static let extremeInts: [Int] = [
    .min, .min + 1, -(1 << 40), -1, 0, 1, 2, 3, Int(Int32.max), Int(UInt32.max), 1 << 40, .max - 1, .max,
  ]

  mutating func int() -> Int {
    switch below(6) {
    case 0, 1: pick(Self.extremeInts)
    case 2: Int(truncatingIfNeeded: random.next())
    default: below(40) - 4
    }
  }

  static let extremeDoubles: [Double] = [
    .nan, -.nan, .infinity, -.infinity, -0.0, 0, 1e300, -1e300, 1e308, .greatestFiniteMagnitude,
    -.greatestFiniteMagnitude, .leastNonzeroMagnitude, -.leastNonzeroMagnitude, .leastNormalMagnitude / 4,
    Double(Float.greatestFiniteMagnitude), 1, -1, 0.5,
  ]

  mutating func double() -> Double {
    switch below(6) {
    case 0, 1: pick(Self.extremeDoubles)
    case 2: Double(bitPattern: random.next())
    case 3: random.uniform() * 2 - 1
    default: random.uniform() * 100
    }
  }

  /// A finite double, for JSON (which has no NaN or infinity).
  mutating func finiteDouble() -> Double {
    let d = double()
    return d.isFinite ? d : 1e300
  }

  mutating func float() -> Float {
    switch below(5) {
    case 0:
      pick([
        .nan, .infinity, -.infinity, -0.0, .greatestFiniteMagnitude, .leastNonzeroMagnitude,
        .leastNormalMagnitude / 8,
      ])
    case 1: Float(bitPattern: UInt32(truncatingIfNeeded: random.next()))
    default: Float(random.uniform() * 4 - 2)
    }
  }

  mutating func uint64() -> UInt64 { pick([0, 1, .max, random.next()]) }

  /// At most `limit` bytes: empty, a few, or up to the limit (declared sizes elsewhere may be anything).
  mutating func bytes(limit: Int = 2048) -> [UInt8] {
    let count =
      switch below(4) {
      case 0: 0
      case 1: below(9)
      case 2: pick([32, 64, 256])
      default: below(limit + 1)
      }
    return (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }
  }

  mutating func string() -> String {
    switch below(6) {
    case 0: return ""
    case 1: return "p"
    case 2: return String(repeating: "x", count: below(4096))
    case 3: return SHA256.hex(bytes(limit: 16))
    default:
      let scalars = (0..<below(24)).compactMap { _ in Unicode.Scalar(UInt32(below(0x11_0000))) }
      return String(String.UnicodeScalarView(scalars))
    }
  }

  /// Monotone time that sometimes jumps far.
  mutating func advance(_ now: inout Double) {
    now += pick([0, 0.5, 1, 10, 60, 400, 1e6])
  }
}

/// Seeded fuzzing of the protocol's pure machines: thousands of hostile events each, and each
/// machine must stay up (a trap fails the run), answer with well-formed actions and keep its
/// state consistent.
@Suite struct FuzzTests {
  static let layout = WeightsLayout([.init("w", [4])])
  static let knownCertificateReasons = Set(DeviceCertificateRefusal.Reason.allCases.map(\.rawValue))

  // MARK: Server participation

  static func serverConfiguration(_ h: inout Hostile) -> ServerParticipation.Configuration {
    let secure = h.chance(0.3)
    var codec: UpdateCodec?
    if !secure, h.chance(0.4) {
      let plan = h.pick([
        CompressionPlan(kind: .quantization, bits: 4),
        CompressionPlan(kind: .quantization, bits: 2, range: 1),
        CompressionPlan(kind: .topK, fraction: 0.5),
        CompressionPlan(kind: .randomMask, fraction: 0.5),
      ])
      codec = try? UpdateCodec(plan: plan, dimension: layout.count)
    }
    var c = ServerParticipation.Configuration(
      secureAggregation: secure, requiresCertificate: secure && h.bool(), scaffold: h.chance(0.2),
      adaptiveClipping: h.bool(), codec: codec, runSeed: h.uint64(), layout: layout,
      limits: .init(maxUpdateBytes: h.pick([0, 16, 64, 4096]), maxChunkBytes: h.pick([0, 1, 8, 1024])),
      taskWait: 30, selectionWindow: h.pick([0, 60, 1e9]), planJSON: "{}")
    if h.chance(0.2) { c.certifiedDevice = h.pick([7, h.int()]) }
    return c
  }

  static func randomHeader(_ h: inout Hostile) -> ReportHeader {
    ReportHeader(
      device: h.pick([7, h.int()]), round: h.pick([3, h.int()]), examples: h.int(), trainLoss: h.double(),
      updateBytes: h.pick([16, h.int()]), controlDeltaBytes: h.pick([0, 16, h.int()]),
      encoding: h.pick([0, 1, 2, h.int()]), sha256: h.string(),
      evaluation: h.chance(0.3) ? Evaluation(loss: h.double(), accuracy: h.double(), examples: h.int()) : nil,
      withinClip: h.bool(), lossAtGlobal: h.chance(0.3) ? h.double() : nil)
  }

  /// A report that fits the configuration (its update possibly hostile), and its chunks.
  static func fittingReport(
    _ h: inout Hostile, _ c: ServerParticipation.Configuration, device: DeviceID, round: Int
  ) -> [DeviceMessage] {
    let values = (0..<layout.count).map { _ in h.float() }
    var update: [UInt8] = []
    var kind = EncodedUpdate.WireKind.float32
    if !c.secureAggregation {
      if let codec = c.codec {
        let shared = UpdateCodec.sharedSeed(runSeed: c.runSeed, round: round)
        var stream = RandomStream(seed: h.uint64())
        let encoded = codec.encode(
          values.map { $0.isFinite ? $0 : 0 },
          seed: UpdateCodec.deviceSeed(shared: shared, round: round, device: device), stream: &stream)
        update = encoded.wireForm
        kind = encoded.wireKind
      } else {
        update = Float32LittleEndian.bytes(values)
      }
    }
    let controls = c.scaffold ? Float32LittleEndian.bytes((0..<layout.count).map { _ in h.float() }) : []
    var payload = update + controls
    if h.chance(0.1), !payload.isEmpty { payload[h.below(payload.count)] ^= 1 }
    let header = ReportHeader(
      device: device, round: round, examples: h.pick([10, h.int()]), trainLoss: h.pick([0.5, h.double()]),
      updateBytes: update.count, controlDeltaBytes: controls.count, encoding: kind.rawValue,
      sha256: update.isEmpty && controls.isEmpty ? "" : SHA256.hex(update + controls),
      evaluation: h.chance(0.3) ? Evaluation(loss: h.double(), accuracy: h.double(), examples: h.int()) : nil,
      withinClip: h.bool(), lossAtGlobal: h.chance(0.3) ? h.double() : nil)
    let size = max(1, min(c.limits.maxChunkBytes, 1 + h.below(16)))
    let chunks = stride(from: 0, to: payload.count, by: size).map {
      DeviceMessage.updateChunk(Array(payload[$0..<min(payload.count, $0 + size)]))
    }
    return [.report(header)] + chunks
  }

  static func randomDeviceMessage(_ h: inout Hostile) -> DeviceMessage? {
    switch h.below(7) {
    case 0: nil
    case 1:
      .checkIn(
        CheckInRequest(
          device: h.pick([7, h.int()]), population: h.string(), runtimeVersion: h.string(),
          cachedCheckpointSHA256: h.string(), certificate: h.bytes()))
    case 2: .report(randomHeader(&h))
    case 3: .updateChunk(h.bytes())
    case 4: .secureAggregation(h.bytes())
    case 5: .abandon(round: h.int(), reason: h.string())
    default: .updateChunk(h.bytes(limit: 16))
    }
  }

  static func randomReply(_ h: inout Hostile, now: Double) -> ServerReply {
    switch h.below(5) {
    case 0:
      let a = now + h.random.uniform() * 1000
      return .retry(window: a...(a + h.random.uniform() * 1000))
    case 1: return .waitForTask(round: h.int())
    case 2: return .task(RoundTask(round: h.int(), checkpointSHA256: h.string(), reportingDeadline: now + 10))
    case 3: return .accepted(round: h.int())
    default: return .rejected(h.pick(Rejection.allCases))
    }
  }

  static func assignment(_ h: inout Hostile, now: Double, scaffold: Bool) -> TaskAssignment {
    TaskAssignment(
      task: RoundTask(
        round: h.pick([3, h.int()]), checkpointSHA256: h.pick(["sha", h.string()]),
        reportingDeadline: now + h.random.uniform() * 1000),
      checkpoint: Weights(layout: layout, values: (0..<layout.count).map { _ in h.float() }),
      evaluate: h.bool(),
      serverControl: scaffold ? Weights(layout: layout, values: [1, 2, 3, 4]) : nil,
      clipNorm: h.chance(0.3) ? h.random.uniform() : nil)
  }

  static func randomBegin(_ h: inout Hostile) -> SecureAggregationBegin {
    SecureAggregationBegin(
      round: h.pick([3, h.int()]), index: h.int(), count: h.int(), degree: h.int(), threshold: h.int(),
      graphSeed: h.bytes(limit: 64), vectorLength: h.int(), ringBits: h.pick([16, 32, h.int()]),
      sharedSeed: h.uint64(),
      peers: (0..<h.below(6)).map { _ in .init(index: h.int(), certificate: h.bytes(limit: 64)) })
  }

  static func randomServerEvent(_ h: inout Hostile, now: Double, scaffold: Bool) -> ServerParticipation.Event
  {
    switch h.below(13) {
    case 0: return .streamEnded
    case 1: return .certificateAccepted
    case 2: return .certificateRefused(reason: h.pick(Array(knownCertificateReasons)), detail: h.string())
    case 3: return .checkInAnswered(randomReply(&h, now: now))
    case 4: return .task(assignment(&h, now: now, scaffold: scaffold))
    case 5:
      let a = now + h.random.uniform() * 100
      return .released(window: a...(a + 60))
    case 6: return .taskWaitExpired
    case 7: return .shutdown
    case 8: return .reportAnswered(randomReply(&h, now: now))
    case 9: return .secureAggregationBegin(randomBegin(&h))
    case 10: return .secureAggregationRequest(h.bytes())
    case 11: return .secureAggregationFinished(accepted: h.bool(), reason: h.string())
    default: return .received(randomDeviceMessage(&h), version: h.pick([protocolVersion, h.int()]))
    }
  }

  @Test func serverParticipationSurvivesHostileStreams() {
    var h = Hostile(0x5EED_0001)
    let seed = h.seed
    var ended = 0
    for participation in 0..<1500 {
      let c = Self.serverConfiguration(&h)
      var m = ServerParticipation(configuration: c)
      var now = 0.0
      var queue: [DeviceMessage] = []
      var connects = 0
      var disconnects = 0
      let controlLimit = c.scaffold ? Self.layout.count * 4 : 0
      let context = "seed \(seed), participation \(participation)"

      func check(_ actions: [ServerParticipation.Action], after event: String, wasOver: Bool) {
        let note = Comment(rawValue: "\(context), after \(event): \(actions)")
        if wasOver { #expect(actions.isEmpty, note) }
        for (i, action) in actions.enumerated() {
          switch action {
          case .send(.retry(let earliest, let latest)):
            #expect(earliest.isFinite && latest.isFinite && earliest >= 0 && earliest <= latest, note)
          case .send(.task(let t)):
            #expect(t.checkpointBytes >= 0 && t.serverControlBytes >= 0, note)
            #expect(t.reportingDeadlineSeconds.isFinite && t.reportingDeadlineSeconds >= 0, note)
          case .send(.checkpointChunk(let bytes)), .send(.serverControlChunk(let bytes)):
            #expect(!bytes.isEmpty && bytes.count <= max(1, c.limits.maxChunkBytes), note)
          case .submit(let report), .submitWhileRelaying(let report):
            #expect(report.bytes >= 0 && report.bytes <= c.limits.maxUpdateBytes + controlLimit, note)
            #expect(report.update.values.count == report.update.layout.count, note)
          case .connect: connects += 1
          case .disconnect: disconnects += 1
          case .end(let refusal):
            #expect(i == actions.count - 1, note)
            if case .unauthenticated(let reason)? = refusal?.reason {
              #expect(Self.knownCertificateReasons.contains(reason), note)
            }
          default: break
          }
        }
        let ends = actions.filter { if case .end = $0 { true } else { false } }.count
        #expect(ends <= 1, note)
        #expect((ends == 1) == (!wasOver && m.awaiting == .nothing), note)
      }

      for _ in 0..<24 {
        let event: ServerParticipation.Event
        if h.chance(0.1) {
          event = Self.randomServerEvent(&h, now: now, scaffold: c.scaffold)
        } else {
          switch (m.state, m.awaiting) {
          case (.started, _):
            if h.chance(0.6) {
              let device = c.certifiedDevice ?? 7
              event = .received(
                .checkIn(CheckInRequest(device: device, population: "p", certificate: h.bytes(limit: 64))),
                version: protocolVersion)
            } else if h.chance(0.5) {
              queue = Self.fittingReport(&h, c, device: c.certifiedDevice ?? h.pick([7, h.int()]), round: 3)
              event = .received(queue.removeFirst(), version: protocolVersion)
            } else {
              event = .received(Self.randomDeviceMessage(&h), version: protocolVersion)
            }
          case (.verifyingCertificate, _):
            event =
              h.chance(0.7)
              ? .certificateAccepted
              : .certificateRefused(reason: h.pick(Array(Self.knownCertificateReasons)), detail: h.string())
          case (.checkingIn, _), (.reporting, _):
            let reply =
              h.chance(0.5)
              ? h.pick([.waitForTask(round: 3), .accepted(round: 3)]) : Self.randomReply(&h, now: now)
            event = m.state.isReporting ? .reportAnswered(reply) : .checkInAnswered(reply)
          case (.waitingForTask, _):
            event =
              h.chance(0.7)
              ? .task(Self.assignment(&h, now: now, scaffold: c.scaffold))
              : Self.randomServerEvent(&h, now: now, scaffold: c.scaffold)
          case (.awaitingReport(let device, let round), _):
            if h.chance(0.7) {
              queue = Self.fittingReport(&h, c, device: device, round: round)
              event = .received(queue.removeFirst(), version: protocolVersion)
            } else {
              event = .received(Self.randomDeviceMessage(&h), version: protocolVersion)
            }
          case (_, .deviceMessage):
            if !queue.isEmpty, h.chance(0.9) {
              event = .received(queue.removeFirst(), version: protocolVersion)
            } else if m.state.isRelaying, h.chance(0.5) {
              event = .received(.secureAggregation(h.bytes()), version: protocolVersion)
            } else {
              event = .received(
                Self.randomDeviceMessage(&h), version: h.chance(0.05) ? h.int() : protocolVersion)
            }
          default:
            event = Self.randomServerEvent(&h, now: now, scaffold: c.scaffold)
          }
        }
        let wasOver = m.awaiting == .nothing
        let actions = m.handle(event, now: now)
        check(actions, after: "\(event)", wasOver: wasOver)
        h.advance(&now)
        if m.awaiting == .nothing { break }
      }
      // Whatever state the stream is in, its end ends the participation.
      let wasOver = m.awaiting == .nothing
      check(m.handle(.streamEnded, now: now), after: "stream end", wasOver: wasOver)
      #expect(m.awaiting == .nothing, "\(context): \(m.state)")
      if case .ended = m.state { ended += 1 }
      // Nothing more happens after the end.
      for _ in 0..<3 {
        let event = Self.randomServerEvent(&h, now: now, scaffold: c.scaffold)
        #expect(m.handle(event, now: now).isEmpty, "\(context): \(event) after the end")
      }
      #expect(connects == disconnects, "\(context): \(connects) connects, \(disconnects) disconnects")
      #expect(m.enrolledRound == nil, "\(context): still enrolled")
    }
    #expect(ended == 1500, "seed \(seed)")
  }
}

extension ServerParticipation.State {
  fileprivate var isReporting: Bool { if case .reporting = self { true } else { false } }
  fileprivate var isRelaying: Bool { if case .relaying = self { true } else { false } }
}

// MARK: - Device conversation

extension FuzzTests {
  /// Plans a server might send: plain, SCAFFOLD, secure aggregation (both variants, with a
  /// quantized ring, with the distributed discrete Gaussian); all for a model of 4 parameters.
  static let devicePlans: [Plan] = {
    let base = Plan(
      name: "toy", model: ModelPlan(kind: .logisticRegression, inputShape: [3], classes: 1),
      server: ServerPlan(cohort: CohortPlan(goal: 3, overSelection: 1.5)))
    var scaffold = base
    scaffold.server.strategy = StrategyPlan(kind: .scaffold)
    var secure = base
    secure.secureAggregation.enabled = true
    secure.secureAggregation.graph = .complete
    secure.secureAggregation.threshold = 2
    var active = secure
    active.secureAggregation.variant = .active
    var ring = secure
    ring.compression = CompressionPlan(kind: .quantization, bits: 4, range: 1)
    var distributed = secure
    distributed.privacy.kind = .distributedDiscreteGaussian
    return [base, scaffold, secure, active, ring, distributed]
  }()

  /// A plan with some fields set to hostile values (finite: JSON has no NaN).
  static func hostilePlan(_ h: inout Hostile) -> Plan {
    var plan = h.pick(devicePlans)
    for _ in 0..<(1 + h.below(3)) {
      switch h.below(22) {
      case 0: plan.model.inputShape = h.pick([[Int.max, 2], [0], [-1], [h.int()], [], [3, h.int()]])
      case 1: plan.model.classes = h.int()
      case 2: plan.model.hidden = [h.int()]
      case 3: plan.device.epochs = h.int()
      case 4: plan.device.batchSize = h.int()
      case 5: plan.server.cohort.goal = h.int()
      case 6: plan.server.cohort.overSelection = h.finiteDouble()
      case 7: plan.server.cohort.minimumFraction = h.finiteDouble()
      case 8: plan.secureAggregation.degree = h.int()
      case 9: plan.secureAggregation.threshold = h.int()
      case 10: plan.secureAggregation.securityBits = h.int()
      case 11: plan.secureAggregation.clip = h.finiteDouble()
      case 12: plan.secureAggregation.encodingBits = h.int()
      case 13: plan.secureAggregation.weightCap = h.int()
      case 14: plan.secureAggregation.dropoutRate = h.finiteDouble()
      case 15: plan.secureAggregation.corruptFraction = h.finiteDouble()
      case 16: plan.compression.bits = h.int()
      case 17: plan.compression.range = h.finiteDouble()
      case 18: plan.compression.fraction = h.finiteDouble()
      case 19: plan.privacy.clip = h.finiteDouble()
      case 20: plan.privacy.noiseMultiplier = h.finiteDouble()
      default: plan.privacy.beta = h.finiteDouble()
      }
    }
    return plan
  }

  static func json(_ plan: Plan) -> String {
    (try? JSONEncoder().encode(plan)).map { String(decoding: $0, as: UTF8.self) } ?? "{"
  }

  static func randomTask(_ h: inout Hostile) -> TaskDescription {
    TaskDescription(
      round: h.pick([3, h.int()]), checkpointSHA256: h.string(), checkpointBytes: h.pick([16, h.int()]),
      checkpointFollows: h.bool(), reportingDeadlineSeconds: h.double(), evaluate: h.bool(),
      clipNorm: h.double(),
      planJSON: h.chance(0.5)
        ? json(hostilePlan(&h)) : h.pick([json(h.pick(devicePlans)), h.string(), "{}"]),
      maxUpdateBytes: h.int(), maxChunkBytes: h.int(), codecSeed: h.uint64(),
      serverControlBytes: h.pick([0, 16, h.int()]))
  }

  /// A task that fits its plan, with the chunks that follow it.
  static func fittingTask(_ h: inout Hostile, plan: Plan) -> [ServerMessage] {
    let parameters = min(max(plan.model.parameterCount, 0), 64)
    let checkpoint = Float32LittleEndian.bytes((0..<parameters).map { _ in h.float() })
    let scaffold = plan.server.strategy.kind == .scaffold
    let control = scaffold ? Float32LittleEndian.bytes((0..<parameters).map { _ in h.float() }) : []
    let task = TaskDescription(
      round: 3, checkpointSHA256: SHA256.hex(checkpoint), checkpointBytes: checkpoint.count,
      checkpointFollows: true, reportingDeadlineSeconds: h.double(), evaluate: h.bool(),
      clipNorm: h.double(), planJSON: json(plan), maxUpdateBytes: h.int(),
      maxChunkBytes: h.pick([1, 7, 1 << 20, h.int()]), codecSeed: h.uint64(),
      serverControlBytes: control.count)
    let size = 1 + h.below(20)
    return [.task(task)]
      + stride(from: 0, to: checkpoint.count, by: size).map {
        .checkpointChunk(Array(checkpoint[$0..<min(checkpoint.count, $0 + size)]))
      }
      + stride(from: 0, to: control.count, by: size).map {
        .serverControlChunk(Array(control[$0..<min(control.count, $0 + size)]))
      }
  }

  /// A secure-aggregation message the server might send: garbage, a valid encoding with random
  /// content, or a valid one cut short or with a flipped byte.
  static func secAggBytes(_ h: inout Hostile, round: UInt64) -> [UInt8] {
    func index() -> SecAggIndex { h.pick([1, 2, 3, 0, .max, UInt32(truncatingIfNeeded: h.random.next())]) }
    func keys() -> AdvertiseKeys {
      AdvertiseKeys(
        round: h.pick([round, h.uint64()]), sender: index(), encryptionKey: h.bytes(limit: 40),
        maskingKey: h.bytes(limit: 40), signature: h.bytes(limit: 70))
    }
    let r = h.pick([round, h.uint64()])
    let message: SecAggMessage
    switch h.below(5) {
    case 0: return h.bytes()
    case 1: message = .neighbourKeys(NeighbourKeys(round: r, keys: (0..<h.below(4)).map { _ in keys() }))
    case 2:
      message = .sharesForDevice(
        SharesForDevice(
          round: r,
          shares: (0..<h.below(4)).map { _ in
            EncryptedShare(peer: index(), ciphertext: h.bytes(limit: 200))
          }))
    case 3:
      let list = SurvivorList(
        round: r, survivors: (0..<h.below(5)).map { _ in index() }.sorted(),
        signatures: (0..<h.below(3)).map { _ in
          SignedSurvivors(round: r, sender: index(), signature: h.bytes(limit: 70))
        })
      message = h.bool() ? .unmaskRequest(list) : .consistencyRequest(list)
    default:
      message = .advertiseKeys(keys())
    }
    var bytes = message.encoded
    if h.chance(0.2), !bytes.isEmpty { bytes[h.below(bytes.count)] ^= UInt8(1 + h.below(255)) }
    if h.chance(0.1) { bytes = Array(bytes.prefix(h.below(bytes.count + 1))) }
    return bytes
  }

  static func randomServerMessage(_ h: inout Hostile) -> ServerMessage {
    switch h.below(9) {
    case 0: .retry(earliestSeconds: h.double(), latestSeconds: h.double())
    case 1: .admitted(round: h.int())
    case 2: .task(randomTask(&h))
    case 3: .checkpointChunk(h.bytes())
    case 4: .serverControlChunk(h.bytes())
    case 5: .secureAggregationBegin(randomBegin(&h))
    case 6: .secureAggregation(secAggBytes(&h, round: 3))
    case 7: .acknowledgement(round: h.int(), accepted: h.bool(), reason: h.string())
    default: .retry(earliestSeconds: h.random.uniform() * 100, latestSeconds: h.random.uniform() * 1e6)
    }
  }

  static func trainingAnswer(_ h: inout Hostile, request: TrainingRequest?)
    -> DeviceConversation.TrainingAnswer
  {
    switch h.below(6) {
    case 0: return .ineligible(h.string())
    case 1: return .unusable(reason: "malformed", detail: h.string())
    case 2: return .failed(h.string())
    default:
      let count = request?.checkpoint.count ?? h.below(8)
      return .trained(
        TrainingResult(
          update: (0..<(h.chance(0.9) ? count : h.below(8))).map { _ in h.float() }, examples: h.int(),
          loss: h.double(),
          evaluation: h.chance(0.3)
            ? Evaluation(loss: h.double(), accuracy: h.double(), examples: h.int()) : nil,
          lossAtGlobal: h.chance(0.3) ? h.double() : nil,
          controlDelta: request?.serverControl.map { $0.map { _ in h.float() } },
          withinClip: h.chance(0.5) ? h.bool() : nil))
    }
  }

  /// A begin that fits the plan's encoding (so the device goes on to the protocol), or not.
  static func fittingBegin(_ h: inout Hostile, plan: Plan, dimension: Int) -> SecureAggregationBegin {
    var begin = randomBegin(&h)
    guard h.chance(0.8),
      case .success(let encoding) = SecureAggregationEncoding.make(
        plan: plan, round: 3, dimension: dimension, rotationSeed: 5)
    else { return begin }
    let count = 2 + h.below(4)
    begin.round = 3
    begin.count = count
    begin.index = 1 + h.below(count)
    begin.degree = count - 1
    begin.threshold = h.pick([1, 2, count - 1])
    begin.graphSeed = [UInt8](repeating: 7, count: 32)
    begin.vectorLength = encoding.vectorLength
    begin.ringBits = encoding.ringBits
    begin.peers = (1...count).map { .init(index: $0, certificate: h.bytes(limit: 32)) }
    return begin
  }

  @Test func deviceConversationSurvivesHostileServers() {
    var h = Hostile(0x5EED_0002)
    let seed = h.seed
    for participation in 0..<1200 {
      let context = "seed \(seed), participation \(participation)"
      let configuration = DeviceConversation.Configuration(
        device: 7, population: "p", seed: h.uint64(), maxCheckpointBytes: h.pick([0, 16, 1000, 1 << 30]),
        certificate: h.chance(0.5) ? h.bytes(limit: 64) : nil, maximumRetryWait: h.pick([0, 3600, 86_400]))
      var memory = DeviceConversation.Memory()
      if h.chance(0.2) { memory.checkpoint = (h.string(), (0..<4).map { _ in h.float() }) }
      if h.chance(0.2) {
        memory.pendingUpload = PendingUpload(
          header: Self.randomHeader(&h), payload: h.bytes(), chunk: h.int(), deadline: h.double())
      }
      var m = DeviceConversation(
        configuration: configuration, extent: h.pick([.full, .full, .checkIn, .hold]), memory: memory)
      var now = 0.0
      let plan = h.chance(0.7) ? h.pick(Self.devicePlans) : Self.hostilePlan(&h)
      var script: [ServerMessage] = []
      var lastTraining: TrainingRequest?
      var driverReasons: Set<String> = ["malformed", "too_large", "integrity"]

      func check(_ actions: [DeviceConversation.Action], after input: String, wasOver: Bool) {
        let note = Comment(rawValue: "\(context), after \(input): \(actions)")
        if wasOver { #expect(actions.isEmpty, note) }
        var declared: Int?
        var sent = 0
        for (i, action) in actions.enumerated() {
          switch action {
          case .send(.report(let header)) where input != "start":
            // (A pending upload resent at the start is the fuzzer's, with made-up sizes.)
            #expect(header.updateBytes >= 0 && header.controlDeltaBytes >= 0, note)
            declared = header.updateBytes + header.controlDeltaBytes
          case .send(.updateChunk(let bytes)): sent += bytes.count
          case .train(let request):
            lastTraining = request
            #expect(request.checkpoint.count == request.plan.model.parameterCount, note)
            if let c = request.serverControl { #expect(c.count == request.checkpoint.count, note) }
          case .end(let result):
            #expect(i == actions.count - 1, note)
            switch result {
            case .retry(let earliest, let latest):
              #expect(earliest.isFinite && latest.isFinite && 0 <= earliest && earliest <= latest, note)
              #expect(latest <= configuration.maximumRetryWait, note)
            case .refused(let reason, _): #expect(driverReasons.contains(reason), note)
            default: break
            }
          default: break
          }
        }
        // A report the device writes itself is followed by exactly its declared bytes, and kept
        // until a deadline it can wait for.
        if let declared {
          #expect(sent == declared, note)
          if let pending = m.memory.pendingUpload { #expect(pending.deadline.isFinite, note) }
        }
        let ends = actions.filter { if case .end = $0 { true } else { false } }.count
        #expect(ends <= 1, note)
        #expect((ends == 1) == (!wasOver && m.result != nil), note)
      }

      for _ in 0..<24 {
        let wasOver = m.result != nil
        var input = ""
        let actions: [DeviceConversation.Action]
        if !script.isEmpty, h.chance(0.9) {
          let message = script.removeFirst()
          input = "\(message)"
          actions = m.received(message, now: now)
        } else {
          switch m.state {
          case .notStarted:
            input = "start"
            actions = m.start(now: now)
          case .checkingIn, .waitingForTask:
            if h.chance(0.6) {
              script = Self.fittingTask(&h, plan: plan)
            } else {
              script = [h.chance(0.5) ? .admitted(round: 3) : Self.randomServerMessage(&h)]
            }
            let message = script.removeFirst()
            input = "\(message)"
            actions = m.received(message, now: now)
          case .training:
            let answer = Self.trainingAnswer(&h, request: lastTraining)
            if case .unusable(let reason, _) = answer { driverReasons.insert(reason) }
            input = "\(answer)"
            actions = m.trainingEnded(answer, now: now)
          case .reporting(let work, _) where h.chance(0.7):
            let message = ServerMessage.secureAggregationBegin(
              Self.fittingBegin(&h, plan: work.plan, dimension: work.checkpoint.count))
            input = "\(message)"
            actions = m.received(message, now: now)
          case .checkingPeers(_, let begin, _):
            if h.chance(0.8) {
              var keys: [SecAggIndex: [UInt8]] = [:]
              for i in 1...max(1, min(begin.count, 8)) { keys[SecAggIndex(i)] = h.bytes(limit: 40) }
              input = "peers checked"
              actions = m.peersChecked(.success(keys))
            } else {
              input = "peers refused"
              actions = m.peersChecked(.failure(DeviceCertificateRefusal(.untrusted, h.string())))
            }
          case .drawingSecrets:
            var seed =
              h.chance(0.9) ? (0..<32).map { _ in UInt8(truncatingIfNeeded: h.random.next()) } : h.bytes()
            var key = h.bytes(limit: 64)
            input = "secrets \(seed.count)"
            actions = m.secretsDrawn(seed: &seed, signingKey: &key)
          case .aggregating:
            let message =
              h.chance(0.8)
              ? ServerMessage.secureAggregation(Self.secAggBytes(&h, round: 3)) : Self.randomServerMessage(&h)
            input = "\(message)"
            actions = m.received(message, now: now)
          default:
            switch h.below(10) {
            case 0:
              input = "stream end"
              actions = m.streamEnded(now: now)
            case 1:
              let error = h.pick([
                ParticipationChannelError.refused(reason: h.string(), detail: h.string()),
                .unreadable(reason: h.string(), detail: h.string()), .connection(h.string()),
              ])
              switch error {
              case .refused(let reason, _), .unreadable(let reason, _): driverReasons.insert(reason)
              case .connection: break
              }
              input = "\(error)"
              actions = m.failed(error)
            case 2:
              input = "cancelled"
              actions = m.cancelled()
            default:
              let message = Self.randomServerMessage(&h)
              input = "\(message)"
              actions = m.received(message, now: now)
            }
          }
        }
        check(actions, after: input, wasOver: wasOver)
        memory = m.memory
        h.advance(&now)
        if m.result != nil { break }
      }
      // Once the stream is open, its end ends the participation.
      if case .notStarted = m.state {
      } else {
        let wasOver = m.result != nil
        check(m.streamEnded(now: now), after: "stream end", wasOver: wasOver)
        #expect(m.result != nil, "\(context): \(m.state)")
      }
      for _ in 0..<3 where m.result != nil {
        let message = Self.randomServerMessage(&h)
        #expect(m.received(message, now: now).isEmpty, "\(context): \(message) after the end")
        #expect(m.trainingEnded(.failed("x"), now: now).isEmpty, "\(context)")
      }
    }
  }
}

// MARK: - Rounds

extension FuzzTests {
  /// The figures of a record the store writes: finite, in range, never negative counts.
  static func checkRecord(_ record: RoundRecord, _ context: String) {
    let note = Comment(rawValue: "\(context): \(record)")
    for figure in [record.trainLoss, record.federatedEvalLoss, record.federatedEvalAccuracy, record.epsilon] {
      if let figure { #expect(figure.isFinite && figure >= 0, note) }
    }
    if let accuracy = record.federatedEvalAccuracy { #expect(accuracy <= 1, note) }
    #expect(record.durationSeconds.isFinite && record.durationSeconds >= 0, note)
    #expect(record.startedAt.isFinite && record.endedAt.isFinite, note)
    for count in [
      record.selected, record.reported, record.dropped, record.late, record.rejected, record.bytesDown,
      record.bytesUp, record.federatedEvalExamples ?? 0,
    ] {
      #expect(count >= 0, note)
    }
  }

  @Test func roundPipelineSurvivesHostileCheckInsAndReports() {
    var h = Hostile(0x5EED_0003)
    let seed = h.seed
    for run in 0..<6 {
      var plan = Plan(
        name: "fuzz", model: ModelPlan(kind: .logisticRegression, inputShape: [3], classes: 1),
        server: ServerPlan(
          rounds: 4, cohort: CohortPlan(goal: 3, overSelection: 1.34, minimumFraction: 0.67),
          windows: WindowsPlan(selection: 60, reporting: 300)))
      plan.server.cohort.sampling = h.pick([nil, .uniform, .checkIn])
      plan.server.reports = ReportsPlan(
        maximumExamples: h.pick([nil, 1000, 1_000_000_000]), maximumUpdateNorm: h.pick([nil, 1, 1e30]),
        overNorm: h.pick([nil, .clip, .reject]))
      let rules = ReportRules(plan: plan, layout: Self.layout)
      let machine = RoundStateMachine(
        configuration: .init(plan: plan.server, population: "p", seed: h.uint64()))
      var pipeline = RoundPipeline(
        configuration: .init(machine: machine.configuration, evaluationEvery: 2, privacy: nil),
        machine: machine,
        clipNorm: 0)
      pipeline.modelParameters = Self.layout.count
      var now = 0.0
      var toAggregate: [Int] = []
      var toCommit: [Int] = []
      var stopped = false
      let context = "seed \(seed), run \(run)"

      func perform(_ actions: [RoundPipeline.Action]) {
        for action in actions {
          switch action {
          case .aggregate(let round): toAggregate.append(round)
          case .closed(let closed): Self.checkRecord(closed.record, context)
          case .retryCommit(let round): toCommit.append(round)
          case .stop: stopped = true
          case .configure(let start):
            #expect(start.reportingDeadline.isFinite && !start.devices.isEmpty, "\(context): \(start)")
          case .release(_, let window):
            #expect(window.lowerBound.isFinite && window.upperBound.isFinite, "\(context): \(window)")
          case .invite, .finish: break
          }
        }
      }

      perform(pipeline.start(now: now))
      for _ in 0..<3000 where !pipeline.isFinished && !stopped {
        let round = h.pick(
          [pipeline.machine.reportingRound, pipeline.machine.selectingRound, h.int(), 1].compactMap { $0 })
        let device = h.chance(0.9) ? h.below(10) : h.int()
        switch h.below(10) {
        case 0, 1, 2:
          let (reply, actions) = pipeline.checkIn(
            CheckIn(
              device: device, population: h.chance(0.95) ? "p" : h.string(),
              protocolVersion: h.chance(0.95) ? protocolVersion : h.int()), now: now)
          if case .retry(let window) = reply {
            #expect(window.lowerBound.isFinite && window.upperBound.isFinite, "\(context): \(window)")
          }
          perform(actions)
        case 3, 4, 5:
          let values = (0..<Self.layout.count).map { _ in
            h.chance(0.8) ? Float(h.random.uniform() - 0.5) : h.float()
          }
          let report = UpdateReport(
            device: device, round: round,
            update: Weights(
              layout: h.chance(0.95) ? Self.layout : WeightsLayout([.init("x", [values.count])]),
              values: values),
            examples: h.chance(0.7) ? 1 + h.below(100) : h.int(),
            trainLoss: h.chance(0.7) ? h.random.uniform() : h.double(), bytes: h.below(4096),
            evaluation: h.chance(0.4)
              ? Evaluation(
                loss: h.chance(0.5) ? h.random.uniform() : h.double(),
                accuracy: h.chance(0.5) ? h.random.uniform() : h.double(),
                examples: h.chance(0.5) ? h.below(100) : h.int()) : nil,
            lossAtGlobal: h.chance(0.3) ? h.double() : nil, withinClip: h.chance(0.5) ? h.bool() : nil)
          // As the Coordinator does: the rules' verdict, then the pipeline's.
          var refusal: Rejection?
          let admitted = rules.admit(report.decoded(by: nil, layout: Self.layout)).get(else: report, &refusal)
          if refusal == nil {
            #expect(admitted.trainLoss.isFinite && admitted.examples > 0, "\(context): \(admitted)")
          }
          perform(pipeline.report(admitted, refusal: refusal, now: now).actions)
        case 6:
          perform(pipeline.dropped(device: device, round: round, now: now))
        case 7:
          if let round = toAggregate.first {
            toAggregate.removeFirst()
            let produced = h.chance(0.8)
            let (closed, actions) = pipeline.aggregated(
              round: round, .init(producedModel: produced, secureFailure: produced ? nil : "x"), now: now)
            Self.checkRecord(closed.record, context)
            perform(actions)
            if produced { toCommit.append(round) }
          }
        case 8:
          if let round = toCommit.first {
            toCommit.removeFirst()
            perform(
              h.chance(0.8)
                ? pipeline.committed(round: round, now: now) : pipeline.commitFailed(round: round, now: now))
          }
        default:
          h.advance(&now)
          perform(pipeline.tick(now: now))
        }
      }
      perform(pipeline.shutdown(now: now))
    }
  }
}

// MARK: - Secure aggregation

extension FuzzTests {
  /// A member's message as a hostile or broken device sends it: as is, with a flipped byte, cut
  /// short, with bytes appended, or replaced by garbage.
  static func mangled(_ h: inout Hostile, _ bytes: [UInt8]) -> [UInt8] {
    var out = bytes
    switch h.below(8) {
    case 0 where !out.isEmpty: out[h.below(out.count)] ^= UInt8(1 + h.below(255))
    case 1: out = Array(out.prefix(h.below(out.count + 1)))
    case 2: out += h.bytes(limit: 64)
    case 3: out = h.bytes()
    default: break
    }
    return out
  }

  @Test func secureAggregationRoundSurvivesHostileMembers() throws {
    var h = Hostile(0x5EED_0004)
    let seed = h.seed
    for run in 0..<24 {
      let context = "seed \(seed), run \(run)"
      let active = h.chance(0.3)
      let yaml = """
        name: p
        model: {kind: logistic_regression, inputs: 2, classes: 2}
        server: {cohort: {goal: 6, minimum_fraction: 0.5}}
        secure_aggregation: {enabled: true, graph: complete, threshold: 2\(active ? ", variant: active" : "")}

        """
      let plan = try Plan.parse(yaml: yaml, file: "p.yaml")
      let ids = Array(10..<(13 + h.below(3)))
      func secret(_ device: DeviceID, _ purpose: String) -> [UInt8] {
        var random = RandomStream(seed: seed, purpose: purpose, round: run, device: device)
        return (0..<4).flatMap { _ in withUnsafeBytes(of: random.next().littleEndian) { Array($0) } }
      }
      let members = ids.map { d in
        SecureAggregationRound.Member(
          device: d, examples: h.chance(0.8) ? 1 + h.below(100) : h.pick([0, -1, Int.max, Int.min]),
          identityKey: active ? SecAggCrypto.signingPair(seed: secret(d, "identity")).publicKey : nil)
      }
      var round = SecureAggregationRound(
        plan: plan, round: 4, dimension: 6, rotationSeed: h.uint64(), graphSeed: secret(-1, "graph"),
        members: members)
      guard let configuration = round.configuration, let encoding = round.encoding else {
        Issue.record("\(context): the round did not start")
        continue
      }
      var devices: [DeviceID: SecAggDevice] = [:]
      var inputs: [DeviceID: [UInt32]] = [:]
      var next: [DeviceID: [UInt8]] = [:]
      for m in members {
        var device = SecAggDevice(
          configuration: configuration, index: round.index(of: m.device)!, seed: secret(m.device, "device"),
          identitySecretKey: active
            ? SecAggCrypto.signingPair(seed: secret(m.device, "identity")).secretKey : [])
        var random = RandomStream(seed: seed, purpose: encoding.streamPurpose, device: m.device)
        inputs[m.device] = encoding.encode(
          (0..<6).map { _ in h.float() }, examples: max(0, m.examples), random: &random)
        if let keys = try? device.advertiseKeys() {
          next[m.device] = SecAggMessage.advertiseKeys(keys).encoded
        }
        devices[m.device] = device
      }
      var sent: [[UInt8]] = []
      var closes = 0
      while case .running = round.state, closes < 12 {
        switch h.below(6) {
        case 0, 1, 2:
          // A member's next message, maybe mangled or sent again, maybe under another name.
          let device = h.pick(ids)
          guard let bytes = next[device] ?? (h.chance(0.3) ? sent.last : nil) else { continue }
          next[device] = h.chance(0.2) ? bytes : nil
          let from = h.chance(0.9) ? device : h.pick(ids + [h.int()])
          sent.append(bytes)
          _ = round.receive(device: from, bytes: h.chance(0.7) ? bytes : Self.mangled(&h, bytes))
        case 3:
          _ = round.receive(
            device: h.pick(ids + [h.int()]), bytes: h.chance(0.5) ? h.bytes() : h.pick(sent + [[]]))
        default:
          guard round.stepComplete || h.chance(0.3) else { continue }
          closes += 1
          for (device, bytes) in round.closeStep() {
            #expect(ids.contains(device), "\(context): a message for \(device)")
            guard var state = devices[device], let message = try? SecAggMessage(decoding: bytes) else {
              Issue.record("\(context): the server sent bytes it cannot decode itself")
              continue
            }
            if let reply = try? state.handle(message, input: inputs[device] ?? []) {
              next[device] = reply.encoded
            }
            devices[device] = state
          }
        }
        #expect(round.awaiting.isSubset(of: Set(ids)), "\(context)")
      }
      while case .running = round.state { _ = round.closeStep() }
      guard let result = round.result else {
        Issue.record("\(context): a finished round has no result")
        continue
      }
      if let sum = result.weightedSum {
        #expect(sum.count == 6 && sum.allSatisfy(\.isFinite), "\(context): \(sum)")
        #expect(result.totalWeight.isFinite, "\(context)")
      }
      for id in ids { #expect(round.outcome(of: id) != nil, "\(context): no outcome for \(id)") }
      // A round that ended takes nothing more.
      #expect(round.receive(device: h.pick(ids), bytes: h.bytes()) == nil, "\(context)")
    }
  }

  @Test func secureAggregationMessagesDecodeOnlyWhatTheyEncode() {
    var h = Hostile(0x5EED_0005)
    let seed = h.seed
    var decoded = 0
    for i in 0..<6000 {
      var bytes: [UInt8]
      if h.chance(0.5) {
        bytes = Self.secAggBytes(&h, round: h.uint64())
        if h.chance(0.3) { bytes = Self.mangled(&h, bytes) }
      } else {
        bytes = [UInt8(1 + h.below(10))] + h.bytes(limit: 256)
      }
      guard let message = try? SecAggMessage(decoding: bytes) else { continue }
      decoded += 1
      // A message decodes only from its own canonical bytes.
      #expect(message.encoded == bytes, "seed \(seed), case \(i): \(bytes)")
      #expect(message.byteCount == bytes.count, "seed \(seed), case \(i)")
    }
    #expect(decoded > 500, "seed \(seed): only \(decoded) decoded")
  }
}

// MARK: - Update codec

extension FuzzTests {
  @Test func updateCodecReadsOnlyWhatFitsIt() throws {
    var h = Hostile(0x5EED_0006)
    let seed = h.seed
    let plans = [
      CompressionPlan(kind: .none),
      CompressionPlan(kind: .quantization, bits: 1),
      CompressionPlan(kind: .quantization, bits: 3),
      CompressionPlan(kind: .quantization, bits: 8, range: 2),
      CompressionPlan(kind: .quantization, bits: 16),
      CompressionPlan(kind: .topK, fraction: 0.3),
      CompressionPlan(kind: .randomMask, fraction: 0.5),
    ]
    var read = 0
    for i in 0..<4000 {
      let dimension = h.pick([1, 2, 3, 8, 17, 64])
      let plan = h.pick(plans)
      let codec = try UpdateCodec(plan: plan, dimension: dimension)
      var bytes: [UInt8]
      if h.chance(0.3) {
        var stream = RandomStream(seed: h.uint64())
        bytes =
          codec.encode((0..<dimension).map { _ in Float(h.random.uniform() - 0.5) }, seed: 9, stream: &stream)
          .wireForm
        if h.chance(0.5) { bytes = Self.mangled(&h, bytes) }
      } else {
        let size = h.chance(0.7) ? codec.wireBytes : h.below(2 * codec.wireBytes + 2)
        bytes = (0..<size).map { _ in UInt8(truncatingIfNeeded: h.random.next()) }
      }
      let kind = h.chance(0.8) ? codec.wireKind : h.pick(EncodedUpdate.WireKind.allCases)
      guard let update = try? codec.update(fromWire: bytes, kind: kind, seed: h.uint64()) else { continue }
      read += 1
      let context = Comment(rawValue: "seed \(seed), case \(i): \(plan) × \(dimension): \(bytes)")
      #expect(update.dimension == dimension, context)
      #expect(update.wireForm == bytes && update.wireKind == kind, context)
      #expect(codec.decode(update).count == dimension, context)
    }
    #expect(read > 1000, "seed \(seed): only \(read) read")
  }
}
