import CohortCompression
import CohortCore
import Testing

@Suite struct SparsificationTests {
  @Test func topKKeepsTheLargestMagnitudesAndSendsIndices() throws {
    let x: [Float] = [0.1, -5, 0.2, 3, -0.3, 3]
    let s = try TopKSparsifier(k: 3).encode(x)
    #expect(s.indices == [1, 3, 5])
    #expect(s.decoded() == [0, -5, 0, 3, 0, 3])
    #expect(s.wireBytes == 3 * 8)
    #expect(throws: CohortError.self) { _ = try TopKSparsifier(k: 0) }
  }

  /// The mask comes from the seed alone, only values travel, and the d/k scaling is unbiased:
  /// the mean over 2,000 seeds lies within 4 standard errors of the input.
  @Test func randomMaskIsSharedAndUnbiased() throws {
    let seed: UInt64 = 2016
    let x: [Float] = (0..<20).map { Float($0) - 7.5 }
    let a = try RandomMaskSparsifier(dimension: 20, keep: 5, seed: seed)
    let b = try RandomMaskSparsifier(dimension: 20, keep: 5, seed: seed)
    #expect(a.indices == b.indices && a.indices.count == 5)
    #expect(a.encode(x).wireBytes == 20)
    let trials = 2000
    var sum = [Double](repeating: 0, count: 20)
    var sumSquares = [Double](repeating: 0, count: 20)
    for trial in 0..<trials {
      let mask = try RandomMaskSparsifier(dimension: 20, keep: 5, seed: seed &+ UInt64(trial))
      for (i, v) in mask.decode(mask.encode(x)).enumerated() {
        sum[i] += Double(v)
        sumSquares[i] += Double(v) * Double(v)
      }
    }
    for i in 0..<20 {
      let mean = sum[i] / Double(trials)
      let se = (Swift.max(sumSquares[i] / Double(trials) - mean * mean, 0) / Double(trials)).squareRoot()
      #expect(abs(mean - Double(x[i])) <= Swift.max(4 * se, 1e-6), "seed \(seed), index \(i): mean \(mean)")
    }
    #expect(throws: CohortError.self) { _ = try RandomMaskSparsifier(dimension: 4, keep: 5, seed: 1) }
  }
}
