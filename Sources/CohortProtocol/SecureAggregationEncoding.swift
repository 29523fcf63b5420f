import CohortAggregation
public import CohortCompression
public import CohortCore
public import CohortPrivacy
public import CohortSecAgg

/// How a round's updates enter the secure-aggregation ring and how the ring's sum comes back
/// out. Devices and the server build the same encoding from the plan, the round, the cohort
/// bound and the round's shared rotation seed, so the device's side (`encode`) and the
/// server's (`decodeSum`) always agree — in the simulator and over the network alike.
public struct SecureAggregationEncoding: Sendable {
  public let codec: any RingCodec
  /// Whether updates weigh by examples (capped at `weightCap`) or all weigh 1.
  public let weightsByExamples: Bool
  public let weightCap: Int

  /// - Parameters:
  ///   - rotationSeed: randomness every device of the round shares (the rotation signs of
  ///     quantization in the ring and of the distributed discrete Gaussian).
  public static func make(plan: Plan, round: Int, dimension: Int, rotationSeed: UInt64)
    -> Result<SecureAggregationEncoding, SecAggError>
  {
    let strategy = ServerStrategy(
      plan: plan.server.strategy, layout: WeightsLayout([TensorSpec("update", [dimension])]),
      population: 1, equalWeights: plan.privacy.isPrivate)
    let byExamples = strategy.weightsByExamples
    let cap = plan.secureAggregation.weightCap
    let largest = plan.server.cohort.selectionTarget
    if plan.privacy.isDistributed {
      return distributedMechanism(plan: plan, dimension: dimension, rotationSeed: rotationSeed).map {
        SecureAggregationEncoding(codec: $0, weightsByExamples: byExamples, weightCap: cap)
      }
    }
    if plan.compression.kind == .quantization, plan.compression.range != nil {
      let ring = QuantizedRing(
        plan: plan.compression, dimension: dimension, devices: largest, rotationSeed: rotationSeed)
      guard ring.ringBits <= 32 else {
        return .failure(
          SecAggError(
            .badConfiguration,
            "compression.bits \(plan.compression.bits) for \(largest) devices needs a \(ring.ringBits)-bit "
              + "ring; lower compression.bits or the cohort size"))
      }
      return .success(SecureAggregationEncoding(codec: ring, weightsByExamples: byExamples, weightCap: cap))
    }
    let encoding = FixedPointRingEncoding(
      clip: Float(plan.secureAggregation.clip), encodingBits: plan.secureAggregation.encodingBits,
      ringBits: plan.secureAggregation.ringBits(devices: largest))
    return .success(
      SecureAggregationEncoding(
        codec: FixedPointRing(encoding: encoding, dimension: dimension), weightsByExamples: byExamples,
        weightCap: cap))
  }

  /// The rotation seed of `round` in a run with `runSeed`. The simulator and the network server
  /// both draw it so, and send it to the round's devices, so the two agree for the same seed. The
  /// signs are public (the server picks them either way); secrecy is the masks' job.
  public static func rotationSeed(runSeed: UInt64, round: Int, plan: Plan) -> UInt64 {
    var shared = RandomStream(
      seed: runSeed, purpose: plan.privacy.isDistributed ? "ddg-rotation" : "secagg-rotation", round: round)
    return shared.next()
  }

  public var ringBits: Int { codec.ringBits }
  public var vectorLength: Int { codec.vectorLength }
  /// The purpose of the device stream its encoding draws from (one for every ring codec).
  public var streamPurpose: String { "secagg-encode" }

  /// The weight a device's update carries into the sum.
  public func weight(examples: Int) -> Float {
    // Clamped to [0, 1]: the ring encodings turn the weight into an unsigned count.
    weightsByExamples ? Float(min(max(examples, 0), weightCap)) / Float(max(weightCap, 1)) : 1
  }

  /// A device's input to the protocol.
  public func encode(_ update: [Float], examples: Int, random: inout RandomStream) -> [UInt32] {
    codec.encode(update, weight: weight(examples: examples), random: &random)
  }

  /// Σ wᵢΔᵢ and Σ wᵢ from the survivors' sum in the ring.
  public func decodeSum(_ sum: [UInt32], devices: Int) -> (weightedSum: [Double], totalWeight: Double) {
    codec.decodeSum(sum, devices: devices)
  }

  /// The distributed discrete Gaussian for one round (Kairouz et al. 2021): clip S, total noise
  /// σ = z·S over the expected cohort, each device adding N_Z(0, σ²/n) in lattice units; the
  /// finest granularity γ = S·2^−k whose ring (for the largest cohort) fits in 32 bits; rotation
  /// signs shared by the round's devices and the server.
  static func distributedMechanism(plan: Plan, dimension: Int, rotationSeed: UInt64)
    -> Result<DistributedDiscreteGaussian, SecAggError>
  {
    let privacy = plan.privacy
    let largest = plan.server.cohort.selectionTarget
    let clip = privacy.clip
    let total = privacy.noiseMultiplier * clip
    let local = DistributedDiscreteGaussian.localSigma(totalSigma: total, devices: plan.server.cohort.goal)
    for k in stride(from: 24, through: 0, by: -1) {
      let granularity = clip * Double(sign: .plus, exponent: -k, significand: 1)
      let bits = DistributedDiscreteGaussian.ringBits(
        devices: largest, clipNorm: clip, granularity: granularity, totalSigma: total, dimension: dimension)
      guard bits <= 32 else { continue }
      guard local == 0 || DiscreteGaussian.sigmaRange.contains(local / granularity) else { continue }
      return .success(
        DistributedDiscreteGaussian(
          dimension: dimension, clipNorm: clip, granularity: granularity, localSigma: local,
          beta: privacy.beta, ringBits: bits, rotationSeed: rotationSeed))
    }
    return .failure(
      SecAggError(
        .badConfiguration,
        "no granularity fits the distributed discrete Gaussian of \(largest) devices × \(dimension) "
          + "values into a 32-bit ring: lower privacy.noise_multiplier or the cohort size"))
  }
}

/// An encoding of updates into the secure-aggregation ring and of the ring's sum back into
/// Σ wᵢΔᵢ and Σ wᵢ.
public protocol RingCodec: Sendable {
  var ringBits: Int { get }
  /// Words of one device's encoding.
  var vectorLength: Int { get }
  func encode(_ update: [Float], weight: Float, random: inout RandomStream) -> [UInt32]
  func decodeSum(_ sum: [UInt32], devices: Int) -> (weightedSum: [Double], totalWeight: Double)
}

/// The fixed-point encoding (clip per coordinate, `encoding_bits` codes, weight appended).
public struct FixedPointRing: RingCodec {
  public let encoding: FixedPointRingEncoding
  public let dimension: Int

  public init(encoding: FixedPointRingEncoding, dimension: Int) {
    self.encoding = encoding
    self.dimension = dimension
  }

  public var ringBits: Int { encoding.ringBits }
  public var vectorLength: Int { dimension + 1 }

  public func encode(_ update: [Float], weight: Float, random: inout RandomStream) -> [UInt32] {
    encoding.encode(update, weight: weight, random: &random)
  }

  public func decodeSum(_ sum: [UInt32], devices: Int) -> (weightedSum: [Double], totalWeight: Double) {
    let d = encoding.decodeSum(sum)
    return (d.weightedSum.map { Double($0) }, d.totalWeight)
  }
}

extension DistributedDiscreteGaussian: RingCodec {
  public var vectorLength: Int { paddedDimension }

  /// Every update weighs 1 under differential privacy.
  public func encode(_ update: [Float], weight: Float, random: inout RandomStream) -> [UInt32] {
    encode(update, random: &random)
  }

  /// The noisy sum of clipped updates; the Coordinator divides it by the expected cohort.
  public func decodeSum(_ sum: [UInt32], devices: Int) -> (weightedSum: [Double], totalWeight: Double) {
    (decodeSum(sum), Double(devices))
  }
}

/// Fixed-range quantization summed in the ring: each device rotates its weighted update (signs
/// shared by the round), quantizes it stochastically to `bits`-bit levels of [−r, r] and appends
/// its weight as a level of [0, 1]; the sum of n devices' levels is below n·2^bits, so a ring of
/// bits + ⌈log2 n⌉ bits holds it, and Σ values = n·(−r) + Σ levels·step, rotated back.
public struct QuantizedRing: RingCodec {
  public let quantizer: StochasticQuantizer
  public let rotation: BlockHadamard?
  public let range: Float
  public let ringBits: Int
  public let dimension: Int

  public var vectorLength: Int { dimension + 1 }

  public init(plan: CompressionPlan, dimension: Int, devices: Int, rotationSeed: UInt64) {
    range = Float(plan.range ?? 1)
    // The plan reader admits only valid widths, so this cannot throw.
    quantizer = try! StochasticQuantizer(
      bits: plan.bits, bounds: .fixed(min: -range, max: range),
      rounding: plan.rounding == .stochastic ? .stochastic : .deterministic)
    rotation = plan.rotation == .hadamard ? BlockHadamard(dimension: dimension, seed: rotationSeed) : nil
    var log = 0
    while (1 << log) < max(devices, 2) { log += 1 }
    ringBits = plan.bits + log
    self.dimension = dimension
  }

  public var levels: Double { Double(quantizer.steps) }

  public func encode(_ update: [Float], weight: Float, random: inout RandomStream) -> [UInt32] {
    let weighted = weight == 1 ? update : update.map { $0 * weight }
    let input = rotation?.rotate(weighted) ?? weighted
    var out = quantizer.encode(input, rng: &random).levels.map { UInt32($0) }
    let w = Double(weight) * levels
    let low = w.rounded(.down)
    out.append(UInt32(low) + (random.uniform() < w - low ? 1 : 0))
    return out
  }

  public func decodeSum(_ sum: [UInt32], devices: Int) -> (weightedSum: [Double], totalWeight: Double) {
    let mask: UInt64 = ringBits >= 32 ? 0xFFFF_FFFF : (1 << UInt64(ringBits)) - 1
    let step = 2 * Double(range) / levels
    let offset = Double(devices) * Double(-range)
    let rotated = sum.dropLast().map { Float(offset + Double(UInt64($0) & mask) * step) }
    let values = rotation?.inverse(rotated) ?? rotated
    return (values.map { Double($0) }, Double(UInt64(sum.last ?? 0) & mask) / levels)
  }
}
