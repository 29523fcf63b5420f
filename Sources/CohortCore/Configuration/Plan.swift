import Foundation

/// An FL Plan: what model devices train, how they train it, and how the server runs rounds
/// and aggregates. Loaded from `Plans/*.yaml`; every key is documented in the README.
public struct Plan: Codable, Sendable, Hashable {
  public var name: String
  public var model: ModelPlan
  public var device: DevicePlan
  public var server: ServerPlan
  public var secureAggregation: SecureAggregationPlan
  public var compression: CompressionPlan
  public var privacy: PrivacyPlan

  public init(
    name: String, model: ModelPlan, device: DevicePlan = DevicePlan(), server: ServerPlan = ServerPlan(),
    secureAggregation: SecureAggregationPlan = SecureAggregationPlan(),
    compression: CompressionPlan = CompressionPlan(), privacy: PrivacyPlan = PrivacyPlan()
  ) {
    self.name = name
    self.model = model
    self.device = device
    self.server = server
    self.secureAggregation = secureAggregation
    self.compression = compression
    self.privacy = privacy
  }
}

public struct ModelPlan: Codable, Sendable, Hashable {
  public enum Kind: String, Codable, Sendable, CaseIterable {
    case logisticRegression = "logistic_regression"
    case mlp
    case cnn
  }

  public var kind: Kind
  /// The shape of one example: `[d]` for vectors, `[channels, height, width]` for the CNN.
  public var inputShape: [Int]
  /// Hidden layer widths of the MLP; empty otherwise.
  public var hidden: [Int]
  public var classes: Int

  public init(kind: Kind, inputShape: [Int], hidden: [Int] = [], classes: Int) {
    self.kind = kind
    self.inputShape = inputShape
    self.hidden = hidden
    self.classes = classes
  }

  public var inputCount: Int { inputShape.reduce(1, *) }
}

public struct OptimizerPlan: Codable, Sendable, Hashable {
  public enum Kind: String, Codable, Sendable, CaseIterable { case sgd }
  public var kind: Kind = .sgd
  public var learningRate: Double = 0.05
  public var momentum: Double = 0
  public var weightDecay: Double = 0

  public init(kind: Kind = .sgd, learningRate: Double = 0.05, momentum: Double = 0, weightDecay: Double = 0) {
    self.kind = kind
    self.learningRate = learningRate
    self.momentum = momentum
    self.weightDecay = weightDecay
  }
}

/// The device part of the plan: local training.
public struct DevicePlan: Codable, Sendable, Hashable {
  public var epochs: Int = 1
  public var batchSize: Int = 10
  public var optimizer = OptimizerPlan()
  /// FedProx proximal coefficient μ; 0 turns the term off.
  public var proximalMu: Double = 0

  public init(
    epochs: Int = 1, batchSize: Int = 10, optimizer: OptimizerPlan = OptimizerPlan(), proximalMu: Double = 0
  ) {
    self.epochs = epochs
    self.batchSize = batchSize
    self.optimizer = optimizer
    self.proximalMu = proximalMu
  }
}

public struct CohortPlan: Codable, Sendable, Hashable {
  /// Reports wanted per round.
  public var goal: Int = 100
  /// Devices selected per report wanted, so dropouts do not starve the round.
  public var overSelection: Double = 1.3
  /// The round is abandoned below `goal × minimumFraction` reports.
  public var minimumFraction: Double = 0.8

  public init(goal: Int = 100, overSelection: Double = 1.3, minimumFraction: Double = 0.8) {
    self.goal = goal
    self.overSelection = overSelection
    self.minimumFraction = minimumFraction
  }

  public var selectionTarget: Int { Int((Double(goal) * overSelection).rounded(.up)) }
  public var minimumReports: Int { max(1, Int((Double(goal) * minimumFraction).rounded(.up))) }
}

public struct WindowsPlan: Codable, Sendable, Hashable {
  /// Seconds the selection phase waits for enough devices.
  public var selection: Double = 60
  /// Seconds from configuration until the reporting deadline.
  public var reporting: Double = 300

  public init(selection: Double = 60, reporting: Double = 300) {
    self.selection = selection
    self.reporting = reporting
  }
}

public struct StrategyPlan: Codable, Sendable, Hashable {
  public enum Kind: String, Codable, Sendable, CaseIterable { case fedavg }
  public var kind: Kind = .fedavg
  /// Weight each update by its example count (McMahan et al.); false gives the plain mean.
  public var weighted: Bool = true

  public init(kind: Kind = .fedavg, weighted: Bool = true) {
    self.kind = kind
    self.weighted = weighted
  }
}

public struct EvaluationPlan: Codable, Sendable, Hashable {
  /// Evaluate the global model on the central test set every this many rounds.
  public var every: Int = 1

  public init(every: Int = 1) { self.every = every }
}

/// The server part of the plan.
public struct ServerPlan: Codable, Sendable, Hashable {
  public var rounds: Int = 100
  public var cohort = CohortPlan()
  public var windows = WindowsPlan()
  public var strategy = StrategyPlan()
  public var evaluation = EvaluationPlan()

  public init(
    rounds: Int = 100, cohort: CohortPlan = CohortPlan(), windows: WindowsPlan = WindowsPlan(),
    strategy: StrategyPlan = StrategyPlan(), evaluation: EvaluationPlan = EvaluationPlan()
  ) {
    self.rounds = rounds
    self.cohort = cohort
    self.windows = windows
    self.strategy = strategy
    self.evaluation = evaluation
  }
}

/// Secure aggregation. This build accepts only `enabled: false`; the protocol is not yet built,
/// and a plan must not silently promise privacy it will not get.
public struct SecureAggregationPlan: Codable, Sendable, Hashable {
  public var enabled: Bool = false
  public init(enabled: Bool = false) { self.enabled = enabled }
}

/// Update compression. This build accepts only `kind: none`.
public struct CompressionPlan: Codable, Sendable, Hashable {
  public enum Kind: String, Codable, Sendable, CaseIterable { case none }
  public var kind: Kind = .none
  public init(kind: Kind = .none) { self.kind = kind }
}

/// Differential privacy. This build accepts only `kind: none`.
public struct PrivacyPlan: Codable, Sendable, Hashable {
  public enum Kind: String, Codable, Sendable, CaseIterable { case none }
  public var kind: Kind = .none
  public init(kind: Kind = .none) { self.kind = kind }
}

// MARK: - Loading

extension Plan {
  /// Loads and validates a plan file; throws every problem found, each naming its key.
  public static func load(path: String) throws(ConfigurationError) -> Plan {
    let text = try ConfigurationFile.read(path)
    return try parse(yaml: text, file: path)
  }

  /// Parses and validates plan YAML; `file` is only used in messages.
  public static func parse(yaml: String, file: String) throws(ConfigurationError) -> Plan {
    let log = IssueLog(file: file)
    let plan = YAMLDocument.root(yaml: yaml, log: log).flatMap { Plan.read($0) }
    guard let plan, log.issues.isEmpty else { throw ConfigurationError(issues: log.issues) }
    return plan
  }

  static let keys = ["name", "model", "device", "server", "secure_aggregation", "compression", "privacy"]

  static func read(_ root: YAMLField) -> Plan? {
    guard let m = root.mapping(allowed: keys) else { return nil }
    let name = m.required("name", hint: "give the plan a name, e.g. name: my-plan") { $0.string() }
    let model = m.required("model", hint: "e.g. model: {kind: logistic_regression, inputs: 60, classes: 10}")
    {
      ModelPlan.read($0)
    }
    let device = m.optional("device", default: DevicePlan()) { DevicePlan.read($0) }
    let server = m.optional("server", default: ServerPlan()) { ServerPlan.read($0) }
    let secAgg = m.optional("secure_aggregation", default: SecureAggregationPlan()) {
      SecureAggregationPlan.read($0)
    }
    let compression = m.optional("compression", default: CompressionPlan()) { field -> CompressionPlan? in
      guard let c = field.mapping(allowed: ["kind"]) else { return nil }
      return c.optional("kind", default: CompressionPlan()) { f in
        f.oneOf(CompressionPlan.Kind.allCases.map(\.rawValue)).flatMap(CompressionPlan.Kind.init).map {
          CompressionPlan(kind: $0)
        }
      }
    }
    let privacy = m.optional("privacy", default: PrivacyPlan()) { field -> PrivacyPlan? in
      guard let p = field.mapping(allowed: ["kind"]) else { return nil }
      return p.optional("kind", default: PrivacyPlan()) { f in
        f.oneOf(PrivacyPlan.Kind.allCases.map(\.rawValue)).flatMap(PrivacyPlan.Kind.init).map {
          PrivacyPlan(kind: $0)
        }
      }
    }
    guard let name, let model else { return nil }
    return Plan(
      name: name, model: model, device: device, server: server, secureAggregation: secAgg,
      compression: compression, privacy: privacy)
  }
}

extension ModelPlan {
  static func read(_ field: YAMLField) -> ModelPlan? {
    guard let m = field.mapping(allowed: ["kind", "inputs", "input_shape", "hidden", "classes"]) else {
      return nil
    }
    let kind = m.required("kind", hint: "one of: " + Kind.allCases.map(\.rawValue).joined(separator: ", ")) {
      $0.oneOf(Kind.allCases.map(\.rawValue)).flatMap(Kind.init)
    }
    let classes = m.required("classes", hint: "the number of labels, e.g. classes: 10") {
      $0.int(2...100_000)
    }
    guard let kind else { return nil }
    var inputShape: [Int]?
    var hidden: [Int] = []
    switch kind {
    case .logisticRegression, .mlp:
      m.reject(["input_shape"], because: "\(kind.rawValue) takes a flat input; use inputs: N")
      inputShape = m.required("inputs", hint: "the number of input features, e.g. inputs: 60") {
        $0.int(1...10_000_000)
      }.map { [$0] }
      if kind == .mlp {
        hidden =
          m.required("hidden", hint: "hidden layer widths, e.g. hidden: [200, 200]") {
            $0.intList(1...100_000, count: 1...16)
          } ?? []
      } else {
        m.reject(["hidden"], because: "logistic_regression has no hidden layers; use kind: mlp")
      }
    case .cnn:
      m.reject(["inputs"], because: "cnn takes an image; use input_shape: [channels, height, width]")
      m.reject(["hidden"], because: "the cnn's layers are fixed (McMahan et al. 2017)")
      inputShape = m.required("input_shape", hint: "[channels, height, width], e.g. [1, 28, 28]") {
        field -> [Int]? in
        guard let shape = field.intList(1...4096, count: 3...3) else { return nil }
        // Two 2×2 poolings need at least 4 pixels a side.
        guard shape[1] >= 4, shape[2] >= 4 else {
          field.fail("height and width must be at least 4 (the cnn pools twice by 2)")
          return nil
        }
        return shape
      }
    }
    guard let inputShape, let classes else { return nil }
    return ModelPlan(kind: kind, inputShape: inputShape, hidden: hidden, classes: classes)
  }
}

extension DevicePlan {
  static func read(_ field: YAMLField) -> DevicePlan? {
    guard let m = field.mapping(allowed: ["epochs", "batch_size", "optimizer", "proximal_mu"]) else {
      return nil
    }
    var plan = DevicePlan()
    plan.epochs = m.optional("epochs", default: plan.epochs) { $0.int(1...10_000) }
    plan.batchSize = m.optional("batch_size", default: plan.batchSize) { $0.int(1...1_000_000) }
    plan.proximalMu = m.optional("proximal_mu", default: plan.proximalMu) { $0.double(0...1e6) }
    plan.optimizer = m.optional("optimizer", default: plan.optimizer) { f -> OptimizerPlan? in
      guard let o = f.mapping(allowed: ["kind", "learning_rate", "momentum", "weight_decay"]) else {
        return nil
      }
      var opt = OptimizerPlan()
      opt.kind = o.optional("kind", default: opt.kind) {
        $0.oneOf(OptimizerPlan.Kind.allCases.map(\.rawValue)).flatMap(OptimizerPlan.Kind.init)
      }
      opt.learningRate = o.optional("learning_rate", default: opt.learningRate) {
        $0.double(0...1e3, above: true)
      }
      opt.momentum = o.optional("momentum", default: opt.momentum) { $0.double(0...0.999_999) }
      opt.weightDecay = o.optional("weight_decay", default: opt.weightDecay) { $0.double(0...1e3) }
      return opt
    }
    return plan
  }
}

extension ServerPlan {
  static func read(_ field: YAMLField) -> ServerPlan? {
    guard let m = field.mapping(allowed: ["rounds", "cohort", "windows", "strategy", "evaluation"]) else {
      return nil
    }
    var plan = ServerPlan()
    plan.rounds = m.optional("rounds", default: plan.rounds) { $0.int(1...10_000_000) }
    plan.cohort = m.optional("cohort", default: plan.cohort) { f -> CohortPlan? in
      guard let c = f.mapping(allowed: ["goal", "over_selection", "minimum_fraction"]) else { return nil }
      var cohort = CohortPlan()
      cohort.goal = c.optional("goal", default: cohort.goal) { $0.int(1...10_000_000) }
      cohort.overSelection = c.optional("over_selection", default: cohort.overSelection) { $0.double(1...10) }
      cohort.minimumFraction = c.optional("minimum_fraction", default: cohort.minimumFraction) {
        $0.double(0...1, above: true)
      }
      return cohort
    }
    plan.windows = m.optional("windows", default: plan.windows) { f -> WindowsPlan? in
      guard let w = f.mapping(allowed: ["selection", "reporting"]) else { return nil }
      var windows = WindowsPlan()
      windows.selection = w.optional("selection", default: windows.selection) { $0.duration() }
      windows.reporting = w.optional("reporting", default: windows.reporting) { $0.duration() }
      return windows
    }
    plan.strategy = m.optional("strategy", default: plan.strategy) { f -> StrategyPlan? in
      guard let s = f.mapping(allowed: ["kind", "weighted"]) else { return nil }
      var strategy = StrategyPlan()
      strategy.kind = s.optional("kind", default: strategy.kind) {
        $0.oneOf(StrategyPlan.Kind.allCases.map(\.rawValue)).flatMap(StrategyPlan.Kind.init)
      }
      strategy.weighted = s.optional("weighted", default: strategy.weighted) { $0.bool() }
      return strategy
    }
    plan.evaluation = m.optional("evaluation", default: plan.evaluation) { f -> EvaluationPlan? in
      guard let e = f.mapping(allowed: ["every"]) else { return nil }
      return EvaluationPlan(every: e.optional("every", default: 1) { $0.int(1...1_000_000) })
    }
    return plan
  }
}

extension SecureAggregationPlan {
  static func read(_ field: YAMLField) -> SecureAggregationPlan? {
    guard let m = field.mapping(allowed: ["enabled"]) else { return nil }
    let enabled = m.optional("enabled", default: false) { $0.bool() }
    if enabled, let f = m["enabled"] {
      f.fail("secure aggregation is not available in this version of Cohort; set enabled: false")
      return nil
    }
    return SecureAggregationPlan(enabled: false)
  }
}

/// Reading configuration files, with errors in the same shape as validation issues.
enum ConfigurationFile {
  static func read(_ path: String) throws(ConfigurationError) -> String {
    guard let data = FileManager.default.contents(atPath: path) else {
      let reason = FileManager.default.fileExists(atPath: path) ? "cannot be read" : "does not exist"
      throw ConfigurationError(issues: [
        ConfigurationIssue(
          file: path, line: nil, keyPath: "", value: nil, message: "the file \(reason); check the path")
      ])
    }
    guard let text = String(data: data, encoding: .utf8) else {
      throw ConfigurationError(issues: [
        ConfigurationIssue(
          file: path, line: nil, keyPath: "", value: nil, message: "the file is not UTF-8 text")
      ])
    }
    return text
  }
}
