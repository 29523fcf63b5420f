import CohortCore
import Testing

@testable import CohortSecAgg

/// Drives a round by hand so tests can inject bad messages between the honest ones.
struct ManualRound {
  var scenario: Scenario
  var server: SecAggServer
  var devices: [SecAggIndex: SecAggDevice] = [:]
  /// Every reply a device sent, by step, so tests can replay them later.
  var sent: [SecAggServer.Step: [SecAggIndex: SecAggMessage]] = [:]

  init(_ scenario: Scenario) {
    self.scenario = scenario
    server = SecAggServer(configuration: scenario.configuration)
    for i in 1...scenario.configuration.count {
      let index = SecAggIndex(i)
      var device = scenario.device(index)
      let keys = SecAggMessage.advertiseKeys(try! device.advertiseKeys())
      sent[.advertiseKeys, default: [:]][index] = keys
      devices[index] = device
    }
  }

  /// Delivers the honest messages of the current step, then closes it. `serverToDevice` may
  /// rewrite what a device receives.
  mutating func deliverStep(
    skip: Set<SecAggIndex> = [],
    serverToDevice: (SecAggIndex, SecAggMessage) -> SecAggMessage = { $1 }
  ) -> [SecAggIndex: SecAggMessage] {
    guard let step = server.step else { return [:] }
    if step == .advertiseKeys {
      for (index, m) in sent[.advertiseKeys]!.sorted(by: { $0.key < $1.key }) where !skip.contains(index) {
        #expect(server.receive(m, from: index) == nil)
      }
    }
    let outgoing = server.closeStep()
    guard let next = server.step else { return outgoing }
    for (index, message) in outgoing.sorted(by: { $0.key < $1.key }) where !skip.contains(index) {
      let reply = try? devices[index]!.handle(
        serverToDevice(index, message), input: next == .maskedInput ? scenario.input(index) : [])
      if let reply {
        sent[next, default: [:]][index] = reply
        #expect(server.receive(reply, from: index) == nil)
      }
    }
    return outgoing
  }

  mutating func finish() {
    while server.step != nil { _ = deliverStep() }
  }
}

@Suite struct RobustnessTests {
  static func scenario() -> Scenario { Scenario(count: 6, length: 64, degree: 5, threshold: 3, seed: 21) }

  @Test func malformedAndTruncatedMessagesAreCountedAndIgnored() {
    var round = ManualRound(Self.scenario())
    #expect(round.server.receive(bytes: [200, 1, 2, 3], from: 1) == .malformed)
    let encoded = round.sent[.advertiseKeys]![1]!.encoded
    #expect(round.server.receive(bytes: Array(encoded.prefix(encoded.count - 5)), from: 1) == .truncated)
    #expect(round.server.receive(bytes: encoded + [0], from: 1) == .malformed)
    // A length field claiming more than the message holds is caught before allocating.
    var lying = encoded
    lying[13] = 0xff
    lying[14] = 0xff
    #expect(round.server.receive(bytes: lying, from: 1) == .truncated)
    round.finish()
    #expect(round.server.rejections[.malformed] == 2)
    #expect(round.server.rejections[.truncated] == 2)
    #expect(round.server.sum == round.scenario.expectedSum(Array(1...6)))
  }

  @Test func wrongRoundAndWrongSenderAreRejected() {
    var round = ManualRound(Self.scenario())
    guard case .advertiseKeys(var keys) = round.sent[.advertiseKeys]![2]! else { return }
    keys.round = 6
    #expect(round.server.receive(.advertiseKeys(keys), from: 2) == .wrongRound)
    // Device 3's channel carrying device 2's keys: an impersonation.
    #expect(round.server.receive(round.sent[.advertiseKeys]![2]!, from: 3) == .wrongSender)
    #expect(round.server.receive(round.sent[.advertiseKeys]![2]!, from: 99) == .wrongSender)
    round.finish()
    #expect(round.server.rejections[.wrongRound] == 1)
    #expect(round.server.rejections[.wrongSender] == 2)
    #expect(round.server.sum == round.scenario.expectedSum(Array(1...6)))
  }

  @Test func replayedMessagesAreRejectedInAndAfterTheirStep() {
    var round = ManualRound(Self.scenario())
    _ = round.deliverStep()  // advertise keys closes; share keys delivered
    // Replays within the step and of an earlier step.
    #expect(round.server.receive(round.sent[.shareKeys]![1]!, from: 1) == .replayed)
    #expect(round.server.receive(round.sent[.advertiseKeys]![1]!, from: 1) == .replayed)
    _ = round.deliverStep()  // masked inputs
    #expect(round.server.receive(round.sent[.maskedInput]![4]!, from: 4) == .replayed)
    round.finish()
    #expect(round.server.rejections[.replayed] == 3)
    // The replayed masked input was not added twice.
    #expect(round.server.sum == round.scenario.expectedSum(Array(1...6)))
  }

  @Test func tamperedSharesFailAuthenticationOnTheDeviceAndTheRoundGoesOn() {
    var round = ManualRound(Self.scenario())
    _ = round.deliverStep()
    _ = round.deliverStep { index, message in
      // The server (or the network) flips a bit in the share device 3 sent to device 1.
      guard index == 1, case .sharesForDevice(var m) = message else { return message }
      let i = m.shares.firstIndex { $0.peer == 3 }!
      m.shares[i].ciphertext[10] ^= 0x40
      return .sharesForDevice(m)
    }
    round.finish()
    #expect(round.devices[1]!.rejectedShares == 1)
    #expect(round.server.sum == round.scenario.expectedSum(Array(1...6)))
  }

  @Test func badContentIsRejectedWithoutStoppingTheRound() {
    var round = ManualRound(Self.scenario())
    _ = round.deliverStep()
    _ = round.deliverStep(skip: [5])  // device 5 will send a bad masked input itself
    let good = round.devices[5]!
    #expect(good.step == .maskedInput)
    let wrongLength = SecAggMessage.maskedInput(MaskedInput(round: 7, sender: 5, vector: [1, 2, 3]))
    #expect(round.server.receive(wrongLength, from: 5) == .invalidContent)
    #expect(
      round.server.receive(
        .unmaskResponse(UnmaskResponse(round: 7, sender: 5, selfMaskShares: [], maskingKeyShares: [])),
        from: 5) == .outOfStep)
    round.finish()
    #expect(round.server.rejections[.invalidContent] == 1)
    // Device 5 shared keys but never delivered a masked input: its masks are removed from shares.
    #expect(round.server.sum == round.scenario.expectedSum([1, 2, 3, 4, 6]))
  }

  @Test func forgedSignaturesAreRejectedInTheActiveVariant() {
    let scenario = Scenario(count: 6, length: 16, degree: 5, threshold: 3, seed: 22, variant: .active)
    var round = ManualRound(scenario)
    guard case .advertiseKeys(var keys) = round.sent[.advertiseKeys]![2]! else { return }
    keys.signature[0] ^= 1
    #expect(round.server.receive(.advertiseKeys(keys), from: 2) == .badSignature)
    round.finish()
    #expect(round.server.sum == scenario.expectedSum(Array(1...6)))
  }

  @Test func aDeviceNeverRevealsBothSharesOfOnePeer() throws {
    var round = ManualRound(Self.scenario())
    _ = round.deliverStep()
    _ = round.deliverStep()
    _ = round.deliverStep()  // unmasking requests delivered: device 1 has answered
    guard case .unmaskResponse(let first) = round.sent[.unmasking]![1]! else { return }
    #expect(first.maskingKeyShares.isEmpty && first.selfMaskShares.count == 5)
    // A lying server now claims device 2 dropped, hoping for its masking-key share too.
    let lie = SecAggMessage.unmaskRequest(SurvivorList(round: 7, survivors: [1, 3, 4, 5, 6]))
    #expect(throws: SecAggError.self) { _ = try round.devices[1]!.handle(lie) }
  }

  @Test func theServerHoldsOnlyMaskedVectorsAndShares() {
    // Walks every stored property of the server after each message: no vector it holds equals a
    // device's input or a partial sum of inputs, until the final sum of all survivors.
    let scenario = Scenario(count: 5, length: 32, degree: 4, threshold: 3, seed: 23)
    var round = ManualRound(scenario)
    var forbidden: Set<[UInt32]> = []
    var partial = [UInt32](repeating: 0, count: 32)
    for i in 1...5 {
      forbidden.insert(scenario.input(SecAggIndex(i)))
      for (j, v) in scenario.input(SecAggIndex(i)).enumerated() { partial[j] &+= v }
      if i < 5 { forbidden.insert(partial) }
    }
    func check() {
      for vector in Self.vectors(in: round.server) {
        #expect(!forbidden.contains(vector), "the server holds an input or a partial sum")
      }
      // Nothing secret: no 32-byte value the server holds is a device's secret key or seed.
      for bytes in Self.byteStrings(in: round.server) where bytes.count == 32 {
        for i in 1...5 {
          let root = Scenario.bytes(23, SecAggIndex(i), purpose: 1)
          #expect(bytes != root)
        }
      }
    }
    while round.server.step != nil {
      _ = round.deliverStep()
      check()
    }
    #expect(round.server.sum == scenario.expectedSum(Array(1...5)))
  }

  @Test func randomAndMutatedBytesNeverCrashTheServerOrStopTheRound() {
    // Random garbage and every honest message cut, extended and bit-flipped, delivered at every
    // step once the step's honest messages are in: each is refused and counted (a well-formed
    // variant from the right channel before the honest one would simply be that device's
    // message: the channel, not the content, authenticates a device), and the round still sums.
    let seed: UInt64 = 24
    var random = RandomStream(seed: seed, purpose: "secagg-fuzz")
    var round = ManualRound(Self.scenario())
    var hostile = 0
    func attack() {
      let honest = round.sent.values.flatMap { $0.values }.map(\.encoded)
      for bytes in honest {
        for _ in 0..<8 {
          var mutated = bytes
          switch random.int(below: 3) {
          case 0: mutated = Array(mutated.prefix(random.int(below: max(mutated.count, 1))))
          case 1: mutated += (0..<(1 + random.int(below: 8))).map { _ in UInt8(random.int(below: 256)) }
          default:
            let i = random.int(below: mutated.count)
            mutated[i] ^= UInt8(1 << random.int(below: 8))
          }
          let sender = SecAggIndex(1 + random.int(below: 8))
          if round.server.receive(bytes: mutated, from: sender) != nil { hostile += 1 }
        }
      }
      for _ in 0..<50 {
        let bytes = (0..<random.int(below: 200)).map { _ in UInt8(random.int(below: 256)) }
        if round.server.receive(bytes: bytes, from: SecAggIndex(1 + random.int(below: 6))) != nil {
          hostile += 1
        }
      }
    }
    while round.server.step != nil {
      _ = round.deliverStep()
      attack()
    }
    #expect(hostile > 500, "seed \(seed)")
    #expect(round.server.rejections.values.reduce(0, +) == hostile, "seed \(seed)")
    #expect(round.server.sum == round.scenario.expectedSum(Array(1...6)), "seed \(seed)")
  }

  static func vectors(in value: Any) -> [[UInt32]] {
    if let v = value as? [UInt32] { return [v] }
    return Mirror(reflecting: value).children.flatMap { vectors(in: $0.value) }
  }

  static func byteStrings(in value: Any) -> [[UInt8]] {
    if let v = value as? [UInt8] { return [v] }
    return Mirror(reflecting: value).children.flatMap { byteStrings(in: $0.value) }
  }
}
