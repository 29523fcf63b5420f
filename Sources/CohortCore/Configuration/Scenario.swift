import Foundation
import Yams

/// A simulation scenario: which plan, on which data, divided among devices how, and what the
/// device population looks like. Loaded from `Simulations/*.yaml`.
public struct Scenario: Codable, Sendable, Hashable {
  /// The plan file as resolved from the scenario's directory (the scenario itself for an inline plan).
  public var planPath: String
  public var plan: Plan
  public var data: DataSource
  public var partition: PartitionPlan
  public var devices: PopulationPlan
  /// Devices that attack the model instead of training honestly; nil when all are honest.
  public var adversaries: AdversaryPlan?
  public var seed: UInt64

  public init(
    planPath: String, plan: Plan, data: DataSource, partition: PartitionPlan, devices: PopulationPlan,
    adversaries: AdversaryPlan? = nil, seed: UInt64
  ) {
    self.planPath = planPath
    self.plan = plan
    self.data = data
    self.partition = partition
    self.devices = devices
    self.adversaries = adversaries
    self.seed = seed
  }
}

/// Where examples come from. Paths are resolved against the scenario file's directory.
public enum DataSource: Codable, Sendable, Hashable {
  /// FedProx Synthetic(α, β) (Li et al. 2018), or its IID variant; one natural client per device.
  case syntheticFedProx(SyntheticData)
  /// A CSV file with a header: a label column, numeric feature columns, an optional client column.
  case csv(CSVData)
  /// IDX files (MNIST, EMNIST, Fashion-MNIST), gzip accepted.
  case idx(IDXData)
  /// LEAF JSON (FEMNIST and kin): users, num_samples, user_data.
  case leaf(LEAFData)

  public struct SyntheticData: Codable, Sendable, Hashable {
    public var alpha: Double
    public var beta: Double
    public var iid: Bool
    public var devices: Int
    public var maxSamplesPerDevice: Int
    public init(alpha: Double, beta: Double, iid: Bool = false, devices: Int, maxSamplesPerDevice: Int = 1000)
    {
      self.alpha = alpha
      self.beta = beta
      self.iid = iid
      self.devices = devices
      self.maxSamplesPerDevice = maxSamplesPerDevice
    }
  }

  public struct CSVData: Codable, Sendable, Hashable {
    public var path: String
    public var labelColumn: String
    public var clientColumn: String?
    public var test: TestData
  }

  public struct IDXData: Codable, Sendable, Hashable {
    public var images: String
    public var labels: String
    public var testImages: String?
    public var testLabels: String?
    public var testFraction: Double
  }

  public struct LEAFData: Codable, Sendable, Hashable {
    public var train: String
    public var test: TestData
  }

  /// The held-out test set: a file of the same format, or a fraction split off the training data.
  public enum TestData: Codable, Sendable, Hashable {
    case file(String)
    case fraction(Double)
  }

  /// Whether examples come with an owner, so `partition: {kind: natural}` is possible.
  public var hasNaturalClients: Bool {
    switch self {
    case .syntheticFedProx, .leaf: return true
    case .csv(let c): return c.clientColumn != nil
    case .idx: return false
    }
  }
}

/// How examples are divided among devices.
public enum PartitionPlan: Codable, Sendable, Hashable {
  /// By the owner the data names (synthetic device, CSV client column, LEAF user).
  case natural
  case iid
  /// Label skew: each class spread over devices by a Dirichlet(α) draw (Hsu et al. 2019).
  /// `minimum` is the scenario's `min_size` and `on_small`; nil keeps the long-standing rule
  /// (at least one example each: redraws, then repair).
  case dirichlet(alpha: Double, minimum: DirichletMinimum? = nil)
  /// Sorted by label and cut into shards, `perClient` shards each (McMahan et al. 2017).
  case shards(perClient: Int)
  /// Unequal sizes, labels IID.
  case quantitySkew(QuantitySkewPlan)
  /// Each device holds exactly `classesPerDevice` classes (Flower's PathologicalPartitioner).
  case pathological(classesPerDevice: Int)
  /// Device sizes by a size law, each device's class mix from Dirichlet(α) over the classes
  /// (Flower's InnerDirichletPartitioner).
  case innerDirichlet(alpha: Double, sizes: SizeLaw)
  /// IID contents, sizes by a size law (Flower's Linear-, Square- and ExponentialPartitioner).
  case sized(SizeLaw)

  public enum QuantitySkewPlan: Codable, Sendable, Hashable {
    case lognormal(sigma: Double)
    case powerLaw(exponent: Double)
  }

  /// Device i's size is proportional to 1, i + 1, (i + 1)² or eⁱ.
  public enum SizeLaw: String, Codable, Sendable, Hashable, CaseIterable {
    case equal, linear, square, exponential
  }

  /// The smallest device a Dirichlet partition may produce, and how to get there.
  public struct DirichletMinimum: Codable, Sendable, Hashable {
    public enum OnSmall: String, Codable, Sendable, Hashable {
      /// Draw again until every device has `size` examples; a bounded number of times, then fail.
      case redraw
      /// Keep the draw and move examples from the largest devices to the small ones.
      case balance
    }
    public var size: Int
    public var onSmall: OnSmall
    public init(size: Int, onSmall: OnSmall = .redraw) {
      self.size = size
      self.onSmall = onSmall
    }
  }
}

/// A share of the population that sends harmful updates, to study robust aggregation.
public struct AdversaryPlan: Codable, Sendable, Hashable {
  public enum Attack: Codable, Sendable, Hashable {
    /// Sends its update negated and multiplied by `factor`: with the default 4, a fifth of the
    /// cohort cancels the other four fifths under plain averaging.
    case signFlip(factor: Double)
    /// Sends Gaussian noise N(0, σ²) in place of the update.
    case gaussianNoise(standardDeviation: Double)
    /// Sends the update multiplied by λ.
    case scale(Double)
    /// Trains honestly on labels flipped to `classes − 1 − y`.
    case labelFlip
  }

  /// Each device is an adversary with this probability, drawn once from the scenario's seed.
  public var fraction: Double
  public var attack: Attack

  public init(fraction: Double, attack: Attack) {
    self.fraction = fraction
    self.attack = attack
  }
}

/// A distribution of a positive device property (speed, bandwidth).
public enum ProfileDistribution: Codable, Sendable, Hashable {
  case constant(Double)
  /// exp(N(log median, sigma²)).
  case lognormal(median: Double, sigma: Double)
  case uniform(low: Double, high: Double)
}

/// The virtual device population of a simulation.
public struct PopulationPlan: Codable, Sendable, Hashable {
  public enum Availability: Codable, Sendable, Hashable {
    case always
    /// A daily curve: a device is available with probability
    /// p(t) = 1 − amplitude/2 + (amplitude/2)·sin(2πt/period + φ), between 1 − amplitude and 1,
    /// with φ its own phase (time zone). The simulator's `Population` documents the full model.
    case diurnal(amplitude: Double, period: Double)
  }

  /// Number of devices; nil means one per natural client of the data.
  public var count: Int?
  /// Training speed in examples per second.
  public var compute: ProfileDistribution = .lognormal(median: 100, sigma: 0.5)
  /// Bandwidths in bytes per second.
  public var download: ProfileDistribution = .lognormal(median: 2_000_000, sigma: 0.8)
  public var upload: ProfileDistribution = .lognormal(median: 500_000, sigma: 0.8)
  public var availability: Availability = .always
  /// Chance that a selected device drops out of a round.
  public var dropout: Double = 0
  /// Mean seconds between a device's own check-ins when the server has not told it when to
  /// return: with N devices, spontaneous check-ins arrive at N / checkInInterval per second.
  public var checkInInterval: Double = 600

  public init(count: Int? = nil) { self.count = count }

  enum CodingKeys: String, CodingKey {
    case count, compute, download, upload, availability, dropout, checkInInterval
  }

  /// Decodes every key as stored, except that a `checkInInterval` missing from a scenario stored
  /// before it existed takes its default, so older results stores still open.
  public init(from decoder: any Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    count = try c.decodeIfPresent(Int.self, forKey: .count)
    compute = try c.decode(ProfileDistribution.self, forKey: .compute)
    download = try c.decode(ProfileDistribution.self, forKey: .download)
    upload = try c.decode(ProfileDistribution.self, forKey: .upload)
    availability = try c.decode(Availability.self, forKey: .availability)
    dropout = try c.decode(Double.self, forKey: .dropout)
    checkInInterval = try c.decodeIfPresent(Double.self, forKey: .checkInInterval) ?? 600
  }
}

// MARK: - Loading

extension Scenario {
  public static func load(path: String) throws(ConfigurationError) -> Scenario {
    let text = try ConfigurationFile.read(path)
    return try parse(yaml: text, file: path)
  }

  static let keys = ["plan", "data", "partition", "devices", "adversaries", "seed"]

  /// Whether YAML text looks like a scenario (it names a plan) rather than a plan.
  public static func looksLikeScenario(yaml: String) -> Bool {
    yaml.split(separator: "\n").contains { $0.hasPrefix("plan:") }
  }

  /// Parses a scenario; its `plan` path and data paths are resolved against `file`'s directory.
  public static func parse(yaml: String, file: String) throws(ConfigurationError) -> Scenario {
    try parse(yaml: yaml, file: file, directory: URL(fileURLWithPath: file).deletingLastPathComponent())
  }

  /// Parses a scenario whose relative paths are resolved against `directory`; `file` only names it
  /// in messages (e.g. "a.yaml with variant fedadam").
  static func parse(yaml: String, file: String, directory: URL) throws(ConfigurationError) -> Scenario {
    let log = IssueLog(file: file)
    let scenario = YAMLDocument.root(yaml: yaml, log: log).flatMap { read($0, directory: directory) }
    guard let scenario, log.issues.isEmpty else { throw ConfigurationError(issues: log.issues) }
    return scenario
  }

  static func resolve(_ path: String, in directory: URL) -> String {
    if path.hasPrefix("/") { return path }
    return directory.appendingPathComponent(path).standardizedFileURL.path
  }

  static func read(_ root: YAMLField, directory: URL) -> Scenario? {
    guard let m = root.mapping(allowed: keys) else { return nil }
    let log = root.log
    var planPath: String?
    let plan = m.required(
      "plan", hint: "the plan file relative to this file (plan: ../Plans/x.yaml), or the plan inline"
    ) { field -> Plan? in
      if case .mapping = field.node {
        planPath = log.file
        return Plan.read(field)
      }
      guard let relative = field.string() else { return nil }
      let path = resolve(relative, in: directory)
      planPath = path
      do throws(ConfigurationError) {
        return try Plan.load(path: path)
      } catch {
        // The plan's own issues name the plan file; say which scenario key led there.
        if error.issues.count == 1 && error.issues[0].keyPath.isEmpty {
          field.fail(error.issues[0].message)
        } else {
          log.issues += error.issues
        }
        return nil
      }
    }
    let data = m.required(
      "data", hint: "e.g. data: {kind: synthetic_fedprox, alpha: 1, beta: 1, devices: 100}"
    ) {
      DataSource.read($0, directory: directory)
    }
    let partition = m.optional("partition", default: .natural) { PartitionPlan.read($0) }
    let devices = m.optional("devices", default: PopulationPlan()) { PopulationPlan.read($0) }
    let adversaries = m.optional("adversaries") { AdversaryPlan.read($0) }
    let seed = m.optional("seed", default: 0) { $0.int(0...Int.max) }

    guard let plan, let planPath, let data else { return nil }
    let scenario = Scenario(
      planPath: planPath, plan: plan, data: data, partition: partition, devices: devices,
      adversaries: adversaries,
      seed: UInt64(seed))
    // Checks across keys only make sense once each key is valid; otherwise defaults standing in
    // for invalid values would produce misleading follow-on issues.
    if log.issues.isEmpty { scenario.checkCombinations(m) }
    return scenario
  }

  /// Checks that need more than one key: each issue names every key involved.
  func checkCombinations(_ m: YAMLMapping) {
    func issue(_ key: String, _ message: String) {
      let field = m[key]
      m.owner.log.add(keyPath: key, line: field?.node.mark?.line ?? m.owner.node.mark?.line, message)
    }
    if partition == .natural && !data.hasNaturalClients {
      issue(
        "partition",
        "kind natural needs data whose examples name their owner; set data.client_column (csv), "
          + "or choose partition kind iid, dirichlet, shards, quantity_skew, pathological, "
          + "inner_dirichlet, linear, square or exponential")
    }
    if case .syntheticFedProx(let s) = data {
      if plan.model.inputShape != [60] || plan.model.classes != 10 {
        issue(
          "data",
          "synthetic_fedprox gives 60 features and 10 classes, but the plan's model has input shape "
            + "\(plan.model.inputShape) and \(plan.model.classes) classes; set model inputs: 60, classes: 10")
      }
      if partition == .natural, let count = devices.count, count != s.devices {
        issue(
          "devices.count",
          "with partition kind natural there is one device per synthetic device: devices.count (\(count)) "
            + "must equal data.devices (\(s.devices)), or be left out")
      }
    }
    if case .pathological(let k) = partition, k > plan.model.classes {
      m.owner.log.add(
        keyPath: "partition.classes_per_device", line: m["partition"]?.node.mark?.line,
        "is \(k), but the plan's model has \(plan.model.classes) classes; expected at most "
          + "\(plan.model.classes)")
    }
    if let count = populationSize, let async = plan.server.asynchronous {
      // No cohort: a buffer fills with one update per device at most per version.
      if async.buffer > count {
        issue(
          "devices.count",
          "the plan's server.async.buffer (\(async.buffer)) is larger than the population (\(count) devices), "
            + "and each device counts at most once per version; lower the buffer or add devices")
      }
    } else if let count = populationSize, plan.server.cohort.goal > count {
      issue(
        "devices.count",
        "the plan's server.cohort.goal (\(plan.server.cohort.goal)) is larger than the population "
          + "(\(count) devices); lower the goal or add devices")
    }
  }

  /// Devices in the population when known before the data is loaded.
  public var populationSize: Int? {
    if let count = devices.count { return count }
    if case .syntheticFedProx(let s) = data { return s.devices }
    return nil
  }
}

extension DataSource {
  static let kinds = ["synthetic_fedprox", "csv", "idx", "leaf"]

  static func read(_ field: YAMLField, directory: URL) -> DataSource? {
    let all = [
      "kind", "alpha", "beta", "iid", "devices", "max_samples", "path", "label_column", "client_column",
      "test_path", "test_fraction", "images", "labels", "test_images", "test_labels", "train", "test",
    ]
    guard let m = field.mapping(allowed: all) else { return nil }
    guard let kind = m.required("kind", hint: "one of: " + kinds.joined(separator: ", "), { $0.oneOf(kinds) })
    else { return nil }
    let keysFor: [String: [String]] = [
      "synthetic_fedprox": ["kind", "alpha", "beta", "iid", "devices", "max_samples"],
      "csv": ["kind", "path", "label_column", "client_column", "test_path", "test_fraction"],
      "idx": ["kind", "images", "labels", "test_images", "test_labels", "test_fraction"],
      "leaf": ["kind", "train", "test", "test_fraction"],
    ]
    let allowed = keysFor[kind] ?? []
    m.reject(
      all.filter { !allowed.contains($0) }, because: "kind \(kind) accepts " + allowed.joined(separator: ", ")
    )
    func path(_ key: String, hint: String) -> String? {
      m.required(key, hint: hint) { $0.string() }.map { Scenario.resolve($0, in: directory) }
    }
    func optionalPath(_ key: String) -> String? {
      m.optional(key) { $0.string() }.map { Scenario.resolve($0, in: directory) }
    }
    func test(fileKey: String) -> TestData {
      if let file = optionalPath(fileKey) {
        if let f = m["test_fraction"] { f.fail("give either \(fileKey) or test_fraction, not both") }
        return .file(file)
      }
      return .fraction(m.optional("test_fraction", default: 0.2) { $0.double(0...0.9, above: true) })
    }
    switch kind {
    case "synthetic_fedprox":
      let alpha = m.required("alpha", hint: "model heterogeneity α ≥ 0, e.g. alpha: 1") { $0.double(0...100) }
      let beta = m.required("beta", hint: "data heterogeneity β ≥ 0, e.g. beta: 1") { $0.double(0...100) }
      let devices = m.required("devices", hint: "how many synthetic devices, e.g. devices: 100") {
        $0.int(1...100_000_000)
      }
      let iid = m.optional("iid", default: false) { $0.bool() }
      let cap = m.optional("max_samples", default: 1000) { $0.int(51...1_000_000) }
      guard let alpha, let beta, let devices else { return nil }
      return .syntheticFedProx(
        SyntheticData(alpha: alpha, beta: beta, iid: iid, devices: devices, maxSamplesPerDevice: cap))
    case "csv":
      guard let p = path("path", hint: "the CSV file, relative to the scenario") else { return nil }
      return .csv(
        CSVData(
          path: p, labelColumn: m.optional("label_column", default: "label") { $0.string() },
          clientColumn: m.optional("client_column") { $0.string() }, test: test(fileKey: "test_path")))
    case "idx":
      let images = path("images", hint: "the IDX image file, e.g. train-images-idx3-ubyte.gz")
      let labels = path("labels", hint: "the IDX label file, e.g. train-labels-idx1-ubyte.gz")
      let testImages = optionalPath("test_images")
      let testLabels = optionalPath("test_labels")
      if (testImages == nil) != (testLabels == nil) {
        m.owner.fail("give both test_images and test_labels, or neither")
      }
      let fraction = m.optional("test_fraction", default: 0.2) { $0.double(0...0.9, above: true) }
      guard let images, let labels else { return nil }
      return .idx(
        IDXData(
          images: images, labels: labels, testImages: testImages, testLabels: testLabels,
          testFraction: fraction))
    default:
      guard let train = path("train", hint: "the LEAF training JSON file") else { return nil }
      return .leaf(LEAFData(train: train, test: test(fileKey: "test")))
    }
  }
}

extension PartitionPlan {
  static let kinds = [
    "natural", "iid", "dirichlet", "shards", "quantity_skew", "pathological", "inner_dirichlet", "linear",
    "square", "exponential",
  ]

  static func read(_ field: YAMLField) -> PartitionPlan? {
    let all = [
      "kind", "alpha", "shards_per_client", "distribution", "sigma", "exponent", "min_size", "on_small",
      "classes_per_device", "sizes",
    ]
    guard let m = field.mapping(allowed: all) else { return nil }
    guard let kind = m.required("kind", hint: "one of: " + kinds.joined(separator: ", "), { $0.oneOf(kinds) })
    else { return nil }
    let keysFor: [String: [String]] = [
      "dirichlet": ["alpha", "min_size", "on_small"],
      "shards": ["shards_per_client"],
      "quantity_skew": ["distribution", "sigma", "exponent"],
      "pathological": ["classes_per_device"],
      "inner_dirichlet": ["alpha", "sizes"],
    ]
    let allowed = ["kind"] + (keysFor[kind] ?? [])
    m.reject(
      all.filter { !allowed.contains($0) },
      because: allowed.count == 1
        ? "kind \(kind) has no parameters"
        : "kind \(kind) takes " + allowed.dropFirst().joined(separator: ", "))
    func alpha() -> Double? {
      m.required("alpha", hint: "the concentration α > 0; small is skewed, e.g. alpha: 0.3") {
        $0.double(0...1e6, above: true)
      }
    }
    switch kind {
    case "natural": return .natural
    case "iid": return .iid
    case "linear", "square", "exponential": return SizeLaw(rawValue: kind).map { .sized($0) }
    case "dirichlet":
      let a = alpha()
      var minimum: DirichletMinimum?
      if m.has("min_size") {
        let size = m.optional("min_size") { $0.int(1...100_000_000) }
        let onSmall = m.optional("on_small", default: "redraw") { $0.oneOf(["redraw", "balance"]) }
        minimum = size.map {
          DirichletMinimum(size: $0, onSmall: DirichletMinimum.OnSmall(rawValue: onSmall) ?? .redraw)
        }
      } else if let onSmall = m["on_small"] {
        onSmall.fail("on_small applies only with min_size; add min_size: N (examples per device)")
      }
      return a.map { .dirichlet(alpha: $0, minimum: minimum) }
    case "shards":
      return .shards(perClient: m.optional("shards_per_client", default: 2) { $0.int(1...10_000) })
    case "pathological":
      return m.required(
        "classes_per_device", hint: "how many classes each device holds, e.g. classes_per_device: 2"
      ) { $0.int(1...1_000_000) }.map { .pathological(classesPerDevice: $0) }
    case "inner_dirichlet":
      let a = alpha()
      let laws = SizeLaw.allCases.map(\.rawValue)
      let sizes = m.optional("sizes", default: "equal") { $0.oneOf(laws) }
      return a.map { .innerDirichlet(alpha: $0, sizes: SizeLaw(rawValue: sizes) ?? .equal) }
    default:
      let distribution = m.optional("distribution", default: "lognormal") {
        $0.oneOf(["lognormal", "power_law"])
      }
      if distribution == "lognormal" {
        m.reject(["exponent"], because: "distribution lognormal takes sigma")
        return .quantitySkew(
          .lognormal(sigma: m.optional("sigma", default: 1.0) { $0.double(0...10, above: true) }))
      }
      m.reject(["sigma"], because: "distribution power_law takes exponent")
      return .quantitySkew(
        .powerLaw(exponent: m.optional("exponent", default: 1.5) { $0.double(0...10, above: true) }))
    }
  }
}

extension AdversaryPlan {
  static let attacks = ["sign_flip", "gaussian_noise", "scale", "label_flip"]

  static func read(_ field: YAMLField) -> AdversaryPlan? {
    guard let m = field.mapping(allowed: ["fraction", "attack", "standard_deviation", "factor"]) else {
      return nil
    }
    let fraction = m.required("fraction", hint: "the share of devices that attack, e.g. fraction: 0.2") {
      $0.double(0...1)
    }
    let attack = m.required("attack", hint: "one of: " + attacks.joined(separator: ", ")) {
      $0.oneOf(attacks)
    }
    guard let attack else { return nil }
    switch attack {
    case "gaussian_noise":
      m.reject(["factor"], because: "attack gaussian_noise takes standard_deviation")
      let sd = m.optional("standard_deviation", default: 1.0) { $0.double(0...1e6, above: true) }
      return fraction.map { AdversaryPlan(fraction: $0, attack: .gaussianNoise(standardDeviation: sd)) }
    case "scale":
      m.reject(["standard_deviation"], because: "attack scale takes factor")
      let factor = m.required("factor", hint: "the factor λ updates are multiplied by, e.g. factor: 10") {
        $0.double(-1e6...1e6)
      }
      guard let fraction, let factor else { return nil }
      return AdversaryPlan(fraction: fraction, attack: .scale(factor))
    case "sign_flip":
      m.reject(["standard_deviation"], because: "attack sign_flip takes factor")
      let factor = m.optional("factor", default: 4.0) { $0.double(0...1e6, above: true) }
      return fraction.map { AdversaryPlan(fraction: $0, attack: .signFlip(factor: factor)) }
    default:
      m.reject(["standard_deviation", "factor"], because: "attack label_flip has no parameters")
      return fraction.map { AdversaryPlan(fraction: $0, attack: .labelFlip) }
    }
  }
}

extension ProfileDistribution {
  static func read(_ field: YAMLField) -> ProfileDistribution? {
    guard let m = field.mapping(allowed: ["kind", "value", "median", "sigma", "low", "high"]) else {
      return nil
    }
    let kind = m.required("kind", hint: "one of: constant, lognormal, uniform") {
      $0.oneOf(["constant", "lognormal", "uniform"])
    }
    let positive = 0...Double.greatestFiniteMagnitude
    switch kind {
    case "constant":
      m.reject(["median", "sigma", "low", "high"], because: "kind constant takes value")
      return m.required("value", hint: "a positive number") { $0.double(positive, above: true) }.map {
        .constant($0)
      }
    case "lognormal":
      m.reject(["value", "low", "high"], because: "kind lognormal takes median and sigma")
      let median = m.required("median", hint: "a positive number") { $0.double(positive, above: true) }
      let sigma = m.optional("sigma", default: 0.5) { $0.double(0...10) }
      return median.map { .lognormal(median: $0, sigma: sigma) }
    case "uniform":
      m.reject(["value", "median", "sigma"], because: "kind uniform takes low and high")
      let low = m.required("low", hint: "a positive number") { $0.double(positive, above: true) }
      let high = m.required("high", hint: "a number above low") { $0.double(positive, above: true) }
      guard let low, let high else { return nil }
      guard high >= low else {
        m["high"]?.fail("must be at least low (\(low))")
        return nil
      }
      return .uniform(low: low, high: high)
    default:
      return nil
    }
  }
}

extension PopulationPlan {
  static func read(_ field: YAMLField) -> PopulationPlan? {
    let keys = ["count", "compute", "network", "availability", "dropout", "check_in_interval"]
    guard let m = field.mapping(allowed: keys) else { return nil }
    var plan = PopulationPlan()
    plan.count = m.optional("count") { $0.int(1...100_000_000) }
    plan.compute = m.optional("compute", default: plan.compute) { ProfileDistribution.read($0) }
    if let network = m["network"], let n = network.mapping(allowed: ["download", "upload"]) {
      plan.download = n.optional("download", default: plan.download) { ProfileDistribution.read($0) }
      plan.upload = n.optional("upload", default: plan.upload) { ProfileDistribution.read($0) }
    }
    plan.availability = m.optional("availability", default: plan.availability) { f -> Availability? in
      guard let a = f.mapping(allowed: ["kind", "amplitude", "period"]) else { return nil }
      let kind = a.required("kind", hint: "always or diurnal") { $0.oneOf(["always", "diurnal"]) }
      if kind == "always" {
        a.reject(["amplitude", "period"], because: "kind always has no parameters")
        return .always
      }
      guard kind == "diurnal" else { return nil }
      return .diurnal(
        amplitude: a.optional("amplitude", default: 0.5) { $0.double(0...1) },
        period: a.optional("period", default: 86400) { $0.duration() })
    }
    plan.dropout = m.optional("dropout", default: 0) { $0.double(0...0.99) }
    plan.checkInInterval = m.optional("check_in_interval", default: plan.checkInInterval) { $0.duration() }
    return plan
  }
}

extension Scenario {
  /// The scenario at `path` with its plan's `server.strategy` replaced by `spec`, written as on
  /// the command line: `kind` or `kind:key=value,key=value` (e.g. `fedadam:server_learning_rate=0.01`).
  /// The result is validated exactly as if the file said so, cross-key checks included.
  public static func load(path: String, strategy spec: String) throws(ConfigurationError) -> Scenario {
    let text = try ConfigurationFile.read(path)
    let label = "\(path) with --strategy \(spec)"
    func fail(_ message: String) -> ConfigurationError {
      ConfigurationError(issues: [
        ConfigurationIssue(file: label, line: nil, keyPath: "server.strategy", value: spec, message: message)
      ])
    }
    let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
    guard let kind = parts.first, !kind.isEmpty else {
      throw fail("expected kind or kind:key=value,key=value, e.g. fedadam:server_learning_rate=0.01")
    }
    var strategy = Node.Mapping([])
    strategy["kind"] = Node(kind)
    for pair in (parts.count > 1 ? parts[1] : "").split(separator: ",") {
      let kv = pair.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
      guard kv.count == 2, !kv[0].isEmpty, !kv[1].isEmpty else {
        throw fail("expected key=value after the kind, found '\(pair)'")
      }
      strategy[kv[0]] = Node(kv[1])
    }
    do {
      guard var root = try YAMLDocument.compose(yaml: text), let planNode = root["plan"] else {
        return try parse(yaml: text, file: path)  // reports what is missing
      }
      // A plan in its own file is brought inline, so its strategy can be replaced.
      var plan = planNode
      if case .scalar(let s) = planNode {
        let planPath = resolve(s.string, in: URL(fileURLWithPath: path).deletingLastPathComponent())
        guard let planRoot = try YAMLDocument.compose(yaml: try ConfigurationFile.read(planPath)) else {
          return try parse(yaml: text, file: path)
        }
        plan = planRoot
      }
      var server = plan["server"] ?? Node.mapping(Node.Mapping([]))
      server["strategy"] = Node.mapping(strategy)
      plan["server"] = server
      root["plan"] = plan
      return try parse(yaml: try Yams.serialize(node: root), file: label)
    } catch let error as ConfigurationError {
      throw error
    } catch {
      throw fail("the scenario could not be rewritten: \(error)")
    }
  }
}
