import CohortCore
import Testing

@testable import CohortSecAgg

/// A seeded round: inputs, device seeds and dropouts all derive from `seed`, so a failure
/// replays from the seed its message prints.
struct Scenario {
  var configuration: SecAggConfiguration
  var seed: UInt64

  init(
    count: Int, length: Int, degree: Int? = nil, threshold: Int? = nil, ringBits: Int = 32, seed: UInt64,
    variant: SecAggVariant = .semiHonest, dropout: Double = 0.1
  ) {
    let chosen = SecAggParameters.choose(count: count, dropoutRate: dropout, corruptFraction: 0.05)
    let k = degree ?? chosen.degree
    let t = threshold ?? chosen.threshold
    var identities: [SecAggIndex: [UInt8]] = [:]
    if variant == .active {
      for i in 1...count { identities[SecAggIndex(i)] = Self.identity(SecAggIndex(i), seed: seed).publicKey }
    }
    configuration = SecAggConfiguration(
      round: 7, count: count, degree: k, threshold: t, graphSeed: Self.bytes(seed, 0, purpose: 9),
      vectorLength: length, ringBits: ringBits, variant: variant, identityKeys: identities)
    self.seed = seed
  }

  static func bytes(_ seed: UInt64, _ index: SecAggIndex, purpose: UInt64) -> [UInt8] {
    var r = RandomStream(seed: seed, purpose: "secagg-test-\(purpose)", device: Int(index))
    return (0..<32).map { _ in UInt8(truncatingIfNeeded: r.next()) }
  }

  static func identity(_ index: SecAggIndex, seed: UInt64) -> (publicKey: [UInt8], secretKey: [UInt8]) {
    SecAggCrypto.signingPair(seed: bytes(seed, index, purpose: 8))
  }

  func input(_ index: SecAggIndex) -> [UInt32] {
    var r = RandomStream(seed: seed, purpose: "secagg-test-input", device: Int(index))
    let mask = configuration.ringMask
    return (0..<configuration.vectorLength).map { _ in UInt32(truncatingIfNeeded: r.next()) & mask }
  }

  func device(_ index: SecAggIndex) -> SecAggDevice {
    SecAggDevice(
      configuration: configuration, index: index, seed: Self.bytes(seed, index, purpose: 1),
      identitySecretKey: configuration.variant == .active ? Self.identity(index, seed: seed).secretKey : [])
  }

  func run(
    parallelism: Int = 1, dropsBefore: (SecAggServer.Step, SecAggIndex) -> Bool = { _, _ in false }
  ) -> InMemorySecAggRound.Outcome {
    InMemorySecAggRound(configuration: configuration, parallelism: parallelism).run(
      seed: { Self.bytes(seed, $0, purpose: 1) },
      identitySecretKey: { configuration.variant == .active ? Self.identity($0, seed: seed).secretKey : [] },
      input: input, dropsBefore: dropsBefore)
  }

  func expectedSum(_ survivors: [SecAggIndex]) -> [UInt32] {
    var sum = [UInt32](repeating: 0, count: configuration.vectorLength)
    for s in survivors {
      for (i, v) in input(s).enumerated() { sum[i] &+= v }
    }
    return sum.map { $0 & configuration.ringMask }
  }
}

@Suite struct ProtocolTests {
  /// Drops a seeded fraction of devices before each step, spread so the total stays within the
  /// tolerated fraction.
  static func dropouts(seed: UInt64, perStep: Double) -> (SecAggServer.Step, SecAggIndex) -> Bool {
    { step, index in
      var r = RandomStream(
        seed: seed, purpose: "secagg-test-dropout", round: step.rawValue, device: Int(index))
      return r.uniform() < perStep
    }
  }

  @Test(arguments: [
    (3, 100_000, 2, 0.0), (10, 10_000, 0, 0.03), (100, 1_000, 0, 0.025), (1000, 16, 0, 0.02),
  ])
  func unmaskedSumIsExactWithDropoutsAtEveryStep(count: Int, length: Int, threshold: Int, perStep: Double) {
    let seed = UInt64(count * 31 + length)
    let scenario = Scenario(
      count: count, length: length, threshold: threshold == 0 ? nil : threshold, ringBits: 24, seed: seed)
    let outcome = scenario.run(dropsBefore: Self.dropouts(seed: seed, perStep: perStep))
    #expect(outcome.abandonedReason == nil, "seed \(seed): \(outcome.abandonedReason ?? "")")
    #expect(outcome.sum == scenario.expectedSum(outcome.survivors), "seed \(seed)")
    if perStep > 0 {
      let dropped = SecAggServer.Step.allCases.map { outcome.records[$0]?.dropped ?? 0 }
      // The semi-honest variant has no consistency check (index 3).
      let exercised = [dropped[0], dropped[1], dropped[2], dropped[4]]
      #expect(
        exercised.allSatisfy { $0 > 0 } || count < 100, "seed \(seed): dropouts at every step \(dropped)")
      // Devices that left after delivering their masked input are still in the sum.
      let lostBeforeInput = dropped[0...2].reduce(0, +)
      #expect(outcome.survivors.count == count - lostBeforeInput, "seed \(seed)")
    }
  }

  @Test func dropoutsAfterSharingKeysAreUnmaskedFromShares() {
    // Devices 2 and 5 share keys then vanish: their pairwise masks sit in every survivor's input.
    let scenario = Scenario(count: 8, length: 500, degree: 7, threshold: 4, seed: 11)
    let outcome = scenario.run { step, index in step == .maskedInput && (index == 2 || index == 5) }
    #expect(outcome.survivors == [1, 3, 4, 6, 7, 8])
    #expect(outcome.sum == scenario.expectedSum(outcome.survivors))
    #expect(outcome.records[.maskedInput]?.dropped == 2)
  }

  @Test func activeVariantChecksConsistencyAndSums() {
    let scenario = Scenario(count: 12, length: 300, degree: 11, threshold: 6, seed: 12, variant: .active)
    let outcome = scenario.run { step, index in step == .consistencyCheck && index == 3 }
    #expect(outcome.abandonedReason == nil)
    // Device 3 delivered its masked input, so it is a survivor even though it left before signing.
    #expect(outcome.survivors.contains(3))
    #expect(outcome.sum == scenario.expectedSum(outcome.survivors))
    #expect(outcome.records[.consistencyCheck]?.dropped == 1)
  }

  @Test func fewerThanThresholdSurvivorsAbandonsTheRound() {
    let scenario = Scenario(count: 10, length: 10, degree: 9, threshold: 6, seed: 13)
    let outcome = scenario.run { step, index in step == .maskedInput && index <= 5 }
    #expect(outcome.sum == nil)
    let reason = outcome.abandonedReason ?? ""
    #expect(reason.contains("only 5 devices sent a masked input"), "\(reason)")
  }

  @Test func tooFewUnmaskingResponsesAbandonsWithReason() {
    let scenario = Scenario(count: 10, length: 10, degree: 9, threshold: 6, seed: 14)
    let outcome = scenario.run { step, index in step == .unmasking && index <= 5 }
    #expect(outcome.sum == nil)
    #expect(outcome.abandonedReason?.contains("shares arrived") == true, "\(outcome.abandonedReason ?? "")")
  }

  @Test func devicesInParallelGiveTheSameRound() {
    let scenario = Scenario(count: 60, length: 200, seed: 16)
    let drops = Self.dropouts(seed: 16, perStep: 0.03)
    let serial = scenario.run(dropsBefore: drops)
    let parallel = scenario.run(parallelism: 4, dropsBefore: drops)
    #expect(serial.sum != nil && serial.sum == parallel.sum, "seed 16")
    #expect(serial.survivors == parallel.survivors && serial.deviceBytesSent == parallel.deviceBytesSent)
    #expect(serial.records == parallel.records)
  }

  @Test func parametersBuildTheSparseGraph() {
    let scenario = Scenario(count: 300, length: 8, seed: 15)
    #expect(scenario.configuration.degree < 299)
    let outcome = scenario.run()
    #expect(outcome.sum == scenario.expectedSum(Array(1...300)))
    // Sparse sharing: each device sends one ciphertext per neighbour, not per device.
    let perDevice = outcome.records[.shareKeys]!.bytesReceived / 300
    #expect(perDevice < 299 * SecAggConfiguration.shareCiphertextBytes)
  }
}
