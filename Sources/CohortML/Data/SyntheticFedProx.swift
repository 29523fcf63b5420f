public import CohortCore
import Foundation

/// The Synthetic(α, β) federated dataset of FedProx (Li et al., "Federated Optimization in
/// Heterogeneous Networks", 2018), following the authors' `generate_synthetic.py`.
///
/// Device k draws u_k ~ N(0, α²) and B_k ~ N(0, β²) (α and β are standard deviations, as in the
/// reference code). Its model is W_k ~ N(u_k, 1) (dimensions × classes, logits = x·W + b) and
/// b_k ~ N(u_k, 1); its inputs are x ~ N(v_k, Σ) with v_k ~ N(B_k, 1) elementwise and Σ diagonal,
/// Σ_jj = j^−1.2. Its labels are y = argmax(x·W_k + b_k), the argmax of the softmax. α controls how
/// much the devices' models differ, β how much their inputs do. The IID variant shares one W, b ~
/// N(0, 1) among all devices and uses v = 0.
///
/// A device holds ⌊lognormal(4, 2)⌋ + 50 samples, capped at `maxSamplesPerDevice`. Its first
/// ⌊n · (1 − testFraction)⌋ samples are for training, the rest for testing. The reference
/// shuffles each device's samples before that cut; ours are i.i.d. draws, so a shuffle would
/// not change their distribution and we skip it.
///
/// Nothing is stored per device: device k is generated on demand from its own stream
/// (`purpose: "synthetic", device: k`), and its sample count from another (`"synthetic-size"`),
/// so populations of millions cost nothing until a device is asked for.
public struct SyntheticFedProx: Sendable {
  public struct Configuration: Sendable, Hashable {
    /// Standard deviation of u_k, the mean of device k's model: heterogeneity of the models.
    public var alpha: Double
    /// Standard deviation of B_k, the mean of device k's input mean: heterogeneity of the inputs.
    public var beta: Double
    /// One shared model and v = 0 for every device.
    public var iid: Bool
    public var devices: Int
    public var dimensions: Int
    public var classes: Int
    public var maxSamplesPerDevice: Int
    /// The share of each device's samples held out for testing.
    public var testFraction: Double

    public init(
      alpha: Double, beta: Double, iid: Bool = false, devices: Int, dimensions: Int = 60,
      classes: Int = 10, maxSamplesPerDevice: Int = 1000, testFraction: Double = 0.1
    ) {
      self.alpha = alpha
      self.beta = beta
      self.iid = iid
      self.devices = devices
      self.dimensions = dimensions
      self.classes = classes
      self.maxSamplesPerDevice = maxSamplesPerDevice
      self.testFraction = testFraction
    }

    /// Throws `.invalidConfiguration` naming the first value out of range.
    public func validate() throws(CohortError) {
      func fail(_ name: String, _ value: String, _ accepted: String) -> CohortError {
        CohortError(.invalidConfiguration, "synthetic data: \(name) is \(value); expected \(accepted)")
      }
      guard alpha >= 0 && alpha.isFinite else { throw fail("alpha", "\(alpha)", "a finite value ≥ 0") }
      guard beta >= 0 && beta.isFinite else { throw fail("beta", "\(beta)", "a finite value ≥ 0") }
      guard devices >= 1 && devices <= Int(Int32.max) else {
        throw fail("devices", "\(devices)", "1…\(Int32.max)")
      }
      guard dimensions >= 1 && dimensions <= 1 << 20 else {
        throw fail("dimensions", "\(dimensions)", "1…\(1 << 20)")
      }
      guard classes >= 2 && classes <= 1 << 20 else { throw fail("classes", "\(classes)", "2…\(1 << 20)") }
      guard maxSamplesPerDevice >= 1 else {
        throw fail("maxSamplesPerDevice", "\(maxSamplesPerDevice)", "at least 1")
      }
      guard testFraction >= 0 && testFraction < 1 else {
        throw fail("testFraction", "\(testFraction)", "a fraction in 0..<1")
      }
    }
  }

  public let configuration: Configuration
  public let seed: UInt64
  /// Standard deviation of each input dimension: j^−0.6 for j = 1…dimensions.
  private let inputScale: [Double]
  /// The IID variant's shared model: W row-major (dimensions × classes), then b.
  private let sharedModel: [Double]?

  public init(_ configuration: Configuration, seed: UInt64) throws(CohortError) {
    try configuration.validate()
    self.configuration = configuration
    self.seed = seed
    inputScale = (1...configuration.dimensions).map { pow(Double($0), -0.6) }
    if configuration.iid {
      var rng = RandomStream(seed: seed, purpose: "synthetic-global")
      let count = (configuration.dimensions + 1) * configuration.classes
      sharedModel = (0..<count).map { _ in rng.normal() }
    } else {
      sharedModel = nil
    }
  }

  /// Device k's sample count (train and test together), without generating its data.
  public func sampleCount(device k: Int) -> Int {
    precondition(k >= 0 && k < configuration.devices, "device \(k) outside 0..<\(configuration.devices)")
    var rng = RandomStream(seed: seed, purpose: "synthetic-size", device: k)
    let cap = configuration.maxSamplesPerDevice
    let draw = rng.lognormal(mean: 4, sigma: 2)
    // Compare before converting: a lognormal(4, 2) tail can exceed Int's range.
    guard draw < Double(cap) else { return cap }
    return Swift.min(Int(draw) + 50, cap)
  }

  /// Device k's (train, test) sample counts, without generating its data.
  public func splitCounts(device k: Int) -> (train: Int, test: Int) {
    let n = sampleCount(device: k)
    let train = Dataset.trainCount(n, testFraction: configuration.testFraction)
    return (train, n - train)
  }

  /// Device k's data. Same seed and configuration, same numbers.
  public func device(_ k: Int) -> (train: Dataset, test: Dataset) {
    let d = configuration.dimensions
    let n = sampleCount(device: k)
    var x = [Float]()
    var y = [Int32]()
    x.reserveCapacity(n * d)
    y.reserveCapacity(n)
    generate(device: k, count: n) { sample, label in
      for v in sample { x.append(Float(v)) }
      y.append(Int32(label))
    }
    let train = Dataset.trainCount(n, testFraction: configuration.testFraction)
    let c = configuration.classes
    return (
      Dataset(
        features: Array(x[0..<(train * d)]), labels: Array(y[0..<train]), featureShape: [d], classes: c),
      Dataset(features: Array(x[(train * d)...]), labels: Array(y[train...]), featureShape: [d], classes: c)
    )
  }

  /// Device k's examples per class in its train and test parts, without keeping its features.
  public func labelCounts(device k: Int) -> (train: [Int], test: [Int]) {
    let n = sampleCount(device: k)
    let train = Dataset.trainCount(n, testFraction: configuration.testFraction)
    var counts = (
      [Int](repeating: 0, count: configuration.classes), [Int](repeating: 0, count: configuration.classes)
    )
    var i = 0
    generate(device: k, count: n) { _, label in
      if i < train { counts.0[label] += 1 } else { counts.1[label] += 1 }
      i += 1
    }
    return counts
  }

  /// Every device's data concatenated, device by device. `clients` holds the device index
  /// (the natural partition) and `clientNames` the reference's user names, `f_00000`, ….
  public func pooled() -> (train: Dataset, test: Dataset) {
    let d = configuration.dimensions
    let c = configuration.classes
    var parts = (
      train: (x: [Float](), y: [Int32](), owner: [Int32]()),
      test: (x: [Float](), y: [Int32](), owner: [Int32]())
    )
    for k in 0..<configuration.devices {
      let (train, test) = device(k)
      parts.train.x.append(contentsOf: train.features)
      parts.train.y.append(contentsOf: train.labels)
      parts.train.owner.append(contentsOf: repeatElement(Int32(k), count: train.count))
      parts.test.x.append(contentsOf: test.features)
      parts.test.y.append(contentsOf: test.labels)
      parts.test.owner.append(contentsOf: repeatElement(Int32(k), count: test.count))
    }
    let names = (0..<configuration.devices).map { Self.deviceName($0) }
    return (
      Dataset(
        features: parts.train.x, labels: parts.train.y, featureShape: [d], classes: c,
        clients: parts.train.owner, clientNames: names),
      Dataset(
        features: parts.test.x, labels: parts.test.y, featureShape: [d], classes: c,
        clients: parts.test.owner, clientNames: names)
    )
  }

  /// The reference's user name for device k: `f_00000`, `f_00001`, ….
  public static func deviceName(_ k: Int) -> String {
    let digits = String(k)
    return "f_" + String(repeating: "0", count: Swift.max(0, 5 - digits.count)) + digits
  }

  /// The model that labels device k's data: W row-major (`dimensions × classes`, logits = x·W + b)
  /// and b. A model trained on the device can at best match it.
  public func generatingModel(device k: Int) -> (weights: [Double], bias: [Double]) {
    precondition(k >= 0 && k < configuration.devices, "device \(k) outside 0..<\(configuration.devices)")
    var rng = RandomStream(seed: seed, purpose: "synthetic", device: k)
    let (model, _) = deviceParameters(&rng)
    let split = configuration.dimensions * configuration.classes
    return (Array(model[0..<split]), Array(model[split...]))
  }

  /// Draws device k's model (W then b) and input mean v, in that order, from its stream.
  private func deviceParameters(_ rng: inout RandomStream) -> (model: [Double], mean: [Double]) {
    let d = configuration.dimensions
    let c = configuration.classes
    if let sharedModel { return (sharedModel, [Double](repeating: 0, count: d)) }
    let u = rng.normal(mean: 0, standardDeviation: configuration.alpha)
    let b = rng.normal(mean: 0, standardDeviation: configuration.beta)
    let model = (0..<((d + 1) * c)).map { _ in rng.normal(mean: u, standardDeviation: 1) }
    let mean = (0..<d).map { _ in rng.normal(mean: b, standardDeviation: 1) }
    return (model, mean)
  }

  /// Generates device k's `count` samples in order, handing each (x, y) to `body`.
  private func generate(device k: Int, count: Int, _ body: (borrowing [Double], Int) -> Void) {
    precondition(k >= 0 && k < configuration.devices, "device \(k) outside 0..<\(configuration.devices)")
    let d = configuration.dimensions
    let c = configuration.classes
    var rng = RandomStream(seed: seed, purpose: "synthetic", device: k)
    let (model, mean) = deviceParameters(&rng)
    let scale = inputScale
    var x = [Double](repeating: 0, count: d)
    var logits = [Double](repeating: 0, count: c)
    for _ in 0..<count {
      for j in 0..<d { x[j] = mean[j] + scale[j] * rng.normal() }
      for m in 0..<c { logits[m] = model[d * c + m] }
      for j in 0..<d {
        let xj = x[j]
        let row = j * c
        for m in 0..<c { logits[m] += xj * model[row + m] }
      }
      // The first maximum, as numpy.argmax; softmax is monotone, so the logits suffice.
      var best = 0
      for m in 1..<c where logits[m] > logits[best] { best = m }
      body(x, best)
    }
  }
}
