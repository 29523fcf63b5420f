/// The SecAgg+ neighbour graph (Bell et al., CCS 2020): the Harary graph H(k, n) on devices placed
/// on a ring in a random order.
///
/// Devices share keys and masks only with their k neighbours instead of all n − 1 others, which
/// turns SecAgg's O(n²) work into O(n k). The order is random (drawn from a public seed the
/// server announces) so that no device can pick its neighbours. A device at ring position p is
/// adjacent to the devices at positions p ± 1 … p ± k/2 (mod n); when k ≥ n − 1 the graph is
/// complete, which is plain SecAgg.
///
/// Only the ring order and its inverse are stored (O(n)); neighbour lists are computed on demand.
public struct NeighbourGraph: Sendable, Equatable {
  /// n: devices, numbered 1...n.
  public let count: Int
  /// k actually used: n − 1 when the graph is complete.
  public let degree: Int
  /// ring[p] is the device at ring position p. Empty for the complete graph, where order does not
  /// matter (so complete graphs from different seeds are equal).
  let ring: [UInt32]
  /// position[i − 1] is the ring position of device i.
  private let position: [Int]

  public var isComplete: Bool { degree >= count - 1 }

  /// The graph for `count` devices with `degree` neighbours each, ordered by `seed` (32 bytes).
  ///
  /// `degree` must be even (each device takes k/2 on either side) and ≥ 2, unless it is ≥ n − 1,
  /// which gives the complete graph (as does n ≤ 2). The order is a Fisher–Yates shuffle of
  /// 1...n driven by `SecretStream(key: seed)`: for i = n − 1 down to 1, swap positions i and j
  /// with j uniform in 0...i (Lemire's multiply-and-reject on `next()`, so no modulo bias).
  public init(count: Int, degree: Int, seed: [UInt8]) {
    precondition(count >= 1 && count <= Int(UInt32.max), "a graph has 1...2^32 − 1 devices")
    precondition(seed.count == SecAggCrypto.keyBytes, "the graph seed has 32 bytes")
    precondition(degree >= 0, "the degree is not negative")
    self.count = count
    if count <= 2 || degree >= count - 1 {
      self.degree = count - 1
      ring = []
      position = []
      return
    }
    precondition(degree >= 2 && degree % 2 == 0, "a Harary ring needs an even degree ≥ 2")
    self.degree = degree
    var order = (1...count).map { UInt32($0) }
    var stream = SecretStream(key: seed)
    for i in stride(from: count - 1, to: 0, by: -1) {
      let j = Int(Self.uniform(below: UInt64(i + 1), &stream))
      order.swapAt(i, j)
    }
    stream.erase()
    var position = [Int](repeating: 0, count: count)
    for (p, device) in order.enumerated() { position[Int(device) - 1] = p }
    ring = order
    self.position = position
  }

  /// Sorted neighbour indices of `index` (1-based), excluding itself.
  public func neighbours(of index: UInt32) -> [UInt32] {
    precondition(index >= 1 && Int(index) <= count, "device \(index) is not in 1...\(count)")
    if isComplete {
      return (1...count).compactMap { $0 == Int(index) ? nil : UInt32($0) }
    }
    let p = position[Int(index) - 1]
    var out = [UInt32]()
    out.reserveCapacity(degree)
    for d in 1...(degree / 2) {
      out.append(ring[(p + d) % count])
      out.append(ring[(p - d + count) % count])
    }
    out.sort()
    return out
  }

  /// Whether `a` and `b` (distinct, in 1...n) are adjacent: their ring distance is ≤ k/2. O(1).
  public func areNeighbours(_ a: UInt32, _ b: UInt32) -> Bool {
    guard a != b, a >= 1, b >= 1, Int(a) <= count, Int(b) <= count else { return false }
    if isComplete { return true }
    let d = abs(position[Int(a) - 1] - position[Int(b) - 1])
    return min(d, count - d) <= degree / 2
  }

  /// Uniform in 0..<bound (Lemire 2019): the high word of a 64×64-bit product, rejecting the few
  /// low words that would bias it.
  private static func uniform(below bound: UInt64, _ stream: inout SecretStream) -> UInt64 {
    var (high, low) = stream.next().multipliedFullWidth(by: bound)
    if low < bound {
      let threshold = (0 &- bound) % bound
      while low < threshold { (high, low) = stream.next().multipliedFullWidth(by: bound) }
    }
    return high
  }
}
