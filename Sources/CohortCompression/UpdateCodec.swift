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
  /// server derive it from the same (run seed, round, device) stream.
  public var seed: UInt64

  public init(dimension: Int, payload: Payload, seed: UInt64) {
    self.dimension = dimension
    self.payload = payload
    self.seed = seed
  }

  /// The bytes actually sent: Float32 values (dense); packed levels plus the Float32 min and max
  /// when the range is per vector (quantized); Float32 values plus UInt32 indices when they travel
  /// (sparse). The dimension, bit width and seeds are known to both sides and are not sent.
  public var wireBytes: Int {
    switch payload {
    case .dense(let v): v.count * MemoryLayout<Float>.size
    case .quantized(let q): q.wireBytes
    case .sparse(let s): s.wireBytes
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

  /// Encodes `update` (of `dimension` values). `stream` gives the shared seed (its first draw)
  /// and then the rounding draws; the server decodes with the seed recorded in the result, which
  /// it would derive from the same stream.
  public func encode(_ update: [Float], stream: inout RandomStream) -> EncodedUpdate {
    precondition(update.count == dimension, "the codec expects \(dimension) values, got \(update.count)")
    let seed = stream.next()
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
