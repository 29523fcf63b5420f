import CohortCore
import CohortML
import Dispatch
import Synchronization
import Testing

@testable import CohortSimulator

@Suite struct DeviceDataTests {
  static let syntheticBody =
    "data: {kind: synthetic_fedprox, alpha: 1, beta: 1, devices: 30, max_samples: 200}\nseed: 31\n"

  func bytes(_ local: LocalData) -> Int {
    (local.train.features.count + local.train.labels.count + (local.test?.features.count ?? 0)
      + (local.test?.labels.count ?? 0)) * 4
  }

  @Test func sameDeviceTwiceGivesTheSameData() throws {
    let provider = try DeviceDataProvider(scenario: makeScenario(Self.syntheticBody))
    #expect(provider.generatesOnDemand && provider.count == 30)
    let first = provider.data(device: 4)
    let second = provider.data(device: 4)  // from the cache
    let uncached = try DeviceDataProvider(scenario: makeScenario(Self.syntheticBody), cacheBudget: 0)
    for other in [second, uncached.data(device: 4)] {
      #expect(first.train.features == other.train.features && first.train.labels == other.train.labels)
      #expect(first.test?.features == other.test?.features && first.test?.labels == other.test?.labels)
      #expect(other.trainIndices == nil && other.exampleCount == first.exampleCount)
    }
    #expect(provider.data(device: 5).train.features != first.train.features)
  }

  @Test func syntheticDevicesAreTheDevicesOfThePooledData() throws {
    let scenario = try makeScenario(Self.syntheticBody)
    let provider = try DeviceDataProvider(scenario: scenario)
    let pooled = try FederatedData.load(scenario)
    #expect(pooled.partition.clientCount == provider.count)
    for k in 0..<provider.count {
      let local = provider.data(device: k)
      let train = pooled.train.subset(pooled.partition.clients[k])
      #expect(local.train.features == train.features && local.train.labels == train.labels, "device \(k)")
      let testIndices = pooled.test.clients!.indices.filter { pooled.test.clients![$0] == Int32(k) }
      let test = pooled.test.subset(testIndices)
      #expect(local.test?.features == test.features && local.test?.labels == test.labels, "device \(k)")
      #expect(
        provider.exampleCount(device: k) == local.exampleCount && local.exampleCount == local.train.count)
    }
    let central = provider.centralTest
    #expect(central.features == pooled.test.features && central.labels == pooled.test.labels)
    #expect(central.clients == pooled.test.clients && central.clientNames == pooled.test.clientNames)
  }

  @Test func aTinyCacheEvictsAndStillReturnsCorrectData() throws {
    let scenario = try makeScenario(Self.syntheticBody)
    let reference = try DeviceDataProvider(scenario: scenario, cacheBudget: 0)
    let sizes = (0..<30).map { bytes(reference.data(device: $0)) }
    #expect(reference.cacheUsage.devices == 0)
    // Room for about three devices of average size.
    let budget = sizes.reduce(0, +) / 10
    let provider = try DeviceDataProvider(scenario: scenario, cacheBudget: budget)
    var rng = RandomStream(seed: 32, purpose: "cache-test")
    for _ in 0..<300 {
      let k = rng.int(below: 30)
      let local = provider.data(device: k)
      let expected = reference.data(device: k)
      #expect(local.train.features == expected.train.features && local.test?.labels == expected.test?.labels)
      #expect(provider.cacheUsage.bytes <= budget)
    }
    #expect(provider.cacheUsage.devices > 0 && provider.cacheUsage.devices < 30)
  }

  @Test func theCacheEvictsTheLeastRecentlyUsed() {
    var cache = LRUCache<String>(budget: 10)
    cache.insert("a", for: 1, bytes: 4)
    cache.insert("b", for: 2, bytes: 4)
    #expect(cache.value(for: 1) == "a")  // 2 is now the oldest
    cache.insert("c", for: 3, bytes: 4)
    #expect(cache.value(for: 2) == nil && cache.value(for: 1) == "a" && cache.value(for: 3) == "c")
    #expect(cache.count == 2 && cache.bytes == 8)
    cache.insert("huge", for: 4, bytes: 11)  // larger than the budget: not kept, nothing evicted
    #expect(cache.value(for: 4) == nil && cache.count == 2)
    cache.insert("a2", for: 1, bytes: 2)  // replaces in place
    #expect(cache.value(for: 1) == "a2" && cache.bytes == 6)
    for k in 10..<1000 { cache.insert("x", for: k, bytes: 1) }
    #expect(cache.count == 10 && cache.bytes == 10)
  }

  @Test func concurrentReadersGetCorrectData() throws {
    let scenario = try makeScenario(Self.syntheticBody)
    let reference = try DeviceDataProvider(scenario: scenario, cacheBudget: 0)
    let expected = (0..<30).map { reference.data(device: $0).train.features }
    let provider = try DeviceDataProvider(scenario: scenario, cacheBudget: 200_000)
    let failures = Mutex(0)
    DispatchQueue.concurrentPerform(iterations: 8) { worker in
      var rng = RandomStream(seed: 33, purpose: "concurrency-test", device: worker)
      for _ in 0..<60 {
        let k = rng.int(below: 30)
        if provider.data(device: k).train.features != expected[k] { failures.withLock { $0 += 1 } }
      }
    }
    #expect(failures.withLock { $0 } == 0)
  }

  @Test func partitionedDataSharesTheTrainingSet() throws {
    let scenario = try makeScenario(
      "data: {kind: synthetic_fedprox, alpha: 1, beta: 1, devices: 10, max_samples: 100}\n"
        + "partition: {kind: dirichlet, alpha: 0.5}\ndevices: {count: 12}\nseed: 34\n")
    let provider = try DeviceDataProvider(scenario: scenario)
    let pooled = try FederatedData.load(scenario)
    #expect(!provider.generatesOnDemand && provider.count == 12)
    for k in 0..<12 {
      let local = provider.data(device: k)
      #expect(local.trainIndices == pooled.partition.clients[k] && local.test == nil)
      #expect(
        local.train.count == pooled.train.count && local.exampleCount == pooled.partition.clients[k].count)
      #expect(provider.exampleCount(device: k) == local.exampleCount)
    }
    #expect(provider.centralTest.labels == pooled.test.labels && provider.cacheUsage.devices == 0)
  }

  @Test func aMillionSyntheticDevicesAreCheapUntilUsed() throws {
    let scenario = try makeScenario(
      "data: {kind: synthetic_fedprox, alpha: 1, beta: 1, devices: 1000000, max_samples: 100}\n", goal: 100)
    let provider = try DeviceDataProvider(scenario: scenario, centralTestDevices: 5)
    #expect(provider.count == 1_000_000 && provider.cacheUsage.devices == 0)
    let last = provider.data(device: 999_999)
    #expect(last.exampleCount == provider.exampleCount(device: 999_999) && last.exampleCount > 0)
    #expect(provider.cacheUsage.devices == 1)
    let generator = try SyntheticFedProx(
      .init(alpha: 1, beta: 1, devices: 1_000_000, maxSamplesPerDevice: 100), seed: 0)
    let expected = (0..<5).map { generator.splitCounts(device: $0).test }.reduce(0, +)
    #expect(provider.centralTest.count == expected && provider.centralTest.clientNames?.count == 5)
    #expect(try Population(scenario: scenario).count == provider.count)
  }
}
