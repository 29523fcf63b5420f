import CohortCore
import CohortML
import CohortTesting
import Testing

@Suite struct PartitionerTests {
  /// The digits labels (1,797 examples, 10 classes), loaded once.
  static let digits: Dataset = {
    do {
      return try CSVDataset.load(path: digitsPath)
    } catch {
      fatalError("cannot load \(digitsPath): \(error)")
    }
  }()

  /// Every partitioner on the digits labels with one seed.
  static func all(seed: UInt64, clients: Int = 20) throws -> [(String, Partition)] {
    let labels = digits.labels
    func rng(_ purpose: String) -> RandomStream { RandomStream(seed: seed, purpose: purpose) }
    var a = rng("iid")
    var b = rng("dirichlet")
    var c = rng("shards")
    var d = rng("lognormal")
    var e = rng("power")
    return [
      ("iid", try Partitioner.iid(exampleCount: labels.count, clients: clients, rng: &a)),
      (
        "dirichlet",
        try Partitioner.dirichlet(labels: labels, classes: 10, clients: clients, alpha: 0.5, rng: &b)
      ),
      ("shards", try Partitioner.shards(labels: labels, clients: clients, shardsPerClient: 2, rng: &c)),
      (
        "lognormal",
        try Partitioner.quantitySkew(
          exampleCount: labels.count, clients: clients, sizes: .lognormal(sigma: 1), rng: &d)
      ),
      (
        "powerLaw",
        try Partitioner.quantitySkew(
          exampleCount: labels.count, clients: clients, sizes: .powerLaw(exponent: 1.5), rng: &e)
      ),
    ]
  }

  @Test(arguments: [UInt64(1), 2, 3])
  func everyExampleInExactlyOneClient(seed: UInt64) throws {
    for (name, partition) in try Self.all(seed: seed) {
      #expect(partition.clientCount == 20, "\(name), seed \(seed)")
      #expect(
        dataError { () throws(CohortError) in try partition.validate(exampleCount: 1797) } == nil,
        "\(name), seed \(seed)")
      #expect(partition.clients.allSatisfy { !$0.isEmpty }, "\(name), seed \(seed): an empty client")
      #expect(partition.clients.allSatisfy { $0 == $0.sorted() }, "\(name), seed \(seed)")
    }
  }

  @Test func sameSeedSamePartitionDifferentSeedDifferent() throws {
    let first = try Self.all(seed: 5)
    let again = try Self.all(seed: 5)
    let other = try Self.all(seed: 6)
    for i in first.indices {
      #expect(first[i].1 == again[i].1, "\(first[i].0), seed 5")
      #expect(first[i].1 != other[i].1, "\(first[i].0), seeds 5 and 6")
    }
  }

  @Test func iidSizesDifferByAtMostOne() throws {
    var rng = RandomStream(seed: 8, purpose: "iid")
    let partition = try Partitioner.iid(exampleCount: 103, clients: 10, rng: &rng)
    #expect(partition.sizes.sorted() == [10, 10, 10, 10, 10, 10, 10, 11, 11, 11], "seed 8")
  }

  @Test(arguments: [UInt64(1), 2])
  func dirichletSmallAlphaSkewsLabels(seed: UInt64) throws {
    let labels = Self.digits.labels
    func entropy(_ alpha: Double) throws -> Double {
      var rng = RandomStream(seed: seed, purpose: "dirichlet")
      let partition = try Partitioner.dirichlet(
        labels: labels, classes: 10, clients: 20, alpha: alpha, rng: &rng)
      return PartitionStatistics(partition: partition, labels: labels, classes: 10).meanLabelEntropy
    }
    let skewed = try entropy(0.1)
    let balanced = try entropy(100)
    // log2(10) ≈ 3.32 bits is a perfectly balanced client.
    #expect(balanced > 3.1, "seed \(seed): \(balanced)")
    #expect(skewed < 1.8, "seed \(seed): \(skewed)")
    #expect(skewed < balanced / 2, "seed \(seed): \(skewed) vs \(balanced)")
  }

  @Test func dirichletRepairsToTheMinimumSize() throws {
    // 150 clients with α = 0.05 on 1,797 examples: draws leave many clients empty, so the
    // repair step must top them up.
    let seed: UInt64 = 4
    var rng = RandomStream(seed: seed, purpose: "dirichlet")
    let partition = try Partitioner.dirichlet(
      labels: Self.digits.labels, classes: 10, clients: 150, alpha: 0.05, minimumSize: 5, rng: &rng)
    #expect(partition.sizes.allSatisfy { $0 >= 5 }, "seed \(seed): \(partition.sizes.min() ?? -1)")
    #expect(
      dataError { () throws(CohortError) in try partition.validate(exampleCount: 1797) } == nil,
      "seed \(seed)")
    // Exactly the minimum is possible too: 1,797 / 10 clients of at least 179.
    var tight = RandomStream(seed: seed, purpose: "tight")
    let full = try Partitioner.dirichlet(
      labels: Self.digits.labels, classes: 10, clients: 10, alpha: 0.1, minimumSize: 179, rng: &tight)
    #expect(full.sizes.allSatisfy { $0 >= 179 }, "seed \(seed): \(full.sizes)")
  }

  @Test(arguments: [UInt64(1), 2, 3])
  func shardsLimitLabelsPerClient(seed: UInt64) throws {
    let labels = Self.digits.labels
    var rng = RandomStream(seed: seed, purpose: "shards")
    let partition = try Partitioner.shards(labels: labels, clients: 50, shardsPerClient: 2, rng: &rng)
    let distinct = partition.clients.map { Set($0.map { labels[$0] }).count }
    // A shard may straddle two labels, so 4 is the hard ceiling; most clients see at most 2.
    #expect(distinct.allSatisfy { $0 <= 4 }, "seed \(seed): \(distinct)")
    #expect(distinct.filter { $0 <= 2 }.count >= 35, "seed \(seed): \(distinct)")
    // 100 shards of 17 or 18 examples.
    #expect(partition.sizes.allSatisfy { $0 >= 34 && $0 <= 36 }, "seed \(seed): \(partition.sizes)")
  }

  @Test func shardsAreCutFromLabelSortedOrder() throws {
    // One shard per client and as many shards as labels: each client gets exactly one label,
    // and ties keep index order.
    let labels: [Int32] = [2, 0, 1, 0, 2, 1]
    var rng = RandomStream(seed: 3, purpose: "shards")
    let partition = try Partitioner.shards(labels: labels, clients: 3, shardsPerClient: 1, rng: &rng)
    #expect(Set(partition.clients) == [[1, 3], [2, 5], [0, 4]], "seed 3: \(partition.clients)")
  }

  @Test(arguments: [QuantitySkew.lognormal(sigma: 1.5), .powerLaw(exponent: 1.1)])
  func quantitySkewSkewsSizes(sizes: QuantitySkew) throws {
    let seed: UInt64 = 12
    var rng = RandomStream(seed: seed, purpose: "quantity")
    let partition = try Partitioner.quantitySkew(exampleCount: 10_000, clients: 100, sizes: sizes, rng: &rng)
    let sorted = partition.sizes.sorted()
    #expect(sorted.reduce(0, +) == 10_000, "\(sizes), seed \(seed)")
    #expect(sorted[0] >= 1, "\(sizes), seed \(seed)")
    // Equal sizes would be 100 each; skew puts a few clients far above the median.
    #expect(sorted[99] > 4 * sorted[50], "\(sizes), seed \(seed): \(sorted)")
    var flat = RandomStream(seed: seed, purpose: "quantity")
    let equal = try Partitioner.quantitySkew(
      exampleCount: 10_000, clients: 100, sizes: .lognormal(sigma: 0), rng: &flat)
    #expect(equal.sizes.allSatisfy { $0 == 100 }, "seed \(seed)")
  }

  @Test func quantitySkewSurvivesExtremeParameters() throws {
    for sizes in [
      QuantitySkew.lognormal(sigma: 1e308), .powerLaw(exponent: .leastNonzeroMagnitude),
      .powerLaw(exponent: 1e300),
    ] {
      var rng = RandomStream(seed: 6, purpose: "quantity")
      let partition = try Partitioner.quantitySkew(exampleCount: 1000, clients: 10, sizes: sizes, rng: &rng)
      #expect(
        dataError { () throws(CohortError) in try partition.validate(exampleCount: 1000) } == nil,
        "\(sizes), seed 6")
      #expect(partition.sizes.allSatisfy { $0 >= 1 }, "\(sizes), seed 6")
    }
  }

  @Test func quantitySkewGivesEveryClientAnExampleEvenWhenTight() throws {
    var rng = RandomStream(seed: 2, purpose: "quantity")
    let partition = try Partitioner.quantitySkew(
      exampleCount: 50, clients: 50, sizes: .powerLaw(exponent: 0.3), rng: &rng)
    #expect(partition.sizes == [Int](repeating: 1, count: 50), "seed 2")
  }

  @Test func naturalFollowsClientOwnership() throws {
    let dir = TemporaryDirectory()
    let path = dir.write("owned.csv", "label,user,x\n0,b,1\n1,a,2\n0,b,3\n1,c,4\n")
    let data = try CSVDataset.load(path: path, clientColumn: "user")
    let partition = try Partitioner.natural(data)
    #expect(partition.clients == [[0, 2], [1], [3]])
    let error = try #require(dataError { () throws(CohortError) in try Partitioner.natural(Self.digits) })
    #expect(error.code == .invalidConfiguration)
    #expect(error.message.contains("no client ownership"))
  }

  @Test func invalidArgumentsThrowNamingTheValue() throws {
    let labels = Self.digits.labels
    var rng = RandomStream(seed: 1, purpose: "invalid")
    let cases: [(String, () throws(CohortError) -> Partition)] = [
      (
        "clients is 0",
        { () throws(CohortError) in try Partitioner.iid(exampleCount: 10, clients: 0, rng: &rng) }
      ),
      (
        "clients is 11",
        { () throws(CohortError) in try Partitioner.iid(exampleCount: 10, clients: 11, rng: &rng) }
      ),
      (
        "alpha is 0.0",
        { () throws(CohortError) in
          try Partitioner.dirichlet(labels: labels, classes: 10, clients: 5, alpha: 0, rng: &rng)
        }
      ),
      (
        "alpha is -1.0",
        { () throws(CohortError) in
          try Partitioner.dirichlet(labels: labels, classes: 10, clients: 5, alpha: -1, rng: &rng)
        }
      ),
      (
        "label 9",
        { () throws(CohortError) in
          try Partitioner.dirichlet(labels: labels, classes: 9, clients: 5, alpha: 1, rng: &rng)
        }
      ),
      (
        "minimum size 200",
        { () throws(CohortError) in
          try Partitioner.dirichlet(
            labels: labels, classes: 10, clients: 10, alpha: 1, minimumSize: 200, rng: &rng)
        }
      ),
      (
        "the dataset has 1797",
        { () throws(CohortError) in
          try Partitioner.shards(labels: labels, clients: 1000, shardsPerClient: 2, rng: &rng)
        }
      ),
      (
        "shardsPerClient is 0",
        { () throws(CohortError) in
          try Partitioner.shards(labels: labels, clients: 10, shardsPerClient: 0, rng: &rng)
        }
      ),
      (
        "sigma is -1.0",
        { () throws(CohortError) in
          try Partitioner.quantitySkew(exampleCount: 10, clients: 2, sizes: .lognormal(sigma: -1), rng: &rng)
        }
      ),
      (
        "exponent is 0.0",
        { () throws(CohortError) in
          try Partitioner.quantitySkew(exampleCount: 10, clients: 2, sizes: .powerLaw(exponent: 0), rng: &rng)
        }
      ),
    ]
    for (mention, body) in cases {
      let error = try #require(dataError(body), "expected an error mentioning \(mention)")
      #expect(error.code == .invalidConfiguration, "\(mention)")
      #expect(error.message.contains(mention), "\(error.message) should mention \(mention)")
    }
  }

  @Test func validateReportsOverlapsAndGaps() throws {
    let overlap = Partition(clients: [[0, 1], [1, 2]])
    let gap = Partition(clients: [[0], [2]])
    let outside = Partition(clients: [[0, 1, 2, 3]])
    #expect(
      dataError { () throws(CohortError) in try overlap.validate(exampleCount: 3) }?.message.contains(
        "example 1") == true)
    #expect(
      dataError { () throws(CohortError) in try gap.validate(exampleCount: 3) }?.message.contains("example 1")
        == true)
    #expect(
      dataError { () throws(CohortError) in try outside.validate(exampleCount: 3) }?.message.contains(
        "example 3") == true)
  }
}
