import CohortAggregation
import CohortCore
import Testing

/// Expected weights computed by hand from FedBuff's formulas.
@Suite struct StalenessWeightingTests {
  @Test func constantWeighsEveryUpdateOne() {
    let w = StalenessWeighting(.constant)
    #expect([0, 1, 7, 1000].map { w.weight(staleness: $0) } == [1, 1, 1, 1])
  }

  @Test func polynomialIsOnePlusStalenessToTheMinusA() {
    // (1 + s)^−½: 1, 1/2, 1/3, 1/4 at s = 0, 3, 8, 15.
    let half = StalenessWeighting(.polynomial(a: 0.5))
    #expect([0, 3, 8, 15].map { half.weight(staleness: $0) } == [1, 0.5, 1.0 / 3, 0.25])
    // (1 + s)^−1: 1/2 at 1, 1/5 at 4; a = 0 is constant.
    let one = StalenessWeighting(.polynomial(a: 1))
    #expect(one.weight(staleness: 1) == 0.5 && one.weight(staleness: 4) == 0.2)
    #expect(StalenessWeighting(.polynomial(a: 0)).weight(staleness: 50) == 1)
    // FedBuff's default, (1 + 2)^−½ = 1/√3.
    #expect(abs(half.weight(staleness: 2) - 0.5773502691896258) < 1e-15)
  }

  @Test func hingeIsFlatUpToBThenFallsAsOneOverALinearTerm() {
    // a = 10, b = 4: 1 up to 4, then 1/(10(s − 4) + 1): 1/11 at 5, 1/21 at 6.
    let w = StalenessWeighting(.hinge(a: 10, b: 4))
    #expect([0, 4].map { w.weight(staleness: $0) } == [1, 1])
    #expect(w.weight(staleness: 5) == 1.0 / 11 && w.weight(staleness: 6) == 1.0 / 21)
    // a = ½, b = 2: 1/(½·2 + 1) = ½ at 4.
    #expect(StalenessWeighting(.hinge(a: 0.5, b: 2)).weight(staleness: 4) == 0.5)
  }

  @Test func defaultsAreFedBuffs() {
    #expect(AsyncPlan().staleness == .polynomial(a: 0.5))
    #expect(StalenessPlan(kind: .hinge) == .hinge(a: 10, b: 4))
  }
}
