import CohortCore

/// A padding-free random rotation: the vector is cut into power-of-two blocks following the
/// binary decomposition of its length (610 = 512 + 64 + 32 + 2, largest first) and each block is
/// rotated on its own by H·D/√n (`RandomizedHadamard` without the zero padding).
///
/// The matrix is block-diagonal with orthogonal blocks, so it is orthogonal: norms and inner
/// products are kept and its transpose is its inverse. The rotated vector has exactly as many
/// values as the input, so a quantized update costs ⌈d·b/8⌉ bytes, where padding 610 values to
/// 1,024 would cost 68% more. The price: a small block spreads its energy over fewer coordinates
/// than one big rotation would; at most half the coordinates lie outside the largest block, and
/// the per-vector range is shared by all blocks, so a spike there widens the range less than an
/// unrotated spike would. The signs come from a seed that device and server share.
public struct BlockHadamard: Sendable, Hashable {
  /// The length of the vectors rotated (and of the rotated vectors).
  public let dimension: Int
  /// The blocks' lengths, powers of two, largest first; they sum to `dimension`.
  public let blocks: [Int]
  /// The diagonal of D, one ±1 per coordinate.
  private let signs: [Float]

  /// The rotation for vectors of `dimension` values, with signs drawn from `seed`.
  public init(dimension: Int, seed: UInt64) {
    precondition(dimension >= 0, "dimension must be non-negative, got \(dimension)")
    self.dimension = dimension
    blocks = Self.blocks(of: dimension)
    var stream = RandomStream(seed: seed, purpose: "block-hadamard-signs")
    signs = WalshHadamard.randomSigns(count: dimension, stream: &stream)
  }

  /// The powers of two in the binary expansion of `n`, largest first.
  public static func blocks(of n: Int) -> [Int] {
    var out: [Int] = []
    var bit = 62
    while bit >= 0 {
      if n & (1 << bit) != 0 { out.append(1 << bit) }
      bit -= 1
    }
    return out
  }

  /// Block by block, H·D·x/√n.
  public func rotate(_ x: [Float]) -> [Float] {
    precondition(x.count == dimension, "rotate expects \(dimension) values, got \(x.count)")
    var y = x
    y.withUnsafeMutableBufferPointer { out in
      signs.withUnsafeBufferPointer { d in
        for i in 0..<out.count { out[i] *= d[i] }
      }
      forEachBlock(out) { block in
        WalshHadamard.transform(block)
        Vector.scale(1 / Float(block.count).squareRoot(), block)
      }
    }
    return y
  }

  /// The inverse (the transpose), block by block D·H·y/√n: `inverse(rotate(x))` equals `x` to
  /// float precision.
  public func inverse(_ y: [Float]) -> [Float] {
    precondition(y.count == dimension, "inverse expects \(dimension) values, got \(y.count)")
    var z = y
    z.withUnsafeMutableBufferPointer { out in
      forEachBlock(out) { block in
        WalshHadamard.transform(block)
        Vector.scale(1 / Float(block.count).squareRoot(), block)
      }
      signs.withUnsafeBufferPointer { d in
        for i in 0..<out.count { out[i] *= d[i] }
      }
    }
    return z
  }

  private func forEachBlock(
    _ buffer: UnsafeMutableBufferPointer<Float>, _ body: (UnsafeMutableBufferPointer<Float>) -> Void
  ) {
    var start = 0
    for length in blocks {
      body(UnsafeMutableBufferPointer(rebasing: buffer[start..<(start + length)]))
      start += length
    }
  }
}
