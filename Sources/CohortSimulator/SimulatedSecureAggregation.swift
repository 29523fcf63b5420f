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

  let plan: SecureAggregationPlan
  let encoding: FixedPointRingEncoding
  /// The distributed discrete Gaussian (privacy.kind distributed_discrete_gaussian) replaces the
  /// fixed-point encoding: devices add the noise, and the ring carries it.
  let privacy: PrivacyPlan
  /// Quantization with a fixed range goes into the ring as its codes: every device's codes mean
  /// the same values, so their sum decodes.
  let quantization: CompressionPlan?
  /// Devices the noise is calibrated for (the plan's goal), and the most a round selects.
  let expectedCohort: Int
  let largestCohort: Int
  let weightsByExamples: Bool
  let seed: UInt64
  let population: Population
  /// Devices that run a protocol step at once (they are independent; the server stays serial).
  let parallelism: Int
  /// Updates of devices that finished training, by round, until the round's protocol runs.
  private let inputs = Mutex<[Int: [DeviceID: Input]]>([:])

  init(plan: Plan, strategy: ServerStrategy, seed: UInt64, population: Population, parallelism: Int) {
    self.plan = plan.secureAggregation
    encoding = FixedPointRingEncoding(
      clip: Float(plan.secureAggregation.clip), encodingBits: plan.secureAggregation.encodingBits,
      ringBits: plan.secureAggregation.ringBits(devices: plan.server.cohort.selectionTarget))
    weightsByExamples = strategy.weightsByExamples
    privacy = plan.privacy
    quantization =
      plan.compression.kind == .quantization && plan.compression.range != nil ? plan.compression : nil
    expectedCohort = plan.server.cohort.goal
    largestCohort = plan.server.cohort.selectionTarget
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
    let ring: any RingCodec
    switch ringCodec(round: round, dimension: pending[members[0]]!.update.count) {
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
        let weight =
          self.weightsByExamples
          ? Float(min(input.examples, self.plan.weightCap)) / Float(self.plan.weightCap) : 1
        var random = RandomStream(seed: self.seed, purpose: ring.streamPurpose, round: round, device: d)
        return ring.encode(input.update, weight: weight, random: &random)
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

  /// How this run's updates enter the ring in `round`: the distributed discrete Gaussian when
  /// the plan asks for it, fixed-range quantization codes when it compresses that way, the
  /// fixed-point encoding otherwise.
  func ringCodec(round: Int, dimension: Int) -> Result<any RingCodec, SecAggError> {
    if privacy.isDistributed {
      return distributedMechanism(round: round, dimension: dimension).map { $0 }
    }
    if let quantization {
      let ring = QuantizedRing(
        plan: quantization, dimension: dimension, devices: largestCohort, round: round, seed: seed)
      guard ring.ringBits <= 32 else {
        return .failure(
          SecAggError(
            .badConfiguration,
            "compression.bits \(quantization.bits) for \(largestCohort) devices needs a \(ring.ringBits)-bit "
              + "ring; lower compression.bits or the cohort size"))
      }
      return .success(ring)
    }
    return .success(FixedPointRing(encoding: encoding, dimension: dimension))
  }

  /// The distributed discrete Gaussian for one round (Kairouz et al. 2021): clip S, total noise
  /// σ = z·S over the expected cohort, each device adding N_Z(0, σ²/n) in lattice units; the
  /// finest granularity γ = S·2^−k whose ring (for the largest cohort) fits in 32 bits; rotation
  /// signs shared by the round's devices and the server.
  func distributedMechanism(round: Int, dimension: Int) -> Result<DistributedDiscreteGaussian, SecAggError> {
    let clip = privacy.clip
    let total = privacy.noiseMultiplier * clip
    let local = DistributedDiscreteGaussian.localSigma(totalSigma: total, devices: expectedCohort)
    for k in stride(from: 24, through: 0, by: -1) {
      let granularity = clip * Double(sign: .plus, exponent: -k, significand: 1)
      let bits = DistributedDiscreteGaussian.ringBits(
        devices: largestCohort, clipNorm: clip, granularity: granularity, totalSigma: total,
        dimension: dimension)
      guard bits <= 32 else { continue }
      guard local == 0 || DiscreteGaussian.sigmaRange.contains(local / granularity) else { continue }
      var random = RandomStream(seed: seed, purpose: "ddg-rotation", round: round)
      return .success(
        DistributedDiscreteGaussian(
          dimension: dimension, clipNorm: clip, granularity: granularity, localSigma: local,
          beta: privacy.beta,
          ringBits: bits, rotationSeed: random.next()))
    }
    return .failure(
      SecAggError(
        .badConfiguration,
        "no granularity fits the distributed discrete Gaussian of \(largestCohort) devices × \(dimension) "
          + "values into a 32-bit ring: lower privacy.noise_multiplier or the cohort size"))
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

/// An encoding of updates into the secure-aggregation ring and of the ring's sum back into
/// Σ wᵢΔᵢ and Σ wᵢ.
protocol RingCodec: Sendable {
  var ringBits: Int { get }
  /// Words of one device's encoding.
  var vectorLength: Int { get }
  func encode(_ update: [Float], weight: Float, random: inout RandomStream) -> [UInt32]
  func decodeSum(_ sum: [UInt32], devices: Int) -> (weightedSum: [Double], totalWeight: Double)
}

extension RingCodec {
  /// The stream a device's encoding draws from, by purpose.
  var streamPurpose: String { "secagg-encode" }
}

/// The fixed-point encoding (clip per coordinate, `encoding_bits` codes, weight appended).
struct FixedPointRing: RingCodec {
  let encoding: FixedPointRingEncoding
  let dimension: Int

  var ringBits: Int { encoding.ringBits }
  var vectorLength: Int { dimension + 1 }

  func encode(_ update: [Float], weight: Float, random: inout RandomStream) -> [UInt32] {
    encoding.encode(update, weight: weight, random: &random)
  }

  func decodeSum(_ sum: [UInt32], devices: Int) -> (weightedSum: [Double], totalWeight: Double) {
    let d = encoding.decodeSum(sum)
    return (d.weightedSum.map { Double($0) }, d.totalWeight)
  }
}

extension DistributedDiscreteGaussian: RingCodec {
  var vectorLength: Int { paddedDimension }
  var streamPurpose: String { "ddg-encode" }

  /// Every update weighs 1 under differential privacy.
  func encode(_ update: [Float], weight: Float, random: inout RandomStream) -> [UInt32] {
    encode(update, random: &random)
  }

  /// The noisy sum of clipped updates; the Coordinator divides it by the expected cohort.
  func decodeSum(_ sum: [UInt32], devices: Int) -> (weightedSum: [Double], totalWeight: Double) {
    (decodeSum(sum), Double(devices))
  }
}

/// Fixed-range quantization summed in the ring: each device rotates its weighted update (signs
/// shared by the round), quantizes it stochastically to `bits`-bit levels of [−r, r] and appends
/// its weight as a level of [0, 1]; the sum of n devices' levels is below n·2^bits, so a ring of
/// bits + ⌈log2 n⌉ bits holds it, and Σ values = n·(−r) + Σ levels·step, rotated back.
struct QuantizedRing: RingCodec {
  let quantizer: StochasticQuantizer
  let rotation: BlockHadamard?
  let range: Float
  let ringBits: Int
  let dimension: Int

  var vectorLength: Int { dimension + 1 }

  init(plan: CompressionPlan, dimension: Int, devices: Int, round: Int, seed: UInt64) {
    range = Float(plan.range ?? 1)
    // The plan reader admits only valid widths, so this cannot throw.
    quantizer = try! StochasticQuantizer(
      bits: plan.bits, bounds: .fixed(min: -range, max: range),
      rounding: plan.rounding == .stochastic ? .stochastic : .deterministic)
    var shared = RandomStream(seed: seed, purpose: "secagg-rotation", round: round)
    rotation = plan.rotation == .hadamard ? BlockHadamard(dimension: dimension, seed: shared.next()) : nil
    var log = 0
    while (1 << log) < max(devices, 2) { log += 1 }
    ringBits = plan.bits + log
    self.dimension = dimension
  }

  var levels: Double { Double(quantizer.steps) }

  func encode(_ update: [Float], weight: Float, random: inout RandomStream) -> [UInt32] {
    let weighted = weight == 1 ? update : update.map { $0 * weight }
    let input = rotation?.rotate(weighted) ?? weighted
    var out = quantizer.encode(input, rng: &random).levels.map { UInt32($0) }
    let w = Double(weight) * levels
    let low = w.rounded(.down)
    out.append(UInt32(low) + (random.uniform() < w - low ? 1 : 0))
    return out
  }

  func decodeSum(_ sum: [UInt32], devices: Int) -> (weightedSum: [Double], totalWeight: Double) {
    let mask: UInt64 = ringBits >= 32 ? 0xFFFF_FFFF : (1 << UInt64(ringBits)) - 1
    let step = 2 * Double(range) / levels
    let offset = Double(devices) * Double(-range)
    let rotated = sum.dropLast().map { Float(offset + Double(UInt64($0) & mask) * step) }
    let values = rotation?.inverse(rotated) ?? rotated
    return (values.map { Double($0) }, Double(UInt64(sum.last ?? 0) & mask) / levels)
  }
}
