public import CohortCore

/// One device's contribution to a round, as the server strategy sees it.
public struct ClientUpdate: Sendable {
  public var device: Int
  /// local − global.
  public var update: Weights
  /// Examples trained on: the update's weight in example-weighted means.
  public var examples: Int
  /// F_k(wᵗ), the device's loss at the global model before training; q-FedAvg needs it.
  public var lossAtGlobal: Double?
  /// SCAFFOLD's Δc_k = c_k⁺ − c_k; SCAFFOLD needs it.
  public var controlDelta: Weights?

  public init(
    device: Int, update: Weights, examples: Int, lossAtGlobal: Double? = nil, controlDelta: Weights? = nil
  ) {
    self.device = device
    self.update = update
    self.examples = examples
    self.lossAtGlobal = lossAtGlobal
    self.controlDelta = controlDelta
  }
}

/// What a strategy carries from round to round, besides the global model; each field is nil
/// when the strategy has none. The Coordinator saves it with its snapshot (`Coordinator.Snapshot`).
public struct StrategyState: Sendable, Hashable, Codable {
  /// FedAvgM's server velocity v.
  public var velocity: [Double]?
  /// FedAdagrad/FedAdam/FedYogi's first moment m.
  public var firstMoment: [Double]?
  /// FedAdagrad/FedAdam/FedYogi's second moment v.
  public var secondMoment: [Double]?
  /// SCAFFOLD's server control variate c, which devices receive with the model.
  public var control: [Float]?

  public init(
    velocity: [Double]? = nil, firstMoment: [Double]? = nil, secondMoment: [Double]? = nil,
    control: [Float]? = nil
  ) {
    self.velocity = velocity
    self.firstMoment = firstMoment
    self.secondMoment = secondMoment
    self.control = control
  }

  /// SCAFFOLD's c as weights of `layout`, to send to devices.
  public func serverControl(layout: WeightsLayout) -> Weights? {
    control.map { Weights(layout: layout, values: $0) }
  }
}

/// The updates of one round, folded as they arrive. Streaming strategies hold O(model) memory
/// here (a running sum); those that need individual updates keep them, O(cohort × model).
public struct RoundAggregate: Sendable {
  /// Σ wᵢΔᵢ, example-weighted (or equal-weighted where the strategy says so).
  var sum: UpdateAccumulator
  /// SCAFFOLD: Σ Δcᵢ.
  var controlSum: UpdateAccumulator?
  /// q-FedAvg: Σ F_k^q Δw_k and Σ h_k.
  var qNumerator: [Double]?
  var qDenominator: Double = 0
  /// Robust strategies: the updates themselves, in arrival order.
  var updates: [Weights] = []

  /// Updates folded in.
  public private(set) var count = 0
  /// Σ examples over the folded updates.
  public private(set) var examples = 0

  init(layout: WeightsLayout, control: Bool, q: Bool) {
    sum = UpdateAccumulator(layout: layout)
    controlSum = control ? UpdateAccumulator(layout: layout) : nil
    qNumerator = q ? [Double](repeating: 0, count: layout.count) : nil
  }

  /// Central differential privacy (DP-FedAvg, McMahan et al. 2018): `perturb` adds noise to
  /// Σ Δᵢ, and the mean then divides by `denominator` (the expected cohort, the fixed-denominator
  /// estimator) instead of the total weight. Only for strategies that stream a sum.
  public mutating func privatize(denominator: Double, _ perturb: (inout [Double]) -> Void) {
    precondition(denominator > 0 && denominator.isFinite, "the denominator must be positive")
    sum.privatize(denominator: denominator, perturb)
  }

  mutating func counted(devices: Int = 1, examples: Int) {
    count += devices
    self.examples += examples
  }
}

/// A server aggregation strategy, chosen by the plan's `server.strategy`: the Coordinator calls
/// `makeRound()` per round, `fold` per arriving update, and `nextGlobal` when the round closes.
/// Pure: no I/O, clock or randomness, and ties are broken by arrival order, so a round's result
/// depends only on its inputs.
public struct ServerStrategy: Sendable {
  public let plan: StrategyPlan
  public let layout: WeightsLayout
  /// N, the number of devices in the population; SCAFFOLD scales its control update by |S|/N.
  public let population: Int?
  /// Every update counts once, whatever the plan's weighting: DP-FedAvg bounds each device's
  /// contribution to the sum by the clip, which an example-count weight would undo.
  public let equalWeights: Bool

  /// `population` is required for SCAFFOLD. q-FedAvg needs its learning rate resolved (a
  /// loaded plan has it: it defaults to the device optimizer's).
  public init(plan: StrategyPlan, layout: WeightsLayout, population: Int? = nil, equalWeights: Bool = false) {
    if plan.kind == .scaffold {
      precondition((population ?? 0) > 0, "SCAFFOLD needs the population size N")
    }
    if case .qfedavg(_, let lr) = plan.rule {
      precondition(lr != nil, "q-FedAvg needs its learning rate; Plan.load fills in the device optimizer's")
    }
    self.plan = plan
    self.layout = layout
    self.population = population
    self.equalWeights = equalWeights
  }

  public var needsIndividualUpdates: Bool { plan.needsIndividualUpdates }

  /// The state before round 1: zero velocity and first moment, second moment τ² (Reddi et al.
  /// 2021, Algorithm 2: v₋₁ ≥ τ²), zero control variate.
  public func initialState() -> StrategyState {
    let zeros = [Double](repeating: 0, count: layout.count)
    switch plan.rule {
    case .fedavgm: return StrategyState(velocity: zeros)
    case .fedadagrad(let a), .fedadam(let a), .fedyogi(let a):
      return StrategyState(
        firstMoment: zeros, secondMoment: [Double](repeating: a.tau * a.tau, count: layout.count))
    case .scaffold: return StrategyState(control: [Float](repeating: 0, count: layout.count))
    default: return StrategyState()
    }
  }

  public func makeRound() -> RoundAggregate {
    RoundAggregate(layout: layout, control: plan.kind == .scaffold, q: plan.kind == .qfedavg)
  }

  /// Folds one update into the round. SCAFFOLD's updates must carry `controlDelta`, q-FedAvg's
  /// `lossAtGlobal`.
  public func fold(_ u: ClientUpdate, into round: inout RoundAggregate) {
    precondition(u.update.layout == layout, "update layout does not match the strategy's")
    precondition(u.examples >= 0, "examples must not be negative")
    switch plan.rule {
    case .fedavg, .fedprox, .fedavgm, .fedadagrad, .fedadam, .fedyogi:
      FederatedAveraging(weighted: weightsByExamples).fold(u.update, examples: u.examples, into: &round.sum)
    case .fedmedian, .fedtrimmedavg, .krum, .multikrum, .bulyan:
      round.updates.append(u.update)
    case .qfedavg(let q, let lr):
      guard let loss = u.lossAtGlobal else {
        preconditionFailure("q-FedAvg needs each update's lossAtGlobal")
      }
      QFedAvg(q: q, lipschitz: 1 / lr!).fold(u.update, loss: loss, into: &round)
    case .scaffold:
      guard let dc = u.controlDelta else { preconditionFailure("SCAFFOLD needs each update's controlDelta") }
      precondition(dc.layout == layout, "control delta layout does not match the strategy's")
      // Algorithm 1 averages over the sampled devices with equal weight (1/|S|).
      round.sum.fold(u.update, weight: 1, examples: u.examples)
      round.controlSum!.fold(dc, weight: 1, examples: u.examples)
    }
    round.counted(examples: u.examples)
  }

  /// Whether a device's update counts in proportion to its examples (fedavg and fedprox with
  /// `weighting: examples`, and the server optimizers) rather than once each.
  public var weightsByExamples: Bool {
    if equalWeights { return false }
    return switch plan.rule {
    case .fedavg(let weighted), .fedprox(_, let weighted): weighted
    case .fedavgm, .fedadagrad, .fedadam, .fedyogi: true
    default: false
    }
  }

  /// Folds the result of secure aggregation: Σ wᵢΔᵢ and Σ wᵢ over `count` devices, whose
  /// individual updates the server never saw. Only strategies that work on the weighted sum
  /// (FedAvg, FedProx and the server optimizers) accept it; plan validation keeps the rest out.
  public func foldSecureSum(
    _ weightedSum: [Double], totalWeight: Double, count: Int, examples: Int, into round: inout RoundAggregate
  ) {
    precondition(weightedSum.count == layout.count, "secure sum length does not match the strategy's layout")
    precondition(
      !needsIndividualUpdates && plan.kind != .qfedavg && plan.kind != .scaffold,
      "\(plan.kind.rawValue) cannot aggregate a secure sum")
    round.sum.add(sum: weightedSum, totalWeight: totalWeight, count: count, examples: examples)
    round.counted(devices: count, examples: examples)
  }

  /// The next global model (updating `state`), or nil when nothing usable was folded; then
  /// `state` is unchanged and the caller abandons the round.
  public func nextGlobal(from global: Weights, _ round: RoundAggregate, state: inout StrategyState)
    -> Weights?
  {
    precondition(global.layout == layout, "global model layout does not match the strategy's")
    guard round.count > 0 else { return nil }
    switch plan.rule {
    case .fedavg(let weighted), .fedprox(_, let weighted):
      return FederatedAveraging(weighted: weighted).nextGlobal(from: global, round.sum)
    case .fedavgm(let eta, let beta):
      guard let mean = round.sum.meanDouble() else { return nil }
      var v = state.velocity ?? [Double](repeating: 0, count: layout.count)
      var w = [Double](repeating: 0, count: layout.count)
      for i in 0..<v.count {
        v[i] = beta * v[i] + mean[i]
        w[i] = Double(global.values[i]) + eta * v[i]
      }
      state.velocity = v
      return Weights(layout: layout, values: w.map { Float($0) })
    case .fedadagrad(let a), .fedadam(let a), .fedyogi(let a):
      guard let mean = round.sum.meanDouble() else { return nil }
      return adaptiveStep(global, mean, a, &state)
    case .fedmedian:
      return apply(Robust.median(round.updates), to: global)
    case .fedtrimmedavg(let beta):
      return apply(Robust.trimmedMean(round.updates, beta: beta), to: global)
    case .krum(let f):
      let chosen = Robust.krumSelect(round.updates, byzantine: f, keep: 1)
      return apply(Robust.mean(chosen.map { round.updates[$0] }), to: global)
    case .multikrum(let f, let keep):
      let chosen = Robust.krumSelect(round.updates, byzantine: f, keep: keep)
      return apply(Robust.mean(chosen.map { round.updates[$0] }), to: global)
    case .bulyan(let f):
      return apply(Robust.bulyan(round.updates, byzantine: f), to: global)
    case .qfedavg:
      return QFedAvg.step(global, round)
    case .scaffold(let eta):
      guard let dy = round.sum.meanDouble(), let dcSum = round.controlSum?.sum else { return nil }
      // c ← c + (|S|/N)·mean Δc = c + (1/N)·Σ Δc.
      let n = Double(population!)
      var c = state.control ?? [Float](repeating: 0, count: layout.count)
      for i in 0..<c.count { c[i] = Float(Double(c[i]) + dcSum[i] / n) }
      state.control = c
      return apply(dy.map { eta * $0 }, to: global)
    }
  }

  /// Reddi et al. 2021, Algorithm 2 (no bias correction):
  /// m ← β₁m + (1−β₁)Δ; v by variant; w ← w + η·m/(√v + τ).
  private func adaptiveStep(
    _ global: Weights, _ delta: [Double], _ a: StrategyPlan.Adaptive, _ state: inout StrategyState
  ) -> Weights {
    let n = layout.count
    var m = state.firstMoment ?? [Double](repeating: 0, count: n)
    var v = state.secondMoment ?? [Double](repeating: a.tau * a.tau, count: n)
    var w = [Float](repeating: 0, count: n)
    let kind = plan.kind
    for i in 0..<n {
      let d = delta[i]
      let d2 = d * d
      m[i] = a.beta1 * m[i] + (1 - a.beta1) * d
      switch kind {
      case .fedadagrad: v[i] = v[i] + d2
      case .fedadam: v[i] = a.beta2 * v[i] + (1 - a.beta2) * d2
      default:
        // Yogi: v − (1−β₂)·Δ²·sign(v − Δ²); sign(0) = 0.
        let s: Double = v[i] > d2 ? 1 : (v[i] < d2 ? -1 : 0)
        v[i] = v[i] - (1 - a.beta2) * d2 * s
      }
      w[i] = Float(Double(global.values[i]) + a.serverLearningRate * m[i] / (v[i].squareRoot() + a.tau))
    }
    state.firstMoment = m
    state.secondMoment = v
    return Weights(layout: layout, values: w)
  }

  private func apply(_ delta: [Double]?, to global: Weights) -> Weights? {
    guard let delta else { return nil }
    var w = [Float](repeating: 0, count: layout.count)
    for i in 0..<w.count { w[i] = Float(Double(global.values[i]) + delta[i]) }
    return Weights(layout: layout, values: w)
  }
}

extension UpdateAccumulator {
  /// Σ wᵢΔᵢ / Σ wᵢ kept in Double, for strategies that do more arithmetic on the mean.
  func meanDouble() -> [Double]? {
    guard totalWeight > 0 else { return nil }
    let scale = 1 / totalWeight
    return sum.map { $0 * scale }
  }
}

// MARK: - Replicas

extension RoundAggregate {
  /// Adds another replica's aggregate of the same round: every sum adds (in Double, so the order
  /// of replicas changes the result only by reassociation). Robust strategies' updates would
  /// have to travel one by one; serving them from replicas is refused before a round starts.
  public mutating func merge(_ other: RoundAggregate) {
    precondition(
      updates.isEmpty && other.updates.isEmpty, "robust strategies do not combine partial aggregates")
    sum.add(
      sum: other.sum.sum, totalWeight: other.sum.totalWeight, count: other.sum.count,
      examples: other.sum.examples)
    if let o = other.controlSum {
      controlSum?.add(sum: o.sum, totalWeight: o.totalWeight, count: o.count, examples: o.examples)
    }
    if let o = other.qNumerator, qNumerator != nil {
      for i in 0..<min(o.count, qNumerator!.count) { qNumerator![i] += o[i] }
    }
    qDenominator += other.qDenominator
    counted(devices: other.count, examples: other.examples)
  }

  public func save(into w: inout SnapshotWriter) {
    func accumulator(_ a: UpdateAccumulator?) {
      w.write(a != nil)
      guard let a else { return }
      w.write(a.sum)
      w.write(a.totalWeight)
      w.write(a.count)
      w.write(a.examples)
    }
    accumulator(sum)
    accumulator(controlSum)
    w.write(qNumerator != nil)
    if let qNumerator { w.write(qNumerator) }
    w.write(qDenominator)
    w.write(count)
    w.write(examples)
  }

  /// Reads an aggregate `save` wrote for `strategy`'s rounds; a vector of another length, a
  /// negative count or a weight that is not finite is refused.
  public init(restoring r: inout SnapshotReader, strategy: ServerStrategy) throws(CohortError) {
    self = strategy.makeRound()
    let n = strategy.layout.count
    // Far above any round, far below overflow when the leader adds every replica's counts.
    let limit = 1 << 48
    func accumulator(into a: inout UpdateAccumulator?) throws(CohortError) {
      guard try r.bool() else { return }
      let values = try r.doubles()
      let weight = try r.double()
      let count = try r.int()
      let examples = try r.int()
      guard values.count == n, weight >= 0, weight.isFinite, (0..<limit).contains(count),
        (0..<limit).contains(examples), a != nil
      else {
        throw SnapshotReader.corrupt("a partial aggregate that does not fit the plan's model")
      }
      a!.add(sum: values, totalWeight: weight, count: count, examples: examples)
    }
    var s: UpdateAccumulator? = sum
    try accumulator(into: &s)
    sum = s!
    try accumulator(into: &controlSum)
    if try r.bool() {
      let q = try r.doubles()
      guard q.count == n, qNumerator != nil else {
        throw SnapshotReader.corrupt("a q-FedAvg sum of the wrong size")
      }
      qNumerator = q
    }
    qDenominator = try r.double()
    let count = try r.int()
    let examples = try r.int()
    guard (0..<limit).contains(count), (0..<limit).contains(examples), qDenominator.isFinite else {
      throw SnapshotReader.corrupt("a partial aggregate with a negative or absurd count")
    }
    counted(devices: count, examples: examples)
  }
}
