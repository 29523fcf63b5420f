public import CohortCore

/// A random rotation x ↦ H·D·x / √n, with D a diagonal of random ±1 signs and H the n × n
/// Walsh–Hadamard matrix, n the dimension zero-padded to a power of two.
///
/// Rotating before quantizing spreads a vector's energy evenly over its coordinates, so the
/// per-vector range [min, max] shrinks from O(‖x‖) to O(‖x‖·√(log n / n)) with high probability,
/// and the mean squared error of stochastic quantization drops from O(d/k²) to O(log d/k²)
/// (Suresh et al. 2017, "Distributed Mean Estimation with Limited Communication", §4). The signs
/// come from a seed that device and server share, so only the rotated values travel; the
/// transform costs O(n log n) time and no memory beyond the vector.
public struct RandomizedHadamard: Sendable, Hashable {
  /// The length of the vectors rotated.
  public let dimension: Int
  /// The length of a rotated vector: the smallest power of two ≥ `dimension` (at least 1).
  public let paddedDimension: Int
  /// The diagonal of D, as ±1 floats so the hot loop is a plain multiply.
  private let signs: [Float]

  /// The rotation for vectors of `dimension` values, with signs drawn from `seed`.
  public init(dimension: Int, seed: UInt64) {
    var stream = RandomStream(seed: seed, purpose: "randomized-hadamard-signs")
    self.init(dimension: dimension, stream: &stream)
  }

  /// The rotation for vectors of `dimension` values, with signs drawn from `stream`
  /// (e.g. one derived from the run seed, the round and "rotation", shared by every device).
  public init(dimension: Int, stream: inout RandomStream) {
    precondition(dimension >= 0, "dimension must be non-negative, got \(dimension)")
    self.dimension = dimension
    var n = 1
    while n < dimension { n <<= 1 }
    paddedDimension = n
    signs = WalshHadamard.randomSigns(count: n, stream: &stream)
  }

  /// H·D·x / √n: `x` has `dimension` values, the result `paddedDimension`.
  public func rotate(_ x: [Float]) -> [Float] {
    precondition(x.count == dimension, "rotate expects \(dimension) values, got \(x.count)")
    var y = [Float](repeating: 0, count: paddedDimension)
    let scale = 1 / Float(paddedDimension).squareRoot()
    y.withUnsafeMutableBufferPointer { out in
      x.withUnsafeBufferPointer { input in
        signs.withUnsafeBufferPointer { d in
          for i in 0..<input.count { out[i] = input[i] * d[i] }
        }
      }
      WalshHadamard.transform(out)
      Vector.scale(scale, out)
    }
    return y
  }

  /// The inverse, D·H·y / √n truncated to `dimension` values (H is symmetric and H·H = n·I).
  /// `inverse(rotate(x))` equals `x` to float precision.
  public func inverse(_ y: [Float]) -> [Float] {
    precondition(y.count == paddedDimension, "inverse expects \(paddedDimension) values, got \(y.count)")
    var z = y
    let scale = 1 / Float(paddedDimension).squareRoot()
    z.withUnsafeMutableBufferPointer { buffer in
      WalshHadamard.transform(buffer)
      signs.withUnsafeBufferPointer { d in
        for i in 0..<buffer.count { buffer[i] *= d[i] * scale }
      }
    }
    z.removeLast(paddedDimension - dimension)
    return z
  }
}
