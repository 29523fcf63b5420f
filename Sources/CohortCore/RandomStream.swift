import Foundation

/// A fast, seeded, non-cryptographic random stream (xoshiro256**).
///
/// Every draw in Cohort that is not cryptographic comes from a stream derived from
/// (run seed, purpose, round, device), so a scenario and its seed reproduce every number.
/// Keys, masks and production noise never come from here: they come from libsodium.
public struct RandomStream: RandomNumberGenerator, Sendable, Hashable {
  @usableFromInline var s0: UInt64
  @usableFromInline var s1: UInt64
  @usableFromInline var s2: UInt64
  @usableFromInline var s3: UInt64
  /// The second value of the last Box–Muller pair, kept so normals cost one uniform pair per two.
  private var spareNormal: Double?

  /// A stream from a single 64-bit seed, expanded to 256 bits of state with SplitMix64.
  public init(seed: UInt64) {
    var sm = seed
    s0 = Self.splitMix(&sm)
    s1 = Self.splitMix(&sm)
    s2 = Self.splitMix(&sm)
    s3 = Self.splitMix(&sm)
    if s0 | s1 | s2 | s3 == 0 { s0 = 0x9E37_79B9_7F4A_7C15 }
    spareNormal = nil
  }

  /// The stream for one purpose (e.g. "partition", "train"), round and device of a run.
  /// Streams with any differing component are statistically independent.
  public init(seed: UInt64, purpose: String, round: Int = 0, device: Int = 0) {
    var h = Self.mix(seed)
    h = Self.mix(h ^ Self.fnv1a(purpose))
    h = Self.mix(h ^ UInt64(bitPattern: Int64(round)) &* 0xD1B5_4A32_D192_ED03)
    h = Self.mix(h ^ UInt64(bitPattern: Int64(device)) &* 0x8CB9_2BA7_2F3D_8DD7)
    self.init(seed: h)
  }

  /// A child stream: this stream's identity plus a further purpose, without consuming draws.
  public func derived(_ purpose: String, round: Int = 0, device: Int = 0) -> RandomStream {
    RandomStream(seed: s0 ^ Self.mix(s1 ^ s2 ^ s3), purpose: purpose, round: round, device: device)
  }

  @inlinable
  static func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

  @inlinable
  public mutating func next() -> UInt64 {
    let result = Self.rotl(s1 &* 5, 7) &* 9
    let t = s1 << 17
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = Self.rotl(s3, 45)
    return result
  }

  // MARK: Uniform draws

  /// Uniform in [0, 1) with 53 random bits.
  public mutating func uniform() -> Double {
    Double(next() >> 11) * 0x1.0p-53
  }

  /// Uniform in (0, 1]: safe to take the logarithm of.
  public mutating func uniformPositive() -> Double {
    (Double(next() >> 11) + 1) * 0x1.0p-53
  }

  /// Uniform in [0, 1) as a Float with 24 random bits.
  public mutating func uniformFloat() -> Float {
    Float(next() >> 40) * 0x1.0p-24
  }

  /// Uniform integer in 0..<bound without modulo bias (Lemire's method).
  @inlinable
  public mutating func int(below bound: Int) -> Int {
    precondition(bound > 0, "bound must be positive")
    let b = UInt64(bound)
    var m = next().multipliedFullWidth(by: b)
    if m.low < b {
      let threshold = (0 &- b) % b
      while m.low < threshold { m = next().multipliedFullWidth(by: b) }
    }
    return Int(m.high)
  }

  // MARK: Continuous distributions

  /// Standard normal (Box–Muller; the second value of each pair is kept for the next call).
  public mutating func normal() -> Double {
    if let spare = spareNormal {
      spareNormal = nil
      return spare
    }
    let (first, second) = Self.boxMuller(uniformPositive(), uniform())
    spareNormal = second
    return first
  }

  /// Two independent standard normals from a uniform in (0, 1] and one in [0, 1) (Box–Muller);
  /// shared with `SecureRandom`, whose uniforms come from libsodium.
  public static func boxMuller(_ u1: Double, _ u2: Double) -> (Double, Double) {
    let r = (-2 * log(u1)).squareRoot()
    let theta = 2 * Double.pi * u2
    return (r * cos(theta), r * sin(theta))
  }

  public mutating func normal(mean: Double, standardDeviation: Double) -> Double {
    mean + standardDeviation * normal()
  }

  /// exp(N(mean, sigma²)): `mean` and `sigma` are those of the underlying normal, as in NumPy.
  public mutating func lognormal(mean: Double, sigma: Double) -> Double {
    exp(mean + sigma * normal())
  }

  /// Gamma(shape, 1) by Marsaglia and Tsang (2000); shapes below 1 use the boost u^(1/shape).
  public mutating func gamma(shape: Double) -> Double {
    precondition(shape > 0, "gamma shape must be positive")
    if shape < 1 {
      let g = gamma(shape: shape + 1)
      return g * pow(uniformPositive(), 1 / shape)
    }
    let d = shape - 1.0 / 3.0
    let c = 1 / (9 * d).squareRoot()
    while true {
      var x: Double
      var v: Double
      repeat {
        x = normal()
        v = 1 + c * x
      } while v <= 0
      v = v * v * v
      let u = uniformPositive()
      if u < 1 - 0.0331 * x * x * x * x { return d * v }
      if log(u) < 0.5 * x * x + d * (1 - v + log(v)) { return d * v }
    }
  }

  /// A draw from Dirichlet(alpha): normalised gammas. Very small concentrations can make
  /// every gamma underflow to zero; then one component, chosen by its weight, gets all the mass.
  public mutating func dirichlet(_ alpha: [Double]) -> [Double] {
    var g = alpha.map { gamma(shape: $0) }
    let sum = g.reduce(0, +)
    if sum > 0 && sum.isFinite {
      for i in g.indices { g[i] /= sum }
      return g
    }
    let winner = categorical(alpha)
    return alpha.indices.map { $0 == winner ? 1 : 0 }
  }

  /// An index drawn with probability proportional to `weights` (which need not sum to 1).
  public mutating func categorical(_ weights: [Double]) -> Int {
    let total = weights.reduce(0, +)
    precondition(total > 0, "categorical weights must have a positive sum")
    var target = uniform() * total
    for (i, w) in weights.enumerated() {
      target -= w
      if target < 0 { return i }
    }
    return weights.lastIndex(where: { $0 > 0 }) ?? 0
  }

  // MARK: Permutations and samples

  /// Fisher–Yates shuffle in place. Inlinable so callers in other modules get it specialised:
  /// the trainer shuffles every epoch of every client.
  @inlinable
  public mutating func shuffle<C: MutableCollection>(_ values: inout C) where C.Index == Int {
    guard values.count > 1 else { return }
    let start = values.startIndex
    for i in stride(from: values.count - 1, to: 0, by: -1) {
      values.swapAt(start + i, start + int(below: i + 1))
    }
  }

  /// A uniformly random permutation of 0..<count.
  public mutating func permutation(_ count: Int) -> [Int] {
    var p = Array(0..<count)
    shuffle(&p)
    return p
  }

  /// `k` distinct values from 0..<n in random order. Uses a partial Fisher–Yates when k is a
  /// large share of n, and Floyd's algorithm (memory O(k)) when n is much larger than k.
  public mutating func sample(_ k: Int, from n: Int) -> [Int] {
    precondition(k >= 0 && k <= n, "cannot sample \(k) of \(n) without replacement")
    if k * 4 >= n {
      var p = Array(0..<n)
      for i in 0..<k { p.swapAt(i, i + int(below: n - i)) }
      return Array(p[0..<k])
    }
    var chosen = Set<Int>(minimumCapacity: k)
    var order: [Int] = []
    order.reserveCapacity(k)
    for j in (n - k)..<n {
      let t = int(below: j + 1)
      let pick = chosen.contains(t) ? j : t
      chosen.insert(pick)
      order.append(pick)
    }
    shuffle(&order)
    return order
  }

  // MARK: Saving and restoring

  /// The stream's whole state, for saving a simulation mid-run.
  public var savedState: (UInt64, UInt64, UInt64, UInt64, Double?) { (s0, s1, s2, s3, spareNormal) }

  /// A stream that continues exactly where the one that gave `savedState` stood.
  public init(savedState: (UInt64, UInt64, UInt64, UInt64, Double?)) {
    (s0, s1, s2, s3, spareNormal) = savedState
  }

  // MARK: Seeding helpers

  static func splitMix(_ state: inout UInt64) -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    return mix(state)
  }

  static func mix(_ value: UInt64) -> UInt64 {
    var z = value
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }

  static func fnv1a(_ text: String) -> UInt64 {
    var h: UInt64 = 0xCBF2_9CE4_8422_2325
    for byte in text.utf8 {
      h ^= UInt64(byte)
      h &*= 0x0000_0100_0000_01B3
    }
    return h
  }
}
