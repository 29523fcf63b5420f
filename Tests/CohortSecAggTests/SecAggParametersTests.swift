import Testing

@testable import CohortSecAgg

@Suite struct SecAggParametersTests {
  /// Smallest even k meeting 2^−40, computed in Python with exact (rational) binomial sums.
  @Test(arguments: [
    (500, 0.1, 0.05, 50, 22),
    (500, 0.3, 0.05, 96, 30),
    (10_000, 0.3, 0.05, 104, 32),
    // δ = γ makes t = 32 and t = 33 tie exactly; ties go to the larger t.
    (1000, 0.1, 0.1, 64, 33),
  ])
  func referenceValues(n: Int, dropout: Double, corrupt: Double, k: Int, t: Int) {
    let p = SecAggParameters.choose(count: n, dropoutRate: dropout, corruptFraction: corrupt)
    #expect(p.degree == k && p.threshold == t, "n \(n), δ \(dropout), γ \(corrupt): \(p)")
    #expect(p.failureLog2 <= -40)
    // One step smaller fails the target for every t.
    let below = (1...(k - 2)).map {
      SecAggParameters.failureLog2(
        count: n, degree: k - 2, threshold: $0, dropoutRate: dropout, corruptFraction: corrupt)
    }
    #expect(below.min()! > -40)
  }

  @Test func smallRoundsUseTheCompleteGraph() {
    let p = SecAggParameters.choose(count: 10, dropoutRate: 0.1, corruptFraction: 0)
    #expect(p.degree == 9)
    #expect(p.threshold == 1)
    #expect(abs(p.failureLog2 - -26.575424759098897) < 1e-9, "\(p)")
    let q = SecAggParameters.choose(count: 10, dropoutRate: 0.1, corruptFraction: 0.05)
    #expect(q.degree == 9 && q.threshold == 4, "\(q)")
    #expect(q.failureLog2 > -40)
    #expect(SecAggParameters.choose(count: 1, dropoutRate: 0.1, corruptFraction: 0).degree == 0)
    // δ + γ ≥ 1: no ring can stay connected, so only the complete graph is left.
    #expect(SecAggParameters.choose(count: 300, dropoutRate: 0.6, corruptFraction: 0.4).degree == 299)
  }

  @Test func boundMatchesExactValues() {
    let cases: [(Int, Int, Int, Double, Double, Double)] = [
      (500, 50, 22, 0.1, 0.05, -41.55900896446548),
      (1000, 64, 33, 0.1, 0.1, -40.221521330113035),
      (1000, 64, 32, 0.1, 0.1, -40.221521330113035),
      (10_000, 400, 150, 0.3, 0.05, -122.51343182739356),
      // Tails near 2^−732: exact in log space.
      (10_000, 1000, 500, 0.1, 0.05, -731.9909310357298),
      (10, 9, 1, 0.1, 0, -26.575424759098897),
    ]
    for (n, k, t, d, g, expected) in cases {
      let v = SecAggParameters.failureLog2(
        count: n, degree: k, threshold: t, dropoutRate: d, corruptFraction: g)
      #expect(abs(v - expected) < 1e-8, "n \(n) k \(k) t \(t) δ \(d) γ \(g): \(v)")
    }
    #expect(
      SecAggParameters.failureLog2(count: 10, degree: 9, threshold: 3, dropoutRate: 0, corruptFraction: 0)
        == -.infinity)
  }

  @Test func boundMovesTheRightWay() {
    func bound(k: Int = 60, t: Int = 25, d: Double = 0.1, g: Double = 0.05) -> Double {
      SecAggParameters.failureLog2(count: 1000, degree: k, threshold: t, dropoutRate: d, corruptFraction: g)
    }
    // More dropouts or more corrupt devices only make it worse.
    #expect(bound(d: 0.2) > bound(d: 0.1))
    #expect(bound(g: 0.1) > bound(g: 0.05))
    // A larger threshold helps privacy and hurts correctness: past the optimum, worse.
    #expect(bound(t: 54) > bound(t: 25))
    #expect(bound(t: 5) > bound(t: 25))
    // The best bound over t improves with the degree.
    let best = [20, 40, 80, 160].map { k in (1...k).map { bound(k: k, t: $0) }.min()! }
    #expect(best == best.sorted(by: >), "\(best)")
    // Out-of-range thresholds saturate instead of trapping.
    #expect(bound(t: 0) >= 9.96)  // log2(1000)
    #expect(bound(t: 61) >= 9.96)  // log2(1000)
  }

  @Test func chosenThresholdMinimisesTheBound() {
    for (n, d, g) in [(500, 0.1, 0.05), (2000, 0.2, 0.02), (300, 0.05, 0.0)] {
      let p = SecAggParameters.choose(count: n, dropoutRate: d, corruptFraction: g)
      let all = (1...p.degree).map {
        SecAggParameters.failureLog2(
          count: n, degree: p.degree, threshold: $0, dropoutRate: d, corruptFraction: g)
      }
      // Minimal up to the 1e−9 tie tolerance, and the largest t that is.
      let least = all.min()!
      #expect(p.failureLog2 - least <= 1e-8 * abs(least), "n \(n) δ \(d) γ \(g): \(p)")
      #expect(all[p.threshold - 1] == p.failureLog2)
      #expect(all[p.threshold...].allSatisfy { $0 - least > 1e-9 * abs(least) }, "n \(n) δ \(d) γ \(g): \(p)")
    }
  }

  @Test func tenThousandDevices() {
    #expect(SecAggParameters.choose(count: 10_000, dropoutRate: 0.3, corruptFraction: 0.05).degree == 104)
    // A hopeless case (no ring meets the target) falls back to the complete graph.
    #expect(SecAggParameters.choose(count: 10_000, dropoutRate: 0.5, corruptFraction: 0.45).degree == 9_999)
  }

  /// `choose` rules most k out without the exact scan; an unpruned search must agree.
  @Test func pruningNeverSkipsTheAnswer() {
    for n in [7, 40, 150, 400] {
      for d in [0.0, 0.05, 0.2, 0.4] {
        for g in [0.0, 0.03, 0.15] {
          for bits in [10, 40] {
            let chosen = SecAggParameters.choose(
              count: n, dropoutRate: d, corruptFraction: g, securityBits: bits)
            var expected = n - 1
            for k in stride(from: 2, to: n - 1, by: 2) {
              let totals = SecAggParameters.logTotals(n: n, k: k, dropout: d, corrupt: g)
              if totals[1...k].min()! / 0.6931471805599453 <= -Double(bits) {
                expected = k
                break
              }
            }
            #expect(chosen.degree == expected, "n \(n) δ \(d) γ \(g) bits \(bits): \(chosen)")
          }
        }
      }
    }
  }
}
