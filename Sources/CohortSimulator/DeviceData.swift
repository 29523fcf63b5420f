public import CohortCore
public import CohortML
public import CohortProtocol
import Synchronization

/// The examples one virtual device trains and evaluates on.
public struct LocalData: Sendable {
  /// The dataset to train on: the device's own examples, or the population's shared training
  /// set of which only `trainIndices` belong to the device (shared, not copied).
  public var train: Dataset
  /// The device's examples within `train`; nil when all of `train` is the device's.
  public var trainIndices: [Int]?
  /// The device's own held-out examples, when the data has them (synthetic devices do).
  public var test: Dataset?
  /// Training examples the device holds: the weight of its update in FedAvg.
  public var exampleCount: Int

  public init(train: Dataset, trainIndices: [Int]?, test: Dataset?, exampleCount: Int) {
    self.train = train
    self.trainIndices = trainIndices
    self.test = test
    self.exampleCount = exampleCount
  }
}

/// Each virtual device's local data, from a scenario, with memory that does not grow with the
/// population.
///
/// Two sources:
/// - **Synthetic devices** (`synthetic_fedprox` with a natural partition): device k's examples
///   are generated when first asked for, by `SyntheticFedProx.device(k)` with the same generator
///   `FederatedData.load` uses, so they are the examples of that device in the pooled data. Its
///   train part is `train` (no indices) and its test part is `test`. Generated devices are kept
///   in a least-recently-used cache up to `cacheBudget` bytes, so a population small enough to
///   fit is generated once, and a huge one costs at most the budget.
/// - **Everything else** is loaded and partitioned once by `FederatedData.load`; device k's
///   `train` is the shared training set and `trainIndices` its partition. Its `test` is its own
///   test examples where the data names their owners and the partition is natural
///   (`FederatedData.deviceTests`: a CSV test file with the client column, LEAF users' test
///   examples), and nil otherwise (IDX, other partitions): the test set is then central only.
///
/// Thread-safe: trainers on every core may ask at once. The lock guards only the cache; a device
/// that two threads ask for at once may be generated twice, identically.
public final class DeviceDataProvider: Sendable {
  private enum Source: Sendable {
    case synthetic(SyntheticFedProx)
    case shared(FederatedData)
  }

  /// Devices 0..<count.
  public let count: Int
  /// Bytes of generated device data the cache may keep.
  public let cacheBudget: Int
  /// Devices whose test splits make up a synthetic population's central test set.
  public let centralTestDevices: Int
  private let source: Source
  private let cache: Mutex<LRUCache<LocalData>>
  private let central: Mutex<Dataset?>

  /// The scenario's data. Synthetic devices cost nothing here; other data is loaded and
  /// partitioned now (and may throw what `FederatedData.load` throws).
  /// - Parameters:
  ///   - cacheBudget: bytes of generated synthetic devices to keep (default 512 MiB).
  ///   - centralTestDevices: a synthetic population's central test set pools the test splits of
  ///     its first min(count, centralTestDevices) devices, so evaluating a population of 10^6
  ///     costs no more than one of 1,000.
  public convenience init(scenario: Scenario, cacheBudget: Int = 512 << 20, centralTestDevices: Int = 1000)
    throws(CohortError)
  {
    if case .syntheticFedProx(let s) = scenario.data, scenario.partition == .natural {
      // The same generator FederatedData.load builds, so the devices are the same.
      let generator = try SyntheticFedProx(
        .init(
          alpha: s.alpha, beta: s.beta, iid: s.iid, devices: s.devices,
          maxSamplesPerDevice: s.maxSamplesPerDevice),
        seed: scenario.seed)
      self.init(synthetic: generator, cacheBudget: cacheBudget, centralTestDevices: centralTestDevices)
    } else {
      self.init(data: try FederatedData.load(scenario))
    }
  }

  /// Synthetic devices generated on demand by `generator`.
  public init(
    synthetic generator: SyntheticFedProx, cacheBudget: Int = 512 << 20, centralTestDevices: Int = 1000
  ) {
    precondition(cacheBudget >= 0, "the cache budget cannot be negative")
    precondition(centralTestDevices >= 1, "the central test set needs at least one device")
    source = .synthetic(generator)
    count = generator.configuration.devices
    self.cacheBudget = cacheBudget
    self.centralTestDevices = centralTestDevices
    cache = Mutex(LRUCache(budget: cacheBudget))
    central = Mutex(nil)
  }

  /// Devices that hold the partitions of data already loaded; nothing is generated or cached.
  public init(data: FederatedData) {
    source = .shared(data)
    count = data.partition.clientCount
    cacheBudget = 0
    centralTestDevices = count
    cache = Mutex(LRUCache(budget: 0))
    central = Mutex(data.test)
  }

  /// Device k's data. The same device gives the same data on every call.
  public func data(device k: DeviceID) -> LocalData {
    check(k)
    switch source {
    case .shared(let data):
      let indices = data.partition.clients[k]
      // A copy of the device's few test examples: the evaluator takes a dataset, not indices.
      let test = data.deviceTests.flatMap { k < $0.count ? data.test.subset($0[k]) : nil }
      return LocalData(train: data.train, trainIndices: indices, test: test, exampleCount: indices.count)
    case .synthetic(let generator):
      if let cached = cache.withLock({ $0.value(for: k) }) { return cached }
      // Generate outside the lock: other devices' lookups need not wait for this one.
      let (train, test) = generator.device(k)
      let local = LocalData(train: train, trainIndices: nil, test: test, exampleCount: train.count)
      let bytes = Self.bytes(train) + Self.bytes(test)
      cache.withLock { $0.insert(local, for: k, bytes: bytes) }
      return local
    }
  }

  /// Device k's training example count, without generating its data.
  public func exampleCount(device k: DeviceID) -> Int {
    check(k)
    switch source {
    case .shared(let data): return data.partition.clients[k].count
    case .synthetic(let generator): return generator.splitCounts(device: k).train
    }
  }

  /// The held-out set the global model is evaluated on after a round: the data's test set, or for
  /// synthetic devices the pooled test splits of the first min(count, centralTestDevices)
  /// devices (built on first use; identical to `FederatedData.load`'s test set when the
  /// population is no larger than that).
  public var centralTest: Dataset {
    central.withLock { stored in
      if let stored { return stored }
      guard case .synthetic(let generator) = source else {
        preconditionFailure("shared data has its test set")
      }
      let devices = Swift.min(count, centralTestDevices)
      var features: [Float] = []
      var labels: [Int32] = []
      var owners: [Int32] = []
      for k in 0..<devices {
        let test = generator.device(k).test
        features.append(contentsOf: test.features)
        labels.append(contentsOf: test.labels)
        owners.append(contentsOf: repeatElement(Int32(k), count: test.count))
      }
      let c = generator.configuration
      let pooled = Dataset(
        features: features, labels: labels, featureShape: [c.dimensions], classes: c.classes, clients: owners,
        clientNames: (0..<devices).map { SyntheticFedProx.deviceName($0) })
      stored = pooled
      return pooled
    }
  }

  /// Whether devices' data is generated on demand (and cached) rather than loaded up front.
  public var generatesOnDemand: Bool {
    if case .synthetic = source { return true }
    return false
  }

  /// Generated devices the cache holds now, and their bytes.
  public var cacheUsage: (devices: Int, bytes: Int) {
    cache.withLock { ($0.count, $0.bytes) }
  }

  private static func bytes(_ data: Dataset) -> Int {
    data.features.count * MemoryLayout<Float>.stride + data.labels.count * MemoryLayout<Int32>.stride
  }

  private func check(_ k: DeviceID) {
    precondition(k >= 0 && k < count, "device \(k) outside the population 0..<\(count)")
  }
}

/// A least-recently-used map from device to value, bounded by the bytes its values take.
/// A doubly linked list threaded through an array of slots: lookups, insertions and evictions
/// are O(1), and storage is proportional to the entries held.
struct LRUCache<Value> {
  struct Slot {
    var key: Int
    var value: Value?
    var bytes: Int
    var newer: Int
    var older: Int
  }

  let budget: Int
  private(set) var bytes = 0
  private var index: [Int: Int] = [:]
  private var slots: [Slot] = []
  private var freeSlots: [Int] = []
  /// Most and least recently used slots; -1 when empty.
  private var newest = -1
  private var oldest = -1

  init(budget: Int) { self.budget = budget }

  var count: Int { index.count }

  /// The value for `key`, which becomes the most recently used.
  mutating func value(for key: Int) -> Value? {
    guard let slot = index[key] else { return nil }
    unlink(slot)
    linkNewest(slot)
    return slots[slot].value
  }

  /// Stores `value`, evicting the least recently used entries until it fits. A value larger
  /// than the whole budget is not stored.
  mutating func insert(_ value: Value, for key: Int, bytes size: Int) {
    if let slot = index[key] { remove(slot) }
    guard size <= budget else { return }
    while bytes + size > budget, oldest >= 0 { remove(oldest) }
    let slot: Int
    if let free = freeSlots.popLast() {
      slot = free
      slots[slot] = Slot(key: key, value: value, bytes: size, newer: -1, older: -1)
    } else {
      slot = slots.count
      slots.append(Slot(key: key, value: value, bytes: size, newer: -1, older: -1))
    }
    index[key] = slot
    bytes += size
    linkNewest(slot)
  }

  private mutating func remove(_ slot: Int) {
    unlink(slot)
    index[slots[slot].key] = nil
    bytes -= slots[slot].bytes
    slots[slot].value = nil
    freeSlots.append(slot)
  }

  private mutating func unlink(_ slot: Int) {
    let (newer, older) = (slots[slot].newer, slots[slot].older)
    if newer >= 0 { slots[newer].older = older } else { newest = older }
    if older >= 0 { slots[older].newer = newer } else { oldest = newer }
    slots[slot].newer = -1
    slots[slot].older = -1
  }

  private mutating func linkNewest(_ slot: Int) {
    slots[slot].older = newest
    slots[slot].newer = -1
    if newest >= 0 { slots[newest].newer = slot }
    newest = slot
    if oldest < 0 { oldest = slot }
  }
}

extension LRUCache: Sendable where Value: Sendable {}
extension LRUCache.Slot: Sendable where Value: Sendable {}
