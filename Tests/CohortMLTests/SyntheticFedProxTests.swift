import CohortCore
import CohortML
import Foundation
import Testing

@Suite struct SyntheticFedProxTests {
  static func make(
    alpha: Double = 1, beta: Double = 1, iid: Bool = false, devices: Int = 30, cap: Int = 1000,
    seed: UInt64
  ) throws -> SyntheticFedProx {
    try SyntheticFedProx(
      .init(alpha: alpha, beta: beta, iid: iid, devices: devices, maxSamplesPerDevice: cap), seed: seed)
  }

  @Test(arguments: [UInt64(1), 42])
  func sameSeedSameDataDifferentSeedDifferentData(seed: UInt64) throws {
    let a = try Self.make(seed: seed).device(3)
    let b = try Self.make(seed: seed).device(3)
    #expect(a.train.features == b.train.features, "seed \(seed)")
    #expect(a.train.labels == b.train.labels && a.test.features == b.test.features, "seed \(seed)")
    let other = try Self.make(seed: seed + 1).device(3)
    #expect(other.train.features.prefix(60) != a.train.features.prefix(60), "seeds \(seed), \(seed + 1)")
    let neighbour = try Self.make(seed: seed).device(4)
    #expect(neighbour.train.features.prefix(60) != a.train.features.prefix(60), "seed \(seed)")
  }

  @Test func sampleCountsFollowTheReferenceFormula() throws {
    let seed: UInt64 = 7
    let data = try Self.make(devices: 500, seed: seed)
    for k in 0..<500 {
      var rng = RandomStream(seed: seed, purpose: "synthetic-size", device: k)
      let draw = rng.lognormal(mean: 4, sigma: 2)
      let expected = draw >= 1000 ? 1000 : min(Int(draw) + 50, 1000)
      #expect(data.sampleCount(device: k) == expected, "seed \(seed), device \(k)")
    }
    let counts = (0..<500).map { data.sampleCount(device: $0) }
    #expect(counts.allSatisfy { $0 >= 50 && $0 <= 1000 }, "seed \(seed)")
    // lognormal(4, 2) exceeds 950 for about 6% of devices: some must hit the cap.
    #expect(counts.contains(1000), "seed \(seed)")
    // Its median is e^4 ≈ 55, so the median device has about 105 samples.
    let median = counts.sorted()[250]
    #expect(median > 80 && median < 140, "seed \(seed): median \(median)")

    let capped = try Self.make(devices: 200, cap: 120, seed: seed)
    let cappedCounts = (0..<200).map { capped.sampleCount(device: $0) }
    #expect(cappedCounts.allSatisfy { $0 >= 50 && $0 <= 120 } && cappedCounts.contains(120), "seed \(seed)")
  }

  @Test func shapesSplitsAndLabelRanges() throws {
    let seed: UInt64 = 3
    let data = try Self.make(devices: 12, seed: seed)
    for k in 0..<12 {
      let (train, test) = data.device(k)
      let n = data.sampleCount(device: k)
      #expect(train.count + test.count == n, "seed \(seed), device \(k)")
      #expect(train.count == Int(Double(n) * 0.9), "seed \(seed), device \(k)")
      #expect(data.splitCounts(device: k) == (train.count, test.count), "seed \(seed), device \(k)")
      #expect(train.featureShape == [60] && test.featureShape == [60], "seed \(seed)")
      #expect(train.features.count == train.count * 60, "seed \(seed)")
      #expect(train.classes == 10 && test.classes == 10, "seed \(seed)")
      #expect((train.labels + test.labels).allSatisfy { $0 >= 0 && $0 < 10 }, "seed \(seed), device \(k)")
      #expect(train.clients == nil, "seed \(seed)")
    }
  }

  @Test func labelsAreTheArgmaxOfTheDeviceModel() throws {
    let seed: UInt64 = 5
    let data = try Self.make(alpha: 0.5, beta: 0.5, devices: 5, seed: seed)
    for k in 0..<5 {
      let (w, b) = data.generatingModel(device: k)
      #expect(w.count == 600 && b.count == 10, "seed \(seed)")
      let (train, _) = data.device(k)
      var agree = 0
      for i in 0..<train.count {
        var logits = b
        for j in 0..<60 {
          for c in 0..<10 { logits[c] += Double(train.features[i * 60 + j]) * w[j * 10 + c] }
        }
        let best = logits.indices.max { logits[$0] < logits[$1] } ?? -1
        if best == Int(train.labels[i]) { agree += 1 }
      }
      // Features are stored as Float, so a near-tie may flip; anything more is a bug.
      #expect(agree >= train.count * 99 / 100, "seed \(seed), device \(k): \(agree)/\(train.count)")
    }
  }

  @Test func iidVariantSharesOneModelAndCentresInputs() throws {
    let seed: UInt64 = 9
    let iid = try Self.make(alpha: 1, beta: 1, iid: true, devices: 40, seed: seed)
    let first = iid.generatingModel(device: 0)
    for k in [1, 17, 39] {
      let model = iid.generatingModel(device: k)
      #expect(model.weights == first.weights && model.bias == first.bias, "seed \(seed), device \(k)")
    }
    let nonIID = try Self.make(devices: 40, seed: seed)
    #expect(
      nonIID.generatingModel(device: 0).weights != nonIID.generatingModel(device: 1).weights, "seed \(seed)")

    // x ~ N(0, Σ) with Σ_jj = j^−1.2: dimension 1 has standard deviation 1, dimension 60 about 0.086.
    let pooled = iid.pooled().train
    func moments(_ j: Int) -> (mean: Double, sd: Double) {
      let values = (0..<pooled.count).map { Double(pooled.features[$0 * 60 + j]) }
      let mean = values.reduce(0, +) / Double(values.count)
      let variance = values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(values.count)
      return (mean, variance.squareRoot())
    }
    let d1 = moments(0)
    let d60 = moments(59)
    #expect(pooled.count > 2000, "seed \(seed)")
    #expect(abs(d1.mean) < 0.1 && abs(d1.sd - 1) < 0.05, "seed \(seed): \(d1)")
    #expect(abs(d60.mean) < 0.01 && abs(d60.sd - pow(60, -0.6)) < 0.005, "seed \(seed): \(d60)")
  }

  @Test func sampleCountAgreesWithDeviceAndLabelCounts() throws {
    let seed: UInt64 = 13
    let data = try Self.make(devices: 20, seed: seed)
    for k in 0..<20 {
      let (train, test) = data.device(k)
      #expect(train.count + test.count == data.sampleCount(device: k), "seed \(seed), device \(k)")
      let counts = data.labelCounts(device: k)
      #expect(
        counts.train == train.labelCounts() && counts.test == test.labelCounts(), "seed \(seed), device \(k)")
    }
  }

  @Test func pooledSetsClientsToDevices() throws {
    let seed: UInt64 = 21
    let data = try Self.make(devices: 6, seed: seed)
    let (train, test) = data.pooled()
    #expect(train.clientNames == (0..<6).map { SyntheticFedProx.deviceName($0) }, "seed \(seed)")
    #expect(SyntheticFedProx.deviceName(3) == "f_00003")
    let partition = try Partitioner.natural(train)
    #expect(partition.clientCount == 6, "seed \(seed)")
    for k in 0..<6 {
      let own = data.device(k)
      #expect(partition.clients[k].count == own.train.count, "seed \(seed), device \(k)")
      #expect(train.subset(partition.clients[k]).features == own.train.features, "seed \(seed), device \(k)")
    }
    #expect(test.count == (0..<6).reduce(0) { $0 + data.splitCounts(device: $1).test }, "seed \(seed)")
    #expect(test.clients?.count == test.count, "seed \(seed)")
  }

  @Test func nonIIDDevicesSeeFewerLabelsThanIID() throws {
    // Non-IID: each device's input mean v_k ~ N(B_k, 1) outweighs the input noise (whose
    // standard deviation decays as j^−0.6), so a device's logits barely move and one or two
    // classes dominate. IID: x is centred and the shared model spreads labels over many classes.
    let seed: UInt64 = 17
    func statistics(iid: Bool) throws -> PartitionStatistics {
      let data = try Self.make(alpha: 1, beta: 1, iid: iid, devices: 30, cap: 200, seed: seed)
      let counts = (0..<30).map { k -> [Int] in
        let c = data.labelCounts(device: k)
        return zip(c.train, c.test).map { $0 + $1 }
      }
      return PartitionStatistics(sizes: counts.map { $0.reduce(0, +) }, labelCounts: counts, classes: 10)
    }
    let nonIID = try statistics(iid: false)
    let iid = try statistics(iid: true)
    #expect(nonIID.meanLabelEntropy < 1.2, "seed \(seed): \(nonIID.meanLabelEntropy)")
    #expect(iid.meanLabelEntropy > nonIID.meanLabelEntropy + 0.8, "seed \(seed): \(iid.meanLabelEntropy)")
  }

  @Test func invalidConfigurationsThrow() throws {
    let bad: [(SyntheticFedProx.Configuration, String)] = [
      (.init(alpha: -1, beta: 0, devices: 1), "alpha"),
      (.init(alpha: 0, beta: .nan, devices: 1), "beta"),
      (.init(alpha: 0, beta: 0, devices: 0), "devices"),
      (.init(alpha: 0, beta: 0, devices: 1, classes: 1), "classes"),
      (.init(alpha: 0, beta: 0, devices: 1, maxSamplesPerDevice: 0), "maxSamplesPerDevice"),
      (.init(alpha: 0, beta: 0, devices: 1, testFraction: 1), "testFraction"),
    ]
    for (configuration, name) in bad {
      let error = try #require(
        dataError { () throws(CohortError) in try SyntheticFedProx(configuration, seed: 1) })
      #expect(error.code == .invalidConfiguration)
      #expect(error.message.contains(name), "\(error.message)")
    }
  }

  @Test func millionDevicePopulationIsCheap() throws {
    // Nothing is generated up front; sizes come from their own streams.
    let data = try Self.make(devices: 1_000_000, seed: 1)
    #expect(data.sampleCount(device: 999_999) >= 50, "seed 1")
    #expect(data.device(999_999).train.count > 0, "seed 1")
  }
}
