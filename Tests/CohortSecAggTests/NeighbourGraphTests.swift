import Testing

@testable import CohortSecAgg

@Suite struct NeighbourGraphTests {
  private func seed(_ s: UInt8) -> [UInt8] { [UInt8](repeating: s, count: 32) }

  @Test(arguments: [(5, 2), (10, 4), (31, 6), (100, 10), (101, 2)])
  func adjacencyIsSymmetricWithExactDegree(count: Int, degree: Int) {
    for s in UInt8(1)...3 {
      let g = NeighbourGraph(count: count, degree: degree, seed: seed(s))
      #expect(g.degree == degree && !g.isComplete)
      for a in 1...UInt32(count) {
        let list = g.neighbours(of: a)
        #expect(list.count == degree, "seed \(s), node \(a)")
        #expect(list == list.sorted() && !list.contains(a), "seed \(s), node \(a)")
        for b in 1...UInt32(count) {
          #expect(g.areNeighbours(a, b) == list.contains(b), "seed \(s), \(a)–\(b)")
          #expect(g.areNeighbours(a, b) == g.areNeighbours(b, a), "seed \(s), \(a)–\(b)")
        }
      }
    }
  }

  @Test func neighboursAreRingNeighbours() {
    let g = NeighbourGraph(count: 20, degree: 4, seed: seed(7))
    #expect(Set(g.ring) == Set((1...20).map { UInt32($0) }))
    for p in 0..<20 {
      let expected = [-2, -1, 1, 2].map { g.ring[(p + $0 + 20) % 20] }.sorted()
      #expect(g.neighbours(of: g.ring[p]) == expected, "position \(p)")
    }
  }

  @Test func seedDeterminesTheOrder() {
    let a = NeighbourGraph(count: 200, degree: 8, seed: seed(1))
    #expect(a == NeighbourGraph(count: 200, degree: 8, seed: seed(1)))
    let b = NeighbourGraph(count: 200, degree: 8, seed: seed(2))
    #expect(a != b)
    #expect(a.ring != b.ring)
    #expect((1...200).contains { a.neighbours(of: UInt32($0)) != b.neighbours(of: UInt32($0)) })
    // The order is a shuffle, not the identity.
    #expect(a.ring != (1...200).map { UInt32($0) })
  }

  @Test(arguments: [(1, 0), (2, 0), (2, 5), (3, 2), (5, 4), (10, 9), (10, 50), (11, 10)])
  func completeWhenDegreeReachesCountMinusOne(count: Int, degree: Int) {
    let g = NeighbourGraph(count: count, degree: degree, seed: seed(3))
    #expect(g.isComplete)
    #expect(g.degree == count - 1)
    for a in 1...UInt32(count) {
      #expect(g.neighbours(of: a) == (1...UInt32(count)).filter { $0 != a })
      for b in 1...UInt32(count) { #expect(g.areNeighbours(a, b) == (a != b)) }
    }
    #expect(g == NeighbourGraph(count: count, degree: degree, seed: seed(4)))
  }

  @Test func outOfRangeIndicesAreNotNeighbours() {
    let g = NeighbourGraph(count: 10, degree: 4, seed: seed(5))
    #expect(!g.areNeighbours(0, 1))
    #expect(!g.areNeighbours(1, 11))
    #expect(!g.areNeighbours(3, 3))
  }

  // Speed is measured by `cohort bench secagg`, not here.
  @Test func tenThousandDevices() {
    let g = NeighbourGraph(count: 10_000, degree: 104, seed: seed(6))
    #expect(g.neighbours(of: 1).count == 104)
    #expect(g.neighbours(of: 10_000).count == 104)
    #expect(g.neighbours(of: 5_000).allSatisfy { g.areNeighbours(5_000, $0) })
  }
}
