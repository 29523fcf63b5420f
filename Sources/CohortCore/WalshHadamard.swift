/// The two pieces every randomized Hadamard rotation in Cohort is built from (update
/// compression, the distributed discrete Gaussian): random ±1 signs drawn from a shared stream,
/// and the fast Walsh–Hadamard transform. Kept here once so device and server, and every codec,
/// rotate identically.
public enum WalshHadamard {
  /// `count` random signs, ±1: one 64-bit draw from `stream` gives 64 of them, least
  /// significant bit first (a set bit is −1).
  public static func randomSigns<T: FloatingPoint>(count: Int, stream: inout RandomStream) -> [T] {
    var signs = [T](repeating: 1, count: count)
    var bits: UInt64 = 0
    for i in 0..<count {
      if i % 64 == 0 { bits = stream.next() }
      if bits & 1 == 1 { signs[i] = -1 }
      bits >>= 1
    }
    return signs
  }

  /// The unnormalised fast Walsh–Hadamard transform in place; the length must be a power of two.
  /// Each stage's inner loop runs over contiguous halves, so it vectorises once specialised.
  @inlinable
  public static func transform<T: FloatingPoint>(_ x: UnsafeMutableBufferPointer<T>) {
    let n = x.count
    precondition(n & (n - 1) == 0, "the Walsh–Hadamard transform needs a power-of-two length, got \(n)")
    guard let base = x.baseAddress else { return }
    var h = 1
    while h < n {
      var i = 0
      while i < n {
        let a = base + i
        let b = base + i + h
        for j in 0..<h {
          let u = a[j]
          let v = b[j]
          a[j] = u + v
          b[j] = u - v
        }
        i += 2 * h
      }
      h <<= 1
    }
  }
}
