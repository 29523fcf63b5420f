import CohortAggregation
import CohortCompression
import CohortCore
import CohortPrivacy
import CohortProtocol
import CohortSecAgg
import CohortServer
import CohortStore
import Synchronization

/// Secure aggregation between simulated devices: each device that reported hands its update to
/// its own `SecAggDevice`, which encodes and masks it; the server side is a `SecAggServer` that
/// only ever sees masked vectors and shares, and the Coordinator gets the decoded sum.
///
/// Devices drop out at each protocol step with their profile's dropout probability spread over
/// the steps, from a stream of the scenario seed, so runs replay. Secrets come from the scenario
/// seed too (a real device draws them from the OS).
final class SimulatedSecureAggregation: SecureAggregationDriver {
  struct Input: Sendable {
    var update: [Float]
    var examples: Int
  }

  let fullPlan: Plan
  let plan: SecureAggregationPlan
  let privacy: PrivacyPlan
  let seed: UInt64
  let population: Population
  /// Devices that run a protocol step at once (they are independent; the server stays serial).
  let parallelism: Int
  /// Updates of devices that finished training, by round, until the round's protocol runs.
  private let inputs = Mutex<[Int: [DeviceID: Input]]>([:])

  init(plan: Plan, seed: UInt64, population: Population, parallelism: Int) {
    fullPlan = plan
    self.plan = plan.secureAggregation
    privacy = plan.privacy
    self.seed = seed
    self.population = population
    self.parallelism = parallelism
  }

  /// A device's trained update, kept on the device's side until the protocol asks for it.
  func deposit(round: Int, device: DeviceID, update: [Float], examples: Int) {
    inputs.withLock { $0[round, default: [:]][device] = Input(update: update, examples: examples) }
  }

  /// Protocol steps a device passes through, over which its dropout probability is spread.
  var steps: [SecAggServer.Step] {
    plan.variant == .active
      ? SecAggServer.Step.allCases : SecAggServer.Step.allCases.filter { $0 != .consistencyCheck }
  }

  func secureSum(round: Int, devices: [DeviceID]) async -> SecureSum {
    let pending = inputs.withLock { all in
      // Anything left from earlier rounds belongs to rounds that closed without the protocol.
      for r in all.keys where r < round { all[r] = nil }
      return all.removeValue(forKey: round) ?? [:]
    }
    let members = devices.filter { pending[$0] != nil }
    func failed(_ reason: String) -> SecureSum {
      SecureSum(
        weightedSum: nil, totalWeight: 0, survivors: [], examples: 0, failure: reason, steps: [],
        rejectedMessages: 0)
    }
    let parameters: SecAggParameters
    switch SecAggParameters.resolve(plan, count: members.count) {
    case .success(let p): parameters = p
    case .failure(let error): return failed(error.message)
    }
    var identities: [SecAggIndex: [UInt8]] = [:]
    if plan.variant == .active {
      for (i, device) in members.enumerated() {
        identities[SecAggIndex(i + 1)] =
          SecAggCrypto.signingPair(seed: secret(device, round, "identity")).publicKey
      }
    }
    let ring: SecureAggregationEncoding
    switch encoding(round: round, dimension: pending[members[0]]!.update.count) {
    case .success(let codec): ring = codec
    case .failure(let reason): return failed(reason.message)
    }
    let configuration = SecAggConfiguration(
      round: UInt64(round), count: members.count, degree: parameters.degree, threshold: parameters.threshold,
      graphSeed: secret(-1, round, "graph"), vectorLength: ring.vectorLength, ringBits: ring.ringBits,
      variant: plan.variant == .active ? .active : .semiHonest, identityKeys: identities)
    let device = { (index: SecAggIndex) in members[Int(index) - 1] }
    let stepCount = Double(steps.count)
    let clock = ContinuousClock()
    var serverTime: [SecAggServer.Step: Duration] = [:]
    let outcome = InMemorySecAggRound(configuration: configuration, parallelism: parallelism).run(
      seed: { self.secret(device($0), round, "device") },
      identitySecretKey: {
        plan.variant == .active
          ? SecAggCrypto.signingPair(seed: self.secret(device($0), round, "identity")).secretKey : []
      },
      input: { index in
        let d = device(index)
        let input = pending[d]!
        var random = RandomStream(seed: self.seed, purpose: ring.streamPurpose, round: round, device: d)
        return ring.encode(input.update, examples: input.examples, random: &random)
      },
      dropsBefore: { step, index in
        let d = device(index)
        var random = RandomStream(seed: self.seed, purpose: "secagg-dropout-\(step)", round: round, device: d)
        return random.uniform() < self.population.profile(device: d).dropout / stepCount
      },
      timed: { party, step, work in
        guard case .server = party else { return work() }
        serverTime[step, default: .zero] += clock.measure(work)
      })
    let records = steps.map { step in
      let r = outcome.records[step] ?? SecAggServer.StepRecord()
      let seconds =
        serverTime[step].map { Double($0.components.seconds) + Double($0.components.attoseconds) * 1e-18 }
        ?? 0
      return SecureAggregationStepRecord(
        step: step.description, entered: r.entered, dropped: r.dropped, bytesUp: r.bytesReceived,
        bytesDown: r.bytesSent, serverSeconds: seconds)
    }
    let rejected = outcome.rejections.values.reduce(0, +)
    guard let sum = outcome.sum else {
      return SecureSum(
        weightedSum: nil, totalWeight: 0, survivors: [], examples: 0,
        failure: outcome.abandonedReason ?? "secure aggregation gave no sum", steps: records,
        rejectedMessages: rejected)
    }
    let survivors = outcome.survivors.map(device)
    let decoded = ring.decodeSum(sum, devices: survivors.count)
    return SecureSum(
      weightedSum: decoded.weightedSum, totalWeight: decoded.totalWeight, survivors: survivors,
      examples: survivors.reduce(0) { $0 + pending[$1]!.examples }, failure: nil, steps: records,
      rejectedMessages: rejected)
  }

  /// How this run's updates enter the ring in `round`. The rotation signs devices share come
  /// from the scenario seed, as a network server's come from its run seed.
  func encoding(round: Int, dimension: Int) -> Result<SecureAggregationEncoding, SecAggError> {
    SecureAggregationEncoding.make(
      plan: fullPlan, round: round, dimension: dimension,
      rotationSeed: SecureAggregationEncoding.rotationSeed(runSeed: seed, round: round, plan: fullPlan))
  }

  /// 32 secret bytes for one device, round and purpose, from the scenario seed.
  private func secret(_ device: DeviceID, _ round: Int, _ purpose: String) -> [UInt8] {
    var random = RandomStream(seed: seed, purpose: "secagg-\(purpose)", round: round, device: device)
    var out: [UInt8] = []
    out.reserveCapacity(32)
    for _ in 0..<4 { withUnsafeBytes(of: random.next().littleEndian) { out.append(contentsOf: $0) } }
    return out
  }
}
