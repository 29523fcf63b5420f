import CohortCore
import CohortSecAgg
import Testing

@testable import CohortProtocol

@Suite struct SecureAggregationRoundTests {
  static let dimension = 6

  static func plan(active: Bool = false, threshold: Int = 3) throws -> Plan {
    let yaml = """
      name: p
      model: {kind: logistic_regression, inputs: 2, classes: 2}
      server: {cohort: {goal: 6, minimum_fraction: 0.5}}
      secure_aggregation: {enabled: true, graph: complete, threshold: \(threshold)\(active ? ", variant: active" : "")}

      """
    return try Plan.parse(yaml: yaml, file: "p.yaml")
  }

  /// A 32-byte secret for a device and purpose, from a fixed seed.
  static func secret(_ device: DeviceID, _ purpose: String) -> [UInt8] {
    var random = RandomStream(seed: 7, purpose: purpose, device: device)
    var out: [UInt8] = []
    for _ in 0..<4 { withUnsafeBytes(of: random.next().littleEndian) { out.append(contentsOf: $0) } }
    return out
  }

  static func update(_ device: DeviceID) -> [Float] {
    (0..<dimension).map { Float(($0 + device) % 5) * 0.1 - 0.2 }
  }

  /// The devices' side, in memory: each member answers every step over bytes, as it would over a
  /// network, unless it drops before that step.
  struct Harness {
    var round: SecureAggregationRound
    var devices: [DeviceID: SecAggDevice] = [:]
    var forger: DeviceID?
    var inputs: [DeviceID: [UInt32]] = [:]

    init(
      plan: Plan, devices ids: [DeviceID], examples: Int = 10, forger: DeviceID? = nil
    ) {
      self.forger = forger
      let active = plan.secureAggregation.variant == .active
      let members = ids.map { d in
        SecureAggregationRound.Member(
          device: d, examples: examples + d,
          identityKey: active ? SecAggCrypto.signingPair(seed: secret(d, "identity")).publicKey : nil)
      }
      round = SecureAggregationRound(
        plan: plan, round: 4, dimension: SecureAggregationRoundTests.dimension, rotationSeed: 99,
        graphSeed: secret(-1, "graph"), members: members)
      guard let configuration = round.configuration, let encoding = round.encoding else { return }
      for m in members {
        // A forger signs with a key that is not the one the server holds for it.
        let identity =
          active
          ? SecAggCrypto.signingPair(seed: secret(m.device, m.device == forger ? "forged" : "identity")) : nil
        devices[m.device] = SecAggDevice(
          configuration: configuration, index: round.index(of: m.device)!, seed: secret(m.device, "device"),
          identitySecretKey: identity?.secretKey ?? [])
        var random = RandomStream(seed: 7, purpose: encoding.streamPurpose, round: 4, device: m.device)
        inputs[m.device] = encoding.encode(update(m.device), examples: m.examples, random: &random)
      }
    }

    /// Runs the round to its end; `drops[step]` leave before answering that step.
    mutating func run(drops: [SecAggServer.Step: Set<DeviceID>] = [:]) {
      for (device, var state) in devices.sorted(by: { $0.key < $1.key }) {
        guard !(drops[.advertiseKeys] ?? []).contains(device), let keys = try? state.advertiseKeys() else {
          devices[device] = nil
          continue
        }
        devices[device] = state
        let rejection = round.receive(device: device, bytes: SecAggMessage.advertiseKeys(keys).encoded)
        #expect((rejection == nil) == (device != forger))
      }
      while case .running(let step) = round.state {
        // Dropped devices are awaited until the driver's deadline closes the step.
        #expect(round.stepComplete == (drops[step] ?? []).isEmpty)
        let outgoing = round.closeStep()
        guard case .running(let next) = round.state else { break }
        for (device, bytes) in outgoing.sorted(by: { $0.key < $1.key }) {
          guard var state = devices[device], !(drops[next] ?? []).contains(device) else {
            devices[device] = nil
            continue
          }
          let message = try! SecAggMessage(decoding: bytes)
          guard let reply = try? state.handle(message, input: next == .maskedInput ? inputs[device]! : [])
          else {
            devices[device] = nil
            continue
          }
          devices[device] = state
          _ = round.receive(device: device, bytes: reply.encoded)
        }
      }
    }

    /// Σ of the survivors' encoded inputs, decoded as the round decodes it.
    func expectedSum(of survivors: [DeviceID]) -> [Double] {
      var sum = [UInt32](repeating: 0, count: round.configuration!.vectorLength)
      for d in survivors { for (i, w) in inputs[d]!.enumerated() { sum[i] &+= w } }
      let mask: UInt32 =
        round.configuration!.ringBits >= 32 ? .max : (1 << UInt32(round.configuration!.ringBits)) - 1
      return round.encoding!.decodeSum(sum.map { $0 & mask }, devices: survivors.count).weightedSum
    }
  }

  @Test func aFullRoundGivesTheExactSum() throws {
    var h = Harness(plan: try Self.plan(), devices: [3, 5, 8, 13, 21])
    let begin = try #require(h.round.begin(for: 8))
    #expect(begin.index == 3 && begin.count == 5 && begin.threshold == 3 && begin.round == 4)
    #expect(begin.sharedSeed == 99 && begin.peers.isEmpty && begin.vectorLength == Self.dimension + 1)
    #expect(h.round.begin(for: 4) == nil)
    h.run()
    let sum = try #require(h.round.result)
    #expect(sum.failure == nil && sum.survivors == [3, 5, 8, 13, 21])
    #expect(sum.examples == 5 * 10 + 3 + 5 + 8 + 13 + 21)
    #expect(sum.weightedSum == h.expectedSum(of: [3, 5, 8, 13, 21]))
    #expect(sum.rejectedMessages == 0)
    // The fixed-point encoding rounds each value to within a step of Σ wᵢΔᵢ.
    let cap = Double(try Self.plan().secureAggregation.weightCap)
    let plain = (0..<Self.dimension).map { i in
      [3, 5, 8, 13, 21].reduce(0.0) { $0 + Double(Self.update($1)[i]) * Double(10 + $1) / cap }
    }
    for (a, b) in zip(sum.weightedSum!, plain) { #expect(abs(a - b) < 1e-3) }
    #expect(abs(sum.totalWeight - Double(5 * 10 + 50) / cap) < 1e-3)
    for d in [3, 5, 8, 13, 21] { #expect(h.round.outcome(of: d) == .accepted) }
    #expect(h.round.outcome(of: 4) == .refused(reason: "secure_aggregation_dropout"))
  }

  @Test func stepRecordsCountDevicesBytesAndServerTime() throws {
    var h = Harness(plan: try Self.plan(), devices: [1, 2, 3, 4, 5])
    h.round.addServerSeconds(0.25, step: .advertiseKeys)
    h.round.addServerSeconds(0.5, step: .advertiseKeys)
    h.run(drops: [.maskedInput: [2]])
    let steps = try #require(h.round.result).steps
    #expect(steps.map(\.step) == ["advertise_keys", "share_keys", "masked_input", "unmasking"])
    #expect(steps.map(\.entered) == [5, 5, 5, 4])
    #expect(steps.map(\.dropped) == [0, 0, 1, 0])
    #expect(steps.allSatisfy { $0.bytesUp > 0 })
    #expect(steps.dropFirst().allSatisfy { $0.bytesDown > 0 })
    #expect(steps.map(\.serverSeconds) == [0.75, 0, 0, 0])
  }

  @Test(arguments: [SecAggServer.Step.advertiseKeys, .shareKeys, .maskedInput, .unmasking])
  func aDropoutAtAnyStepStillGivesASumAboveTheThreshold(step: SecAggServer.Step) throws {
    var h = Harness(plan: try Self.plan(), devices: [1, 2, 3, 4, 5, 6])
    h.run(drops: [step: [2, 5]])
    let sum = try #require(h.round.result)
    #expect(sum.failure == nil, "\(sum.failure ?? "")")
    // Devices that leave at unmasking already sent their masked input: it is in the sum.
    let survivors: [DeviceID] = step == .unmasking ? [1, 2, 3, 4, 5, 6] : [1, 3, 4, 6]
    #expect(sum.survivors == survivors)
    #expect(sum.weightedSum == h.expectedSum(of: survivors))
    #expect(
      h.round.outcome(of: 2)
        == (step == .unmasking ? .accepted : .refused(reason: "secure_aggregation_dropout")))
  }

  @Test(arguments: [SecAggServer.Step.advertiseKeys, .shareKeys, .maskedInput, .unmasking])
  func dropoutsBelowTheThresholdFailTheRound(step: SecAggServer.Step) throws {
    var h = Harness(plan: try Self.plan(), devices: [1, 2, 3, 4, 5])
    h.run(drops: [step: [1, 2, 3]])
    let sum = try #require(h.round.result)
    #expect(sum.weightedSum == nil && sum.survivors.isEmpty && sum.examples == 0)
    #expect(sum.failure != nil)
    #expect(!sum.steps.isEmpty)
    for d in 1...5 { #expect(h.round.outcome(of: d) == .refused(reason: "secure_aggregation_failed")) }
  }

  @Test func tooFewMembersFailBeforeTheProtocolStarts() throws {
    let round = SecureAggregationRound(
      plan: try Self.plan(), round: 1, dimension: 4, rotationSeed: 1, graphSeed: Self.secret(0, "graph"),
      members: [.init(device: 1, examples: 3)])
    let sum = try #require(round.result)
    #expect(sum.failure == "secure aggregation needs at least 2 devices, got 1")
    #expect(sum.steps.isEmpty && round.configuration == nil && round.begin(for: 1) == nil)
    #expect(round.outcome(of: 1) == .refused(reason: "secure_aggregation_failed"))
  }

  @Test func theActiveVariantRefusesAForgedSignature() throws {
    let plan = try Self.plan(active: true)
    var h = Harness(plan: plan, devices: [1, 2, 3, 4, 5], forger: 4)
    let begin = try #require(h.round.begin(for: 1))
    #expect(begin.peers.map(\.index) == [1, 2, 3, 4, 5])
    h.run()
    let sum = try #require(h.round.result)
    #expect(sum.failure == nil && sum.survivors == [1, 2, 3, 5])
    #expect(sum.weightedSum == h.expectedSum(of: [1, 2, 3, 5]))
    #expect(sum.rejectedMessages == 1)
    #expect(sum.steps.map(\.step).contains("consistency_check"))
    #expect(h.round.outcome(of: 4) == .refused(reason: "secure_aggregation_bad_signature"))
    #expect(h.round.outcome(of: 1) == .accepted)
  }

  @Test func theActiveVariantNeedsEveryIdentityKey() throws {
    let round = SecureAggregationRound(
      plan: try Self.plan(active: true, threshold: 2), round: 1, dimension: 4, rotationSeed: 1,
      graphSeed: Self.secret(0, "graph"),
      members: [
        .init(device: 1, examples: 3, identityKey: [UInt8](repeating: 1, count: 32)),
        .init(device: 2, examples: 3),
        .init(device: 3, examples: 3, identityKey: [UInt8](repeating: 3, count: 32)),
      ])
    #expect(round.result?.failure == "device 2 has no verified certificate for the active variant")
  }

  @Test func aMemberSendingGarbageIsRefusedAndCounted() throws {
    var h = Harness(plan: try Self.plan(), devices: [1, 2, 3, 4, 5])
    #expect(h.round.awaiting == [1, 2, 3, 4, 5])
    #expect(h.round.receive(device: 3, bytes: [0xFF, 0x01, 0x02]) != nil)
    #expect(h.round.outcome(of: 3) != nil && h.round.outcome(of: 3) != .accepted)
    #expect(!h.round.awaiting.contains(3))
    // Out of the protocol now: its next message is refused too, and counted.
    var keys = h.devices[3]!
    #expect(
      h.round.receive(device: 3, bytes: SecAggMessage.advertiseKeys(try keys.advertiseKeys()).encoded)
        == .outOfStep)
    // A device that is not a member is ignored.
    #expect(h.round.receive(device: 77, bytes: [1, 2, 3]) == nil)
    h.devices[3] = nil
    h.run()
    let sum = try #require(h.round.result)
    #expect(sum.failure == nil && sum.survivors == [1, 2, 4, 5])
    #expect(sum.rejectedMessages == 2)
    #expect(sum.weightedSum == h.expectedSum(of: [1, 2, 4, 5]))
  }
}
