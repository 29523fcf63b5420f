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
  /// How the first global model is drawn from the run's seed (`model.init`); nil is `auto`, the
  /// scheme every run used before the key existed. Absent from the JSON when nil, so stored
  /// plans keep their SHA-256.
  public var initialization: Initialization?
  /// `model.initial`: a safetensors file holding the first global model, instead of drawing it
  /// (the path resolved against the plan file's directory when loaded). Only the server and the
  /// simulator read it: devices receive the model as the round's checkpoint, and the plan JSON
  /// sent to them leaves this out (`Plan.deviceJSON`).
  public var initial: String?

  /// The schemes of `model.init`. Every scheme sets biases to zero.
  public enum Initialization: String, Codable, Sendable, CaseIterable {
    /// Uniform in ±√(6 / (fan_in + fan_out)) for every layer (Glorot and Bengio 2010).
    case glorotUniform = "glorot_uniform"
    /// Normal with standard deviation √(2 / fan_in) for every layer (He et al. 2015; PyTorch's
    /// `kaiming_normal_` in fan-in mode, untruncated).
    case heNormal = "he_normal"
    /// All zeros: no draws. For convex models; hidden units of a zero MLP never separate.
    case zeros
  }

  public init(
    kind: Kind, inputShape: [Int], hidden: [Int] = [], classes: Int, initialization: Initialization? = nil,
    initial: String? = nil
  ) {
    self.kind = kind
    self.inputShape = inputShape
    self.hidden = hidden
    self.classes = classes
    self.initialization = initialization
    self.initial = initial
  }

  /// The values of one input; `Int.max` when the product overflows (a plan that came as JSON, past
  /// the YAML reader's checks, may say anything: such a model is refused by the parameter limit).
  public var inputCount: Int { inputShape.reduce(1, Self.saturatingProduct) }

  static func saturatingProduct(_ a: Int, _ b: Int) -> Int {
    let (p, overflow) = a.multipliedReportingOverflow(by: b)
    return overflow ? .max : p
  }

  /// The most parameters a plan's model may have: 400 MB as Float32 per copy, and a server or
  /// simulation holds several copies (the global model, the running sum, each training device's).
  public static let maximumParameters = 100_000_000

  /// The number of parameters (weights and biases) of this model, as CohortML's networks lay them
  /// out; `Int.max` when the count overflows or a size is not positive (such a model is refused by
  /// the parameter limit).
  public var parameterCount: Int {
    // Negative sizes would give a negative count that passes every limit.
    guard (inputShape + hidden + [classes]).allSatisfy({ $0 >= 1 }) else { return .max }
    let times = Self.saturatingProduct
    func dense(_ inputs: Int, _ outputs: Int) -> Int {
      let (w, o1) = inputs.multipliedReportingOverflow(by: outputs)
      let (total, o2) = w.addingReportingOverflow(outputs)
      return o1 || o2 ? .max : total
    }
    func sum(_ parts: [Int]) -> Int {
      parts.reduce(0) { a, b in
        let (t, o) = a.addingReportingOverflow(b)
        return o ? .max : t
      }
    }
    switch kind {
    case .logisticRegression:
      return dense(inputCount, classes)
    case .mlp:
      let widths = [inputCount] + hidden + [classes]
      return sum(zip(widths, widths.dropFirst()).map { dense($0, $1) })
    case .cnn:
      // Two 5×5 convolutions (32 and 64 filters, padded) each followed by 2×2 pooling, a dense
      // layer of 512 and the output layer (McMahan et al. 2017; `Network.cnn`).
      guard inputShape.count == 3 else { return .max }
      let pixels = times(inputShape[1] / 2 / 2, inputShape[2] / 2 / 2)
      return sum([
        dense(times(inputShape[0], 25), 32), dense(32 * 25, 64), dense(times(64, pixels), 512),
        dense(512, classes),
      ])
    }
  }
}

/// The device's optimizer (`device.optimizer`). Its state (momentum, Adam's moments) lives for
/// one participation: every round a device starts from the received model with fresh state, as in
/// the FL papers (Reddi et al. 2021 keep adaptivity on the server, not across device rounds).
public struct OptimizerPlan: Codable, Sendable, Hashable {
  public enum Kind: String, Codable, Sendable, CaseIterable {
    /// Minibatch SGD with optional heavy-ball momentum (PyTorch's convention).
    case sgd
    /// Adam (Kingma and Ba 2015) with bias correction, as PyTorch's `torch.optim.Adam`;
    /// `weightDecay` adds λw to the gradient (L2, not AdamW's decoupled decay).
    case adam
  }
  public var kind: Kind = .sgd
  public var learningRate: Double = 0.05
  public var momentum: Double = 0
  public var weightDecay: Double = 0
  /// Adam's decay of the first moment, in [0, 1); nil (absent from the JSON) under SGD.
  public var beta1: Double?
  /// Adam's decay of the second moment, in [0, 1).
  public var beta2: Double?
  /// Adam's ε, added to √v̂, > 0.
  public var epsilon: Double?
  /// How the learning rate changes over the run's rounds; nil keeps it constant (absent from the
  /// JSON, so stored plans keep their SHA-256).
  public var schedule: LearningRateSchedule?

  public static let defaultBeta1 = 0.9
  public static let defaultBeta2 = 0.999
  public static let defaultEpsilon = 1e-8

  public init(
    kind: Kind = .sgd, learningRate: Double = 0.05, momentum: Double = 0, weightDecay: Double = 0,
    beta1: Double? = nil, beta2: Double? = nil, epsilon: Double? = nil, schedule: LearningRateSchedule? = nil
  ) {
    self.kind = kind
    self.learningRate = learningRate
    self.momentum = momentum
    self.weightDecay = weightDecay
    self.beta1 = beta1
    self.beta2 = beta2
    self.epsilon = epsilon
    self.schedule = schedule
  }

  /// Adam with the usual defaults (β₁ 0.9, β₂ 0.999, ε 1e-8) unless given.
  public static func adam(
    learningRate: Double = 0.001, beta1: Double = defaultBeta1, beta2: Double = defaultBeta2,
    epsilon: Double = defaultEpsilon, weightDecay: Double = 0, schedule: LearningRateSchedule? = nil
  ) -> OptimizerPlan {
    OptimizerPlan(
      kind: .adam, learningRate: learningRate, weightDecay: weightDecay, beta1: beta1, beta2: beta2,
      epsilon: epsilon, schedule: schedule)
  }

  /// The learning rate devices use in `round` (1 for the first round): `learningRate` times the
  /// schedule's factor, exactly `learningRate` without a schedule.
  public func learningRate(round: Int) -> Double {
    guard let schedule else { return learningRate }
    return schedule.learningRate(base: learningRate, round: round)
  }
}

/// A learning-rate schedule over the run's rounds (`device.optimizer.schedule`).
///
/// The rate is a function of the server round, not of the steps inside one participation:
/// `η_r = η · f(r)`. That is the decay FL papers analyse and run (Li et al., ICLR 2020, "On the
/// Convergence of FedAvg on Non-IID Data", decay η_t with the global step; Acar et al. 2021 and
/// Karimireddy et al. 2020 decay the local rate per round), and it keeps a device's work a pure
/// function of the round it is given: a device holds no optimizer state between rounds, and
/// restarting a decay inside every short participation would only shrink the last local steps.
public enum LearningRateSchedule: Sendable, Hashable {
  public enum Kind: String, Codable, Sendable, CaseIterable { case step, cosine }

  /// η · γ^⌊(r − 1) / stepSize⌋: multiplied by γ every `stepSize` rounds (step size 1 is an
  /// exponential decay per round).
  case step(stepSize: Int, gamma: Double)
  /// η_min + (η − η_min) · (1 + cos(π · min(r − 1, T) / T)) / 2 with T = `rounds` (by default the
  /// plan's `server.rounds`): cosine annealing (Loshchilov and Hutter 2017) over the run, without
  /// restarts; from round T + 1 on the rate stays at η_min.
  case cosine(rounds: Int, minimumLearningRate: Double)

  public var kind: Kind {
    switch self {
    case .step: .step
    case .cosine: .cosine
    }
  }

  /// The rate of `round` (1-based; rounds below 1 count as the first) from the base rate.
  public func learningRate(base: Double, round: Int) -> Double {
    let t = round > 1 ? round - 1 : 0
    switch self {
    case .step(let stepSize, let gamma):
      return base * pow(gamma, Double(t / max(1, stepSize)))
    case .cosine(let rounds, let minimum):
      let total = max(1, rounds)
      let progress = Double(min(t, total)) / Double(total)
      return minimum + (base - minimum) * (1 + cos(Double.pi * progress)) / 2
    }
  }
}

extension LearningRateSchedule: Codable {
  /// Flat, like the YAML: `{"kind": "step", "stepSize": 10, "gamma": 0.5}`.
  private enum CodingKeys: String, CodingKey { case kind, stepSize, gamma, rounds, minimumLearningRate }

  public init(from decoder: any Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    switch try c.decode(Kind.self, forKey: .kind) {
    case .step:
      self = .step(
        stepSize: try c.decode(Int.self, forKey: .stepSize), gamma: try c.decode(Double.self, forKey: .gamma))
    case .cosine:
      self = .cosine(
        rounds: try c.decode(Int.self, forKey: .rounds),
        minimumLearningRate: try c.decode(Double.self, forKey: .minimumLearningRate))
    }
  }

  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(kind, forKey: .kind)
    switch self {
    case .step(let stepSize, let gamma):
      try c.encode(stepSize, forKey: .stepSize)
      try c.encode(gamma, forKey: .gamma)
    case .cosine(let rounds, let minimum):
      try c.encode(rounds, forKey: .rounds)
      try c.encode(minimum, forKey: .minimumLearningRate)
    }
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
  /// How a round's cohort is drawn from the devices that are there; nil leaves it to the driver
  /// (`cohort simulate`: uniform, `cohort serve`: check-in order). Absent from the JSON when nil,
  /// so plans stored before the key existed keep their SHA-256.
  public var sampling: CohortSampling?

  public init(
    goal: Int = 100, overSelection: Double = 1.3, minimumFraction: Double = 0.8,
    sampling: CohortSampling? = nil
  ) {
    self.goal = goal
    self.overSelection = overSelection
    self.minimumFraction = minimumFraction
    self.sampling = sampling
  }

  public var selectionTarget: Int { Int((Double(goal) * overSelection).rounded(.up)) }
  public var minimumReports: Int { max(1, Int((Double(goal) * minimumFraction).rounded(.up))) }
}

/// How a round's cohort is drawn (`server.cohort.sampling`).
public enum CohortSampling: String, Codable, Sendable, Hashable, CaseIterable {
  /// A uniform random sample of the devices available when the round can start, as in the
  /// FedAvg papers: the simulator samples its idle, available devices; a server samples
  /// uniformly (reservoir sampling) among the devices waiting when the round can start.
  case uniform
  /// The first devices to check in, as a production fleet's check-in dynamics give them.
  case checkIn = "check_in"
}

public struct WindowsPlan: Codable, Sendable, Hashable {
  /// Seconds the selection phase waits for enough devices.
  public var selection: Double = 60
  /// Seconds from configuration until the reporting deadline.
  public var reporting: Double = 300
  /// The latest a pace-steering retry window may end, in seconds from the check-in it answers;
  /// nil for `defaultMaximumRetry`. Absent from the JSON when nil (stored plans keep their SHA-256).
  public var maximumRetry: Double?

  /// One hour: a device is never told to stay away longer, whatever the check-in rate looks like.
  public static let defaultMaximumRetry: Double = 3600

  public init(selection: Double = 60, reporting: Double = 300, maximumRetry: Double? = nil) {
    self.selection = selection
    self.reporting = reporting
    self.maximumRetry = maximumRetry
  }

  /// The bound in force on retry windows.
  public var retryBound: Double { maximumRetry ?? Self.defaultMaximumRetry }
}

/// The server's aggregation strategy (`server.strategy`): which rule turns a round's updates into
/// the next global model, with that rule's parameters. Each kind carries only its own parameters,
/// so a plan cannot hold a value that silently does nothing.
public struct StrategyPlan: Codable, Sendable, Hashable {
  public enum Kind: String, Codable, Sendable, CaseIterable {
    case fedavg, fedavgm, fedprox, fedadagrad, fedadam, fedyogi, fedmedian, fedtrimmedavg
    case krum, multikrum, bulyan, qfedavg, scaffold
  }

  /// Reddi et al. 2021 (Adaptive Federated Optimization), Algorithm 2: server learning rate η,
  /// moment decays β₁ and β₂ (β₂ unused by FedAdagrad), adaptivity τ.
  public struct Adaptive: Codable, Sendable, Hashable {
    public var serverLearningRate: Double = 0.01
    public var beta1: Double = 0.9
    public var beta2: Double = 0.99
    public var tau: Double = 1e-3

    public init(
      serverLearningRate: Double = 0.01, beta1: Double = 0.9, beta2: Double = 0.99, tau: Double = 1e-3
    ) {
      self.serverLearningRate = serverLearningRate
      self.beta1 = beta1
      self.beta2 = beta2
      self.tau = tau
    }
  }

  public enum Rule: Codable, Sendable, Hashable {
    /// McMahan et al. 2017; `weighted` by example count, or the plain mean.
    case fedavg(weighted: Bool)
    /// Server momentum (Hsu et al. 2019): v ← βv + Δ̄, w ← w + ηv.
    case fedavgm(serverLearningRate: Double, momentum: Double)
    /// FedAvg on the server; devices add (μ/2)‖w − w_global‖² to their loss (Li et al. 2020).
    case fedprox(mu: Double, weighted: Bool)
    case fedadagrad(Adaptive)
    case fedadam(Adaptive)
    case fedyogi(Adaptive)
    /// Coordinate-wise median of the updates.
    case fedmedian
    /// Coordinate-wise mean after cutting the fraction `beta` from each tail.
    case fedtrimmedavg(beta: Double)
    /// Blanchard et al. 2017, tolerating `byzantine` (f) bad updates.
    case krum(byzantine: Int)
    /// Multi-Krum: the mean of the `keep` (m) best-scored updates; nil keeps n − f.
    case multikrum(byzantine: Int, keep: Int?)
    /// El Mhamdi et al. 2018; needs n ≥ 4f + 3 updates.
    case bulyan(byzantine: Int)
    /// Li et al. 2020 (q-FFL). `learningRate` is the local learning rate whose inverse is the
    /// Lipschitz estimate L; nil means the device optimizer's (a loaded plan fills it in).
    case qfedavg(q: Double, learningRate: Double?)
    /// Karimireddy et al. 2020, server side with global learning rate η_g.
    case scaffold(serverLearningRate: Double)
  }

  public var rule: Rule

  public init(_ rule: Rule = .fedavg(weighted: true)) { self.rule = rule }

  /// The given kind with its default parameters (FedAvg's `weighted` as given).
  public init(kind: Kind = .fedavg, weighted: Bool = true) {
    switch kind {
    case .fedavg: rule = .fedavg(weighted: weighted)
    case .fedavgm: rule = .fedavgm(serverLearningRate: 1, momentum: 0.9)
    case .fedprox: rule = .fedprox(mu: 0.01, weighted: weighted)
    case .fedadagrad: rule = .fedadagrad(Adaptive())
    case .fedadam: rule = .fedadam(Adaptive())
    case .fedyogi: rule = .fedyogi(Adaptive())
    case .fedmedian: rule = .fedmedian
    case .fedtrimmedavg: rule = .fedtrimmedavg(beta: 0.1)
    case .krum: rule = .krum(byzantine: 1)
    case .multikrum: rule = .multikrum(byzantine: 1, keep: nil)
    case .bulyan: rule = .bulyan(byzantine: 1)
    case .qfedavg: rule = .qfedavg(q: 1, learningRate: nil)
    case .scaffold: rule = .scaffold(serverLearningRate: 1)
    }
  }

  public var kind: Kind {
    switch rule {
    case .fedavg: .fedavg
    case .fedavgm: .fedavgm
    case .fedprox: .fedprox
    case .fedadagrad: .fedadagrad
    case .fedadam: .fedadam
    case .fedyogi: .fedyogi
    case .fedmedian: .fedmedian
    case .fedtrimmedavg: .fedtrimmedavg
    case .krum: .krum
    case .multikrum: .multikrum
    case .bulyan: .bulyan
    case .qfedavg: .qfedavg
    case .scaffold: .scaffold
    }
  }

  /// Whether FedAvg-style means weight updates by example count. Only FedAvg and FedProx let
  /// the plan choose; the other mean-based rules always weight (Reddi et al. 2021 use the
  /// weighted mean as pseudo-gradient), and setting it on them changes nothing.
  public var weighted: Bool {
    get {
      switch rule {
      case .fedavg(let w), .fedprox(_, let w): w
      default: true
      }
    }
    set {
      switch rule {
      case .fedavg: rule = .fedavg(weighted: newValue)
      case .fedprox(let mu, _): rule = .fedprox(mu: mu, weighted: newValue)
      default: break
      }
    }
  }

  /// The proximal coefficient μ devices must use, when the strategy dictates one (FedProx).
  public var deviceProximalMu: Double? {
    if case .fedprox(let mu, _) = rule { return mu }
    return nil
  }

  /// Whether the strategy needs every update on its own (so it cannot stream a sum, and cannot
  /// run under secure aggregation, which reveals only the sum).
  public var needsIndividualUpdates: Bool {
    switch kind {
    case .fedmedian, .fedtrimmedavg, .krum, .multikrum, .bulyan: true
    default: false
    }
  }

  /// The fewest updates a round must aggregate for the rule's guarantee to hold: Krum needs
  /// n ≥ 2f + 3 (so each score has n − f − 2 ≥ 1 neighbours), Multi-Krum also n − f ≥ m, and
  /// Bulyan n ≥ 4f + 3. 1 for the others.
  public var minimumUpdates: Int {
    switch rule {
    case .krum(let f): 2 * f + 3
    case .multikrum(let f, let keep): max(2 * f + 3, (keep ?? 0) + f)
    case .bulyan(let f): 4 * f + 3
    default: 1
    }
  }
}

extension StrategyPlan {
  /// Flat, like the YAML: `{"kind": "fedavg", "weighted": true}` is what a FedAvg plan encoded
  /// to before the other kinds existed, so stored FedAvg plans keep their SHA-256.
  private enum CodingKeys: String, CodingKey {
    case kind, weighted, serverLearningRate, momentum, mu, beta1, beta2, tau, beta, byzantine, keep, q
    case learningRate
  }

  public init(from decoder: any Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    let kind = try c.decode(Kind.self, forKey: .kind)
    func adaptive() throws -> Adaptive {
      Adaptive(
        serverLearningRate: try c.decode(Double.self, forKey: .serverLearningRate),
        beta1: try c.decode(Double.self, forKey: .beta1), beta2: try c.decode(Double.self, forKey: .beta2),
        tau: try c.decode(Double.self, forKey: .tau))
    }
    switch kind {
    case .fedavg: rule = .fedavg(weighted: try c.decode(Bool.self, forKey: .weighted))
    case .fedavgm:
      rule = .fedavgm(
        serverLearningRate: try c.decode(Double.self, forKey: .serverLearningRate),
        momentum: try c.decode(Double.self, forKey: .momentum))
    case .fedprox:
      rule = .fedprox(
        mu: try c.decode(Double.self, forKey: .mu), weighted: try c.decode(Bool.self, forKey: .weighted))
    case .fedadagrad: rule = .fedadagrad(try adaptive())
    case .fedadam: rule = .fedadam(try adaptive())
    case .fedyogi: rule = .fedyogi(try adaptive())
    case .fedmedian: rule = .fedmedian
    case .fedtrimmedavg: rule = .fedtrimmedavg(beta: try c.decode(Double.self, forKey: .beta))
    case .krum: rule = .krum(byzantine: try c.decode(Int.self, forKey: .byzantine))
    case .multikrum:
      rule = .multikrum(
        byzantine: try c.decode(Int.self, forKey: .byzantine),
        keep: try c.decodeIfPresent(Int.self, forKey: .keep))
    case .bulyan: rule = .bulyan(byzantine: try c.decode(Int.self, forKey: .byzantine))
    case .qfedavg:
      rule = .qfedavg(
        q: try c.decode(Double.self, forKey: .q),
        learningRate: try c.decodeIfPresent(Double.self, forKey: .learningRate))
    case .scaffold:
      rule = .scaffold(serverLearningRate: try c.decode(Double.self, forKey: .serverLearningRate))
    }
  }

  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(kind, forKey: .kind)
    switch rule {
    case .fedavg(let weighted): try c.encode(weighted, forKey: .weighted)
    case .fedavgm(let eta, let momentum):
      try c.encode(eta, forKey: .serverLearningRate)
      try c.encode(momentum, forKey: .momentum)
    case .fedprox(let mu, let weighted):
      try c.encode(mu, forKey: .mu)
      try c.encode(weighted, forKey: .weighted)
    case .fedadagrad(let a), .fedadam(let a), .fedyogi(let a):
      try c.encode(a.serverLearningRate, forKey: .serverLearningRate)
      try c.encode(a.beta1, forKey: .beta1)
      try c.encode(a.beta2, forKey: .beta2)
      try c.encode(a.tau, forKey: .tau)
    case .fedmedian: break
    case .fedtrimmedavg(let beta): try c.encode(beta, forKey: .beta)
    case .krum(let f), .bulyan(let f): try c.encode(f, forKey: .byzantine)
    case .multikrum(let f, let keep):
      try c.encode(f, forKey: .byzantine)
      try c.encodeIfPresent(keep, forKey: .keep)
    case .qfedavg(let q, let lr):
      try c.encode(q, forKey: .q)
      try c.encodeIfPresent(lr, forKey: .learningRate)
    case .scaffold(let eta): try c.encode(eta, forKey: .serverLearningRate)
    }
  }
}

public struct EvaluationPlan: Codable, Sendable, Hashable {
  /// Evaluate the global model on the central test set every this many rounds.
  public var every: Int = 1

  public init(every: Int = 1) { self.every = every }
}

/// The server part of the plan.
public struct ServerPlan: Codable, Sendable, Hashable {
  /// Rounds to commit.
  public var rounds: Int = 100
  /// Rounds the server may start (committed or abandoned) before it gives up on reaching
  /// `rounds`; nil for `3 × rounds`. Absent from the JSON when nil (stored plans keep their SHA-256).
  public var maximumAttempts: Int?
  public var cohort = CohortPlan()
  public var windows = WindowsPlan()
  public var strategy = StrategyPlan()
  public var evaluation = EvaluationPlan()
  /// What the server accepts in a report beyond its shape (`server.reports`); nil for the
  /// defaults. Absent from the JSON when nil (stored plans keep their SHA-256).
  public var reports: ReportsPlan?
  /// Buffered asynchronous aggregation (`server.mode: async` with `server.async`); nil for
  /// synchronous rounds (`server.mode: sync`, the default). Absent from the JSON when nil, so
  /// synchronous plans keep their SHA-256 whether or not they spell out `mode: sync`.
  public var asynchronous: AsyncPlan?

  public init(
    rounds: Int = 100, maximumAttempts: Int? = nil, cohort: CohortPlan = CohortPlan(),
    windows: WindowsPlan = WindowsPlan(), strategy: StrategyPlan = StrategyPlan(),
    evaluation: EvaluationPlan = EvaluationPlan(), reports: ReportsPlan? = nil, asynchronous: AsyncPlan? = nil
  ) {
    self.reports = reports
    self.asynchronous = asynchronous
    self.rounds = rounds
    self.maximumAttempts = maximumAttempts
    self.cohort = cohort
    self.windows = windows
    self.strategy = strategy
    self.evaluation = evaluation
  }

  /// The attempts in force: `maximumAttempts`, or three per round to commit.
  public var attemptBudget: Int { max(rounds, maximumAttempts ?? 3 * rounds) }

  /// `server.mode`: async exactly when `asynchronous` is set; setting async keeps (or makes
  /// default) the async parameters, setting sync drops them.
  public var mode: ServerMode {
    get { asynchronous == nil ? .sync : .async }
    set {
      switch newValue {
      case .sync: asynchronous = nil
      case .async: asynchronous = asynchronous ?? AsyncPlan()
      }
    }
  }
}

/// How the server turns updates into new models (`server.mode`).
public enum ServerMode: String, Codable, Sendable, Hashable, CaseIterable {
  /// Rounds: select a cohort, wait for its reports, aggregate them, commit.
  case sync
  /// FedBuff (Nguyen et al., AISTATS 2022): devices are admitted continuously up to
  /// `server.async.concurrency`, each trains on the model version it downloaded, and every
  /// `server.async.buffer` updates, down-weighted by staleness, make the next version.
  case async
}

extension Plan {
  /// Sets `server.rounds` (a `--rounds` override, an experiment's `rounds`, an extended run) with
  /// what the plan derived from it following: a cosine schedule that anneals over the whole run
  /// (written without `rounds` of its own, or with the run's) anneals over the new number, as a
  /// plan written with it would.
  public mutating func setRounds(_ rounds: Int) {
    if case .cosine(server.rounds, let minimum) = device.optimizer.schedule {
      device.optimizer.schedule = .cosine(rounds: rounds, minimumLearningRate: minimum)
    }
    server.rounds = rounds
  }
}

/// Buffered asynchronous aggregation (`server.async`, read with `server.mode: async`), FedBuff
/// (Nguyen et al., AISTATS 2022, Algorithm 1). `server.rounds` counts buffer applications
/// (model versions); `server.cohort` does not apply (admission is continuous).
///
/// The strategies that run asynchronously are those that need only a weighted mean
/// (`supportedStrategies`): FedAvg and FedProx step by `serverLearningRate` along the buffered
/// mean; the server optimizers (FedAvgM, FedAdagrad, FedAdam, FedYogi) take the buffered mean as
/// their pseudo-gradient with their own `server.strategy.server_learning_rate`.
///
/// Central DP (`privacy.kind: central_gaussian`) clips each update on its device and adds noise
/// once per buffer application, to the sum of the `buffer` staleness-weighted clipped updates
/// (each weighs at most 1, so the sensitivity is the clip), dividing by `buffer`. No ε is
/// reported for asynchronous runs: which devices fill a buffer depends on their speed and
/// availability, not on Poisson or uniform sampling, so the accountant's amplification by
/// sampling does not apply (and `privacy.target_epsilon` is refused). Distributed DP is refused.
public struct AsyncPlan: Codable, Sendable, Hashable {
  /// Devices training at once (admitted and not yet reported or dropped), ≥ 1.
  public var concurrency: Int = 100
  /// K: updates folded into one buffer before it is applied as the next model version, ≥ 1.
  public var buffer: Int = 10
  /// How an update's weight falls with its staleness (versions applied since its device
  /// downloaded the model); FedBuff's default, (1 + s)^−½.
  public var staleness: StalenessPlan = .polynomial(a: 0.5)
  /// Updates staler than this many versions are refused and counted, ≥ 0.
  public var maximumStaleness: Int = 100
  /// η_g: the step along the buffered mean under FedAvg and FedProx (w ← w + η_g·Δ̄); nil for 1.
  /// The server optimizers use their own rate, so setting it with them is refused.
  public var serverLearningRate: Double?

  public init(
    concurrency: Int = 100, buffer: Int = 10, staleness: StalenessPlan = .polynomial(a: 0.5),
    maximumStaleness: Int = 100, serverLearningRate: Double? = nil
  ) {
    self.concurrency = concurrency
    self.buffer = buffer
    self.staleness = staleness
    self.maximumStaleness = maximumStaleness
    self.serverLearningRate = serverLearningRate
  }

  /// The step along the buffered mean under FedAvg and FedProx.
  public var stepSize: Double { serverLearningRate ?? 1 }

  /// The strategies whose aggregate is a weighted mean of the updates, which a buffer of
  /// staleness-weighted updates can stand in for.
  public static let supportedStrategies: [StrategyPlan.Kind] = [
    .fedavg, .fedprox, .fedavgm, .fedadagrad, .fedadam, .fedyogi,
  ]

  /// Why `kind` cannot run asynchronously; nil when it can.
  public static func refusal(of kind: StrategyPlan.Kind) -> String? {
    switch kind {
    case .fedavg, .fedprox, .fedavgm, .fedadagrad, .fedadam, .fedyogi: nil
    case .fedmedian, .fedtrimmedavg, .krum, .multikrum, .bulyan:
      "needs every update of a round side by side (a coordinate-wise order statistic or a "
        + "comparison between updates), but an asynchronous buffer folds each update into a running "
        + "sum as it arrives, from devices that trained on different versions"
    case .qfedavg:
      "reweights each round's updates by the devices' losses at one common global model, but an "
        + "asynchronous buffer's updates were trained from different versions"
    case .scaffold:
      "corrects every device with the server control variate of the round it joined and updates "
        + "it from the same round's control deltas, but an asynchronous buffer mixes devices that "
        + "started from different versions and control variates"
    }
  }
}

/// The staleness weighting of an asynchronous update (`server.async.staleness`), FedBuff's s(τ)
/// for an update trained on a model `τ` versions old.
public enum StalenessPlan: Sendable, Hashable {
  /// s(τ) = 1.
  case constant
  /// s(τ) = (1 + τ)^−a, a ≥ 0.
  case polynomial(a: Double)
  /// s(τ) = 1 for τ ≤ b, else 1 / (a(τ − b) + 1); a > 0, b ≥ 0.
  case hinge(a: Double, b: Double)

  public enum Kind: String, Codable, Sendable, CaseIterable { case constant, polynomial, hinge }

  /// The kind with its default parameters: a = ½ for polynomial (FedBuff), a = 10, b = 4 for hinge.
  public init(kind: Kind) {
    switch kind {
    case .constant: self = .constant
    case .polynomial: self = .polynomial(a: 0.5)
    case .hinge: self = .hinge(a: 10, b: 4)
    }
  }

  public var kind: Kind {
    switch self {
    case .constant: .constant
    case .polynomial: .polynomial
    case .hinge: .hinge
    }
  }
}

extension StalenessPlan: Codable {
  /// Flat, like the YAML: `{"kind": "hinge", "a": 10, "b": 4}`.
  private enum CodingKeys: String, CodingKey { case kind, a, b }

  public init(from decoder: any Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    switch try c.decode(Kind.self, forKey: .kind) {
    case .constant: self = .constant
    case .polynomial: self = .polynomial(a: try c.decode(Double.self, forKey: .a))
    case .hinge:
      self = .hinge(a: try c.decode(Double.self, forKey: .a), b: try c.decode(Double.self, forKey: .b))
    }
  }

  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(kind, forKey: .kind)
    switch self {
    case .constant: break
    case .polynomial(let a): try c.encode(a, forKey: .a)
    case .hinge(let a, let b):
      try c.encode(a, forKey: .a)
      try c.encode(b, forKey: .b)
    }
  }
}

/// Bounds on what a device reports (`server.reports`): a report beyond them is refused
/// (`out_of_range`), so one device cannot outweigh the cohort or destroy the model.
public struct ReportsPlan: Codable, Sendable, Hashable {
  public enum OverNorm: String, Codable, Sendable, CaseIterable {
    /// Refuse an update whose L2 norm exceeds the bound.
    case reject
    /// Scale it down to the bound (as DP-FedAvg's clipping does).
    case clip
  }

  /// The default cap on the examples one device reports in a round.
  public static let defaultMaximumExamples = 10_000_000

  /// The most examples one device may report in a round (its weight under FedAvg); nil for
  /// `defaultMaximumExamples`.
  public var maximumExamples: Int?
  /// An L2 bound on each update; nil for none.
  public var maximumUpdateNorm: Double?
  /// What happens to an update beyond `maximumUpdateNorm`; nil for `reject`.
  public var overNorm: OverNorm?

  public init(maximumExamples: Int? = nil, maximumUpdateNorm: Double? = nil, overNorm: OverNorm? = nil) {
    self.maximumExamples = maximumExamples
    self.maximumUpdateNorm = maximumUpdateNorm
    self.overNorm = overNorm
  }

  public var examplesCap: Int { maximumExamples ?? Self.defaultMaximumExamples }
}

/// Secure aggregation (`secure_aggregation`): devices send their clipped, fixed-point-encoded
/// update masked so the server learns only the sum (Bonawitz et al., CCS 2017), over a sparse
/// random neighbour graph by default (SecAgg+, Bell et al., CCS 2020). Each key is documented in
/// the README; the parameters are read and checked even while `enabled` is false, so a plan can
/// toggle it without editing the rest.
public struct SecureAggregationPlan: Codable, Sendable, Hashable {
  public enum Variant: String, Codable, Sendable, CaseIterable {
    /// Honest-but-curious server: advertise keys, share keys, masked input, unmask.
    case semiHonest = "semi_honest"
    /// Bonawitz et al.'s active-adversary variant: Ed25519-signed keys and a consistency check.
    case active
  }

  public enum Graph: String, Codable, Sendable, CaseIterable {
    /// Bonawitz et al. 2017: every device shares with every other (k = n − 1).
    case complete
    /// SecAgg+ (Bell et al. 2020): a random k-regular Harary graph.
    case harary
  }

  public var enabled: Bool = false
  public var variant: Variant = .semiHonest
  public var graph: Graph = .harary
  /// Expected fraction of devices lost between the first step and unmasking, in [0, 0.5).
  public var dropoutRate: Double = 0.1
  /// Tolerated fraction of devices colluding with the server, in [0, 0.5).
  public var corruptFraction: Double = 0.05
  /// Explicit neighbour count k (even, ≥ 2, `graph: harary` only); nil chooses it from n,
  /// `dropoutRate` and `corruptFraction`.
  public var degree: Int? = nil
  /// Explicit Shamir threshold t (≥ 2, ≤ `degree` when that is given); nil chooses it.
  public var threshold: Int? = nil
  /// Replicas (`minimum_group`): the fewest devices one replica runs the protocol among; a
  /// replica whose part of a round's cohort is smaller sends those devices away, since a sum of
  /// two or three would say too much about each. Nil: `defaultMinimumGroup`.
  public var minimumGroupSize: Int? = nil
  public static let defaultMinimumGroup = 5
  public var minimumGroup: Int { minimumGroupSize ?? max(Self.defaultMinimumGroup, threshold ?? 2) }
  /// The protocol's failure probability target is 2^−securityBits; 20...128.
  public var securityBits: Int = 40
  /// Largest |value| of one update coordinate before fixed-point encoding (> 0, finite).
  public var clip: Double = 1.0
  /// Bits of the signed fixed-point code per coordinate, 2...24.
  public var encodingBits: Int = 16
  /// Under a weighted strategy a device's weight is min(examples, weightCap) / weightCap (≥ 1).
  public var weightCap: Int = 1000

  public init(
    enabled: Bool = false, variant: Variant = .semiHonest, graph: Graph = .harary, dropoutRate: Double = 0.1,
    corruptFraction: Double = 0.05, degree: Int? = nil, threshold: Int? = nil, securityBits: Int = 40,
    clip: Double = 1.0, encodingBits: Int = 16, weightCap: Int = 1000
  ) {
    self.enabled = enabled
    self.variant = variant
    self.graph = graph
    self.dropoutRate = dropoutRate
    self.corruptFraction = corruptFraction
    self.degree = degree
    self.threshold = threshold
    self.securityBits = securityBits
    self.clip = clip
    self.encodingBits = encodingBits
    self.weightCap = weightCap
  }

  /// Bits of the ring Z/2^b needed so the sum of `devices` encoded updates cannot wrap:
  /// encodingBits + ⌈log2(devices)⌉, and at least encodingBits + 1.
  public func ringBits(devices: Int) -> Int {
    encodingBits + Swift.max(1, Self.ceilLog2(devices))
  }

  /// The strategies that run under secure aggregation: those that need only the weighted sum of
  /// the clipped model deltas and the sum of the weights, which is all it reveals.
  public static let supportedStrategies: [StrategyPlan.Kind] = [
    .fedavg, .fedavgm, .fedprox, .fedadagrad, .fedadam, .fedyogi,
  ]

  /// The widest ring secure aggregation uses: masks and sums are `UInt32`.
  public static let maximumRingBits = 32

  /// ⌈log2 n⌉ for n ≥ 1 (0 for n ≤ 1).
  static func ceilLog2(_ n: Int) -> Int {
    n <= 1 ? 0 : Int.bitWidth - (n - 1).leadingZeroBitCount
  }
}

extension SecureAggregationPlan {
  private enum CodingKeys: String, CodingKey {
    case enabled, variant, graph, dropoutRate, corruptFraction, degree, threshold, securityBits, clip
    case minimumGroupSize = "minimumGroup"
    case encodingBits, weightCap
  }

  /// Absent parameters take their defaults, so plans stored when the section held only
  /// `enabled` still decode.
  public init(from decoder: any Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    let d = SecureAggregationPlan()
    enabled = try c.decode(Bool.self, forKey: .enabled)
    variant = try c.decodeIfPresent(Variant.self, forKey: .variant) ?? d.variant
    graph = try c.decodeIfPresent(Graph.self, forKey: .graph) ?? d.graph
    dropoutRate = try c.decodeIfPresent(Double.self, forKey: .dropoutRate) ?? d.dropoutRate
    corruptFraction = try c.decodeIfPresent(Double.self, forKey: .corruptFraction) ?? d.corruptFraction
    degree = try c.decodeIfPresent(Int.self, forKey: .degree)
    threshold = try c.decodeIfPresent(Int.self, forKey: .threshold)
    minimumGroupSize = try c.decodeIfPresent(Int.self, forKey: .minimumGroupSize)
    securityBits = try c.decodeIfPresent(Int.self, forKey: .securityBits) ?? d.securityBits
    clip = try c.decodeIfPresent(Double.self, forKey: .clip) ?? d.clip
    encodingBits = try c.decodeIfPresent(Int.self, forKey: .encodingBits) ?? d.encodingBits
    weightCap = try c.decodeIfPresent(Int.self, forKey: .weightCap) ?? d.weightCap
  }

  /// Secure aggregation switched off with every parameter at its default encodes as
  /// `{"enabled": false}`, as before the parameters existed, so stored plans keep their SHA-256;
  /// otherwise every parameter is written, so the plan's hash pins the protocol it ran.
  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(enabled, forKey: .enabled)
    guard enabled || self != SecureAggregationPlan() else { return }
    try c.encode(variant, forKey: .variant)
    try c.encode(graph, forKey: .graph)
    try c.encode(dropoutRate, forKey: .dropoutRate)
    try c.encode(corruptFraction, forKey: .corruptFraction)
    try c.encodeIfPresent(degree, forKey: .degree)
    try c.encodeIfPresent(threshold, forKey: .threshold)
    try c.encodeIfPresent(minimumGroupSize, forKey: .minimumGroupSize)
    try c.encode(securityBits, forKey: .securityBits)
    try c.encode(clip, forKey: .clip)
    try c.encode(encodingBits, forKey: .encodingBits)
    try c.encode(weightCap, forKey: .weightCap)
  }
}

/// Update compression (`compression`): how a device encodes its update before uploading it
/// (CohortCompression's `UpdateCodec`), and the server decodes it. Each kind reads only its own
/// keys; the others keep their defaults. Every key is documented in the README.
public struct CompressionPlan: Codable, Sendable, Hashable {
  public enum Kind: String, Codable, Sendable, CaseIterable {
    /// Float32 values, as trained.
    case none
    /// Uniform quantization to `bits` bits per coordinate, after an optional random rotation.
    case quantization
    /// The `fraction` of coordinates of largest magnitude, with their indices.
    case topK = "top_k"
    /// A random `fraction` of coordinates from a shared seed: only the values travel.
    case randomMask = "random_mask"
  }

  public enum Rotation: String, Codable, Sendable, CaseIterable {
    /// Block-wise randomized Hadamard rotation before quantizing (no padding).
    case hadamard
    case none
  }

  public enum Rounding: String, Codable, Sendable, CaseIterable {
    /// Unbiased: up with probability equal to the position within the step.
    case stochastic
    /// To the nearest level: biased, but half the worst-case error.
    case deterministic
  }

  public var kind: Kind = .none
  /// Quantization: bits per coordinate, 1...16.
  public var bits: Int = 8
  /// Quantization: the rotation applied first.
  public var rotation: Rotation = .hadamard
  /// Quantization: nil for a per-vector range (its min and max travel with the codes), or r > 0
  /// for the fixed range [−r, r] both sides know (values outside are clamped).
  public var range: Double? = nil
  /// Quantization: how values are rounded to levels.
  public var rounding: Rounding = .stochastic
  /// top_k and random_mask: the fraction of coordinates kept, in (0, 1].
  public var fraction: Double = 1

  public init(
    kind: Kind = .none, bits: Int = 8, rotation: Rotation = .hadamard, range: Double? = nil,
    rounding: Rounding = .stochastic, fraction: Double = 1
  ) {
    self.kind = kind
    self.bits = bits
    self.rotation = rotation
    self.range = range
    self.rounding = rounding
    self.fraction = fraction
  }

  /// Quantization with the given parameters.
  public static func quantization(
    bits: Int = 8, rotation: Rotation = .hadamard, range: Double? = nil, rounding: Rounding = .stochastic
  ) -> CompressionPlan {
    CompressionPlan(kind: .quantization, bits: bits, rotation: rotation, range: range, rounding: rounding)
  }

  /// The number of coordinates a sparsifier keeps of `dimension`: ⌈fraction · d⌉, at least 1.
  public func keptCount(dimension: Int) -> Int {
    Swift.min(dimension, Swift.max(1, Int((fraction * Double(dimension)).rounded(.up))))
  }
}

extension CompressionPlan {
  private enum CodingKeys: String, CodingKey {
    case kind, bits, rotation, range, rounding, fraction
  }

  /// Absent parameters take their defaults, so plans stored when the section held only `kind`
  /// still decode.
  public init(from decoder: any Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    let d = CompressionPlan()
    kind = try c.decode(Kind.self, forKey: .kind)
    bits = try c.decodeIfPresent(Int.self, forKey: .bits) ?? d.bits
    rotation = try c.decodeIfPresent(Rotation.self, forKey: .rotation) ?? d.rotation
    range = try c.decodeIfPresent(Double.self, forKey: .range)
    rounding = try c.decodeIfPresent(Rounding.self, forKey: .rounding) ?? d.rounding
    fraction = try c.decodeIfPresent(Double.self, forKey: .fraction) ?? d.fraction
  }

  /// Only the kind and its own parameters: `kind: none` encodes as `{"kind": "none"}`, as before
  /// the other kinds existed, so stored plans keep their SHA-256.
  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(kind, forKey: .kind)
    switch kind {
    case .none: break
    case .quantization:
      try c.encode(bits, forKey: .bits)
      try c.encode(rotation, forKey: .rotation)
      try c.encodeIfPresent(range, forKey: .range)
      try c.encode(rounding, forKey: .rounding)
    case .topK, .randomMask:
      try c.encode(fraction, forKey: .fraction)
    }
  }
}

/// Differential privacy (`privacy`). Each key is documented in the README.
///
/// `central_gaussian` is DP-FedAvg (McMahan et al., ICLR 2018): every device clips its update to
/// L2 norm `clip`, the server sums the clipped updates with weight 1 each, adds Gaussian noise of
/// standard deviation `noiseMultiplier × clip` to every coordinate of the sum and divides by the
/// expected cohort (`server.cohort.goal`). With `adaptiveClipping` the clip follows a quantile of
/// the update norms (Andrew et al., NeurIPS 2021). The server sees the noiseless sum: the
/// guarantee is central, and holds only if the server is trusted.
public struct PrivacyPlan: Codable, Sendable, Hashable {
  /// The mechanism; each kind has its own keys in `keysByKind`.
  public enum Kind: String, Codable, Sendable, CaseIterable {
    case none
    case centralGaussian = "central_gaussian"
    /// Kairouz et al., ICML 2021: each device adds discrete Gaussian noise to its rotated,
    /// rounded update inside secure aggregation, so the server only ever sees a noisy sum.
    case distributedDiscreteGaussian = "distributed_discrete_gaussian"
  }

  /// Andrew et al. 2021 (Differentially Private Learning with Adaptive Clipping), Algorithm 1:
  /// C ← C · exp(−η (b̄ − γ)), where b̄ is the noisy fraction of updates with norm at most C.
  public struct AdaptiveClipping: Codable, Sendable, Hashable {
    /// γ: the fraction of updates the clip should leave unclipped, in (0, 1).
    public var targetQuantile: Double = 0.5
    /// η: the geometric learning rate of the clip, > 0.
    public var learningRate: Double = 0.2
    /// σ_b: the standard deviation of the noise added to the count of unclipped updates
    /// (in devices). Andrew et al. recommend the expected cohort / 20; a loaded plan fills it in.
    public var countNoiseMultiplier: Double
    /// C₀: the clip of the first round; a loaded plan fills in `clip`.
    public var initialClip: Double

    public init(
      targetQuantile: Double = 0.5, learningRate: Double = 0.2, countNoiseMultiplier: Double,
      initialClip: Double
    ) {
      self.targetQuantile = targetQuantile
      self.learningRate = learningRate
      self.countNoiseMultiplier = countNoiseMultiplier
      self.initialClip = initialClip
    }
  }

  public var kind: Kind = .none
  /// S: the L2 norm every update is clipped to (> 0); with adaptive clipping, see `initialClip`.
  public var clip: Double = 1.0
  /// z: the noise's standard deviation over the clip (≥ 0).
  public var noiseMultiplier: Double = 1.0
  /// δ of the (ε, δ) guarantee the accountant reports, in (0, 1).
  public var delta: Double = 1e-5
  /// The run stops before a round whose ε would exceed this.
  public var targetEpsilon: Double? = nil
  public var adaptiveClipping: AdaptiveClipping? = nil
  /// Distributed discrete Gaussian: β of conditional randomized rounding, in [0, 1) (Kairouz et
  /// al. use e^−0.5).
  public var beta: Double = Self.defaultBeta
  public static let defaultBeta = 0.6065306597126334

  public init(
    kind: Kind = .none, clip: Double = 1.0, noiseMultiplier: Double = 1.0, delta: Double = 1e-5,
    targetEpsilon: Double? = nil, adaptiveClipping: AdaptiveClipping? = nil
  ) {
    self.kind = kind
    self.clip = clip
    self.noiseMultiplier = noiseMultiplier
    self.delta = delta
    self.targetEpsilon = targetEpsilon
    self.adaptiveClipping = adaptiveClipping
  }

  /// Whether devices clip and the server adds noise to the sum.
  public var isCentral: Bool { kind == .centralGaussian }
  /// Whether devices add the noise, inside secure aggregation.
  public var isDistributed: Bool { kind == .distributedDiscreteGaussian }
  /// Whether the plan adds noise at all (devices then clip, every update weighs the same, and
  /// the accountant reports ε).
  public var isPrivate: Bool { kind != .none }

  /// The clip of the first round.
  public var initialClip: Double { adaptiveClipping?.initialClip ?? clip }

  /// The noise multiplier of the update's sum: z itself, or with adaptive clipping
  /// z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) (Andrew et al. 2021, Theorem 1), so that the update and the
  /// count together cost what one Gaussian mechanism of multiplier z costs. nil when undefined.
  public var updateNoiseMultiplier: Double? {
    guard let adaptive = adaptiveClipping else { return noiseMultiplier }
    return Self.updateNoiseMultiplier(
      noiseMultiplier: noiseMultiplier, countNoise: adaptive.countNoiseMultiplier)
  }

  /// z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2); nil when z is 0 or 2σ_b ≤ z.
  public static func updateNoiseMultiplier(noiseMultiplier z: Double, countNoise sigmaB: Double) -> Double? {
    guard z > 0, sigmaB > 0 else { return nil }
    let inverse = 1 / (z * z) - 1 / (4 * sigmaB * sigmaB)
    guard inverse > 0 else { return nil }
    return 1 / inverse.squareRoot()
  }
}

extension PrivacyPlan {
  private enum CodingKeys: String, CodingKey {
    case kind, clip, noiseMultiplier, delta, targetEpsilon, adaptiveClipping, beta
  }

  public init(from decoder: any Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    let d = PrivacyPlan()
    kind = try c.decode(Kind.self, forKey: .kind)
    clip = try c.decodeIfPresent(Double.self, forKey: .clip) ?? d.clip
    noiseMultiplier = try c.decodeIfPresent(Double.self, forKey: .noiseMultiplier) ?? d.noiseMultiplier
    delta = try c.decodeIfPresent(Double.self, forKey: .delta) ?? d.delta
    targetEpsilon = try c.decodeIfPresent(Double.self, forKey: .targetEpsilon)
    adaptiveClipping = try c.decodeIfPresent(AdaptiveClipping.self, forKey: .adaptiveClipping)
    beta = try c.decodeIfPresent(Double.self, forKey: .beta) ?? d.beta
  }

  /// `kind: none` with every parameter at its default encodes as `{"kind": "none"}`, as before
  /// the parameters existed, so stored plans keep their SHA-256; otherwise every parameter is
  /// written, so the plan's hash pins the mechanism it ran.
  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(kind, forKey: .kind)
    guard self != PrivacyPlan() else { return }
    try c.encode(clip, forKey: .clip)
    try c.encode(noiseMultiplier, forKey: .noiseMultiplier)
    try c.encode(delta, forKey: .delta)
    try c.encodeIfPresent(targetEpsilon, forKey: .targetEpsilon)
    try c.encodeIfPresent(adaptiveClipping, forKey: .adaptiveClipping)
    // Only the distributed mechanism uses β, so other plans keep the hash they had before it.
    if isDistributed { try c.encode(beta, forKey: .beta) }
  }
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
    let compression = m.optional("compression", default: CompressionPlan()) { CompressionPlan.read($0) }
    var privacy = m.optional("privacy", default: PrivacyPlan()) { PrivacyPlan.read($0) }
    guard let name, let model else { return nil }
    var resolvedDevice = device
    var resolvedServer = server
    checkAcrossKeys(m, device: &resolvedDevice, server: &resolvedServer)
    SecureAggregationPlan.checkAcrossKeys(m, plan: secAgg, server: resolvedServer)
    CompressionPlan.checkAcrossKeys(m, plan: compression)
    PrivacyPlan.checkAcrossKeys(m, plan: &privacy, server: resolvedServer, secureAggregation: secAgg)
    AsyncPlan.checkAcrossKeys(m, server: resolvedServer, secureAggregation: secAgg, privacy: privacy)
    if privacy.isDistributed, compression.kind != .none {
      m.owner.log.add(
        keyPath: "compression.kind", line: m["compression"]?.line ?? 1,
        "compression.kind \(compression.kind.rawValue) with privacy.kind distributed_discrete_gaussian: the "
          + "mechanism rotates and rounds updates to its own lattice, which is its compression; set "
          + "compression.kind: none")
    }
    return Plan(
      name: name, model: model, device: resolvedDevice, server: resolvedServer, secureAggregation: secAgg,
      compression: compression, privacy: privacy)
  }

  /// Rules that tie keys in different sections together; each issue names every key involved.
  /// Also resolves what the strategy dictates to the device part (FedProx's μ, q-FedAvg's
  /// default learning rate), so devices read one value.
  static func checkAcrossKeys(_ m: YAMLMapping, device: inout DevicePlan, server: inout ServerPlan) {
    let strategy = server.strategy
    let kindLine = m["server"]?.child("strategy")?.child("kind")?.line ?? m["server"]?.line
    if let mu = strategy.deviceProximalMu {
      if let field = m["device"]?.child("proximal_mu"), device.proximalMu != mu {
        m.owner.log.add(
          keyPath: "device.proximal_mu", line: field.line,
          "device.proximal_mu (\(device.proximalMu)) and server.strategy.mu (\(mu)) disagree; FedProx's μ "
            + "belongs in server.strategy.mu: remove device.proximal_mu or make them equal")
      } else {
        device.proximalMu = mu
      }
    }
    if case .qfedavg(let q, nil) = strategy.rule {
      server.strategy.rule = .qfedavg(q: q, learningRate: device.optimizer.learningRate)
    }
    // A cosine schedule without `rounds` anneals over the whole run.
    if case .cosine(0, let minimum) = device.optimizer.schedule {
      device.optimizer.schedule = .cosine(rounds: server.rounds, minimumLearningRate: minimum)
    }
    if device.optimizer.kind == .adam, strategy.kind == .scaffold {
      m.owner.log.add(
        keyPath: "device.optimizer.kind",
        line: m["device"]?.child("optimizer")?.child("kind")?.line ?? kindLine,
        "device.optimizer.kind adam with server.strategy.kind scaffold: SCAFFOLD's control variate "
          + "(x − y)/(K·η) assumes K plain SGD steps of rate η; use device.optimizer.kind sgd, or another "
          + "strategy")
    }
    if let attempts = server.maximumAttempts, attempts < server.rounds,
      let field = m["server"]?.child("max_attempts")
    {
      m.owner.log.add(
        keyPath: "server.max_attempts", line: field.line,
        "server.max_attempts (\(attempts)) is below server.rounds (\(server.rounds)): the run could never "
          + "commit its rounds; raise server.max_attempts to at least \(server.rounds) or remove it "
          + "(the default is 3 × rounds)")
    }
    if server.reports?.maximumUpdateNorm != nil,
      SecureAggregationPlan.requestsEnabled(m["secure_aggregation"])
    {
      m.owner.log.add(
        keyPath: "server.reports.max_update_norm",
        line: m["server"]?.child("reports")?.child("max_update_norm")?.line ?? kindLine,
        "server.reports.max_update_norm is checked by the server on each update, but "
          + "secure_aggregation.enabled: true shows it only their sum: remove max_update_norm (clip on the "
          + "devices with privacy.clip instead) or turn secure aggregation off")
    }
    let needed = strategy.minimumUpdates
    if needed > 1, server.cohort.goal < needed {
      let f: Int
      switch strategy.rule {
      case .krum(let b), .multikrum(let b, _), .bulyan(let b): f = b
      default: f = 0
      }
      let rule =
        strategy.kind == .bulyan
        ? "n ≥ 4f + 3" : strategy.kind == .krum ? "n ≥ 2f + 3" : "n ≥ 2f + 3 and n ≥ keep + f"
      m.owner.log.add(
        keyPath: "server.cohort.goal", line: m["server"]?.child("cohort")?.child("goal")?.line ?? kindLine,
        "server.strategy.kind \(strategy.kind.rawValue) with byzantine f = \(f) needs \(rule) = \(needed) "
          + "updates per round, but server.cohort.goal is \(server.cohort.goal): raise server.cohort.goal to "
          + "at least \(needed) or lower server.strategy.byzantine")
    }
    if SecureAggregationPlan.requestsEnabled(m["secure_aggregation"]),
      !SecureAggregationPlan.supportedStrategies.contains(strategy.kind)
    {
      let sends = "secure_aggregation.enabled: true sends only the sum of clipped model deltas and weights"
      let why =
        strategy.needsIndividualUpdates
        ? "needs each device's update on its own, but secure_aggregation.enabled: true reveals only their sum"
        : strategy.kind == .qfedavg
          ? "needs each device's loss terms, but \(sends)"
          : strategy.kind == .scaffold
            ? "needs each device's control variate, but \(sends)" : "needs more than a sum, but \(sends)"
      let names = SecureAggregationPlan.supportedStrategies.map(\.rawValue)
      m.owner.log.add(
        keyPath: "server.strategy.kind", line: kindLine,
        "server.strategy.kind \(strategy.kind.rawValue) \(why): choose "
          + names.dropLast().joined(separator: ", ") + " or \(names.last ?? "fedavg")"
          + ", or set secure_aggregation.enabled: false")
    }
  }
}

extension ModelPlan {
  static func read(_ field: YAMLField) -> ModelPlan? {
    guard
      let m = field.mapping(allowed: [
        "kind", "inputs", "input_shape", "hidden", "classes", "init", "initial",
      ])
    else {
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
    // `auto` is the scheme of plans without the key, so it is stored as nil (the same SHA-256).
    let schemes = ["auto"] + Initialization.allCases.map(\.rawValue)
    let initialization = m.optional("init") { $0.oneOf(schemes) }.flatMap(Initialization.init)
    let initial = m.optional("initial") { f -> String? in
      guard let path = f.string() else { return nil }
      guard path.lowercased().hasSuffix(".safetensors") else {
        f.fail("expected a .safetensors file (e.g. initial: weights.safetensors), relative to the plan")
        return nil
      }
      let resolved = Scenario.resolve(path, in: URL(fileURLWithPath: f.log.file).deletingLastPathComponent())
      guard FileManager.default.isReadableFile(atPath: resolved) else {
        f.fail(
          "\(resolved) \(FileManager.default.fileExists(atPath: resolved) ? "cannot be read" : "does not exist"); "
            + "the path is relative to the plan file's directory")
        return nil
      }
      return resolved
    }
    if initial != nil, let f = m["init"] {
      f.fail(
        "does not apply: model.initial gives the first model, so nothing is drawn; remove model.init or "
          + "model.initial")
    }
    guard let inputShape, let classes else { return nil }
    let model = ModelPlan(
      kind: kind, inputShape: inputShape, hidden: hidden, classes: classes, initialization: initialization,
      initial: initial)
    guard model.parameterCount <= maximumParameters else {
      let count = model.parameterCount == .max ? "more than 2^63" : "\(model.parameterCount)"
      field.fail(
        "the model has \(count) parameters; the limit is \(maximumParameters) (400 MB as Float32): "
          + "use fewer inputs, narrower hidden layers or a smaller image")
      return nil
    }
    return model
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
    plan.optimizer = m.optional("optimizer", default: plan.optimizer) { OptimizerPlan.read($0) }
    return plan
  }
}

extension OptimizerPlan {
  static let keysByKind: [Kind: [String]] = [
    .sgd: ["momentum"],
    .adam: ["beta1", "beta2", "epsilon"],
  ]

  static func read(_ f: YAMLField) -> OptimizerPlan? {
    let common = ["kind", "learning_rate", "weight_decay", "schedule"]
    let all = common + Kind.allCases.flatMap { keysByKind[$0] ?? [] }
    guard let o = f.mapping(allowed: all) else { return nil }
    var opt = OptimizerPlan()
    opt.kind = o.optional("kind", default: opt.kind) {
      $0.oneOf(Kind.allCases.map(\.rawValue)).flatMap(Kind.init)
    }
    let own = keysByKind[opt.kind] ?? []
    o.reject(
      all.filter { !common.contains($0) && !own.contains($0) },
      because: "optimizer kind \(opt.kind.rawValue) does not use it; its own keys are: "
        + own.joined(separator: ", "))
    // Adam's usual rate is 1e-3, SGD's here 0.05.
    let defaultRate = opt.kind == .adam ? 0.001 : opt.learningRate
    opt.learningRate = o.optional("learning_rate", default: defaultRate) { $0.double(0...1e3, above: true) }
    opt.weightDecay = o.optional("weight_decay", default: opt.weightDecay) { $0.double(0...1e3) }
    switch opt.kind {
    case .sgd:
      opt.momentum = o.optional("momentum", default: opt.momentum) { $0.double(0...0.999_999) }
    case .adam:
      // β in [0, 1): 1 would freeze a moment at its first value.
      let decay = { (key: String, value: Double) in
        o.optional(key, default: value) { f -> Double? in
          guard let v = f.double(0...1), v < 1 else {
            f.fail("out of range: expected a decay in [0, 1) (Adam's default is \(value))")
            return nil
          }
          return v
        }
      }
      opt.beta1 = decay("beta1", defaultBeta1)
      opt.beta2 = decay("beta2", defaultBeta2)
      opt.epsilon = o.optional("epsilon", default: defaultEpsilon) { $0.double(0...1, above: true) }
    }
    opt.schedule = o.optional("schedule") { LearningRateSchedule.read($0, learningRate: opt.learningRate) }
    return opt
  }
}

extension LearningRateSchedule {
  static let keysByKind: [Kind: [String]] = [
    .step: ["step_size", "gamma"],
    .cosine: ["rounds", "min_learning_rate"],
  ]

  /// A cosine schedule read without `rounds` holds 0 until `Plan.checkAcrossKeys` sets the
  /// plan's `server.rounds`.
  static func read(_ field: YAMLField, learningRate: Double) -> LearningRateSchedule? {
    let all = ["kind"] + Kind.allCases.flatMap { keysByKind[$0] ?? [] }
    guard let s = field.mapping(allowed: all) else { return nil }
    let kind = s.required("kind", hint: "one of: " + Kind.allCases.map(\.rawValue).joined(separator: ", ")) {
      $0.oneOf(Kind.allCases.map(\.rawValue)).flatMap(Kind.init)
    }
    guard let kind else { return nil }
    let own = keysByKind[kind] ?? []
    s.reject(
      all.filter { $0 != "kind" && !own.contains($0) },
      because: "schedule kind \(kind.rawValue) does not use it; its keys are: " + own.joined(separator: ", "))
    switch kind {
    case .step:
      let stepSize = s.required("step_size", hint: "rounds between decays, e.g. step_size: 50") {
        $0.int(1...10_000_000)
      }
      let gamma = s.optional("gamma", default: 0.1) { $0.double(0...1, above: true) }
      guard let stepSize else { return nil }
      return .step(stepSize: stepSize, gamma: gamma)
    case .cosine:
      let rounds = s.optional("rounds", default: 0) { $0.int(1...10_000_000) }
      let minimum = s.optional("min_learning_rate", default: 0) { f -> Double? in
        guard let v = f.double(0...1e3) else { return nil }
        guard v < learningRate else {
          f.fail(
            "must be below the optimizer's learning_rate (\(learningRate)), the rate the cosine starts at")
          return nil
        }
        return v
      }
      return .cosine(rounds: rounds, minimumLearningRate: minimum)
    }
  }
}

extension ServerPlan {
  static func read(_ field: YAMLField) -> ServerPlan? {
    guard
      let m = field.mapping(allowed: [
        "rounds", "max_attempts", "cohort", "windows", "strategy", "evaluation", "reports", "mode", "async",
      ])
    else {
      return nil
    }
    var plan = ServerPlan()
    plan.rounds = m.optional("rounds", default: plan.rounds) { $0.int(1...10_000_000) }
    plan.maximumAttempts = m.optional("max_attempts") { $0.int(1...100_000_000) }
    plan.cohort = m.optional("cohort", default: plan.cohort) { f -> CohortPlan? in
      guard let c = f.mapping(allowed: ["goal", "over_selection", "minimum_fraction", "sampling"]) else {
        return nil
      }
      var cohort = CohortPlan()
      cohort.goal = c.optional("goal", default: cohort.goal) { $0.int(1...10_000_000) }
      cohort.overSelection = c.optional("over_selection", default: cohort.overSelection) { $0.double(1...10) }
      cohort.minimumFraction = c.optional("minimum_fraction", default: cohort.minimumFraction) {
        $0.double(0...1, above: true)
      }
      cohort.sampling = c.optional("sampling") {
        $0.oneOf(CohortSampling.allCases.map(\.rawValue)).flatMap(CohortSampling.init)
      }
      return cohort
    }
    plan.windows = m.optional("windows", default: plan.windows) { f -> WindowsPlan? in
      guard let w = f.mapping(allowed: ["selection", "reporting", "max_retry"]) else { return nil }
      var windows = WindowsPlan()
      windows.selection = w.optional("selection", default: windows.selection) { $0.duration() }
      windows.reporting = w.optional("reporting", default: windows.reporting) { $0.duration() }
      windows.maximumRetry = w.optional("max_retry") { $0.duration(1...(30 * 86400)) }
      return windows
    }
    plan.strategy = m.optional("strategy", default: plan.strategy) { StrategyPlan.read($0) }
    plan.evaluation = m.optional("evaluation", default: plan.evaluation) { f -> EvaluationPlan? in
      guard let e = f.mapping(allowed: ["every"]) else { return nil }
      return EvaluationPlan(every: e.optional("every", default: 1) { $0.int(1...1_000_000) })
    }
    plan.reports = m.optional("reports") { f -> ReportsPlan? in
      guard let r = f.mapping(allowed: ["max_examples", "max_update_norm", "over_norm"]) else { return nil }
      var reports = ReportsPlan()
      reports.maximumExamples = r.optional("max_examples") { $0.int(1...1_000_000_000) }
      reports.maximumUpdateNorm = r.optional("max_update_norm") { $0.double(0...1e12, above: true) }
      reports.overNorm = r.optional("over_norm") {
        $0.oneOf(ReportsPlan.OverNorm.allCases.map(\.rawValue)).flatMap(ReportsPlan.OverNorm.init)
      }
      if reports.overNorm != nil, reports.maximumUpdateNorm == nil, let field = r["over_norm"] {
        field.fail("over_norm says what happens beyond max_update_norm; set max_update_norm too")
      }
      return reports
    }
    // nil when absent or invalid (then its issue is already recorded).
    let mode = m.optional("mode") { $0.oneOf(ServerMode.allCases.map(\.rawValue)).flatMap(ServerMode.init) }
    let asynchronous = m.optional("async") { AsyncPlan.read($0) }
    if mode == .async {
      plan.asynchronous = asynchronous ?? AsyncPlan()
    } else if let field = m["async"], mode == .sync || m["mode"] == nil {
      m.owner.log.add(
        field,
        "server.async is read only with server.mode: async (the default mode is sync); set "
          + "server.mode: async or remove server.async", showValue: false)
    }
    return plan
  }
}

extension AsyncPlan {
  static let keys = ["concurrency", "buffer", "staleness", "max_staleness", "server_learning_rate"]

  static func read(_ field: YAMLField) -> AsyncPlan? {
    guard let m = field.mapping(allowed: keys) else { return nil }
    var plan = AsyncPlan()
    plan.concurrency = m.optional("concurrency", default: plan.concurrency) { $0.int(1...10_000_000) }
    plan.buffer = m.optional("buffer", default: plan.buffer) { $0.int(1...1_000_000) }
    plan.staleness = m.optional("staleness", default: plan.staleness) { StalenessPlan.read($0) }
    plan.maximumStaleness = m.optional("max_staleness", default: plan.maximumStaleness) {
      $0.int(0...1_000_000_000)
    }
    plan.serverLearningRate = m.optional("server_learning_rate") { $0.double(0...1e3, above: true) }
    return plan
  }

  /// Rules between `server.async` and the rest of the plan, for a plan in async mode; fills in
  /// nothing. Each issue names the keys involved and the fix.
  static func checkAcrossKeys(
    _ m: YAMLMapping, server: ServerPlan, secureAggregation: SecureAggregationPlan, privacy: PrivacyPlan
  ) {
    guard let plan = server.asynchronous else { return }
    let serverField = m["server"]
    let asyncField = serverField?.child("async")
    let modeLine = serverField?.child("mode")?.line ?? serverField?.line
    let line = { (key: String) in asyncField?.child(key)?.line ?? asyncField?.line ?? modeLine }
    let strategy = server.strategy.kind
    let kindLine = serverField?.child("strategy")?.child("kind")?.line ?? modeLine
    if let why = refusal(of: strategy) {
      let names = supportedStrategies.map(\.rawValue)
      m.owner.log.add(
        keyPath: "server.strategy.kind", line: kindLine,
        "server.strategy.kind \(strategy.rawValue) cannot run with server.mode: async: it \(why); choose "
          + names.dropLast().joined(separator: ", ") + " or \(names.last ?? "fedavg")"
          + ", or set server.mode: sync")
    }
    if plan.serverLearningRate != nil, [.fedavgm, .fedadagrad, .fedadam, .fedyogi].contains(strategy) {
      m.owner.log.add(
        keyPath: "server.async.server_learning_rate", line: line("server_learning_rate"),
        "server.strategy.kind \(strategy.rawValue) steps along the buffered mean with its own "
          + "server.strategy.server_learning_rate, so server.async.server_learning_rate would be a second "
          + "rate for the same step: remove server.async.server_learning_rate")
    }
    if let cohort = serverField?.child("cohort") {
      m.owner.log.add(
        keyPath: "server.cohort", line: cohort.line,
        "server.cohort does not apply with server.mode: async: devices are admitted continuously up to "
          + "server.async.concurrency and every server.async.buffer updates make a version; remove "
          + "server.cohort")
    }
    if secureAggregation.enabled, let section = m["secure_aggregation"] {
      // FedBuff under secure aggregation makes each buffer one group, but a device's staleness
      // weight is known only when its update arrives, after it has masked it: the protocol would
      // need the weights folded in on the devices. Refused until that is built.
      m.owner.log.add(
        keyPath: "secure_aggregation.enabled", line: section.child("enabled")?.line ?? section.line,
        "secure_aggregation.enabled with server.mode: async is not carried out yet: each buffer would "
          + "be one secure-aggregation group, but a device masks its update before the server knows "
          + "its staleness weight; set secure_aggregation.enabled: false or server.mode: sync")
    }
    guard privacy.isPrivate, let section = m["privacy"] else { return }
    if privacy.isDistributed {
      m.owner.log.add(
        keyPath: "privacy.kind", line: section.child("kind")?.line ?? section.line,
        "privacy.kind distributed_discrete_gaussian with server.mode: async: its noise is calibrated to a "
          + "cohort that secure aggregation sums at once, and its accounting to sampled rounds; use "
          + "privacy.kind central_gaussian (noise per buffer application) or server.mode: sync")
    }
    if privacy.targetEpsilon != nil, let field = section.child("target_epsilon") {
      m.owner.log.add(
        keyPath: "privacy.target_epsilon", line: field.line,
        "privacy.target_epsilon with server.mode: async: no ε is reported for asynchronous runs (devices "
          + "fill buffers by speed and availability, not by Poisson or uniform sampling, so the "
          + "accountant's amplification by sampling does not hold); remove target_epsilon or use "
          + "server.mode: sync")
    }
  }
}

extension StalenessPlan {
  static func read(_ field: YAMLField) -> StalenessPlan? {
    guard let m = field.mapping(allowed: ["kind", "a", "b"]) else { return nil }
    let kind = m.optional("kind", default: Kind.polynomial) {
      $0.oneOf(Kind.allCases.map(\.rawValue)).flatMap(Kind.init)
    }
    switch StalenessPlan(kind: kind) {
    case .constant:
      m.reject(["a", "b"], because: "staleness kind constant weighs every update 1 and takes no parameters")
      return .constant
    case .polynomial(let a):
      m.reject(["b"], because: "staleness kind polynomial, (1 + s)^−a, takes only a")
      return .polynomial(a: m.optional("a", default: a) { $0.double(0...100) })
    case .hinge(let a, let b):
      return .hinge(
        a: m.optional("a", default: a) { $0.double(0...1e6, above: true) },
        b: m.optional("b", default: b) { $0.double(0...1e9) })
    }
  }
}

extension StrategyPlan {
  /// Every key some kind accepts, YAML spelling; each kind then rejects the ones it does not use.
  static let keysByKind: [Kind: [String]] = [
    .fedavg: ["weighted"],
    .fedavgm: ["server_learning_rate", "momentum"],
    .fedprox: ["mu", "weighted"],
    .fedadagrad: ["server_learning_rate", "beta1", "tau"],
    .fedadam: ["server_learning_rate", "beta1", "beta2", "tau"],
    .fedyogi: ["server_learning_rate", "beta1", "beta2", "tau"],
    .fedmedian: [],
    .fedtrimmedavg: ["beta"],
    .krum: ["byzantine"],
    .multikrum: ["byzantine", "keep"],
    .bulyan: ["byzantine"],
    .qfedavg: ["q", "learning_rate"],
    .scaffold: ["server_learning_rate"],
  ]

  static func read(_ field: YAMLField) -> StrategyPlan? {
    let all =
      ["kind"]
      + Kind.allCases.flatMap { keysByKind[$0] ?? [] }.reduce(into: [String]()) {
        if !$0.contains($1) { $0.append($1) }
      }
    guard let s = field.mapping(allowed: all) else { return nil }
    let kind = s.optional("kind", default: Kind.fedavg) {
      $0.oneOf(Kind.allCases.map(\.rawValue)).flatMap(Kind.init)
    }
    let own = keysByKind[kind] ?? []
    let others = all.filter { $0 != "kind" && !own.contains($0) }
    let accepted = own.isEmpty ? "it takes no parameters" : "its keys are: " + own.joined(separator: ", ")
    s.reject(others, because: "strategy \(kind.rawValue) does not use it; \(accepted)")

    var plan = StrategyPlan(kind: kind)
    let eta = { (d: Double) in
      s.optional("server_learning_rate", default: d) { $0.double(0...1e3, above: true) }
    }
    // β in [0, 1): 1 would freeze the moment at its initial value.
    let decay = { (key: String, d: Double) in
      s.optional(key, default: d) { f -> Double? in
        guard let v = f.double(0...1) else { return nil }
        guard v < 1 else {
          f.fail("out of range: expected a number at least 0 and below 1")
          return nil
        }
        return v
      }
    }
    let byzantine = { s.optional("byzantine", default: 1) { $0.int(0...1_000_000) } }
    switch plan.rule {
    case .fedavg(let w): plan.rule = .fedavg(weighted: s.optional("weighted", default: w) { $0.bool() })
    case .fedavgm(let e, let m):
      plan.rule = .fedavgm(serverLearningRate: eta(e), momentum: decay("momentum", m))
    case .fedprox(let mu, let w):
      plan.rule = .fedprox(
        mu: s.optional("mu", default: mu) { $0.double(0...1e6) },
        weighted: s.optional("weighted", default: w) { $0.bool() })
    case .fedadagrad(var a), .fedadam(var a), .fedyogi(var a):
      a.serverLearningRate = eta(a.serverLearningRate)
      a.beta1 = decay("beta1", a.beta1)
      a.beta2 = decay("beta2", a.beta2)
      a.tau = s.optional("tau", default: a.tau) { $0.double(0...1e3, above: true) }
      plan.rule = kind == .fedadagrad ? .fedadagrad(a) : kind == .fedadam ? .fedadam(a) : .fedyogi(a)
    case .fedmedian: break
    case .fedtrimmedavg(let beta):
      plan.rule = .fedtrimmedavg(
        beta: s.optional("beta", default: beta) { f -> Double? in
          guard let v = f.double(0...0.5) else { return nil }
          guard v < 0.5 else {
            f.fail("out of range: expected a fraction at least 0 and below 0.5 (cut from each tail)")
            return nil
          }
          return v
        })
    case .krum: plan.rule = .krum(byzantine: byzantine())
    case .multikrum:
      plan.rule = .multikrum(byzantine: byzantine(), keep: s.optional("keep") { $0.int(1...10_000_000) })
    case .bulyan: plan.rule = .bulyan(byzantine: byzantine())
    case .qfedavg(let q, _):
      plan.rule = .qfedavg(
        q: s.optional("q", default: q) { $0.double(0...1e3) },
        learningRate: s.optional("learning_rate") { $0.double(0...1e3, above: true) })
    case .scaffold(let e): plan.rule = .scaffold(serverLearningRate: eta(e))
    }
    return plan
  }
}

extension SecureAggregationPlan {
  static let keys = [
    "enabled", "variant", "graph", "dropout_rate", "corrupt_fraction", "degree", "threshold", "security_bits",
    "clip", "encoding_bits", "weight_cap", "minimum_group",
  ]

  /// Whether the plan asks for secure aggregation, read from the YAML even when the section has
  /// other problems, so rules that combine it with other keys can name the combination.
  static func requestsEnabled(_ field: YAMLField?) -> Bool {
    field?.child("enabled")?.peekBool ?? false
  }

  static func read(_ field: YAMLField) -> SecureAggregationPlan? {
    guard let m = field.mapping(allowed: keys) else { return nil }
    var plan = SecureAggregationPlan()
    plan.enabled = m.optional("enabled", default: plan.enabled) { $0.bool() }
    plan.variant = m.optional("variant", default: plan.variant) {
      $0.oneOf(Variant.allCases.map(\.rawValue)).flatMap(Variant.init)
    }
    plan.graph = m.optional("graph", default: plan.graph) {
      $0.oneOf(Graph.allCases.map(\.rawValue)).flatMap(Graph.init)
    }
    // Fractions in [0, 0.5): with half the devices gone or corrupt no threshold is both
    // reachable by the survivors and out of reach of the colluders.
    let fraction = { (key: String, d: Double, what: String) in
      m.optional(key, default: d) { f -> Double? in
        guard let v = f.double(0...0.5) else { return nil }
        guard v < 0.5 else {
          f.fail("out of range: expected a fraction at least 0 and below 0.5 (\(what))")
          return nil
        }
        return v
      }
    }
    plan.dropoutRate = fraction("dropout_rate", plan.dropoutRate, "devices expected to drop out")
    plan.corruptFraction = fraction(
      "corrupt_fraction", plan.corruptFraction, "devices colluding with the server")
    plan.degree = m.optional("degree") { $0.int(2...10_000_000) }
    plan.threshold = m.optional("threshold") { $0.int(2...10_000_000) }
    plan.minimumGroupSize = m.optional("minimum_group") { $0.int(2...10_000_000) }
    if let group = plan.minimumGroupSize, let threshold = plan.threshold, group < threshold,
      let f = m["minimum_group"]
    {
      f.fail(
        "is \(group), below the threshold \(threshold): a group that small could never unmask its sum; "
          + "give at least \(threshold)")
    }
    plan.securityBits = m.optional("security_bits", default: plan.securityBits) { $0.int(20...128) }
    plan.clip = m.optional("clip", default: plan.clip) {
      $0.double(0...Double.greatestFiniteMagnitude, above: true)
    }
    plan.encodingBits = m.optional("encoding_bits", default: plan.encodingBits) { $0.int(2...24) }
    plan.weightCap = m.optional("weight_cap", default: plan.weightCap) { $0.int(1...1_000_000_000) }

    if let degree = plan.degree, let f = m["degree"] {
      if plan.graph == .complete {
        f.fail(
          "degree is n − 1 for graph: complete; remove secure_aggregation.degree or use graph: harary")
      } else if degree % 2 != 0 {
        f.fail(
          "a Harary graph's degree must be even (each device has k/2 neighbours on either side); "
            + "use \(degree - 1) or \(degree + 1), or remove secure_aggregation.degree to have it chosen")
      }
    }
    if let threshold = plan.threshold, let degree = plan.degree, plan.graph == .harary, threshold > degree,
      let f = m["threshold"]
    {
      f.fail(
        "is larger than secure_aggregation.degree (\(degree)): "
          + "a device's secret is shared among its \(degree) neighbours, so at most \(degree) shares can "
          + "rebuild it; lower threshold to at most \(degree) or raise degree")
    }
    return plan
  }

  /// Rules between `secure_aggregation` and the rest of the plan, when it is enabled.
  static func checkAcrossKeys(_ m: YAMLMapping, plan: SecureAggregationPlan, server: ServerPlan) {
    // In async mode secure aggregation is refused (`AsyncPlan.checkAcrossKeys` says why).
    guard plan.enabled, server.asynchronous == nil, let section = m["secure_aggregation"] else { return }
    let path = { (key: String) in (section.path + [key]).joined(separator: ".") }
    let cohort = server.cohort
    let devices = cohort.selectionTarget
    let ring = plan.ringBits(devices: devices)
    if ring > maximumRingBits {
      let widest = maximumRingBits - Swift.max(1, ceilLog2(devices))
      m.owner.log.add(
        keyPath: path("encoding_bits"), line: section.child("encoding_bits")?.line ?? section.line,
        "secure_aggregation.encoding_bits is \(plan.encodingBits): the sum of \(devices) devices' codes "
          + "(server.cohort.goal × over_selection) needs \(ring) bits and the ring has "
          + "\(maximumRingBits); lower secure_aggregation.encoding_bits to at most \(widest), or lower "
          + "server.cohort.goal or over_selection")
    }
    if let threshold = plan.threshold, threshold > cohort.minimumReports {
      m.owner.log.add(
        keyPath: path("threshold"), line: section.child("threshold")?.line ?? section.line,
        "secure_aggregation.threshold is \(threshold), but a round may aggregate as few as "
          + "\(cohort.minimumReports) devices (server.cohort.goal × minimum_fraction), too few to unmask: "
          + "lower secure_aggregation.threshold to at most \(cohort.minimumReports), raise "
          + "server.cohort.minimum_fraction or goal, or remove threshold to have it chosen")
    }
  }
}

extension CompressionPlan {
  /// Every key some kind accepts, YAML spelling; each kind rejects the ones it does not use.
  static let keysByKind: [Kind: [String]] = [
    .none: [],
    .quantization: ["bits", "rotation", "range", "rounding"],
    .topK: ["fraction"],
    .randomMask: ["fraction"],
  ]

  static func read(_ field: YAMLField) -> CompressionPlan? {
    let all = ["kind", "bits", "rotation", "range", "rounding", "fraction"]
    guard let m = field.mapping(allowed: all) else { return nil }
    let kind = m.optional("kind", default: Kind.none) {
      $0.oneOf(Kind.allCases.map(\.rawValue)).flatMap(Kind.init)
    }
    let own = keysByKind[kind] ?? []
    let others = all.filter { $0 != "kind" && !own.contains($0) }
    let accepted = own.isEmpty ? "it takes no parameters" : "its keys are: " + own.joined(separator: ", ")
    m.reject(others, because: "compression kind \(kind.rawValue) does not use it; \(accepted)")

    var plan = CompressionPlan(kind: kind)
    switch kind {
    case .none: break
    case .quantization:
      plan.bits = m.optional("bits", default: plan.bits) { $0.int(1...16) }
      plan.rotation = m.optional("rotation", default: plan.rotation) {
        $0.oneOf(Rotation.allCases.map(\.rawValue)).flatMap(Rotation.init)
      }
      plan.rounding = m.optional("rounding", default: plan.rounding) {
        $0.oneOf(Rounding.allCases.map(\.rawValue)).flatMap(Rounding.init)
      }
      if let f = m["range"], f.display != "per_vector" {
        if let r = Double(f.display), r.isFinite, r > 0, case .scalar = f.node {
          plan.range = r
        } else {
          f.fail(
            "expected per_vector (each update's own min and max travel with it) or a positive number r "
              + "for the fixed range [−r, r], e.g. range: 0.5")
        }
      }
    case .topK, .randomMask:
      plan.fraction =
        m.required("fraction", hint: "the fraction of coordinates kept, in (0, 1], e.g. fraction: 0.1") {
          $0.double(0...1, above: true)
        } ?? plan.fraction
    }
    return plan
  }

  /// Rules between `compression` and the rest of the plan: the combinations secure aggregation
  /// cannot sum are rejected, each naming the keys and the way out.
  static func checkAcrossKeys(_ m: YAMLMapping, plan: CompressionPlan) {
    guard SecureAggregationPlan.requestsEnabled(m["secure_aggregation"]), let section = m["compression"]
    else {
      return
    }
    let line = section.child("kind")?.line ?? section.line
    switch plan.kind {
    case .none, .randomMask: return
    case .topK:
      m.owner.log.add(
        keyPath: "compression.kind", line: line,
        "compression.kind top_k with secure_aggregation.enabled: true: top-k indices differ per device, so "
          + "their values cannot be summed securely; use random_mask (one mask from a shared seed) or "
          + "disable secure aggregation")
    case .quantization:
      // With one fixed range every device's codes mean the same values, so their sum decodes
      // (the simulator sums them in the ring); a per-vector range differs per device.
      if plan.range == nil {
        m.owner.log.add(
          keyPath: "compression.range", line: section.child("range")?.line ?? line,
          "compression.kind quantization with a per_vector range and secure_aggregation.enabled: true: "
            + "each device's range differs, so codes cannot be summed; set a fixed range "
            + "(compression.range: r, e.g. the largest |value| an update coordinate reaches), or disable "
            + "secure aggregation")
      }
    }
  }
}

extension PrivacyPlan {
  /// The keys each kind accepts besides `kind`, YAML spelling; each kind rejects the others.
  static let keysByKind: [Kind: [String]] = [
    .none: [],
    .centralGaussian: ["clip", "noise_multiplier", "delta", "target_epsilon", "adaptive_clipping"],
    .distributedDiscreteGaussian: ["clip", "noise_multiplier", "delta", "target_epsilon", "beta"],
  ]

  static let adaptiveKeys = ["target_quantile", "learning_rate", "count_noise_multiplier", "initial_clip"]

  /// The strategies DP-FedAvg runs with: those whose server step works on the mean of the
  /// clipped updates, the quantity the noise is calibrated to.
  public static let supportedStrategies: [StrategyPlan.Kind] = [
    .fedavg, .fedavgm, .fedprox, .fedadagrad, .fedadam, .fedyogi,
  ]

  static func read(_ field: YAMLField) -> PrivacyPlan? {
    let all =
      ["kind"]
      + Kind.allCases.flatMap { keysByKind[$0] ?? [] }.reduce(into: [String]()) {
        if !$0.contains($1) { $0.append($1) }
      }
    guard let p = field.mapping(allowed: all) else { return nil }
    let kind = p.optional("kind", default: Kind.none) {
      $0.oneOf(Kind.allCases.map(\.rawValue)).flatMap(Kind.init)
    }
    let own = keysByKind[kind] ?? []
    let others = all.filter { $0 != "kind" && !own.contains($0) }
    let accepted = own.isEmpty ? "it takes no parameters" : "its keys are: " + own.joined(separator: ", ")
    p.reject(others, because: "privacy.kind \(kind.rawValue) does not use it; \(accepted)")

    var plan = PrivacyPlan(kind: kind)
    guard kind != .none else { return plan }
    plan.beta = p.optional("beta", default: plan.beta) { f -> Double? in
      guard let v = f.double(0...1), v < 1 else {
        f.fail("out of range: expected β in [0, 1) (Kairouz et al. use e^−0.5 ≈ 0.607)")
        return nil
      }
      return v
    }
    let positive = { (f: YAMLField) in f.double(0...Double.greatestFiniteMagnitude, above: true) }
    plan.clip = p.optional("clip", default: plan.clip, positive)
    plan.noiseMultiplier = p.optional("noise_multiplier", default: plan.noiseMultiplier) {
      $0.double(0...1e6)
    }
    plan.delta = p.optional("delta", default: plan.delta) { f -> Double? in
      guard let v = f.double(0...1, above: true) else { return nil }
      guard v < 1 else {
        f.fail("out of range: expected a probability above 0 and below 1 (e.g. 1e-5, below 1/population)")
        return nil
      }
      return v
    }
    plan.targetEpsilon = p.optional("target_epsilon") { $0.double(0...1e6, above: true) }
    let clip = plan.clip
    guard kind == .centralGaussian else { return plan }
    plan.adaptiveClipping = p.optional("adaptive_clipping") { f -> AdaptiveClipping? in
      guard let a = f.mapping(allowed: adaptiveKeys) else { return nil }
      // count_noise_multiplier's default depends on server.cohort.goal: `checkAcrossKeys` fills it.
      var adaptive = AdaptiveClipping(countNoiseMultiplier: 0, initialClip: clip)
      adaptive.targetQuantile = a.optional("target_quantile", default: adaptive.targetQuantile) {
        f -> Double? in
        guard let v = f.double(0...1, above: true) else { return nil }
        guard v < 1 else {
          f.fail("out of range: expected a fraction above 0 and below 1 (e.g. 0.5 for the median norm)")
          return nil
        }
        return v
      }
      adaptive.learningRate = a.optional("learning_rate", default: adaptive.learningRate) {
        $0.double(0...10, above: true)
      }
      adaptive.countNoiseMultiplier = a.optional("count_noise_multiplier", default: 0, positive)
      adaptive.initialClip = a.optional("initial_clip", default: adaptive.initialClip, positive)
      return adaptive
    }
    return plan
  }

  /// Rules between `privacy` and the rest of the plan; fills in what defaults to other sections
  /// (adaptive clipping's count noise: the expected cohort / 20, Andrew et al. 2021).
  static func checkAcrossKeys(
    _ m: YAMLMapping, plan: inout PrivacyPlan, server: ServerPlan, secureAggregation: SecureAggregationPlan
  ) {
    guard plan.isPrivate, let section = m["privacy"] else { return }
    if plan.isDistributed, !secureAggregation.enabled {
      m.owner.log.add(
        keyPath: "privacy.kind", line: section.child("kind")?.line ?? section.line,
        "privacy.kind distributed_discrete_gaussian adds each device's noise inside secure aggregation, "
          + "which is off: set secure_aggregation.enabled: true, or use privacy.kind central_gaussian")
    }
    let line = { (key: String) in section.child(key)?.line ?? section.line }
    let strategy = server.strategy.kind
    if !supportedStrategies.contains(strategy) {
      let names = supportedStrategies.map(\.rawValue)
      let why =
        server.strategy.needsIndividualUpdates
        ? "works on each update on its own, but the sensitivity analysis assumes the average of clipped updates"
        : strategy == .qfedavg
          ? "reweights updates by their loss, but the sensitivity analysis assumes the plain average"
          : "sends each device's control variate unclipped and without noise"
      m.owner.log.add(
        keyPath: "privacy.kind", line: line("kind"),
        "privacy.kind \(plan.kind.rawValue) with server.strategy.kind \(strategy.rawValue): it \(why); choose "
          + names.dropLast().joined(separator: ", ") + " or \(names.last ?? "fedavg")"
          + ", or set privacy.kind: none")
    }
    if plan.noiseMultiplier == 0, plan.targetEpsilon != nil {
      m.owner.log.add(
        keyPath: "privacy.target_epsilon", line: line("target_epsilon"),
        "privacy.target_epsilon needs noise: with privacy.noise_multiplier 0 no round has a finite ε; "
          + "raise noise_multiplier (see `cohort privacy noise`) or remove target_epsilon")
    }
    guard var adaptive = plan.adaptiveClipping, let field = section.child("adaptive_clipping") else { return }
    if field.child("count_noise_multiplier") == nil {
      // The expected count of updates summed at once: the cohort, or in async mode the buffer.
      adaptive.countNoiseMultiplier = Double(server.asynchronous?.buffer ?? server.cohort.goal) / 20
      plan.adaptiveClipping = adaptive
    }
    let countPath = "privacy.adaptive_clipping.count_noise_multiplier"
    let countLine = field.child("count_noise_multiplier")?.line ?? field.line
    if secureAggregation.enabled {
      m.owner.log.add(
        keyPath: "privacy.adaptive_clipping", line: field.line,
        "privacy.adaptive_clipping with secure_aggregation.enabled: true would send each device's "
          + "clipped-or-not bit in the clear, outside the secure sum; remove adaptive_clipping (use a "
          + "fixed privacy.clip) or set secure_aggregation.enabled: false")
    }
    if plan.updateNoiseMultiplier == nil {
      let sigma = adaptive.countNoiseMultiplier
      let expected = server.asynchronous == nil ? "server.cohort.goal" : "server.async.buffer"
      let given = field.child("count_noise_multiplier") == nil ? " (\(expected) / 20)" : ""
      m.owner.log.add(
        keyPath: plan.noiseMultiplier == 0 ? "privacy.noise_multiplier" : countPath,
        line: plan.noiseMultiplier == 0 ? line("noise_multiplier") : countLine,
        plan.noiseMultiplier == 0
          ? "privacy.adaptive_clipping needs noise: the update's multiplier (z⁻² − (2σ_b)⁻²)^(−1/2) is "
            + "undefined at privacy.noise_multiplier 0; raise noise_multiplier or remove adaptive_clipping"
          : "\(countPath) σ_b is \(sigma)\(given), but the update's noise multiplier "
            + "(z⁻² − (2σ_b)⁻²)^(−1/2) needs 2σ_b > privacy.noise_multiplier (\(plan.noiseMultiplier)): "
            + "raise count_noise_multiplier above \(plan.noiseMultiplier / 2) or lower noise_multiplier")
    }
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
