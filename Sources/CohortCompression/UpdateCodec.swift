public import CohortCore

/// An update as a device sends it: the payload, and the bytes it takes on the wire.
public struct EncodedUpdate: Sendable, Hashable {
  public enum Payload: Sendable, Hashable {
    /// Float32 values, uncompressed.
    case dense([Float])
    /// Levels and range of the (possibly rotated) update.
    case quantized(QuantizedVector)
    /// Kept coordinates of a sparsified update.
    case sparse(SparseVector)
  }

  /// The length of the decoded update.
  public var dimension: Int
  public var payload: Payload
  /// The seed of the rotation's signs (or of the random mask). It does not travel: device and
  /// server derive it from the round's shared codec seed (`UpdateCodec.sharedSeed`), which the
  /// server draws from its run seed and sends with the task.
  public var seed: UInt64

  public init(dimension: Int, payload: Payload, seed: UInt64) {
    self.dimension = dimension
    self.payload = payload
    self.seed = seed
  }

  /// The bytes actually sent (`wireForm`): Float32 values (dense); the bit width, the Float32 min
  /// and max when the range is per vector, and the packed levels (quantized); the kept count,
  /// UInt32 indices when they travel and Float32 values (sparse). The dimension and seeds are
  /// known to both sides and are not sent.
  public var wireBytes: Int {
    switch payload {
    case .dense(let v): v.count * MemoryLayout<Float>.size
    case .quantized(let q): 1 + q.wireBytes
    case .sparse(let s): 4 + s.wireBytes
    }
  }
}

/// The plan's update codec: what a device applies to its update before uploading it and what
/// the server applies to what arrives. Pure: the randomness (rotation signs, random mask,
/// stochastic rounding) comes from a stream the caller derives from (run seed, round, device), so
/// the server can rebuild the shared seeds and a run replays bit for bit.
///
/// - `none`: the Float32 values, unchanged.
/// - `quantization`: optionally rotated by `BlockHadamard` (no padding, so 610 values stay 610),
///   then quantized to `bits` bits with a per-vector range (one Float32 min and max in the header)
///   or a fixed range [−r, r], stochastically or deterministically rounded, and bit-packed.
/// - `top_k`: the ⌈fraction·d⌉ largest-magnitude values with their indices.
/// - `random_mask`: ⌈fraction·d⌉ values at positions drawn from the seed, scaled by d/k on
///   decoding so the result is unbiased.
public struct UpdateCodec: Sendable {
  public let plan: CompressionPlan
  /// The length of the updates encoded.
  public let dimension: Int
  private let quantizer: StochasticQuantizer?
  private let topK: TopKSparsifier?

  /// The codec of `plan` for updates of `dimension` values. Throws for parameters the plan
  /// reader would have rejected (e.g. bits outside 1...16).
  public init(plan: CompressionPlan, dimension: Int) throws(CohortError) {
    precondition(dimension >= 1, "an update has at least one value, got \(dimension)")
    self.plan = plan
    self.dimension = dimension
    switch plan.kind {
    case .quantization:
      let bounds: StochasticQuantizer.Bounds =
        plan.range.map { .fixed(min: -Float($0), max: Float($0)) } ?? .perVector
      quantizer = try StochasticQuantizer(
        bits: plan.bits, bounds: bounds, rounding: plan.rounding == .stochastic ? .stochastic : .deterministic
      )
      topK = nil
    case .topK:
      quantizer = nil
      topK = try TopKSparsifier(k: plan.keptCount(dimension: dimension))
    case .none, .randomMask:
      quantizer = nil
      topK = nil
    }
  }

  /// Encodes `update` (of `dimension` values). `stream` gives the seed (its first draw) and then
  /// the rounding draws.
  public func encode(_ update: [Float], stream: inout RandomStream) -> EncodedUpdate {
    let seed = stream.next()
    return encode(update, seed: seed, stream: &stream)
  }

  /// Encodes `update` (of `dimension` values) with the rotation signs or random mask of `seed`,
  /// which the server knows too; `stream` gives the rounding draws.
  public func encode(_ update: [Float], seed: UInt64, stream: inout RandomStream) -> EncodedUpdate {
    precondition(update.count == dimension, "the codec expects \(dimension) values, got \(update.count)")
    switch plan.kind {
    case .none:
      return EncodedUpdate(dimension: dimension, payload: .dense(update), seed: seed)
    case .quantization:
      guard let quantizer else { preconditionFailure("quantization codec without a quantizer") }
      let input =
        plan.rotation == .hadamard ? BlockHadamard(dimension: dimension, seed: seed).rotate(update) : update
      return EncodedUpdate(
        dimension: dimension, payload: .quantized(quantizer.encode(input, rng: &stream)), seed: seed)
    case .topK:
      guard let topK else { preconditionFailure("top-k codec without a sparsifier") }
      return EncodedUpdate(dimension: dimension, payload: .sparse(topK.encode(update)), seed: seed)
    case .randomMask:
      return EncodedUpdate(
        dimension: dimension, payload: .sparse(mask(seed: seed).encode(update)), seed: seed)
    }
  }

  /// The server's side: the update `encoded` stands for.
  public func decode(_ encoded: EncodedUpdate) -> [Float] {
    precondition(
      encoded.dimension == dimension, "the codec decodes \(dimension) values, got \(encoded.dimension)")
    switch encoded.payload {
    case .dense(let values): return values
    case .quantized(let q):
      let values = q.decoded()
      return plan.rotation == .hadamard
        ? BlockHadamard(dimension: dimension, seed: encoded.seed).inverse(values) : values
    case .sparse(let s): return s.decoded()
    }
  }

  /// The round's shared codec seed of a run: every device of the round and the server use it
  /// (the random mask under secure aggregation, and the root of each device's seed). The server
  /// draws it from its run seed and sends it with the task; the simulator draws it from the
  /// scenario seed, so a network run and a simulation with the same seed agree.
  public static func sharedSeed(runSeed: UInt64, round: Int) -> UInt64 {
    var stream = RandomStream(seed: runSeed, purpose: "codec-shared", round: round)
    return stream.next()
  }

  /// The seed of one device's rotation signs or random mask when updates travel one by one:
  /// from the round's shared seed and the device, so the server rebuilds it instead of reading it
  /// from the upload, and devices do not all share one mask.
  public static func deviceSeed(shared: UInt64, round: Int, device: Int) -> UInt64 {
    var stream = RandomStream(seed: shared, purpose: "codec-device", round: round, device: device)
    return stream.next()
  }

  /// The bytes an uncompressed update of this dimension takes: 4 per value.
  public var uncompressedBytes: Int { dimension * MemoryLayout<Float>.size }

  private func mask(seed: UInt64) -> RandomMaskSparsifier {
    // The kept count is within 1...dimension by construction, so this cannot throw.
    guard
      let m = try? RandomMaskSparsifier(
        dimension: dimension, keep: plan.keptCount(dimension: dimension), seed: seed)
    else { preconditionFailure("random mask of \(plan.keptCount(dimension: dimension)) of \(dimension)") }
    return m
  }
}
