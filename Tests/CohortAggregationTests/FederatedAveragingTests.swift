import CohortAggregation
import CohortCore
import Testing

@Suite struct FederatedAveragingTests {
  let layout = WeightsLayout([TensorSpec("w", [2]), TensorSpec("b", [1])])

  func weights(_ v: [Float]) -> Weights { Weights(layout: layout, values: v) }

  /// Expected values computed by hand:
  /// weighted: (10·[1,2,3] + 30·[5,−2,0] + 60·[0,1,−1]) / 100 = [1.6, 0.2, −0.3];
  /// unweighted: ([1,2,3] + [5,−2,0] + [0,1,−1]) / 3 = [2, 1/3, 2/3].
  @Test func weightedAndUnweightedMeansMatchHandComputedValues() throws {
    let updates: [([Float], Int)] = [([1, 2, 3], 10), ([5, -2, 0], 30), ([0, 1, -1], 60)]
    let global = weights([0.5, 0.5, 0.5])
    for (strategy, expected) in [
      (FederatedAveraging(weighted: true), [1.6, 0.2, -0.3]),
      (FederatedAveraging(weighted: false), [2, 1.0 / 3, 2.0 / 3]),
    ] {
      var accumulator = UpdateAccumulator(layout: layout)
      for (u, n) in updates { strategy.fold(weights(u), examples: n, into: &accumulator) }
      #expect(accumulator.count == 3 && accumulator.examples == 100)
      let next = try #require(strategy.nextGlobal(from: global, accumulator))
      for i in 0..<3 {
        #expect(
          abs(Double(next.values[i]) - (0.5 + expected[i])) < 1e-6,
          "index \(i), weighted \(strategy.weighted)")
      }
    }
  }

  @Test func noUpdatesGiveNoNextModel() {
    let accumulator = UpdateAccumulator(layout: layout)
    #expect(FederatedAveraging().nextGlobal(from: weights([0, 0, 0]), accumulator) == nil)
  }

  @Test func foldOrderDoesNotChangeTheMeanBeyondRounding() throws {
    let seed: UInt64 = 31
    var rng = RandomStream(seed: seed)
    let big = WeightsLayout([TensorSpec("v", [1000])])
    let updates = (0..<50).map { _ in
      (Weights(layout: big, values: (0..<1000).map { _ in Float(rng.normal()) }), 1 + rng.int(below: 500))
    }
    var forward = UpdateAccumulator(layout: big)
    var backward = UpdateAccumulator(layout: big)
    let fedavg = FederatedAveraging()
    for (u, n) in updates { fedavg.fold(u, examples: n, into: &forward) }
    for (u, n) in updates.reversed() { fedavg.fold(u, examples: n, into: &backward) }
    let a = try #require(forward.weightedMean())
    let b = try #require(backward.weightedMean())
    for i in 0..<1000 { #expect(abs(a.values[i] - b.values[i]) < 1e-6, "seed \(seed), index \(i)") }
  }
}
