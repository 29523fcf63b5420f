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
/// its own `SecAggDevice`, which encodes and masks it; the server side is the same
/// `SecureAggregationRound` a network server runs, which only ever sees masked vectors and
/// shares, and the Coordinator gets the decoded sum.
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
    let active = plan.variant == .active
    let members = devices.filter { pending[$0] != nil }.map { device in
      SecureAggregationRound.Member(
        device: device, examples: pending[device]!.examples,
        identityKey: active
          ? SecAggCrypto.signingPair(seed: secret(device, round, "identity")).publicKey : nil)
    }
    var secure = SecureAggregationRound(
      plan: fullPlan, round: round, dimension: members.first.map { pending[$0.device]!.update.count } ?? 0,
      rotationSeed: SecureAggregationEncoding.rotationSeed(runSeed: seed, round: round, plan: fullPlan),
      graphSeed: secret(-1, round, "graph"), members: members)
    guard let configuration = secure.configuration, let ring = secure.encoding else { return secure.result! }
    let device = { (index: SecAggIndex) in members[Int(index) - 1].device }
    let stepCount = Double(steps.count)
    let clock = ContinuousClock()
    var serverTime: [SecAggServer.Step: Duration] = [:]
    _ = InMemorySecAggRound(configuration: configuration, parallelism: parallelism).drive(
      &secure,
      seed: { self.secret(device($0), round, "device") },
      identitySecretKey: {
        active ? SecAggCrypto.signingPair(seed: self.secret(device($0), round, "identity")).secretKey : []
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
    for (step, time) in serverTime {
      secure.addServerSeconds(
        Double(time.components.seconds) + Double(time.components.attoseconds) * 1e-18, step: step)
    }
    return secure.result!
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
