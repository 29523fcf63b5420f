import CohortAggregation
import CohortCore
import Testing

/// Expected values below were computed independently with NumPy (a separate implementation of
/// each formula, in /tmp while writing these tests; the script's lines are quoted in comments),
/// or by hand where shown.
@Suite struct ServerStrategyTests {
  static let layout = WeightsLayout([TensorSpec("w", [3])])
  static let global = Weights(layout: layout, values: [0.1, 0.2, -0.3])
  /// Four updates with 10, 20, 30, 40 examples.
  static let updates: [[Float]] = [[1, -2, 0.5], [2, 0, -1], [-1, 1, 1.5], [0.5, 3, 2]]
  static let examples = [10, 20, 30, 40]

  static func client(
    _ i: Int, _ values: [Float], examples: Int = 1, loss: Double? = nil, control: [Float]? = nil
  )
    -> ClientUpdate
  {
    ClientUpdate(
      device: i, update: Weights(layout: layout, values: values), examples: examples, lossAtGlobal: loss,
      controlDelta: control.map { Weights(layout: layout, values: $0) })
  }

  /// Runs `rounds` rounds, each folding the same clients, and returns the global model after each.
  static func run(
    _ rule: StrategyPlan.Rule, clients: [ClientUpdate], rounds: Int = 1, population: Int? = nil,
    state: inout StrategyState
  ) -> [Weights] {
    let s = ServerStrategy(plan: StrategyPlan(rule), layout: layout, population: population)
    var global = Self.global
    var out: [Weights] = []
    for _ in 0..<rounds {
      var round = s.makeRound()
      for c in clients { s.fold(c, into: &round) }
      global = s.nextGlobal(from: global, round, state: &state)!
      out.append(global)
    }
    return out
  }

  static func run(_ rule: StrategyPlan.Rule, clients: [ClientUpdate], rounds: Int = 1, population: Int? = nil)
    -> [Weights]
  {
    var state = ServerStrategy(plan: StrategyPlan(rule), layout: layout, population: population)
      .initialState()
    return run(rule, clients: clients, rounds: rounds, population: population, state: &state)
  }

  static var weightedClients: [ClientUpdate] {
    updates.indices.map { client($0, updates[$0], examples: examples[$0]) }
  }

  static func close(_ a: Weights, _ b: [Double], tolerance: Double = 1e-5) -> Bool {
    zip(a.values, b).allSatisfy { abs(Double($0) - $1) <= tolerance * max(1, abs($1)) }
  }

  // MARK: Mean-based

  @Test func fedavgWeightedAndPlain() {
    // Weighted mean by hand: (10·1 + 20·2 − 30·1 + 40·0.5)/100 = 0.4; (−20 + 30 + 120)/100 = 1.3;
    // (5 − 20 + 45 + 80)/100 = 1.1. Global + mean = [0.5, 1.5, 0.8].
    // Plain mean: (1 + 2 − 1 + 0.5)/4 = 0.625 → 0.725; (−2 + 0 + 1 + 3)/4 = 0.5 → 0.7; 3/4 → 0.45.
    #expect(Self.close(Self.run(.fedavg(weighted: true), clients: Self.weightedClients)[0], [0.5, 1.5, 0.8]))
    #expect(
      Self.close(Self.run(.fedavg(weighted: false), clients: Self.weightedClients)[0], [0.725, 0.7, 0.45]))
    // FedProx aggregates exactly as FedAvg.
    #expect(
      Self.close(
        Self.run(.fedprox(mu: 1, weighted: true), clients: Self.weightedClients)[0], [0.5, 1.5, 0.8]))
  }

  @Test func fedavgmCarriesMomentum() {
    // By hand, Δ̄ = [0.4, 1.3, 1.1], η = 1, β = 0.9: round 1 v = Δ̄, w = [0.5, 1.5, 0.8];
    // round 2 v = 1.9·Δ̄ = [0.76, 2.47, 2.09], w = [1.26, 3.97, 2.89].
    let w = Self.run(.fedavgm(serverLearningRate: 1, momentum: 0.9), clients: Self.weightedClients, rounds: 2)
    #expect(Self.close(w[0], [0.5, 1.5, 0.8]))
    #expect(Self.close(w[1], [1.26, 3.97, 2.89]))
  }

  @Test func adaptiveOptimizersFollowReddiAlgorithm2() {
    // NumPy: m = b1 m + (1-b1) d; v per variant from v0 = tau²; w += eta m / (sqrt(v) + tau),
    // d = weighted mean [0.4, 1.3, 1.1], eta 0.1, b1 0.9, b2 0.99, tau 1e-3, two rounds.
    let a = StrategyPlan.Adaptive(serverLearningRate: 0.1, beta1: 0.9, beta2: 0.99, tau: 1e-3)
    let cases: [(StrategyPlan.Rule, [Double], [Double])] = [
      (
        .fedadagrad(a), [0.1099750312, 0.2099923107, -0.2900090868],
        [0.1233863311, 0.2234200338, -0.2765826915]
      ),
      (
        .fedadam(a), [0.1975315423, 0.2992337569, -0.2009049182], [0.3298535917, 0.4331887862, -0.0670826138]
      ),
      (
        .fedyogi(a), [0.1975312451, 0.2992337278, -0.2009049588], [0.3295275241, 0.4328552344, -0.0674155309]
      ),
    ]
    for (rule, first, second) in cases {
      let w = Self.run(rule, clients: Self.weightedClients, rounds: 2)
      #expect(Self.close(w[0], first), "\(rule) round 1: \(w[0].values)")
      #expect(Self.close(w[1], second), "\(rule) round 2: \(w[1].values)")
    }
  }

  @Test func qfedavgMatchesLiEtAl() {
    // NumPy, L = 1/0.1 = 10, losses F = [0.5, 1, 2, 0.25] (+1e-10): dw = -L·u,
    // w − Σ F^q dw / Σ (q F^(q−1) ‖dw‖² + L F^q).
    let losses = [0.5, 1.0, 2.0, 0.25]
    let clients = Self.updates.indices.map { Self.client($0, Self.updates[$0], loss: losses[$0]) }
    let q1 = Self.run(.qfedavg(q: 1, learningRate: 0.1), clients: clients)[0]
    #expect(Self.close(q1, [0.1022222222, 0.2062222222, -0.2902222222]), "\(q1.values)")
    let q2 = Self.run(.qfedavg(q: 2, learningRate: 0.1), clients: clients)[0]
    #expect(Self.close(q2, [0.0956383822, 0.2093576527, -0.2866772403]), "\(q2.values)")
    // By hand, q = 0 is the plain mean step: w + Σu/n (Σ dw / (n·L) = −mean u).
    let q0 = Self.run(.qfedavg(q: 0, learningRate: 0.1), clients: clients)[0]
    #expect(Self.close(q0, [0.725, 0.7, 0.45]), "\(q0.values)")
  }

  @Test func scaffoldServerStep() {
    // By hand: x ← x + η_g·mean Δy; c ← c + (|S|/N)·mean Δc = Σ Δc / N with N = 10:
    // Σ Δc = [0.5, 0.6, 0.7] → c = [0.05, 0.06, 0.07]; a second round adds as much again.
    let dc: [[Float]] = [[0.1, 0, 0], [0, 0.2, 0], [0, 0, 0.3], [0.4, 0.4, 0.4]]
    let clients = Self.updates.indices.map { Self.client($0, Self.updates[$0], control: dc[$0]) }
    var state = ServerStrategy(
      plan: StrategyPlan(.scaffold(serverLearningRate: 0.5)), layout: Self.layout, population: 10
    )
    .initialState()
    #expect(state.control == [0, 0, 0])
    let w = Self.run(
      .scaffold(serverLearningRate: 0.5), clients: clients, rounds: 2, population: 10, state: &state)
    // η_g = 0.5: 0.1 + 0.5·0.625 = 0.4125; 0.2 + 0.25 = 0.45; −0.3 + 0.375 = 0.075.
    #expect(Self.close(w[0], [0.4125, 0.45, 0.075]))
    let c = state.serverControl(layout: Self.layout)!
    #expect(Self.close(c, [0.1, 0.12, 0.14]), "\(c.values)")
  }

  // MARK: Robust

  /// The four updates plus [3, −1, 0].
  static var five: [ClientUpdate] {
    (Self.updates + [[3, -1, 0]]).enumerated().map { Self.client($0.offset, $0.element) }
  }

  @Test func fedmedianCoordinateWise() {
    // By hand, four updates (even count: mean of the two middle values): sorted columns
    // [−1, 0.5, 1, 2] → 0.75; [−2, 0, 1, 3] → 0.5; [−1, 0.5, 1.5, 2] → 1.0; plus global.
    #expect(Self.close(Self.run(.fedmedian, clients: Self.weightedClients)[0], [0.85, 0.7, 0.7]))
  }

  @Test func trimmedMeanCutsEachTail() {
    // By hand, five updates, β = 0.2 cuts 1 from each end: sorted [−1, 0.5, 1, 2, 3] → (0.5+1+2)/3;
    // [−2, −1, 0, 1, 3] → 0; [−1, 0, 0.5, 1.5, 2] → 2/3. Global + that (NumPy agrees).
    let w = Self.run(.fedtrimmedavg(beta: 0.2), clients: Self.five)[0]
    #expect(Self.close(w, [1.2666666667, 0.2, 0.3666666667]), "\(w.values)")
    // β = 0.1 cuts ⌊0.5⌋ = 0: the plain mean of five, by hand (5.5/5, 1/5, 3/5) + global.
    #expect(Self.close(Self.run(.fedtrimmedavg(beta: 0.1), clients: Self.five)[0], [1.2, 0.4, 0.3]))
  }

  @Test func krumAndMultiKrum() {
    // NumPy: with n = 5, f = 1 each score sums the n − f − 2 = 2 smallest squared distances:
    // scores [12.5, 10.25, 20.5, 26.75, 8.25]. Krum picks update 4 ([3, −1, 0]).
    #expect(Self.close(Self.run(.krum(byzantine: 1), clients: Self.five)[0], [3.1, -0.8, -0.3]))
    // Multi-Krum m = 3 averages updates 4, 1, 0; default m = n − f = 4 adds update 2.
    let m3 = Self.run(.multikrum(byzantine: 1, keep: 3), clients: Self.five)[0]
    #expect(Self.close(m3, [2.1, -0.8, -0.4666666667]), "\(m3.values)")
    #expect(
      Self.close(Self.run(.multikrum(byzantine: 1, keep: nil), clients: Self.five)[0], [1.35, -0.3, -0.05]))
  }

  @Test func bulyanSelectsThenTrims() {
    // NumPy, 7 updates of 2 parameters, f = 1 (n = 4f + 3): θ = 5 chosen by repeated Krum
    // (indices 0, 4, 2, 1, 3), then per coordinate the β = 3 values closest to the median:
    // [0.1166666667, 0.1]. Global is zero here.
    let layout = WeightsLayout([TensorSpec("w", [2])])
    let values: [[Float]] = [
      [0.1, 0.2], [0.3, -0.1], [-0.2, 0], [0, 0.4], [0.25, 0.1], [-0.1, -0.3], [5, -4],
    ]
    let s = ServerStrategy(plan: StrategyPlan(.bulyan(byzantine: 1)), layout: layout)
    var round = s.makeRound()
    for (i, v) in values.enumerated() {
      s.fold(ClientUpdate(device: i, update: Weights(layout: layout, values: v), examples: 1), into: &round)
    }
    var state = s.initialState()
    let w = s.nextGlobal(from: .zeros(layout), round, state: &state)!
    #expect(Self.close(w, [0.1166666667, 0.1]), "\(w.values)")
  }

  @Test func robustStrategiesIgnoreOneOutlier() {
    // Honest updates scatter around [1, −1, 0.5] (seeded); one attacker sends [1000, 1000, −1000].
    // Bulyan needs n ≥ 4f + 3 = 7 for f = 1, so it gets six honest updates; the others four.
    for seed: UInt64 in [1, 2, 3] {
      var rng = RandomStream(seed: seed)
      func honest() -> [Float] {
        [1, -1, 0.5].map { $0 + Float(rng.uniform() - 0.5) * 0.2 }
      }
      let outlier: [Float] = [1000, 1000, -1000]
      func clients(_ honestCount: Int) -> [ClientUpdate] {
        (0..<honestCount).map { Self.client($0, honest()) } + [Self.client(honestCount, outlier)]
      }
      let five = clients(4)
      let seven = clients(6)
      let honestMean = [1.1, -0.8, 0.2]  // global + centre
      func distance(_ w: Weights) -> Double {
        zip(w.values, honestMean).map { (Double($0) - $1) * (Double($0) - $1) }.reduce(0, +).squareRoot()
      }
      let rules: [(StrategyPlan.Rule, [ClientUpdate])] = [
        (.fedmedian, five), (.fedtrimmedavg(beta: 0.2), five), (.krum(byzantine: 1), five),
        (.multikrum(byzantine: 1, keep: nil), five), (.bulyan(byzantine: 1), seven),
      ]
      for (rule, cs) in rules {
        let w = Self.run(rule, clients: cs)[0]
        #expect(distance(w) < 0.2, "seed \(seed): \(rule) moved to \(w.values)")
      }
      #expect(distance(Self.run(.fedavg(weighted: false), clients: five)[0]) > 100, "seed \(seed)")
    }
  }

  // MARK: Edge cases

  @Test func emptyRoundGivesNilAndKeepsState() {
    for kind in StrategyPlan.Kind.allCases {
      var plan = StrategyPlan(kind: kind)
      if case .qfedavg(let q, _) = plan.rule { plan.rule = .qfedavg(q: q, learningRate: 0.1) }
      let s = ServerStrategy(plan: plan, layout: Self.layout, population: 10)
      var state = s.initialState()
      let before = state
      #expect(s.nextGlobal(from: Self.global, s.makeRound(), state: &state) == nil, "\(kind)")
      #expect(state == before, "\(kind)")
      #expect(s.needsIndividualUpdates == plan.needsIndividualUpdates)
    }
  }

  @Test func krumWithFewerUpdatesThanPlannedStillPicksOne() {
    // Two updates, f = 1: f shrinks to 0 and the nearest-neighbour scores tie; the first wins.
    let w = Self.run(.krum(byzantine: 1), clients: Array(Self.five.prefix(2)))[0]
    #expect(Self.close(w, [1.1, -1.8, 0.2]))
  }
}
