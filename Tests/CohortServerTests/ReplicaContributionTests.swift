import CohortAggregation
import CohortCore
import CohortProtocol
import CohortServer
import Foundation
import Testing

@Suite struct ReplicaContributionTests {
  static let layout = WeightsLayout([TensorSpec("w", [3])])
  static let strategy = ServerStrategy(plan: StrategyPlan(.fedavg(weighted: true)), layout: layout)
  static let global = Weights(layout: layout, values: [0.1, 0.2, -0.3])

  /// Six seeded updates with 1…60 examples.
  static let updates: [ClientUpdate] = {
    var rng = RandomStream(seed: 7, purpose: "replica-contribution-tests")
    return (0..<6).map { i in
      ClientUpdate(
        device: i + 1,
        update: Weights(layout: layout, values: (0..<3).map { _ in Float(rng.uniform() * 4 - 2) }),
        examples: 1 + rng.int(below: 60))
    }
  }()

  static func aggregate(_ updates: some Sequence<ClientUpdate>) -> RoundAggregate {
    var round = strategy.makeRound()
    for u in updates { strategy.fold(u, into: &round) }
    return round
  }

  static func model(_ round: RoundAggregate) -> Weights? {
    var state = strategy.initialState()
    return strategy.nextGlobal(from: global, round, state: &state)
  }

  static func tally(devices: [DeviceID], evaluated: DeviceID? = nil) -> RoundTally {
    var t = RoundTally()
    t.counts.selected = devices.count
    t.counts.reported = devices.count - 1
    t.counts.dropped = 1
    t.counts.rejected = 2
    t.bytesDown = 1000 * devices.count
    t.bytesUp = 300
    t.trainLossSum = 1.25
    t.trainExamples = 40
    t.evaluationLossSum = 0.5
    t.evaluationCorrect = 7
    t.evaluationExamples = 9
    t.participants = devices.enumerated().map { i, d in
      DeviceParticipation(
        device: d, reported: i > 0, dropped: i == 0,
        evaluation: d == evaluated ? Evaluation(loss: 0.5, accuracy: 7.0 / 9, examples: 9) : nil)
    }
    return t
  }

  static func step(_ name: String, _ entered: Int, seconds: Double = 0.25) -> SecureAggregationStepRecord {
    SecureAggregationStepRecord(
      step: name, entered: entered, dropped: 1, bytesUp: 10 * entered, bytesDown: 20 * entered,
      serverSeconds: seconds)
  }

  static func secure(
    ring: [UInt32]?, bits: Int = 32, survivors: [DeviceID] = [], examples: Int = 0,
    steps: [SecureAggregationStepRecord] = [], failure: String? = nil
  ) -> SecureSum {
    var s = SecureSum(
      weightedSum: ring.map { $0.map(Double.init) }, totalWeight: Double(survivors.count),
      survivors: survivors,
      examples: examples, failure: failure, steps: steps, rejectedMessages: 3)
    s.ringSum = ring
    s.ringBits = bits
    return s
  }

  /// A contribution with every field set.
  static var full: ReplicaContribution {
    ReplicaContribution(
      aggregate: aggregate(updates.prefix(3)), tally: tally(devices: [1, 2, 3], evaluated: 2),
      secure: secure(
        ring: [0, 12345, UInt32.max], bits: 32, survivors: [2, 3], examples: 25,
        steps: [step("advertise_keys", 3), step("unmasking", 2)], failure: "one device left"))
  }

  static func decode(_ data: Data) throws(CohortError) -> ReplicaContribution {
    try ReplicaContribution(decoding: data, strategy: strategy)
  }

  static func refusal(_ data: Data, sourceLocation: SourceLocation = #_sourceLocation) -> CohortError? {
    do {
      _ = try decode(data)
      Issue.record("the contribution was accepted", sourceLocation: sourceLocation)
      return nil
    } catch {
      return error
    }
  }

  // MARK: Encoding

  @Test func aContributionRoundTrips() throws {
    let c = Self.full
    let d = try Self.decode(c.encoded())
    #expect(d.aggregate.count == 3 && d.aggregate.examples == c.aggregate.examples)
    #expect(Self.model(d.aggregate)?.values == Self.model(c.aggregate)?.values)
    #expect(d.tally == c.tally)
    #expect(d.tally.participants.contains { $0.evaluation != nil })
    #expect(d.ringSum == [0, 12345, UInt32.max])
    #expect(d.ringBits == 32 && d.ringDevices == [2, 3] && d.ringExamples == 25)
    #expect(d.secureSteps == c.secureSteps)
    #expect(d.secureRejected == 3)
    #expect(d.secureFailure == "one device left")
    #expect(d.encoded() == c.encoded())
  }

  @Test func aPlainContributionRoundTrips() throws {
    let c = ReplicaContribution(aggregate: Self.aggregate(Self.updates), tally: Self.tally(devices: [4, 5]))
    let d = try Self.decode(c.encoded())
    #expect(d.ringSum == nil && d.ringDevices.isEmpty && d.secureSteps.isEmpty && d.secureFailure == nil)
    #expect(d.aggregate.count == 6)
    #expect(Self.model(d.aggregate)?.values == Self.model(c.aggregate)?.values)
    #expect(d.encoded() == c.encoded())
  }

  @Test func aFailedSecureSumKeepsItsReasonButNoRing() throws {
    let c = ReplicaContribution(
      aggregate: Self.strategy.makeRound(), tally: Self.tally(devices: [1, 2]),
      secure: Self.secure(ring: nil, survivors: [1], steps: [Self.step("share_keys", 2)], failure: "too few"))
    let d = try Self.decode(c.encoded())
    #expect(d.ringSum == nil && d.ringDevices.isEmpty)
    #expect(d.secureFailure == "too few" && d.secureSteps == [Self.step("share_keys", 2)])
  }

  @Test func anUnknownVersionIsRefused() {
    var data = Self.full.encoded()
    data[data.startIndex] = 2
    #expect(Self.refusal(data)?.code == .storage)
  }

  @Test func truncatedBytesAreRefused() {
    let data = Self.full.encoded()
    for cut in [1, 8, data.count / 2, data.count - 1] {
      #expect(Self.refusal(data.prefix(cut))?.code == .storage, "cut at \(cut)")
    }
    #expect(Self.refusal(Data())?.code == .storage)
  }

  @Test func trailingBytesAreRefused() {
    let error = Self.refusal(Self.full.encoded() + [0])
    #expect(error?.code == .storage)
    #expect(error?.message.contains("bytes after the contribution") == true)
  }

  @Test func aSumOfTheWrongLengthIsRefused() {
    let other = WeightsLayout([TensorSpec("w", [4])])
    let strategy = ServerStrategy(plan: StrategyPlan(.fedavg(weighted: true)), layout: other)
    var round = strategy.makeRound()
    strategy.fold(
      ClientUpdate(device: 1, update: Weights(layout: other, values: [1, 2, 3, 4]), examples: 2), into: &round
    )
    let c = ReplicaContribution(aggregate: round, tally: RoundTally())
    #expect(Self.refusal(c.encoded())?.code == .storage)
  }

  /// The bytes `encoded()` writes, with the secure part's values as given.
  static func craft(
    ring: [Int]? = nil, bits: Int = 32, examples: Int = 0, rejected: Int = 0, steps: [[Int]] = [],
    stepCount: Int? = nil, stepValue: Int = 0, stepSeconds: Double = 0, failure: [Int]? = nil
  ) -> Data {
    var w = SnapshotWriter()
    w.write(UInt8(1))
    Self.aggregate(Self.updates.prefix(2)).save(into: &w)
    RoundTally().save(into: &w)
    w.write(ring != nil)
    if let ring { w.write(ring) }
    w.write([Int]())
    for v in [bits, examples, rejected] { w.write(v) }
    w.write(stepCount ?? steps.count)
    for s in steps {
      w.write(s)
      for v in [1, stepValue, 0, 0] { w.write(v) }
      w.write(stepSeconds)
    }
    w.write(failure != nil)
    if let failure { w.write(failure) }
    return Data(w.bytes)
  }

  @Test func craftedBytesMatchTheEncoder() throws {
    // The crafted layout is the encoder's: the refusals below change one field each.
    let d = try Self.decode(Self.craft(ring: [1, 2, 3], bits: 16, steps: [[0x61]], failure: [0x62]))
    #expect(d.ringSum == [1, 2, 3] && d.ringBits == 16 && d.secureSteps.map(\.step) == ["a"])
    #expect(d.secureFailure == "b")
  }

  @Test func aRingSumOutside32BitsIsRefused() {
    #expect(Self.refusal(Self.craft(ring: [1, 1 << 32, 3]))?.code == .storage)
    #expect(Self.refusal(Self.craft(ring: [-1]))?.code == .storage)
  }

  @Test func aRingWiderThan32BitsIsRefused() {
    #expect(Self.refusal(Self.craft(ring: [1], bits: 33))?.code == .storage)
    #expect(Self.refusal(Self.craft(ring: [1], bits: -1))?.code == .storage)
  }

  @Test func negativeSecureCountsAreRefused() {
    #expect(Self.refusal(Self.craft(examples: -1))?.code == .storage)
    #expect(Self.refusal(Self.craft(rejected: -5))?.code == .storage)
  }

  /// Counts the leader would add up across replicas: one that cannot be real would overflow.
  @Test func absurdSecureCountsAreRefused() {
    #expect(Self.refusal(Self.craft(examples: Int.max))?.code == .storage)
    #expect(Self.refusal(Self.craft(rejected: Int.max))?.code == .storage)
    #expect(Self.refusal(Self.craft(steps: [[0x61]], stepValue: Int.max))?.code == .storage)
    #expect(Self.refusal(Self.craft(steps: [[0x61]], stepValue: -1))?.code == .storage)
    #expect(Self.refusal(Self.craft(steps: [[0x61]], stepSeconds: .infinity))?.code == .storage)
  }

  @Test func anAbsurdStepCountIsRefusedWithoutAllocating() {
    #expect(Self.refusal(Self.craft(stepCount: Int.max))?.code == .storage)
    #expect(Self.refusal(Self.craft(stepCount: -1))?.code == .storage)
  }

  @Test func textThatIsNotBytesIsRefused() {
    #expect(Self.refusal(Self.craft(steps: [[0x61, 256]]))?.code == .storage)
    #expect(Self.refusal(Self.craft(failure: [-1]))?.code == .storage)
  }

  // MARK: Combining

  @Test func combinedSumsGiveTheModelOfOneAggregate() throws {
    let parts = [0..<2, 2..<5, 5..<6].map { range in
      ReplicaContribution(aggregate: Self.aggregate(Self.updates[range]), tally: RoundTally())
    }
    // Through the bytes the replicas store.
    let decoded = try parts.map { try Self.decode($0.encoded()) }
    let combined = ReplicaContribution.combine(decoded, strategy: Self.strategy)
    let whole = Self.aggregate(Self.updates)
    #expect(combined.aggregate.count == whole.count && combined.aggregate.examples == whole.examples)
    let a = try #require(Self.model(combined.aggregate))
    let b = try #require(Self.model(whole))
    #expect(zip(a.values, b.values).allSatisfy { abs(Double($0) - Double($1)) <= 1e-6 })
  }

  @Test func anEmptyContributionChangesNothing() throws {
    let combined = ReplicaContribution.combine(
      [
        ReplicaContribution(aggregate: Self.strategy.makeRound(), tally: RoundTally()),
        ReplicaContribution(aggregate: Self.aggregate(Self.updates), tally: RoundTally()),
      ], strategy: Self.strategy)
    #expect(Self.model(combined.aggregate)?.values == Self.model(Self.aggregate(Self.updates))?.values)
    #expect(ReplicaContribution.combine([], strategy: Self.strategy).aggregate.count == 0)
  }

  @Test func ringSumsAddModuloTheRingExactly() {
    let empty = Self.strategy.makeRound()
    let a = ReplicaContribution(
      aggregate: empty, tally: RoundTally(),
      secure: Self.secure(ring: [0xFFFF, 5, 7], bits: 16, survivors: [1, 2], examples: 10))
    let b = ReplicaContribution(
      aggregate: empty, tally: RoundTally(),
      secure: Self.secure(ring: [2, 0xFFF0, 0], bits: 16, survivors: [3], examples: 4))
    let c = ReplicaContribution(
      aggregate: empty, tally: RoundTally(),
      secure: Self.secure(ring: [0xFFFF, 0x000A, 1], bits: 16, survivors: [4], examples: 1))
    let combined = ReplicaContribution.combine([a, b, c], strategy: Self.strategy)
    #expect(combined.ringSum == [0x0000, 0xFFFF, 8])
    #expect(combined.ringDevices == [1, 2, 3, 4] && combined.ringExamples == 15)
    // The order of replicas does not matter in the ring.
    #expect(ReplicaContribution.combine([c, a, b], strategy: Self.strategy).ringSum == combined.ringSum)
  }

  @Test func ringSumsOf32BitsWrapAround() {
    let empty = Self.strategy.makeRound()
    let a = ReplicaContribution(
      aggregate: empty, tally: RoundTally(), secure: Self.secure(ring: [UInt32.max, 1 << 31]))
    let b = ReplicaContribution(
      aggregate: empty, tally: RoundTally(), secure: Self.secure(ring: [2, 1 << 31]))
    #expect(ReplicaContribution.combine([a, b], strategy: Self.strategy).ringSum == [1, 0])
  }

  @Test func aReplicaWithoutARingSumLeavesTheOthers() {
    let empty = Self.strategy.makeRound()
    let a = ReplicaContribution(aggregate: empty, tally: RoundTally())
    let b = ReplicaContribution(
      aggregate: empty, tally: RoundTally(), secure: Self.secure(ring: [9, 9], bits: 8, survivors: [5]))
    let combined = ReplicaContribution.combine([a, b], strategy: Self.strategy)
    #expect(combined.ringSum == [9, 9] && combined.ringDevices == [5])
  }

  @Test func talliesAddAndADeviceInTwoIsCountedOnce() {
    let a = ReplicaContribution(aggregate: Self.strategy.makeRound(), tally: Self.tally(devices: [1, 2, 7]))
    let b = ReplicaContribution(
      aggregate: Self.strategy.makeRound(), tally: Self.tally(devices: [7, 8], evaluated: 8))
    let combined = ReplicaContribution.combine([a, b], strategy: Self.strategy)
    let t = combined.tally
    #expect(
      t.counts.selected == 5 && t.counts.reported == 3 && t.counts.dropped == 2 && t.counts.rejected == 4)
    #expect(t.bytesDown == 5000 && t.bytesUp == 600 && t.trainExamples == 80 && t.evaluationExamples == 18)
    #expect(t.trainLossSum == 2.5 && t.evaluationLossSum == 1 && t.evaluationCorrect == 14)
    #expect(t.participants.map(\.device) == [1, 2, 7, 8])
    // Device 7 as the first tally has it.
    #expect(t.participants[2] == a.tally.participants[2])
    #expect(t.participants[3].evaluation != nil)
  }

  /// A device one replica saw drop and another accepted a report from (it moved between them) is
  /// recorded as reported, whichever tally comes first.
  @Test func aDeviceReportedAtEitherReplicaIsRecordedAsReported() {
    // Device 7 drops at the first replica (it is the first of its list) and reports at the second.
    let a = ReplicaContribution(aggregate: Self.strategy.makeRound(), tally: Self.tally(devices: [7, 1]))
    let b = ReplicaContribution(aggregate: Self.strategy.makeRound(), tally: Self.tally(devices: [9, 7]))
    for order in [[a, b], [b, a]] {
      let t = ReplicaContribution.combine(order, strategy: Self.strategy).tally
      #expect(t.participants.filter { $0.device == 7 }.map(\.reported) == [true])
    }
  }

  /// A damaged ring sum of another length is left out even when it comes first: the length most
  /// devices' sums have is the ring's.
  @Test func aDamagedRingSumFirstDoesNotDiscardTheOthers() {
    let empty = Self.strategy.makeRound()
    let damaged = ReplicaContribution(
      aggregate: empty, tally: RoundTally(), secure: Self.secure(ring: [1, 2, 3, 4], bits: 8, survivors: [1]))
    let b = ReplicaContribution(
      aggregate: empty, tally: RoundTally(), secure: Self.secure(ring: [9, 9], bits: 8, survivors: [5, 6]))
    let c = ReplicaContribution(
      aggregate: empty, tally: RoundTally(), secure: Self.secure(ring: [1, 2], bits: 8, survivors: [7]))
    let combined = ReplicaContribution.combine([damaged, b, c], strategy: Self.strategy)
    #expect(combined.ringSum == [10, 11] && combined.ringDevices == [5, 6, 7])
  }

  @Test func secureStepsAddByName() {
    let empty = Self.strategy.makeRound()
    let a = ReplicaContribution(
      aggregate: empty, tally: RoundTally(),
      secure: Self.secure(ring: [1], steps: [Self.step("advertise_keys", 3), Self.step("unmasking", 2)]))
    let b = ReplicaContribution(
      aggregate: empty, tally: RoundTally(),
      secure: Self.secure(
        ring: [1], steps: [Self.step("advertise_keys", 4, seconds: 0.5), Self.step("share_keys", 4)]))
    let combined = ReplicaContribution.combine([a, b], strategy: Self.strategy)
    #expect(combined.secureSteps.map(\.step) == ["advertise_keys", "unmasking", "share_keys"])
    #expect(
      combined.secureSteps[0]
        == SecureAggregationStepRecord(
          step: "advertise_keys", entered: 7, dropped: 2, bytesUp: 70, bytesDown: 140, serverSeconds: 0.75))
    #expect(combined.secureSteps[1] == Self.step("unmasking", 2))
    #expect(combined.secureSteps[2] == Self.step("share_keys", 4))
    #expect(combined.secureRejected == 6)
  }

  @Test func failuresAreKeptOnlyFromReplicasWithReports() {
    let empty = Self.strategy.makeRound()
    var reported = RoundTally()
    reported.counts.reported = 2
    let failed = ReplicaContribution(
      aggregate: empty, tally: reported, secure: Self.secure(ring: nil, failure: "too few survived"))
    let idle = ReplicaContribution(
      aggregate: empty, tally: RoundTally(), secure: Self.secure(ring: nil, failure: "nobody"))
    let combined = ReplicaContribution.combine([failed, idle], strategy: Self.strategy)
    #expect(combined.secureFailures == ["too few survived"])
    #expect(combined.ringSum == nil)
  }
}

@Suite struct ReplicaRulesTests {
  static let base = "name: p\nmodel: {kind: logistic_regression, inputs: 60, classes: 10}\n"

  static func plan(_ extra: String) throws -> Plan {
    try Plan.parse(yaml: base + extra, file: "p.yaml")
  }

  @Test(arguments: ["fedmedian", "krum"])
  func robustStrategiesAreRefused(_ kind: String) throws {
    let error = ReplicaRules.refusal(try Self.plan("server: {strategy: {kind: \(kind)}}\n"))
    #expect(error?.code == .invalidConfiguration)
    #expect(error?.message.contains(kind) == true)
    #expect(error?.message.contains("server.strategy") == true)
  }

  @Test func uniformSamplingIsRefused() throws {
    let error = ReplicaRules.refusal(try Self.plan("server: {cohort: {goal: 10, sampling: uniform}}\n"))
    #expect(error?.code == .invalidConfiguration)
    #expect(error?.message.contains("sampling: uniform") == true)
  }

  @Test func adaptiveClippingIsRefused() throws {
    let error = ReplicaRules.refusal(
      try Self.plan(
        "privacy: {kind: central_gaussian, clip: 0.3, noise_multiplier: 0.8, adaptive_clipping: {}}\n"))
    #expect(error?.code == .invalidConfiguration)
    #expect(error?.message.contains("adaptive_clipping") == true)
  }

  /// A minimum group larger than the cohort a round selects would send every replica's devices
  /// away every round.
  @Test func aMinimumGroupLargerThanTheCohortIsRefused() throws {
    let error = ReplicaRules.refusal(
      try Self.plan("server: {cohort: {goal: 2}}\nsecure_aggregation: {enabled: true, minimum_group: 6}\n"))
    #expect(error?.code == .invalidConfiguration)
    #expect(error?.message.contains("minimum_group") == true)
    #expect(
      ReplicaRules.refusal(
        try Self.plan("server: {cohort: {goal: 10}}\nsecure_aggregation: {enabled: true, minimum_group: 6}\n")
      )
        == nil)
  }

  /// A group below the Shamir threshold could never unmask: refused when the plan is read.
  @Test func aMinimumGroupBelowTheThresholdIsRefusedByThePlan() throws {
    #expect(throws: ConfigurationError.self) {
      _ = try Self.plan("secure_aggregation: {enabled: true, threshold: 4, minimum_group: 3}\n")
    }
    let plan = try Self.plan("secure_aggregation: {enabled: true, threshold: 4}\n")
    #expect(plan.secureAggregation.minimumGroup == 5)
    // Absent from the canonical JSON unless set: existing plans keep their hash.
    #expect(!String(decoding: plan.canonicalJSON, as: UTF8.self).contains("minimumGroup"))
    let set = try Self.plan("secure_aggregation: {enabled: true, minimum_group: 7}\n")
    #expect(set.secureAggregation.minimumGroup == 7)
    #expect(String(decoding: set.canonicalJSON, as: UTF8.self).contains("minimumGroup"))
  }

  @Test func asyncModeIsRefused() throws {
    let error = ReplicaRules.refusal(try Self.plan("server: {mode: async}\n"))
    #expect(error?.code == .invalidConfiguration)
    #expect(error?.message.contains("async") == true)
  }

  @Test(arguments: ["", "server: {strategy: {kind: fedavg}}\n", "server: {strategy: {kind: fedadam}}\n"])
  func summingStrategiesAreAccepted(_ extra: String) throws {
    #expect(ReplicaRules.refusal(try Self.plan(extra)) == nil)
  }

  @Test func aFixedClipIsAccepted() throws {
    #expect(
      ReplicaRules.refusal(
        try Self.plan("privacy: {kind: central_gaussian, clip: 0.3, noise_multiplier: 0.8}\n"))
        == nil)
  }
}
