public import CohortCore

/// A vector with most coordinates dropped: the kept values, and where they go.
public struct SparseVector: Sendable, Hashable {
  /// The length of the dense vector.
  public var dimension: Int
  /// The kept coordinates, ascending.
  public var indices: [UInt32]
  /// The values sent, one per index.
  public var values: [Float]
  /// Whether the indices are sent (top-k) or rebuilt by the receiver from a shared seed
  /// (a random mask).
  public var indicesTravel: Bool
  /// The factor the receiver multiplies values by: d/k for an unbiased random mask, else 1.
  public var scale: Float

  public init(dimension: Int, indices: [UInt32], values: [Float], indicesTravel: Bool, scale: Float = 1) {
    precondition(indices.count == values.count, "a sparse vector needs one value per index")
    self.dimension = dimension
    self.indices = indices
    self.values = values
    self.indicesTravel = indicesTravel
    self.scale = scale
  }

  /// The bytes this update takes when sent: 4 per Float32 value, plus 4 per UInt32 index when the
  /// indices travel. (A quantizer may shrink the values further.)
  public var wireBytes: Int { values.count * 4 + (indicesTravel ? indices.count * 4 : 0) }

  /// The dense vector: zeros except at the kept indices.
  public func decoded() -> [Float] {
    var out = [Float](repeating: 0, count: dimension)
    for (i, v) in zip(indices, values) { out[Int(i)] = v * scale }
    return out
  }
}

/// Keeps the k coordinates of largest magnitude (ties to the lower index). Biased, and its mask
/// differs between devices, so it does not combine with secure aggregation; its indices travel.
public struct TopKSparsifier: Sendable, Hashable {
  public let k: Int

  public init(k: Int) throws(CohortError) {
    guard k >= 1 else {
      throw CohortError(
        .invalidConfiguration, "top-k sparsification needs k ≥ 1, got \(k)", fix: "keep at least one value")
    }
    self.k = k
  }

  public func encode(_ x: [Float]) -> SparseVector {
    let keep = Swift.min(k, x.count)
    let order = x.indices.sorted { a, b in
      let (ma, mb) = (abs(x[a]), abs(x[b]))
      return ma != mb ? ma > mb : a < b
    }
    let kept = order.prefix(keep).sorted()
    return SparseVector(
      dimension: x.count, indices: kept.map { UInt32($0) }, values: kept.map { x[$0] }, indicesTravel: true)
  }

  public func decode(_ s: SparseVector) -> [Float] { s.decoded() }
}

/// Keeps k coordinates chosen uniformly at random from a seed that device and server share, so
/// only the values travel (Konečný et al. 2016, §3 "random mask"; with a seed per round the mask
/// is the same for every device, which secure aggregation needs). Scaling the kept values by d/k
/// makes the decoded vector an unbiased estimate of the input.
public struct RandomMaskSparsifier: Sendable, Hashable {
  public let dimension: Int
  /// The kept coordinates, ascending.
  public let indices: [UInt32]
  public let unbiased: Bool

  /// The mask keeping `keep` of `dimension` coordinates, drawn from `seed`.
  public init(dimension: Int, keep: Int, seed: UInt64, unbiased: Bool = true) throws(CohortError) {
    guard dimension >= 1, (1...dimension).contains(keep) else {
      throw CohortError(
        .invalidConfiguration,
        "a random mask must keep between 1 and \(Swift.max(dimension, 1)) of \(dimension) values, got \(keep)",
        fix: "choose a kept count in 1...\(Swift.max(dimension, 1))")
    }
    var stream = RandomStream(seed: seed, purpose: "random-mask")
    self.dimension = dimension
    indices = stream.sample(keep, from: dimension).sorted().map { UInt32($0) }
    self.unbiased = unbiased
  }

  public func encode(_ x: [Float]) -> SparseVector {
    precondition(x.count == dimension, "random mask expects \(dimension) values, got \(x.count)")
    let scale: Float = unbiased ? Float(Double(dimension) / Double(indices.count)) : 1
    return SparseVector(
      dimension: dimension, indices: indices, values: indices.map { x[Int($0)] }, indicesTravel: false,
      scale: scale)
  }

  public func decode(_ s: SparseVector) -> [Float] { s.decoded() }
}
