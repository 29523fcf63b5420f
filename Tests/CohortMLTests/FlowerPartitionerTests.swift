import CohortCore
import CohortML
import CohortTesting
import Foundation
import Testing

/// The partitioners a Flower user expects: pathological, inner Dirichlet, size laws, and
/// Dirichlet with a minimum size. Each is checked for its defining property, for putting every
/// example in exactly one device, and for determinism given its seed.
@Suite struct FlowerPartitionerTests {
  static var labels: [Int32] { PartitionerTests.digits.labels }

  static func isPartition(_ p: Partition, _ note: Comment) {
    #expect(dataError { () throws(CohortError) in try p.validate(exampleCount: labels.count) } == nil, note)
  }

  // MARK: Pathological

  static func pathological(seed: UInt64, clients: Int, k: Int) throws -> Partition {
    var rng = RandomStream(seed: seed, purpose: "partition")
    return try Partitioner.pathological(
      labels: labels, classes: 10, clients: clients, classesPerClient: k, rng: &rng)
  }

  @Test(arguments: [(UInt64(1), 20, 2), (2, 20, 1), (3, 7, 3), (4, 5, 2), (5, 100, 4), (6, 3, 10)])
  func pathologicalGivesExactlyKClassesEachAndUsesEveryClass(seed: UInt64, clients: Int, k: Int) throws {
    let p = try Self.pathological(seed: seed, clients: clients, k: k)
    let note: Comment = "seed \(seed), \(clients) devices, K = \(k)"
    #expect(p.clientCount == clients, note)
    Self.isPartition(p, note)
    var used = Set<Int32>()
    for indices in p.clients {
      let classes = Set(indices.map { Self.labels[$0] })
      #expect(classes.count == k, note)
      used.formUnion(classes)
    }
    #expect(used.count == 10, note)
    // Examples of a class are split evenly among its holders: sizes within a class differ by ≤ 1.
    let matrix = LabelMatrix(partition: p, labels: Self.labels, classes: 10)
    for c in 0..<10 {
      let shares = matrix.counts.map { $0[c] }.filter { $0 > 0 }
      #expect((shares.max() ?? 0) - (shares.min() ?? 0) <= 1, note)
    }
  }

  @Test func pathologicalIsDeterministic() throws {
    #expect(
      try Self.pathological(seed: 9, clients: 20, k: 2) == Self.pathological(seed: 9, clients: 20, k: 2))
    #expect(
      try Self.pathological(seed: 9, clients: 20, k: 2) != Self.pathological(seed: 10, clients: 20, k: 2))
  }

  @Test func pathologicalRefusesWhatCannotHold() throws {
    let tooMany = dataError { () throws(CohortError) in
      var rng = RandomStream(seed: 1, purpose: "partition")
      return try Partitioner.pathological(
        labels: Self.labels, classes: 10, clients: 20, classesPerClient: 11, rng: &rng)
    }
    #expect(tooMany?.message.contains("classes_per_device is 11") == true, "\(String(describing: tooMany))")
    let tooFewSlots = dataError { () throws(CohortError) in
      var rng = RandomStream(seed: 1, purpose: "partition")
      return try Partitioner.pathological(
        labels: Self.labels, classes: 10, clients: 4, classesPerClient: 2, rng: &rng)
    }
    #expect(
      tooFewSlots?.message.contains("belong to no device") == true, "\(String(describing: tooFewSlots))")
    // Two examples of class 1 cannot go to three holders.
    let tooThin = dataError { () throws(CohortError) in
      var rng = RandomStream(seed: 1, purpose: "partition")
      return try Partitioner.pathological(
        labels: [0, 0, 0, 0, 0, 0, 1, 1], classes: 2, clients: 3, classesPerClient: 2, rng: &rng)
    }
    #expect(tooThin?.message.contains("class 1 has 2 examples") == true, "\(String(describing: tooThin))")
  }

  // MARK: Size laws

  static func weight(_ law: SizeLaw, _ i: Int) -> Double {
    switch law {
    case .equal: return 1
    case .linear: return Double(i + 1)
    case .square: return Double((i + 1) * (i + 1))
    case .exponential: return exp(Double(i))
    }
  }

  @Test(arguments: [(SizeLaw.linear, 20), (.square, 20), (.exponential, 6), (.equal, 13), (.linear, 1)])
  func sizesFollowTheLawWithinRounding(law: SizeLaw, clients: Int) throws {
    var rng = RandomStream(seed: 4, purpose: "partition")
    let p = try Partitioner.sized(exampleCount: Self.labels.count, clients: clients, law: law, rng: &rng)
    let note: Comment = "\(law), \(clients) devices"
    Self.isPartition(p, note)
    let total = (0..<clients).map { Self.weight(law, $0) }.reduce(0, +)
    for (i, size) in p.sizes.enumerated() {
      let exact = Double(Self.labels.count) * Self.weight(law, i) / total
      #expect(abs(Double(size) - exact) < 1, "\(note): device \(i) has \(size), the law says \(exact)")
    }
    var again = RandomStream(seed: 4, purpose: "partition")
    #expect(
      try Partitioner.sized(exampleCount: Self.labels.count, clients: clients, law: law, rng: &again) == p)
  }

  @Test func exponentialSizesRefuseADeviceWithNothing() {
    let error = dataError { () throws(CohortError) in
      try Partitioner.sizes(exampleCount: 1797, clients: 30, law: .exponential)
    }
    #expect(error?.message.contains("leave device 0 with no example") == true, "\(String(describing: error))")
    #expect(error?.fix.contains("ln(examples)") == true)
  }

  // MARK: Inner Dirichlet

  static func inner(seed: UInt64, alpha: Double, law: SizeLaw, clients: Int = 20) throws -> Partition {
    var rng = RandomStream(seed: seed, purpose: "partition")
    return try Partitioner.innerDirichlet(
      labels: labels, classes: 10, clients: clients, alpha: alpha, law: law, rng: &rng)
  }

  @Test(arguments: [SizeLaw.equal, .linear, .square])
  func innerDirichletHasTheLawsSizesExactly(law: SizeLaw) throws {
    let p = try Self.inner(seed: 2, alpha: 0.5, law: law)
    Self.isPartition(p, "\(law)")
    #expect(
      p.sizes == (try Partitioner.sizes(exampleCount: Self.labels.count, clients: 20, law: law)), "\(law)")
    #expect(try Self.inner(seed: 2, alpha: 0.5, law: law) == p, "\(law): same seed")
    #expect(try Self.inner(seed: 3, alpha: 0.5, law: law) != p, "\(law): other seed")
  }

  @Test func innerDirichletSmallAlphaSkewsLabels() throws {
    func entropy(_ alpha: Double) throws -> Double {
      let p = try Self.inner(seed: 5, alpha: alpha, law: .equal)
      return PartitionStatistics(partition: p, labels: Self.labels, classes: 10).meanLabelEntropy
    }
    let skewed = try entropy(0.1)
    let even = try entropy(1000)
    #expect(skewed < 1.8 && even > 3.0, "α 0.1: \(skewed) bits, α 1000: \(even) bits")
  }

  // MARK: Dirichlet with a minimum size

  static func dirichlet(seed: UInt64, alpha: Double, minimum: Int, onSmall: Partitioner.SmallClients)
    throws(CohortError) -> Partition
  {
    var rng = RandomStream(seed: seed, purpose: "partition")
    return try Partitioner.dirichlet(
      labels: labels, classes: 10, clients: 20, alpha: alpha, minimumSize: minimum, onSmall: onSmall,
      rng: &rng)
  }

  @Test(arguments: [UInt64(1), 2, 3])
  func dirichletRedrawAndBalanceMeetTheMinimum(seed: UInt64) throws {
    let redrawn = try Self.dirichlet(seed: seed, alpha: 0.5, minimum: 25, onSmall: .redraw)
    Self.isPartition(redrawn, "redraw, seed \(seed)")
    #expect(redrawn.sizes.allSatisfy { $0 >= 25 }, "redraw, seed \(seed): \(redrawn.sizes)")
    let balanced = try Self.dirichlet(seed: seed, alpha: 0.1, minimum: 80, onSmall: .balance)
    Self.isPartition(balanced, "balance, seed \(seed)")
    #expect(balanced.sizes.allSatisfy { $0 >= 80 }, "balance, seed \(seed): \(balanced.sizes)")
    #expect(try Self.dirichlet(seed: seed, alpha: 0.1, minimum: 80, onSmall: .balance) == balanced)
    #expect(try Self.dirichlet(seed: seed, alpha: 0.5, minimum: 25, onSmall: .redraw) == redrawn)
  }

  @Test func dirichletRedrawGivesUpNamingMinSizeAndAlpha() {
    let error = dataError { () throws(CohortError) in
      var rng = RandomStream(seed: 1, purpose: "partition")
      return try Partitioner.dirichlet(
        labels: Self.labels, classes: 10, clients: 20, alpha: 0.01, minimumSize: 89, onSmall: .redraw,
        attempts: 5, rng: &rng)
    }
    #expect(error?.code == .invalidConfiguration)
    #expect(
      error?.message.contains("min_size is 89") == true && error?.message.contains("alpha 0.01") == true,
      "\(String(describing: error))")
    #expect(error?.fix.contains("on_small: balance") == true)
  }
}
