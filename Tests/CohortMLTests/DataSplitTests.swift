import CohortCore
import CohortML
import Testing

@Suite struct DataSplitTests {
  static func numbered(_ n: Int) -> Dataset {
    Dataset(
      features: (0..<n).flatMap { [Float($0), -Float($0)] }, labels: (0..<n).map { Int32($0 % 3) },
      featureShape: [2], classes: 3, clients: (0..<n).map { Int32($0 % 4) },
      clientNames: ["a", "b", "c", "d"])
  }

  @Test func splitIsAShuffledDeterministicPartition() throws {
    let data = Self.numbered(100)
    var rng = RandomStream(seed: 3, purpose: "split")
    let (train, test) = try data.split(testFraction: 0.1, rng: &rng)
    #expect(train.count == 90 && test.count == 10, "seed 3")
    let ids = (train.features + test.features).enumerated().filter { $0.offset % 2 == 0 }.map {
      Int($0.element)
    }
    #expect(ids.sorted() == Array(0..<100), "seed 3")
    #expect(ids != Array(0..<100), "seed 3: not shuffled")
    // Labels and owners travel with their features.
    for (i, id) in train.features.enumerated() where i % 2 == 0 {
      #expect(
        train.labels[i / 2] == Int32(Int(id) % 3) && train.clients?[i / 2] == Int32(Int(id) % 4), "seed 3")
    }
    #expect(train.clientNames == ["a", "b", "c", "d"])

    var again = RandomStream(seed: 3, purpose: "split")
    #expect(try data.split(testFraction: 0.1, rng: &again).test.features == test.features, "seed 3")
    var other = RandomStream(seed: 4, purpose: "split")
    #expect(try data.split(testFraction: 0.1, rng: &other).test.features != test.features, "seeds 3 and 4")
  }

  @Test func splitEdgeFractions() throws {
    var rng = RandomStream(seed: 1, purpose: "split")
    let data = Self.numbered(7)
    #expect(try data.split(testFraction: 0, rng: &rng).test.count == 0, "seed 1")
    #expect(try data.split(testFraction: 1, rng: &rng).train.count == 0, "seed 1")
    for bad in [-0.1, 1.5, Double.nan] {
      let error = dataError { () throws(CohortError) in try data.split(testFraction: bad, rng: &rng) }
      #expect(error?.code == .invalidConfiguration, "testFraction \(bad)")
    }
  }

  @Test func concatenatingMergesClientsByName() throws {
    let a = Dataset(
      features: [1, 2], labels: [0, 1], featureShape: [1], classes: 2, clients: [0, 1],
      clientNames: ["x", "y"])
    let b = Dataset(
      features: [3], labels: [4], featureShape: [1], classes: 5, clients: [0], clientNames: ["y"])
    let joined = try Dataset.concatenating([a, b])
    #expect(joined.features == [1, 2, 3] && joined.labels == [0, 1, 4] && joined.classes == 5)
    #expect(joined.clients == [0, 1, 1] && joined.clientNames == ["x", "y"])
    let c = Dataset(features: [1, 2], labels: [0], featureShape: [2], classes: 1)
    #expect(
      dataError { () throws(CohortError) in try Dataset.concatenating([a, c]) }?.code == .shapeMismatch)
    #expect(
      try Dataset.concatenating([a, Dataset(features: [9], labels: [0], featureShape: [1], classes: 1)])
        .clients == nil)
  }
}
