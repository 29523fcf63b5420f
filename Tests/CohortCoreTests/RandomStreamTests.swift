import CohortCore
import Testing

@Suite struct RandomStreamTests {
  @Test func sameIdentitySameStream() {
    var a = RandomStream(seed: 7, purpose: "x", round: 1, device: 2)
    var b = RandomStream(seed: 7, purpose: "x", round: 1, device: 2)
    for _ in 0..<100 { #expect(a.next() == b.next()) }
  }

  @Test func anyDifferentComponentGivesADifferentStream() {
    let base = RandomStream(seed: 7, purpose: "x", round: 1, device: 2)
    let variants = [
      RandomStream(seed: 8, purpose: "x", round: 1, device: 2),
      RandomStream(seed: 7, purpose: "y", round: 1, device: 2),
      RandomStream(seed: 7, purpose: "x", round: 2, device: 2),
      RandomStream(seed: 7, purpose: "x", round: 1, device: 3),
      base.derived("child"),
    ]
    var b = base
    let first = (0..<4).map { _ in b.next() }
    for var v in variants { #expect((0..<4).map { _ in v.next() } != first) }
  }

  @Test func uniformAndIntegerDraws() {
    let seed: UInt64 = 11
    var rng = RandomStream(seed: seed)
    var counts = [Int](repeating: 0, count: 7)
    var sum = 0.0
    let n = 70_000
    for _ in 0..<n {
      let u = rng.uniform()
      #expect(u >= 0 && u < 1)
      sum += u
      counts[rng.int(below: 7)] += 1
    }
    #expect(abs(sum / Double(n) - 0.5) < 0.01, "seed \(seed)")
    for c in counts { #expect(abs(Double(c) - 10_000) < 500, "seed \(seed): counts \(counts)") }
  }

  @Test func normalLognormalAndGammaMoments() {
    let seed: UInt64 = 12
    var rng = RandomStream(seed: seed)
    let n = 50_000
    let normals = (0..<n).map { _ in rng.normal(mean: 2, standardDeviation: 3) }
    let mean = normals.reduce(0, +) / Double(n)
    let variance = normals.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(n - 1)
    #expect(abs(mean - 2) < 0.05, "seed \(seed): mean \(mean)")
    #expect(abs(variance - 9) < 0.3, "seed \(seed): variance \(variance)")

    let logs = (0..<n).map { _ in rng.lognormal(mean: 0.5, sigma: 0.25) }
    let median = logs.sorted()[n / 2]
    #expect(abs(median - 1.6487) < 0.02, "seed \(seed): lognormal median \(median)")

    for shape in [0.3, 1.0, 4.5] {
      let g = (0..<n).map { _ in rng.gamma(shape: shape) }
      let gm = g.reduce(0, +) / Double(n)
      let gv = g.map { ($0 - gm) * ($0 - gm) }.reduce(0, +) / Double(n - 1)
      #expect(abs(gm - shape) < 0.04 * max(1, shape), "seed \(seed): gamma(\(shape)) mean \(gm)")
      #expect(abs(gv - shape) < 0.1 * max(1, shape), "seed \(seed): gamma(\(shape)) variance \(gv)")
    }
  }

  @Test func dirichletAndCategorical() {
    let seed: UInt64 = 13
    var rng = RandomStream(seed: seed)
    let alpha = [0.5, 1.0, 2.5]
    var mean = [0.0, 0.0, 0.0]
    for _ in 0..<20_000 {
      let p = rng.dirichlet(alpha)
      #expect(abs(p.reduce(0, +) - 1) < 1e-9)
      for i in 0..<3 { mean[i] += p[i] / 20_000 }
    }
    for i in 0..<3 { #expect(abs(mean[i] - alpha[i] / 4) < 0.01, "seed \(seed): \(mean)") }
    // Tiny concentrations still give a distribution, not NaNs.
    let sparse = rng.dirichlet([Double](repeating: 1e-4, count: 10))
    #expect(abs(sparse.reduce(0, +) - 1) < 1e-9 && !sparse.contains { $0.isNaN })

    var counts = [0, 0, 0]
    for _ in 0..<30_000 { counts[rng.categorical([1, 0, 2])] += 1 }
    #expect(counts[1] == 0)
    #expect(abs(Double(counts[2]) / Double(counts[0]) - 2) < 0.1, "seed \(seed): \(counts)")
  }

  @Test func shufflesAndSamplesWithoutReplacement() {
    let seed: UInt64 = 14
    var rng = RandomStream(seed: seed)
    let p = rng.permutation(1000)
    #expect(p.sorted() == Array(0..<1000) && p != Array(0..<1000))
    for (k, n) in [(5, 1_000_000), (300, 1000), (10, 10), (0, 5)] {
      let s = rng.sample(k, from: n)
      #expect(
        s.count == k && Set(s).count == k && s.allSatisfy { $0 >= 0 && $0 < n }, "seed \(seed): \(k) of \(n)")
    }
    // Every element is equally likely to be picked by the sparse (Floyd) path.
    var hits = [Int](repeating: 0, count: 100)
    for _ in 0..<20_000 { for i in rng.sample(2, from: 100) { hits[i] += 1 } }
    #expect(hits.allSatisfy { abs($0 - 400) < 120 }, "seed \(seed): \(hits)")
  }
}
