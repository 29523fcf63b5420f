import CohortCore
import Testing

@Suite struct WeightsTests {
  let layout = WeightsLayout([TensorSpec("w", [3, 2]), TensorSpec("b", [2])])

  @Test func layoutOffsets() {
    #expect(layout.count == 8)
    #expect(layout.range(of: "w") == 0..<6)
    #expect(layout.range(of: "b") == 6..<8)
    #expect(layout.range(of: "missing") == nil)
    let w = Weights(layout: layout, values: (0..<8).map(Float.init))
    #expect(Array(w[tensor: "b"]) == [6, 7])
  }

  @Test func arithmeticMatchesHandComputedValues() {
    var a = Weights(layout: layout, values: [1, 2, 3, 4, 5, 6, 7, 8])
    let b = Weights(layout: layout, values: [8, 7, 6, 5, 4, 3, 2, 1])
    #expect(a.dot(b) == 120)
    #expect(a.difference(b).values == [-7, -5, -3, -1, 1, 3, 5, 7])
    a.axpy(0.5, b)
    #expect(a.values == [5, 5.5, 6, 6.5, 7, 7.5, 8, 8.5])
    a.scale(by: 2)
    #expect(a.values == [10, 11, 12, 13, 14, 15, 16, 17])
    #expect(Weights(layout: layout, values: [3, 4, 0, 0, 0, 0, 0, 0]).l2Norm == 5)
  }

  @Test func longDotIsAccurate() {
    let seed: UInt64 = 21
    var rng = RandomStream(seed: seed)
    let n = 100_003
    let big = WeightsLayout([TensorSpec("v", [n])])
    let x = Weights(layout: big, values: (0..<n).map { _ in Float(rng.normal()) })
    let y = Weights(layout: big, values: (0..<n).map { _ in Float(rng.normal()) })
    var exact = 0.0
    for i in 0..<n { exact += Double(x.values[i]) * Double(y.values[i]) }
    #expect(abs(x.dot(y) - exact) < 1e-3, "seed \(seed)")
  }
}
